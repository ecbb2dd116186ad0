"""Load a Hugging Face LM / reward model from a local folder or a GGUF file, and check they share a tokenizer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from args_runtime.errors import ExportError, TokenizerMismatchError, UnsupportedModelError

from .architectures import Family, family_of

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


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


def load_lm(source: ModelSource, dtype: str = "fp32"):
    """The LM as AutoModelForCausalLM in eval mode, with its family."""
    from transformers import AutoModelForCausalLM

    config = load_config(source)
    family = family_of(config)
    model = AutoModelForCausalLM.from_pretrained(source.folder, dtype=DTYPES[dtype], trust_remote_code=False, **source.kwargs())
    return model.eval(), family


def load_rm(source: ModelSource, dtype: str = "fp32"):
    """The RM as AutoModelForSequenceClassification with one label (a scalar reward), with its family."""
    from transformers import AutoModelForSequenceClassification

    config = load_config(source)
    family = family_of(config)
    labels = getattr(config, "num_labels", 1)
    if labels != 1:
        raise UnsupportedModelError(
            f"reward model {source.name} has num_labels={labels}; ARGS needs a scalar reward (num_labels=1): retrain or re-head it"
        )
    model = AutoModelForSequenceClassification.from_pretrained(
        source.folder, dtype=DTYPES[dtype], num_labels=1, trust_remote_code=False, **source.kwargs()
    )
    return model.eval(), family


def backbone_of(model, family: Family):
    return getattr(model, family.backbone_attr)


def load_tokenizer(source: ModelSource):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source.folder, trust_remote_code=False, **source.kwargs())


def check_same_tokenizer(lm_tok, rm_tok, lm_name: str, rm_name: str) -> None:
    """ARGS scores the LM's token ids with the RM: both must map every token to the same id."""
    lm_vocab, rm_vocab = lm_tok.get_vocab(), rm_tok.get_vocab()
    if lm_vocab == rm_vocab:
        return
    only_lm = len(lm_vocab.keys() - rm_vocab.keys())
    only_rm = len(rm_vocab.keys() - lm_vocab.keys())
    moved = sum(1 for t, i in lm_vocab.items() if t in rm_vocab and rm_vocab[t] != i)
    raise TokenizerMismatchError(
        f"the LM ({lm_name}, {len(lm_vocab)} tokens) and the RM ({rm_name}, {len(rm_vocab)} tokens) do not share a tokenizer: "
        f"{only_lm} tokens only in the LM, {only_rm} only in the RM, {moved} with different ids. "
        "ARGS feeds the LM's token ids to the RM, so use a reward model trained on the LM's tokenizer"
    )
