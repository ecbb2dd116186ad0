"""Qwen 3's stack: Llama's with an RMSNorm over each head's queries and keys before rotary positions (and the sliding
layers its `layer_types` name, when `use_sliding_window` is set)."""

from __future__ import annotations

from .base import split_heads
from .llama import LlamaStack


class Qwen3Stack(LlamaStack):
    def project(self, layer, h):
        attn = layer.self_attn
        q = attn.q_norm(split_heads(attn.q_proj(h), self.heads, self.head_dim))  # the norm is over the head dim
        k = attn.k_norm(split_heads(attn.k_proj(h), self.kv_heads, self.head_dim))
        return q, k, split_heads(attn.v_proj(h), self.kv_heads, self.head_dim)
