"""Phi-3's stack (Phi-3, Phi-3.5, Phi-4 mini): Llama's with one fused qkv projection (split at constant offsets), a
fused gate-up MLP (transformers' own module) and, in Phi-4 mini, rotary positions on part of each head."""

from __future__ import annotations

from .base import split_heads
from .llama import LlamaStack


class Phi3Stack(LlamaStack):
    def project(self, layer, h):
        qkv = layer.self_attn.qkv_proj(h)
        q_end = self.heads * self.head_dim
        k_end = q_end + self.kv_heads * self.head_dim
        return (split_heads(qkv[..., :q_end], self.heads, self.head_dim), split_heads(qkv[..., q_end:k_end], self.kv_heads, self.head_dim),
                split_heads(qkv[..., k_end:], self.kv_heads, self.head_dim))
