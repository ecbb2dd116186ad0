"""OLMo 2's stack: Llama's with RMSNorms over the whole query and key projections (all heads at once) and norms after
attention and MLP instead of before them."""

from __future__ import annotations

from .base import split_heads
from .llama import LlamaStack


class Olmo2Stack(LlamaStack):
    def project(self, layer, h):
        attn = layer.self_attn
        q = split_heads(attn.q_norm(attn.q_proj(h)), self.heads, self.head_dim)
        k = split_heads(attn.k_norm(attn.k_proj(h)), self.kv_heads, self.head_dim)
        return q, k, split_heads(attn.v_proj(h), self.kv_heads, self.head_dim)

    def block(self, layer, x, attention):
        x = x + layer.post_attention_layernorm(attention(x))
        return x + layer.post_feedforward_layernorm(layer.mlp(x))
