"""Load a Hugging Face LM and reward model (local folders or GGUF files) into one value, reading each config once,
and decide how the RM reads the LM's tokens: its ids (one tokenizer) or text (a tokenizer of its own)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from args_runtime.chat_ids import REPLY_MARK
from args_runtime.dtypes import element_type
from args_runtime.errors import ExportError, TokenizerMismatchError, UnsupportedModelError

from .architectures import ENCODER_TYPES, Family, family_of, is_encoder
from .stacks.base import DecoderStack

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def torch_dtype(name: str) -> torch.dtype:
    """'fp16' or 'float16' → torch.float16."""
    return TORCH_DTYPES[element_type(name)]


@dataclass
class ModelSource:
    """Where a model's weights live: a folder, optionally with one GGUF file inside it."""

    folder: Path
    gguf_file: str | None = None

    @property
    def name(self) -> str:
        return str(self.folder / self.gguf_file) if self.gguf_file else str(self.folder)

    def kwargs(self) -> dict:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def resolve_source(path: str | Path, role: str) -> ModelSource:
    """Turn a user's --lm/--rm path into a ModelSource, or raise ExportError saying what is wrong."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ExportError(f"{role} path {p} does not exist: pass a local Hugging Face model folder or a .gguf file")
    if p.is_file():
        if p.suffix != ".gguf":
            raise ExportError(f"{role} path {p} is a file but not a .gguf: pass the model's folder (with config.json) or a .gguf file")
        return ModelSource(p.parent, p.name)
    if (p / "config.json").is_file():
        return ModelSource(p)
    ggufs = sorted(p.glob("*.gguf"))
    if len(ggufs) == 1:
        return ModelSource(p, ggufs[0].name)
    if ggufs:
        names = ", ".join(g.name for g in ggufs)
        raise ExportError(f"{role} folder {p} holds several GGUF files ({names}): pass the one you want as --{role.lower()} PATH.gguf")
    raise ExportError(f"{role} folder {p} has no config.json and no .gguf file: it is not a Hugging Face model folder")


def load_config(source: ModelSource):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source.folder, trust_remote_code=False, **source.kwargs())
    except ValueError as e:  # unknown model_type, or one needing remote code
        raise UnsupportedModelError(f"cannot read the config of {source.name}: {e}") from e


def load_tokenizer(spec: "ModelSpec"):
    """The model's tokenizer; a GGUF's with its special tokens as its config (read once, in the spec) names them."""
    from transformers import AutoTokenizer

    source = spec.source
    tokenizer = AutoTokenizer.from_pretrained(source.folder, trust_remote_code=False, **source.kwargs())
    return align_special_tokens(tokenizer, spec.config) if source.gguf_file else tokenizer


def align_special_tokens(tokenizer, config):
    """A GGUF's tokenizer with its bos/eos/pad tokens as the model's config names them. transformers 5.17 (the GPU
    box's) builds a GGUF's tokenizer with bos and eos swapped and no pad (SmolLM2: eos `<|im_start|>`), while the
    config it reads from the same file is right; 5.24 reads both right. Changes nothing when they already agree."""
    for role in ("bos", "eos", "pad"):
        want = getattr(config, f"{role}_token_id", None)
        if isinstance(want, int) and getattr(tokenizer, f"{role}_token_id") != want:
            setattr(tokenizer, f"{role}_token", tokenizer.convert_ids_to_tokens(want))
    return tokenizer


# The graphs mirror transformers' eager attention, and export checks them against the models run that way: other
# implementations are not always the same model (transformers 5.17 ran Gemma 2 through SDPA, which drops its attention
# soft cap).
EAGER = "eager"


@dataclass
class ModelSpec:
    """A model before its weights load: where it is, its config (read once) and its architecture family."""

    source: ModelSource
    config: object
    family: Family | None  # None: an encoder RM (export/encoders.py), which has no decoder stack

    @staticmethod
    def read(path: str | Path, role: str) -> "ModelSpec":
        source = resolve_source(path, role)
        config = load_config(source)
        if role == "RM" and is_encoder(config):
            return ModelSpec(source, config, None)
        return ModelSpec(source, config, family_of(config, role))

    @property
    def encoder(self) -> bool:
        return self.family is None


@dataclass
class LoadedModel:
    """An HF model in eval mode with what the exporter needs of it: its decoder stack and its head."""

    spec: ModelSpec
    model: nn.Module
    head_attr: str  # "lm_head" (LM) or "score" (RM), per family

    @property
    def name(self) -> str:
        return self.spec.source.name

    @property
    def config(self):
        return self.model.config

    @property
    def family(self) -> Family:
        return self.spec.family

    @property
    def backbone(self) -> nn.Module:
        return getattr(self.model, self.family.backbone_attr)

    @property
    def head(self) -> nn.Module:
        """The head as the graphs run it: an LM's output embeddings (soft-capped where the family caps its logits),
        an RM's score layer."""
        if self.head_attr == self.family.score_attr:
            return getattr(self.model, self.head_attr)
        head = getattr(self.model, self.head_attr, None)
        if head is None:  # GPT-NeoX's head was `embed_out` in earlier transformers versions
            head = self.model.get_output_embeddings()
        return self.family.lm_head(head, self.config)

    def stack(self) -> DecoderStack:
        """The export-ready decoder stack over this model's own layers."""
        return self.family.stack(self.backbone, self.config)


def load_lm(spec: ModelSpec, dtype: str = "fp32") -> LoadedModel:
    """The LM as AutoModelForCausalLM in eval mode."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(spec.source.folder, config=spec.config, dtype=torch_dtype(dtype), trust_remote_code=False,
                                                 attn_implementation=EAGER,
                                                 **spec.source.kwargs())
    return LoadedModel(spec, model.eval(), spec.family.lm_head_attr)


def load_encoder_rm(folder: Path, dtype: str = "fp32") -> torch.nn.Module:
    """The reward model in `folder` as AutoModelForSequenceClassification (eager attention, eval mode); refused with
    UnsupportedModelError unless it is an encoder with one label."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    folder = Path(folder)
    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise ExportError(f"reward model {folder} has no readable config.json ({e}): pass a local Hugging Face model folder") from e
    if not is_encoder(config):
        raise UnsupportedModelError(
            f"reward model {folder} is a {config.model_type!r} model, not an encoder classifier; encoder types: {', '.join(ENCODER_TYPES)}"
        )
    require_one_label(config, str(folder))
    model = AutoModelForSequenceClassification.from_pretrained(folder, config=config, dtype=torch_dtype(dtype),
                                                               attn_implementation=EAGER, trust_remote_code=False)
    return model.eval()


def require_one_label(config, name: str) -> None:
    """A reward model gives one scalar per text: its head has one label (UnsupportedModelError naming the fix otherwise)."""
    labels = getattr(config, "num_labels", 1)
    if labels != 1:
        raise UnsupportedModelError(
            f"reward model {name} ({config.model_type}) has num_labels={labels}; ARGS needs one scalar reward per text "
            f"(num_labels=1): re-head it with one output (AutoModelForSequenceClassification, num_labels=1) and retrain the head"
        )


def load_rm(spec: ModelSpec, dtype: str = "fp32") -> LoadedModel:
    """The RM as AutoModelForSequenceClassification with one label (a scalar reward)."""
    from transformers import AutoModelForSequenceClassification

    if spec.encoder:
        return LoadedModel(spec, load_encoder_rm(spec.source.folder, dtype), "")

    require_one_label(spec.config, spec.source.name)
    model = AutoModelForSequenceClassification.from_pretrained(spec.source.folder, config=spec.config, dtype=torch_dtype(dtype),
                                                               attn_implementation=EAGER,
                                                               trust_remote_code=False, **spec.source.kwargs())
    return LoadedModel(spec, model.eval(), spec.family.score_attr)


READ_CHOICES = ("auto", "ids", "text")  # args-export --rm-input
FORMAT_CHOICES = ("raw", "chat")  # args-export --rm-format


def vocabulary_verdict(lm_tok, rm_tok) -> tuple[bool, str]:
    """Whether the RM can read the LM's token ids as they are: every LM token has the same id in the RM's vocabulary
    (identical vocabularies, or the RM's only adds tokens, as Skywork's reward models add a pad); and what differs."""
    lm_vocab, rm_vocab = lm_tok.get_vocab(), rm_tok.get_vocab()
    if lm_vocab == rm_vocab:
        return True, f"the two vocabularies are the same ({len(lm_vocab)} tokens)"
    only_lm = len(lm_vocab.keys() - rm_vocab.keys())
    only_rm = len(rm_vocab.keys() - lm_vocab.keys())
    moved = sum(1 for t, i in lm_vocab.items() if t in rm_vocab and rm_vocab[t] != i)
    if only_lm == 0 and moved == 0:
        added = sorted(rm_vocab.keys() - lm_vocab.keys(), key=rm_vocab.get)
        shown = ", ".join(repr(t) for t in added[:3]) + (", …" if len(added) > 3 else "")
        return True, (f"its vocabulary is the LM's ({len(lm_vocab)} tokens, same ids) plus {only_rm} token{'s' if only_rm != 1 else ''} "
                      f"of its own ({shown}), which the LM never proposes")
    return False, (f"the LM's tokenizer ({len(lm_vocab)} tokens) and the RM's ({len(rm_vocab)} tokens) differ: {only_lm} tokens only "
                   f"in the LM, {only_rm} only in the RM, {moved} with different ids")


def choose_reading(lm_tok, rm_tok, rm: "ModelSpec", lm_name: str, asked: str = "auto") -> tuple[str, str]:
    """How the RM reads the LM's tokens ("ids" or "text") and why, for the export log; `asked` is --rm-input. Raises
    TokenizerMismatchError when ids are asked for and the RM cannot read them, ExportError for an unknown choice."""
    if asked not in READ_CHOICES:
        raise ExportError(f"--rm-input {asked!r} is not one of {list(READ_CHOICES)}")
    rm_name = rm.source.name
    if rm.encoder:
        if asked == "ids":
            raise ExportError(f"the RM {rm_name} is an encoder ({rm.config.model_type}), which reads text: drop --rm-input ids")
        return "text", f"the RM reads text: it is an encoder ({rm.config.model_type}), k whole texts scored per pass, no cache"
    same, why = vocabulary_verdict(lm_tok, rm_tok)
    if asked == "text":
        return "text", f"the RM reads text (--rm-input text): the LM's tokens decoded, re-tokenized by the RM's tokenizer ({why})"
    if same:
        return "ids", f"the RM reads the LM's token ids: {why}"
    if asked == "ids":
        raise TokenizerMismatchError(
            f"--rm-input ids: the RM ({rm_name}) cannot read the LM's ({lm_name}) token ids: {why}. Drop --rm-input ids (or "
            "pass --rm-input text): the RM then reads the text, re-tokenized with its own tokenizer and chat template")
    return "text", f"the RM reads text: {why}, so the LM's tokens are decoded and re-tokenized by the RM's own tokenizer"


def choose_format(asked: str, reads: str, why: str, rm_tok, rm_name: str) -> tuple[str, str]:
    """--rm-format: "chat" puts a chat prompt's reply ids inside the RM's own template on the id path (the text path
    renders chats in it already); refused, naming the fix, when the RM has no template or it does not hold the reply once."""
    if asked not in FORMAT_CHOICES:
        raise ExportError(f"--rm-format {asked!r} is not one of {list(FORMAT_CHOICES)}")
    if asked == "raw":
        return "raw", why
    if reads == "text":
        return "raw", f"{why} (--rm-format chat: the text path renders a chat prompt in the RM's own template already)"
    template = rm_tok.chat_template if isinstance(rm_tok.chat_template, str) else None
    if not template:
        raise ExportError(f"--rm-format chat: the RM {rm_name} has no chat template in its tokenizer: save the template it was "
                          "trained with (tokenizer.chat_template = ...; tokenizer.save_pretrained(folder)), or drop --rm-format chat")
    probe = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": REPLY_MARK}]
    try:
        places = rm_tok.apply_chat_template(probe, tokenize=False).count(REPLY_MARK)
    except Exception as e:  # a template that raises on a plain user/assistant exchange
        raise ExportError(f"--rm-format chat: the RM {rm_name}'s chat template fails on a user/assistant exchange ({type(e).__name__}: {e}): "
                          "fix the template, or drop --rm-format chat") from e
    if places != 1:
        raise ExportError(f"--rm-format chat: the RM {rm_name}'s chat template places the assistant's reply {places} times, not once: "
                          "ARGS cannot put the reply's ids in it; fix the template, or drop --rm-format chat")
    return "chat", (f"{why}; --rm-format chat: a chat prompt's reply ids go inside the RM's own template (ids before + reply + "
                    "after), read by an RM graph with a cache of its own")


@dataclass
class PairSpec:
    """The LM and RM before their weights load: configs and families, the LM's tokenizer, and how the RM reads it: the
    LM's ids ("ids": the RM's vocabulary maps every LM token to the same id) or text, with its own tokenizer ("text")."""

    lm: ModelSpec
    rm: ModelSpec
    tokenizer: object  # the LM's transformers tokenizer
    rm_input: str = ""  # how the RM reads the LM's tokens, and why (the export log says it)
    reads: str = "ids"  # "ids" | "text"
    rm_tokenizer: object = None  # the RM's own transformers tokenizer
    format: str = "raw"  # the id path's reading of a chat prompt: "raw" or "chat" (the RM's template around the LM's ids)

    @property
    def own_rm_tokens(self) -> bool:
        """Whether the RM reads ids of its own making (text, or its own chat format): its own graph and cache."""
        return self.reads == "text" or self.format == "chat"

    @staticmethod
    def read(lm_path: str | Path, rm_path: str | Path, rm_input: str = "auto", rm_format: str = "raw") -> "PairSpec":
        lm, rm = ModelSpec.read(lm_path, "LM"), ModelSpec.read(rm_path, "RM")
        tokenizer = load_tokenizer(lm)
        try:
            rm_tok = load_tokenizer(rm)
        except (OSError, ValueError, TypeError) as e:
            raise ExportError(f"the RM {rm.source.name} has no tokenizer args-export can read ({type(e).__name__}: {str(e).strip().splitlines()[0]}): save the "
                              "tokenizer it was trained with beside it (tokenizer.save_pretrained(folder))") from e
        reads, why = choose_reading(tokenizer, rm_tok, rm, lm.source.name, rm_input)
        form, why = choose_format(rm_format, reads, why, rm_tok, rm.source.name)
        return PairSpec(lm, rm, tokenizer, why, reads, rm_tok, form)


@dataclass
class ModelPair:
    """The loaded LM and RM, and their shared tokenizer: everything the export's later stages read."""

    lm: LoadedModel
    rm: LoadedModel
    tokenizer: object
    spec: PairSpec | None = None  # how the RM reads the LM's tokens (PairSpec.reads), its tokenizer

    @staticmethod
    def load(spec: PairSpec, dtype: str) -> "ModelPair":
        return ModelPair(load_lm(spec.lm, dtype), load_rm(spec.rm, dtype), spec.tokenizer, spec)

    @property
    def reads_text(self) -> bool:
        return self.spec is not None and self.spec.reads == "text"

    @property
    def own_rm_tokens(self) -> bool:
        """The RM reads ids of its own making (PairSpec.own_rm_tokens): its own graph, cache and tokenizer."""
        return self.spec is not None and self.spec.own_rm_tokens

    @property
    def vocab(self) -> int:
        return self.lm.model.get_output_embeddings().weight.shape[0]
