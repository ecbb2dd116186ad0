"""An opened bundle as one value: its manifest, the models on their engines and devices, the device chooser, the
tokenizer, and the door every prompt and every setting goes through. `ArgsGenerator` (one call at a time) and
`ArgsEngine` (continuous batching) both hold one; neither reaches into the other."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .backend import Backend
from .choice import open_device_chooser
from .engines import BundleGraph, OpenedOnFirstUse, open_graph
from .errors import BundleError, ContextLengthError, GenerationError
from .manifest import Manifest, load_manifest
from .models import FusedModel, LanguageModel, RewardModel
from .chat_ids import RewardChatIds
from .text_reward import RewardTexts, TextRewardModel, open_text_rm
from .options import RuntimeOptions
from .settings import Settings, check_settings
from .tokenizer import FORMS, Prompt, Tokenizer, is_chat, kind_of
from .turns import Turns


@dataclass
class Bundle:
    """A bundle folder opened for decoding (see `Bundle.open`)."""

    path: Path
    manifest: Manifest
    options: RuntimeOptions
    lm: LanguageModel
    rm: RewardModel | TextRewardModel  # a FusedModel on a fused bundle; a TextRewardModel when the RM reads text
    device_chooser: Backend | None  # runs choose.onnx on the models' device; None: the host chooses
    tokenizer: Tokenizer
    turns: Turns = field(default_factory=Turns)  # calls that use the models' own caches take turns

    @classmethod
    def open(cls, path: str | Path, device: str = "cpu", **options: Any) -> "Bundle":
        """Open a bundle. Keywords: those of RuntimeOptions (see ArgsGenerator.from_bundle)."""
        opts = RuntimeOptions.from_keywords(device, options)
        manifest = load_manifest(path, verify_checksums=opts.verify_checksums)
        bundle = Path(path)
        if opts.cuda_graph and manifest.lm.cache != "static":
            raise BundleError(f"cuda_graph=True needs fixed shapes, i.e. a static-cache bundle: re-export {bundle} with `args-export ... --cache static`")
        specs = {"lm": manifest.lm, "rm": manifest.rm, "propose": manifest.propose}
        graphs = {role: BundleGraph(bundle, role, spec.file, spec, manifest.engines.get(role)) for role, spec in specs.items() if spec}
        # A fused bundle's ARGS never runs the LM graph (the RM's head sits on its backbone): it opens on first use.
        open_lm = OpenedOnFirstUse if manifest.fused else open_graph
        lm = LanguageModel(open_lm(opts.backend, graphs["lm"], opts.lm_device, opts.engine), manifest.lm, manifest.max_context)
        rm_backend = open_graph(opts.backend, graphs["rm"], opts.rm_device, opts.engine)
        reads = manifest.reward_input
        # Prompt ids must index the LM's embeddings, and the RM's when it reads them.
        tokenizer = Tokenizer(bundle, manifest.tokenizer, manifest.lm.vocab_size if reads.path == "text" else
                              min(manifest.lm.vocab_size, manifest.rm.vocab_size))
        if manifest.fused:  # its LM head over the chosen candidate runs beside the fused step, on its device
            rm = FusedModel(rm_backend, manifest.rm, manifest.max_context, open_graph(opts.backend, graphs["propose"], opts.rm_device, opts.engine))
        elif reads.own_tokens:  # the RM's own tokenizer reads each candidate's text, or its template wraps the LM's ids
            rm_tok = Tokenizer(bundle, reads.tokenizer, manifest.rm.vocab_size)  # its ids index the RM's embeddings
            texts = RewardTexts(tokenizer, rm_tok, reads.max_positions, reads.lm_clean_up_spaces)
            rule = RewardChatIds(texts) if reads.format == "chat" else texts
            pad = reads.tokenizer.pad_token_id
            rm = open_text_rm(rm_backend, manifest.rm, rule, reads.kind, pad if pad >= 0 else None)
        else:
            rm = RewardModel(rm_backend, manifest.rm, manifest.max_context)
        choosing = (rm.backend,) if manifest.fused else (lm.backend, rm.backend)  # the backends whose values it reads
        device_chooser = open_device_chooser(bundle, manifest, opts, choosing)
        return cls(bundle, manifest, opts, lm, rm, device_chooser, tokenizer)

    @property
    def fused(self) -> bool:
        return self.manifest.fused

    @property
    def max_context(self) -> int:
        return self.manifest.max_context

    def models(self, lm_only: bool = False) -> tuple[LanguageModel | RewardModel, ...]:
        """The models a step runs: the LM alone, a fused bundle's one graph, or the LM and the RM."""
        if lm_only:
            return (self.lm,)
        return (self.rm,) if self.fused else (self.lm, self.rm)

    def why_not_continuous(self, lm_only: bool = False) -> str | None:
        """Why requests cannot join and leave a running batch over this bundle (and how to fix it), or None when they
        can: that keeps each request at its own position in a static cache, running some rows of its buffers in place."""
        manifest = self.manifest
        if manifest.lm.cache != "static":
            return (f"{self.path} has the dynamic cache layout, whose rows share one left-padded cache: requests are batched "
                    "together as they arrive and a batch runs to its end; re-export with `args-export ... --cache static` "
                    "for continuous batching")
        engines = sorted({m.backend.name for m in self.models(lm_only) if not m.backend.row_views})
        if engines:
            return (f"the {' and '.join(engines)} engine cannot run some rows of a cache buffer in place: requests are batched "
                    "together as they arrive; open the bundle with backend='onnxruntime' for continuous batching")
        if self.options.cuda_graph or any(getattr(m.backend, "fixed_addresses", False) for m in self.models(lm_only)):
            return ("CUDA graphs replay fixed shapes and addresses (the models' own caches), so requests are batched together "
                    "as they arrive; open the bundle with cuda_graph=False for continuous batching")
        return None

    # ------------------------------------------------------------------ the door: prompts and settings, checked once

    def settings(self, caller: str = "generate", /, **keywords: Any) -> Settings:
        """generate()'s keywords, checked against their ranges and this bundle's limits."""
        return check_settings(self.manifest.max_k, caller, **keywords)

    def prompt_ids(self, prompt: Prompt, where: str = "the prompt") -> list[int]:
        """One prompt (text, chat messages or token ids) as checked token ids. `where` names it in errors (args-serve:
        the request field). Raises GenerationError, ContextLengthError when it leaves no room for a new token."""
        if isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
            raise GenerationError(f"{where} is a list of prompts: batches do not nest; {FORMS}")
        ids = self.tokenizer.encode(prompt, where)
        limit = self.manifest.max_context
        if not ids:
            raise GenerationError(f"{where} is empty: give at least one token")
        if len(ids) >= limit:
            raise ContextLengthError(
                f"{where} has {len(ids)} tokens, but the bundle's context is {limit} tokens (the prompt must leave room "
                f"for at least one new token): shorten the prompt or re-export with a larger --max-context"
            )
        return ids

    def encode(self, prompt: Any) -> tuple[list[list[int]], bool]:
        """Token ids of one prompt or a batch (a list of texts, id lists or chats), each checked; and whether it was a
        batch."""
        is_batch = isinstance(prompt, list) and any(isinstance(p, (str, list)) for p in prompt) and not any(isinstance(p, dict) for p in prompt)
        if not is_batch:
            return [self.prompt_ids(prompt)], False
        nested = next((i for i, p in enumerate(prompt) if not isinstance(p, (str, list))), None)
        if nested is not None:
            raise GenerationError(f"prompt {nested} of the batch is {kind_of(prompt[nested])}: {FORMS}")
        return [self.prompt_ids(p, f"prompt {i} of the batch") for i, p in enumerate(prompt)], True

    def chats(self, prompt: Any, is_batch: bool) -> list[list[dict[str, Any]] | None]:
        """Each prompt's chat messages (None: text or ids), for an RM that renders them in its own chat template."""
        return [p if is_chat(p) else None for p in (prompt if is_batch else [prompt])]

    @property
    def reads_text(self) -> bool:
        """Whether the RM reads text with a tokenizer of its own (the text path)."""
        return isinstance(self.rm, TextRewardModel)

    def engine_info(self) -> dict[str, Any]:
        """What runs, for every result's timings."""
        return {
            "rm_input": self.manifest.reward_input.path,
            "rm_format": self.manifest.reward_input.format,
            "loop": self.options.loop,
            "backend": self.options.backend,
            "lm_device": str(self.lm.backend.device),
            "rm_device": str(self.rm.backend.device),
            "cache": self.manifest.lm.cache,
            "fused": self.fused,
            "choice": "device" if self.device_chooser is not None else "host",
            "engines": {"lm": self.lm.backend.describe(), "rm": self.rm.backend.describe(),
                        **({"propose": self.rm.head.describe()} if isinstance(self.rm, FusedModel) else {})},
        }
