"""Gemma 2's and Gemma 3's stacks: Llama's with embeddings scaled by sqrt(hidden) (transformers' own scaled embedding
module), (1 + w) RMSNorms before and after both attention and MLP, a query scale of query_pre_attn_scalar^-1/2, sliding
windows on alternate layers (Gemma 2) or five of six (Gemma 3); Gemma 2 soft-caps the attention scores, Gemma 3
normalizes each head's queries and keys and gives its local and global layers rotary tables of their own. The final
logit soft cap sits on the LM head (architectures.py)."""

from __future__ import annotations

import inspect

from torch import nn

from .base import split_heads
from .llama import LlamaStack


class Gemma2Stack(LlamaStack):
    def __init__(self, backbone: nn.Module, config) -> None:
        super().__init__(backbone, config)
        self.scale = float(config.query_pre_attn_scalar) ** -0.5
        self.softcap = getattr(config, "attn_logit_softcapping", None)

    def block(self, layer, x, attention):
        x = x + layer.post_attention_layernorm(attention(layer.input_layernorm(x)))
        return x + layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(x)))


class Gemma3Stack(Gemma2Stack):
    def __init__(self, backbone: nn.Module, config) -> None:
        super().__init__(backbone, config)
        self.layer_types = list(config.layer_types)
        self.local_rotary = getattr(backbone, "rotary_emb_local", None)  # transformers versions with two rotary modules

    def rotations(self, x, position_ids):
        """One rotary table per layer type ("sliding_attention" uses the local base frequency)."""
        tables = {}
        for kind in sorted(set(self.layer_types)):
            if "layer_type" in inspect.signature(self.rotary.forward).parameters:
                cos, sin = self.rotary(x, position_ids, kind)
            else:
                cos, sin = (self.local_rotary if kind == "sliding_attention" else self.rotary)(x, position_ids)
            tables[kind] = (cos.unsqueeze(1), sin.unsqueeze(1))
        return [tables[kind] for kind in self.layer_types]

    def project(self, layer, h):
        attn = layer.self_attn
        q = attn.q_norm(split_heads(attn.q_proj(h), self.heads, self.head_dim))
        k = attn.k_norm(split_heads(attn.k_proj(h), self.kv_heads, self.head_dim))
        return q, k, split_heads(attn.v_proj(h), self.kv_heads, self.head_dim)
