"""ArgsGenerator: open a bundle, then generate or stream with ARGS (or the LM alone) over one prompt or a batch."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .backend import Backend
from .choice import make_chooser, open_device_chooser
from .decode import args_decode, fused_decode, lm_decode
from .engines import BundleGraph, OpenedOnFirstUse, open_graph
from .errors import BundleError, ContextLengthError, GenerationError
from .manifest import Manifest, load_manifest
from .models import FusedModel, LanguageModel, RewardModel
from .options import RuntimeOptions
from .results import Drive, GenerationResult, Row, TokenEvent, collect, stream_events
from .settings import Settings, check_settings
from .stepper import StopConfig, make_stepper
from .tokenizer import FORMS, Prompt, Tokenizer, kind_of
from .turns import Stream, Turns

__all__ = ["ArgsGenerator", "GenerationResult", "TokenEvent"]


class ArgsGenerator:
    """ARGS decoding over an exported bundle (see args-export). Torch-free: numpy, ONNX Runtime, tokenizers.

    Every argument and prompt is checked before any engine work (a bad one raises an ArgsError subclass naming it and
    the fix). One generator runs one call at a time: calls from several threads take turns (runtime/turns.py), a stream
    holds the generator until it ends or is closed, and a call interrupted by an exception or Ctrl-C leaves it ready
    for the next one. Separate generators run side by side."""

    def __init__(self, bundle: Path, manifest: Manifest, models: tuple[LanguageModel, RewardModel], chooser: Backend | None,
                 options: RuntimeOptions) -> None:
        self.bundle, self.manifest, self.options = bundle, manifest, options
        self.lm, self.rm = models
        # Prompt ids must index both models' embeddings (they share the tokenizer).
        self.tokenizer = Tokenizer(bundle, manifest.tokenizer, min(manifest.lm.vocab_size, manifest.rm.vocab_size))
        self._turns = Turns()
        self.device_chooser = chooser  # runs choose.onnx on the models' device; None: the host chooses
        self.loop = options.loop  # "cpp" | "python": which implementation keeps the books and chooses on the host
        self.backend = options.backend
        self.choice = "device" if chooser is not None else "host"

    @classmethod
    def from_bundle(cls, path: str | Path, device: str = "cpu", **options: Any) -> "ArgsGenerator":
        """Open a bundle. Keywords (see RuntimeOptions): lm_device= / rm_device= (default: `device`); backend=
        "onnxruntime" (CPU or CUDA by device), "onnxruntime-trt" (ORT's TensorRT provider) or "tensorrt" (the bundle's
        TensorRT engines); threads=; verify_checksums=True; loop="cpp" | "python"; cuda_graph=False (capture decode
        steps as CUDA graphs: ORT on CUDA, static-cache bundles); choice="auto" | "host" | "device" (where ARGS combines
        and chooses: the host, or the bundle's choose.onnx on the models' device; auto: the device when both models
        share a CUDA device and the engine's values are ONNX Runtime's)."""
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
        if manifest.fused:  # its LM head over the chosen candidate runs beside the fused step, on its device
            rm = FusedModel(rm_backend, manifest.rm, manifest.max_context, open_graph(opts.backend, graphs["propose"], opts.rm_device, opts.engine))
        else:
            rm = RewardModel(rm_backend, manifest.rm, manifest.max_context)
        choosing = (rm.backend,) if manifest.fused else (lm.backend, rm.backend)  # the backends whose values it reads
        return cls(bundle, manifest, (lm, rm), open_device_chooser(bundle, manifest, opts, choosing), opts)

    # ------------------------------------------------------------------ public API

    def generate(self, prompt: Prompt | list[Prompt], **kwargs: Any) -> GenerationResult | list[GenerationResult]:
        """ARGS-generate for one prompt (text, chat messages or ids) or a list of prompts (a batch).
        Keywords: k=10, w=1.0, max_new_tokens=128, method="greedy"|"stochastic", temperature=0.7, seed=0,
        ignore_eos=False, stop=None (a string or a list of strings)."""
        settings = self.settings(**kwargs)
        return self._run(prompt, settings, lm_only=False)

    def stream(self, prompt: Prompt, **kwargs: Any) -> Stream[TokenEvent]:
        """Like generate() for one prompt, yielding each token as it is chosen; the last event carries the result.
        Text that could still begin a stop string is held back until it is known not to be one. The prompt and keywords
        are checked here, at the call; the generation runs as the stream is read. Close a stream you stop reading early
        (`close()`, a `with` block, or let it go out of scope): until then it holds the generator."""
        prompts, is_batch = self.encode(prompt)
        if is_batch:
            raise GenerationError("stream() takes one prompt, not a batch (a list of prompts): use generate() for a batch")
        settings = self.settings(**kwargs)

        def events(end_stream) -> Iterator[TokenEvent]:
            with self._turns.turn(end_stream):
                yield from stream_events(self._drive(prompts, settings, lm_only=False), settings.stop, self.engine_info())

        return Stream(events)

    def greedy(self, prompt: Prompt | list[Prompt], max_new_tokens: int = 128, ignore_eos: bool = False, stop: str | list[str] | None = None):
        """Plain greedy decoding of the LM alone, the baseline ARGS is measured against."""
        settings = self.settings(k=1, w=0.0, max_new_tokens=max_new_tokens, ignore_eos=ignore_eos, stop=stop)
        return self._run(prompt, settings, lm_only=True)

    def sample(self, prompt: Prompt | list[Prompt], k: int = 50, temperature: float = 0.7, seed: int | None = 0, **kwargs: Any):
        """Sampling from the LM alone among its top-k, softmax(logit / temperature), no reward model: the sampler
        best-of-n draws its candidates with. Keywords: max_new_tokens, ignore_eos, stop. Rewards in the result are 0."""
        unknown = [name for name in kwargs if name not in ("max_new_tokens", "ignore_eos", "stop")]
        if unknown:
            raise TypeError(f"sample() got an unexpected keyword argument {unknown[0]!r}; its keywords are k, temperature, seed, "
                            "max_new_tokens, ignore_eos, stop")
        settings = self.settings(k=k, w=0.0, method="stochastic", temperature=temperature, seed=seed, **kwargs)
        return self._run(prompt, settings, lm_only=True)

    def settings(self, **kwargs: Any) -> Settings:
        """generate()'s keywords, checked against their ranges and this bundle's limits."""
        return check_settings(self.manifest.max_k, "generate", **kwargs)

    # ------------------------------------------------------------------ the drive loop shared by generate/stream

    def _run(self, prompt: Prompt | list[Prompt], settings: Settings, lm_only: bool):
        """One call to its end: the prompts checked, then the generator's turn (waiting for a call in another thread)."""
        prompts, is_batch = self.encode(prompt)
        with self._turns.turn():
            results = collect(self._drive(prompts, settings, lm_only), self.engine_info())
        return results if is_batch else results[0]

    def prompt_ids(self, prompt: Prompt, where: str = "the prompt") -> list[int]:
        """One prompt (text, chat messages or token ids) as checked token ids: what generate() would run. `where`
        names it in errors (args-serve: the request field). Raises GenerationError, ContextLengthError when it leaves
        no room for a new token."""
        return self._checked_ids(self._encode_one(prompt, where), where)

    def encode(self, prompt: Any) -> tuple[list[list[int]], bool]:
        """Token ids of one prompt or a batch (a list of texts, id lists or chats), each checked against the bundle's
        vocabulary and context."""
        is_batch = isinstance(prompt, list) and any(isinstance(p, (str, list)) for p in prompt) and not any(isinstance(p, dict) for p in prompt)
        if not is_batch:
            return [self.prompt_ids(prompt)], False
        nested = next((i for i, p in enumerate(prompt) if not isinstance(p, (str, list))), None)
        if nested is not None:
            raise GenerationError(f"prompt {nested} of the batch is {kind_of(prompt[nested])}: {FORMS}")
        return [self.prompt_ids(p, f"prompt {i} of the batch") for i, p in enumerate(prompt)], True

    def _checked_ids(self, ids: list[int], where: str) -> list[int]:
        limit = self.manifest.max_context
        if not ids:
            raise GenerationError(f"{where} is empty: give at least one token")
        if len(ids) >= limit:
            raise ContextLengthError(
                f"{where} has {len(ids)} tokens, but the bundle's context is {limit} tokens (the prompt must leave room "
                f"for at least one new token): shorten the prompt or re-export with a larger --max-context"
            )
        return ids

    def _encode_one(self, prompt: Any, where: str) -> list[int]:
        if isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
            raise GenerationError(f"{where} is a list of prompts: batches do not nest; {FORMS}")
        return self.tokenizer.encode(prompt, where)

    def _drive(self, prompts: list[list[int]], s: Settings, lm_only: bool) -> Drive:
        """Run the decode loop, keep each row's books; yield (rows, elapsed seconds) after every step."""
        # Rows share one left-padded cache: the longest prompt's positions run out of context first, for all.
        context_budget = self.manifest.max_context - max(len(p) for p in prompts)
        rows = [Row(len(p), s.max_new_tokens, context_budget, self.tokenizer.decode) for p in prompts]
        stop = StopConfig(tuple(self.manifest.tokenizer.eos_token_ids), s.ignore_eos, tuple(r.limit for r in rows))
        stepper = make_stepper(self.loop, prompts, self.manifest.tokenizer.pad_token_id, stop)
        choose = make_chooser(s.choice(len(prompts)), self.loop, None if lm_only else self.device_chooser)
        if lm_only:
            steps = lm_decode(self.lm, choose, stepper, s.k)
        elif isinstance(self.rm, FusedModel):
            steps = fused_decode(self.rm, choose, stepper, s.k)
        else:
            steps = args_decode(self.lm, self.rm, choose, stepper, s.k)
        start = time.perf_counter()
        try:
            for step in steps:
                for i, row in enumerate(rows):
                    if row.finish_reason is None:
                        row.record(step, i, s.stop)
                yield rows, time.perf_counter() - start
                if all(r.finish_reason is not None for r in rows):
                    return
        finally:
            steps.close()

    def engine_info(self) -> dict[str, Any]:
        """What ran, for every result's timings."""
        return {
            "loop": self.loop,
            "backend": self.backend,
            "lm_device": str(self.lm.backend.device),
            "rm_device": str(self.rm.backend.device),
            "cache": self.manifest.lm.cache,
            "fused": self.manifest.fused,
            "choice": self.choice,
            "engines": {"lm": self.lm.backend.describe(), "rm": self.rm.backend.describe(),
                        **({"propose": self.rm.head.describe()} if isinstance(self.rm, FusedModel) else {})},
        }

