"""Which model types args-export takes, and how: each is a family (its stack, where its backbone and heads live, what
it checks in a config), registered by model type. Adding one: docs/adding-a-model-family.md."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from args_runtime.errors import UnsupportedModelError

from .stacks.base import DecoderStack
from .stacks.gemma import Gemma2Stack, Gemma3Stack
from .stacks.gpt2 import Gpt2Stack
from .stacks.gpt_neox import GptNeoxStack
from .stacks.llama import LlamaStack
from .stacks.olmo2 import Olmo2Stack
from .stacks.opt import OptStack
from .stacks.phi3 import Phi3Stack
from .stacks.qwen3 import Qwen3Stack


def _same_head(head: nn.Module, config) -> nn.Module:
    return head


@dataclass
class Family:
    """How to find the backbone and heads of one architecture family's HF models."""

    name: str
    stack: Callable[[nn.Module, object], DecoderStack]
    backbone_attr: str
    lm_head_attr: str = "lm_head"
    score_attr: str = "score"
    check: Callable[[object], None] = lambda config: None
    lm_head: Callable[[nn.Module, object], nn.Module] = _same_head  # the LM head as the graphs run it (Gemma's soft cap)


FAMILIES: dict[str, Family] = {}


def register(*model_types: str, **kwargs) -> None:
    for model_type in model_types:
        FAMILIES[model_type] = Family(name=model_type, **kwargs)


class SoftCappedHead(nn.Module):
    """logits = tanh(head(h) / cap) * cap, Gemma's final logit soft cap as transformers applies it."""

    def __init__(self, head: nn.Module, cap: float) -> None:
        super().__init__()
        self.head, self.cap = head, float(cap)
        self.in_features = head.in_features

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.head(hidden) / self.cap) * self.cap


def _soft_capped(head: nn.Module, config) -> nn.Module:
    cap = getattr(config, "final_logit_softcapping", None)
    return SoftCappedHead(head, cap) if cap else head


def _rope_type(config) -> str:
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if isinstance(rope, dict) and rope and all(isinstance(v, dict) for v in rope.values()):  # Gemma 3: one per layer type
        kinds = {v.get("rope_type", v.get("type", "default")) for v in rope.values()}
        return "dynamic" if "dynamic" in kinds else "default"
    return rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"


def _check_rope(config) -> None:
    if _rope_type(config) == "dynamic":
        raise UnsupportedModelError("dynamic NTK rope scaling changes with sequence length and cannot be exported; use a static rope type")


def _check_llama(config) -> None:
    _check_rope(config)
    if getattr(config, "model_type", "") == "qwen2" and getattr(config, "use_sliding_window", False):
        raise UnsupportedModelError("Qwen2 with use_sliding_window=True is not supported; set use_sliding_window=False")


def _check_phi3(config) -> None:
    _check_rope(config)
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if isinstance(rope, dict) and rope.get("rope_type", rope.get("type")) in ("longrope", "su"):
        raise UnsupportedModelError(
            "Phi-3 with LongRoPE (the 128k-context models) switches its rotary table at a sequence length and is not supported; "
            "use a 4k-context Phi-3 model"
        )


register("llama", "mistral", "qwen2", stack=LlamaStack, backbone_attr="model", check=_check_llama)
register("qwen3", stack=Qwen3Stack, backbone_attr="model", check=_check_rope)
register("olmo2", stack=Olmo2Stack, backbone_attr="model", check=_check_rope)
register("phi3", stack=Phi3Stack, backbone_attr="model", check=_check_phi3)
register("gemma2", stack=Gemma2Stack, backbone_attr="model", check=_check_rope, lm_head=_soft_capped)
register("gemma3_text", stack=Gemma3Stack, backbone_attr="model", check=_check_rope, lm_head=_soft_capped)
register("gpt_neox", stack=GptNeoxStack, backbone_attr="gpt_neox", check=_check_rope)
register("opt", stack=OptStack, backbone_attr="model")
register("gpt2", stack=Gpt2Stack, backbone_attr="transformer")

# model types users bring whose text model a supported family covers: what to export instead
_INSTEAD = {
    "gemma3": "a Gemma 3 multimodal checkpoint: export its text model (Gemma3ForCausalLM, model_type 'gemma3_text')",
}


# config.model_type of every encoder classifier a reward model may be (export/encoders.py exports them whole, no KV
# cache; each has a tiny seeded model in tests/test_encoder_rms.py)
ENCODER_TYPES: tuple[str, ...] = ("bert", "roberta", "xlm-roberta", "deberta-v2", "distilbert", "electra")


def is_encoder(config) -> bool:
    """Whether `config` is an encoder classifier's (a reward model exported whole by export/encoders.py)."""
    return getattr(config, "model_type", None) in ENCODER_TYPES


def family_of(config, role: str = "LM") -> Family:
    """The registered family of an HF config, or UnsupportedModelError listing what is supported (for an RM, the
    encoder types too)."""
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        supported = ", ".join(sorted(FAMILIES))
        instead = f" ({_INSTEAD[model_type]})" if model_type in _INSTEAD else ""
        encoders = f"; a reward model may also be an encoder classifier: {', '.join(ENCODER_TYPES)}" if role == "RM" else ""
        raise UnsupportedModelError(
            f"architecture {model_type!r} is not supported by args-export{instead}; supported model_type values: {supported}"
            f"{encoders}. Adding a family: docs/adding-a-model-family.md"
        )
    family = FAMILIES[model_type]
    family.check(config)
    return family

