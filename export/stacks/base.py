"""Decoder stacks per architecture family, written for export: explicit additive masks, KV caches as
tensors, standard ONNX ops only. They reuse the Hugging Face model's own leaf layers (linears, norms,
embeddings, rotary tables) so the numbers match transformers, and own only the wiring."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from args_runtime.errors import UnsupportedModelError

KV = tuple[torch.Tensor, torch.Tensor]


@dataclass
class StackShape:
    """What the runtime must know to feed a stack's KV cache."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    max_positions: int


class _Reshape(torch.autograd.Function):
    """x.reshape(dims) with ONNX Reshape's own conventions: 0 keeps the input's dim at that index, -1 (at most one)
    takes what is left. The TorchScript exporter emits `symbolic`, one Reshape with a constant shape; a traced view
    of dynamic dims would compute each of them with Shape/Gather/Unsqueeze/Concat nodes, about 1,100 small nodes in a
    30-layer pass, whose dispatch ONNX Runtime pays on every token. The dynamo exporter traces `forward`."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        return x.reshape([x.shape[i] if d == 0 else d for i, d in enumerate(dims)])

    @staticmethod
    def symbolic(g, x, dims):
        return g.op("Reshape", x, g.op("Constant", value_t=torch.tensor(dims, dtype=torch.int64)))


def reshape(x: torch.Tensor, *dims: int) -> torch.Tensor:
    """x.reshape with ONNX's 0 (keep the input's dim) and -1, exported as one constant-shape Reshape (_Reshape)."""
    return _Reshape.apply(x, tuple(int(d) for d in dims))


def attend(q: torch.Tensor, blocks: list[KV], bias: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v over one or more key/value blocks (the cache, then the RM's candidates),
    with q [B,H,S,D], each block's k/v [B,Hkv,T_i,D] (grouped heads) and bias [B,1,S,sum T_i]. Query heads are
    grouped onto their KV head instead of repeating the cache, and the cache is never cast or copied: the
    products run in the model's dtype, the scores and softmax in float32, as transformers' eager attention does."""
    heads, d = int(q.shape[1]), int(q.shape[3])  # fixed by the model
    kv_heads = int(blocks[0][0].shape[1])
    q = reshape(q, 0, kv_heads, heads // kv_heads, -1, d)  # head h reads KV head h // groups
    scores = [_float(torch.matmul(q, k.unsqueeze(2).transpose(-1, -2))) for k, _ in blocks]  # [B,Hkv,G,S,T_i]
    scores = (scores[0] if len(scores) == 1 else torch.cat(scores, dim=-1)) * scale + bias.unsqueeze(2)
    probs = torch.softmax(scores, dim=-1)
    out, start = None, 0
    for _, v in blocks:
        part = probs[..., start : start + v.shape[2]] if len(blocks) > 1 else probs
        start += v.shape[2]
        term = torch.matmul(part if v.dtype == torch.float32 else part.to(v.dtype), v.unsqueeze(2))
        out = term if out is None else out + term
    return reshape(out, 0, heads, -1, d)


def _float(x: torch.Tensor) -> torch.Tensor:
    """x as float32, without a (traced) Cast when it already is: a Cast on the cache would copy it every step."""
    return x if x.dtype == torch.float32 else x.float()


def split_heads(x: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """[B,S,H*D] -> [B,H,S,D]."""
    return reshape(x, 0, -1, heads, head_dim).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B,H,S,D] -> [B,S,H*D]."""
    return reshape(x.transpose(1, 2), 0, -1, int(x.shape[1]) * int(x.shape[3]))


class ConcatCache:
    """The growing cache: the past is [B,Hkv,T,D] and the present is past + the new tokens (a copy per step).
    Candidate tokens (the RM's, after the first `keep` new ones) are attended, never cached."""

    def __init__(self, keep: int | torch.Tensor) -> None:
        self.keep = keep

    def update(self, past: KV, k: torch.Tensor, v: torch.Tensor) -> tuple[list[KV], KV]:
        """Return (key/value blocks to attend over, the present to keep)."""
        full_k = torch.cat([past[0], k], dim=2)
        full_v = torch.cat([past[1], v], dim=2)
        end = past[0].shape[2] + self.keep
        return [(full_k, full_v)], (full_k[:, :, :end], full_v[:, :, :end])


class _WriteSlots(torch.autograd.Function):
    """cache[b, h, slot] = update, exported as one ScatterND. ONNX Runtime's ScatterND skips its input copy when
    the output is bound to the input's own buffer, so the runtime's fixed cache buffers are written in place.
    The TorchScript exporter emits `symbolic`; the dynamo exporter traces `forward`, whose clone + index_put
    torchlib lowers to the same single ScatterND (its identity transposes folded away by the optimizer)."""

    @staticmethod
    def forward(ctx, cache: torch.Tensor, indices: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        out = cache.clone()
        out[indices[..., 0], indices[..., 1], indices[..., 2]] = update
        return out

    @staticmethod
    def symbolic(g, cache, indices, update):
        return g.op("ScatterND", cache, indices, update)


class StaticCache:
    """The fixed cache: past and present are the same [B,Hkv,C,D] buffer (C = the bundle's max context), the new
    tokens are written at `cache_position` ([B,S] slot indices, each row its own), attention spans all C slots under
    the mask. Fixed shapes and addresses: what CUDA graphs and TensorRT need, and a cost per token that stays flat."""

    def __init__(self, cache_position: torch.Tensor, keep: int | torch.Tensor, with_candidates: bool) -> None:
        self.cache_position, self.keep, self.with_candidates = cache_position, keep, with_candidates

    def update(self, past: KV, k: torch.Tensor, v: torch.Tensor) -> tuple[list[KV], KV]:
        batch, kv_heads = k.shape[0], k.shape[1]
        slots = self.cache_position.shape[1]
        index = [
            torch.arange(batch).view(-1, 1, 1).expand(batch, kv_heads, slots),
            torch.arange(kv_heads).view(1, -1, 1).expand(batch, kv_heads, slots),
            self.cache_position.unsqueeze(1).expand(batch, kv_heads, slots),
        ]
        indices = torch.stack(index, dim=-1)
        present = (_WriteSlots.apply(past[0], indices, k[:, :, : self.keep]), _WriteSlots.apply(past[1], indices, v[:, :, : self.keep]))
        if not self.with_candidates:
            return [present], present
        return [present, (k[:, :, self.keep :], v[:, :, self.keep :])], present


CacheUpdate = ConcatCache | StaticCache


class DecoderStack(nn.Module):
    """Embeddings → blocks → final norm, with caches in and presents out. Subclasses per family."""

    shape: StackShape

    def forward(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, bias: torch.Tensor, past: list[KV], cache: CacheUpdate
    ) -> tuple[torch.Tensor, list[KV]]:
        raise NotImplementedError


# ---------------------------------------------------------------- Llama family (Llama, Mistral, Qwen2)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = int(x.shape[-1]) // 2  # the head dim is fixed: a constant, not a Shape → Gather → Div chain per call
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class LlamaStack(DecoderStack):
    """Pre-norm RMSNorm blocks, rotary positions, grouped-query attention, SwiGLU MLP."""

    def __init__(self, backbone: nn.Module, config) -> None:
        super().__init__()
        self.embed = backbone.embed_tokens
        self.layers = backbone.layers
        self.norm = backbone.norm
        self.rotary = backbone.rotary_emb
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.scale = self.head_dim**-0.5
        self.shape = StackShape(len(self.layers), self.kv_heads, self.head_dim, config.hidden_size, config.max_position_embeddings)

    def forward(self, input_ids, position_ids, bias, past, cache):
        x = self.embed(input_ids)
        cos, sin = self.rotary(x, position_ids)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        presents = []
        for layer, layer_past in zip(self.layers, past):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = split_heads(attn.q_proj(h), self.heads, self.head_dim)
            k = split_heads(attn.k_proj(h), self.kv_heads, self.head_dim)
            v = split_heads(attn.v_proj(h), self.kv_heads, self.head_dim)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            blocks, present = cache.update(layer_past, k, v)
            presents.append(present)
            x = x + attn.o_proj(merge_heads(attend(q, blocks, bias, self.scale)))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.norm(x), presents


# ---------------------------------------------------------------- OPT


class OptStack(DecoderStack):
    """Learned positions (offset 2), pre- or post-LayerNorm blocks, ReLU MLP, optional in/out projections."""

    POSITION_OFFSET = 2

    def __init__(self, backbone: nn.Module, config) -> None:
        super().__init__()
        decoder = backbone.decoder
        self.embed = decoder.embed_tokens
        self.positions = decoder.embed_positions
        self.project_in = decoder.project_in
        self.project_out = decoder.project_out
        self.final_norm = decoder.final_layer_norm
        self.layers = decoder.layers
        self.pre_norm = config.do_layer_norm_before
        self.heads = config.num_attention_heads
        self.head_dim = config.hidden_size // self.heads
        self.shape = StackShape(len(self.layers), self.heads, self.head_dim, config.hidden_size, config.max_position_embeddings)

    def forward(self, input_ids, position_ids, bias, past, cache):
        x = self.embed(input_ids)
        if self.project_in is not None:
            x = self.project_in(x)
        x = x + nn.functional.embedding(position_ids + self.POSITION_OFFSET, self.positions.weight)
        presents = []
        for layer, layer_past in zip(self.layers, past):
            attn = layer.self_attn
            h = layer.self_attn_layer_norm(x) if self.pre_norm else x
            q = split_heads(attn.q_proj(h), self.heads, self.head_dim)
            k = split_heads(attn.k_proj(h), self.heads, self.head_dim)
            v = split_heads(attn.v_proj(h), self.heads, self.head_dim)
            blocks, present = cache.update(layer_past, k, v)
            presents.append(present)
            x = x + attn.out_proj(merge_heads(attend(q, blocks, bias, self.head_dim**-0.5)))
            if not self.pre_norm:
                x = layer.self_attn_layer_norm(x)
            h = layer.final_layer_norm(x) if self.pre_norm else x
            x = x + layer.fc2(layer.activation_fn(layer.fc1(h)))
            if not self.pre_norm:
                x = layer.final_layer_norm(x)
        if self.final_norm is not None:
            x = self.final_norm(x)
        if self.project_out is not None:
            x = self.project_out(x)
        return x, presents


# ---------------------------------------------------------------- GPT-2


class Gpt2Stack(DecoderStack):
    """Learned absolute positions, pre-LayerNorm blocks with fused QKV (Conv1D), GELU MLP."""

    def __init__(self, backbone: nn.Module, config) -> None:
        super().__init__()
        if getattr(config, "scale_attn_by_inverse_layer_idx", False):
            raise UnsupportedModelError("GPT-2 with scale_attn_by_inverse_layer_idx=True is not supported; use a standard GPT-2 config")
        self.wte, self.wpe, self.blocks, self.ln_f = backbone.wte, backbone.wpe, backbone.h, backbone.ln_f
        self.heads = config.n_head
        self.head_dim = config.n_embd // self.heads
        self.scale = self.head_dim**-0.5 if getattr(config, "scale_attn_weights", True) else 1.0
        self.shape = StackShape(len(self.blocks), self.heads, self.head_dim, config.n_embd, config.n_positions)

    def forward(self, input_ids, position_ids, bias, past, cache):
        x = self.wte(input_ids) + self.wpe(position_ids)
        presents = []
        for block, layer_past in zip(self.blocks, past):
            q, k, v = block.attn.c_attn(block.ln_1(x)).split(self.heads * self.head_dim, dim=2)
            q, k, v = (split_heads(t, self.heads, self.head_dim) for t in (q, k, v))
            blocks, present = cache.update(layer_past, k, v)
            presents.append(present)
            x = x + block.attn.c_proj(merge_heads(attend(q, blocks, bias, self.scale)))
            x = x + block.mlp(block.ln_2(x))
        return self.ln_f(x), presents


# ---------------------------------------------------------------- registry


@dataclass
class Family:
    """How to find the backbone and heads of one architecture family's HF models."""

    name: str
    stack: Callable[[nn.Module, object], DecoderStack]
    backbone_attr: str
    lm_head_attr: str = "lm_head"
    score_attr: str = "score"
    check: Callable[[object], None] = lambda config: None


FAMILIES: dict[str, Family] = {}


def register(*model_types: str, **kwargs) -> None:
    for model_type in model_types:
        FAMILIES[model_type] = Family(name=model_type, **kwargs)


def _check_llama(config) -> None:
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    if rope_type == "dynamic":
        raise UnsupportedModelError("dynamic NTK rope scaling changes with sequence length and cannot be exported; use a static rope type")
    if getattr(config, "model_type", "") == "qwen2" and getattr(config, "use_sliding_window", False):
        raise UnsupportedModelError("Qwen2 with use_sliding_window=True is not supported; set use_sliding_window=False")


register("llama", "mistral", "qwen2", stack=LlamaStack, backbone_attr="model", check=_check_llama)
register("opt", stack=OptStack, backbone_attr="model")
register("gpt2", stack=Gpt2Stack, backbone_attr="transformer")


def family_of(config) -> Family:
    """The registered family of an HF config, or UnsupportedModelError listing what is supported."""
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        supported = ", ".join(sorted(FAMILIES))
        raise UnsupportedModelError(
            f"architecture {model_type!r} is not supported by args-export; supported model_type values: {supported}"
        )
    family = FAMILIES[model_type]
    family.check(config)
    return family


def context_limit(config) -> int | None:
    """A limit the architecture puts on the context beyond its position table (Mistral's sliding window)."""
    window = getattr(config, "sliding_window", None)
    if getattr(config, "model_type", "") == "mistral" and window:
        return int(window)
    return None
