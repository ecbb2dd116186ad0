"""The pieces every export-ready decoder stack is built from: attention over grouped KV heads with an additive mask
(and a sliding window where a layer has one), the two cache layouts' updates, rotary positions, and a Reshape that
computes no shape. A family's module (export/stacks/<family>.py) only wires its Hugging Face model's own leaf layers
(linears, norms, embeddings, rotary tables) with these, so the numbers match transformers."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


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


def attend(q: torch.Tensor, blocks: list[KV], bias: torch.Tensor, scale: float, softcap: float | None = None) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v over one or more key/value blocks (the cache, then the RM's candidates),
    with q [B,H,S,D], each block's k/v [B,Hkv,T_i,D] (grouped heads) and bias [B,1,S,sum T_i]. Query heads are
    grouped onto their KV head instead of repeating the cache, and the cache is never cast or copied: the
    products run in the model's dtype, the scores and softmax in float32, as transformers' eager attention does.
    `softcap` (Gemma 2): the scores become tanh(scores / cap) * cap before the mask, as transformers does."""
    heads, d = int(q.shape[1]), int(q.shape[3])  # fixed by the model
    kv_heads = int(blocks[0][0].shape[1])
    q = reshape(q, 0, kv_heads, heads // kv_heads, -1, d)  # head h reads KV head h // groups
    scores = [_float(torch.matmul(q, k.unsqueeze(2).transpose(-1, -2))) for k, _ in blocks]  # [B,Hkv,G,S,T_i]
    scores = (scores[0] if len(scores) == 1 else torch.cat(scores, dim=-1)) * scale
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    scores = scores + bias.unsqueeze(2)
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


class Masks:
    """The additive attention biases of one pass. `full` [B,1,S,T] (causal, padding, the RM's candidate tree) is built
    by the graph; `local(window)` is the same with every key `window` or more positions behind its query masked too,
    what transformers' sliding-window layers see. Positions are counted in real tokens (a key's position is the number
    of real keys before it), so a padded row, a cache slot and an RM candidate all sit where transformers puts them,
    and the window holds beyond it in both layouts. Built only when a layer asks: other families' graphs are unchanged.
    """

    def __init__(self, full: torch.Tensor, attention_mask: torch.Tensor, query_positions: torch.Tensor,
                 candidate_positions: torch.Tensor | None = None) -> None:
        self.full, self.attention_mask = full, attention_mask
        self.query_positions, self.candidate_positions = query_positions, candidate_positions
        self._local: dict[int, torch.Tensor] = {}

    def local(self, window: int | None) -> torch.Tensor:
        """The bias of a layer with this sliding window (None: the full one)."""
        if not window:
            return self.full
        if window not in self._local:
            keys = torch.cumsum(self.attention_mask, dim=1) - 1  # [B,T]: each real key's position
            if self.candidate_positions is not None:
                keys = torch.cat([keys, self.candidate_positions], dim=1)
            far = (self.query_positions.unsqueeze(-1) - keys.unsqueeze(1)) >= window  # [B,S,T]
            lowest = torch.full((), torch.finfo(self.full.dtype).min, dtype=self.full.dtype)
            self._local[window] = torch.where(far.unsqueeze(1), lowest, self.full)  # never -inf: a pad row stays finite
        return self._local[window]


def layer_windows(config, num_layers: int) -> list[int | None]:
    """Each layer's sliding window as transformers applies it: `layer_types` marks the sliding layers (Gemma 2/3,
    Qwen 3), and a `sliding_window` without them slides every layer (Mistral, Phi-3)."""
    window = getattr(config, "sliding_window", None)
    if not window:
        return [None] * num_layers
    types = getattr(config, "layer_types", None)
    if types is None:
        return [int(window)] * num_layers
    return [int(window) if t == "sliding_attention" else None for t in types]


class DecoderStack(nn.Module):
    """Embeddings → blocks → final norm, with caches in and presents out. One subclass per family."""

    shape: StackShape

    def forward(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, masks: Masks, past: list[KV], cache: CacheUpdate
    ) -> tuple[torch.Tensor, list[KV]]:
        raise NotImplementedError


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = int(x.shape[-1]) // 2  # the head dim is fixed: a constant, not a Shape → Gather → Div chain per call
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary positions on the first cos.shape[-1] dims of each head, the rest passed through (partial rotary: Phi-3's
    partial_rotary_factor, GPT-NeoX's rotary_pct); cos/sin are [B,1,S,R]."""
    rotated = int(cos.shape[-1])
    if rotated == int(x.shape[-1]):
        return x * cos + rotate_half(x) * sin
    part, rest = x[..., :rotated], x[..., rotated:]
    return torch.cat([part * cos + rotate_half(part) * sin, rest], dim=-1)


