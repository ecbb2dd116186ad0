"""Llama's stack (also Mistral's and Qwen 2's): pre-norm RMSNorm blocks, rotary positions, grouped-query attention,
SwiGLU MLP. It is the skeleton of every rotary family: their modules override one hook each (how a layer projects
q/k/v, how its block adds up, its rotary tables, its scale and soft cap), and sliding-window layers come for free."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .base import KV, CacheUpdate, DecoderStack, Masks, StackShape, attend, layer_windows, merge_heads, rotary, split_heads


@dataclass
class Pass:
    """What every layer of one forward reads (masks, the cache update, each layer's rotary tables and past) and the
    presents it writes."""

    masks: Masks
    cache: CacheUpdate
    rotations: list[tuple[torch.Tensor, torch.Tensor]]
    past: list[KV]
    presents: list[KV] = field(default_factory=list)


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
        self.softcap: float | None = None  # Gemma 2's attention logit soft cap
        self.windows = layer_windows(config, len(self.layers))
        self.shape = StackShape(len(self.layers), self.kv_heads, self.head_dim, config.hidden_size, config.max_position_embeddings)

    def forward(self, input_ids, position_ids, masks, past, cache):
        x = self.embed(input_ids)
        run = Pass(masks, cache, self.rotations(x, position_ids), past)
        for i, layer in enumerate(self.layers):
            x = self.block(layer, x, lambda h, i=i, layer=layer: self.attention(i, layer, h, run))
        return self.norm(x), run.presents

    def rotations(self, x: torch.Tensor, position_ids: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's rotary (cos, sin) [B,1,S,R]: one table for all layers."""
        cos, sin = self.rotary(x, position_ids)
        return [(cos.unsqueeze(1), sin.unsqueeze(1))] * len(self.layers)

    def project(self, layer: nn.Module, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The layer's q [B,H,S,D], k and v [B,Hkv,S,D], before rotary positions."""
        attn = layer.self_attn
        return (split_heads(attn.q_proj(h), self.heads, self.head_dim), split_heads(attn.k_proj(h), self.kv_heads, self.head_dim),
                split_heads(attn.v_proj(h), self.kv_heads, self.head_dim))

    def output(self, layer: nn.Module, merged: torch.Tensor) -> torch.Tensor:
        return layer.self_attn.o_proj(merged)

    def block(self, layer: nn.Module, x: torch.Tensor, attention) -> torch.Tensor:
        """One block around its attention (h → the attention's output): pre-norm residuals."""
        x = x + attention(layer.input_layernorm(x))
        return x + layer.mlp(layer.post_attention_layernorm(x))

    def attention(self, i: int, layer: nn.Module, h: torch.Tensor, run: Pass) -> torch.Tensor:
        q, k, v = self.project(layer, h)
        cos, sin = run.rotations[i]
        q, k = rotary(q, cos, sin), rotary(k, cos, sin)
        blocks, present = run.cache.update(run.past[i], k, v)
        run.presents.append(present)
        return self.output(layer, merge_heads(attend(q, blocks, run.masks.local(self.windows[i]), self.scale, self.softcap)))
