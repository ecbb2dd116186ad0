"""GPT-NeoX's stack (Pythia, OpenAssistant's Pythia RMs): LayerNorm blocks with a parallel residual (attention and
MLP both read the block's input) or a sequential one, one fused qkv projection laid out head by head, rotary positions
on the first rotary_pct of each head."""

from __future__ import annotations

from torch import nn

from .base import StackShape, layer_windows, reshape
from .llama import LlamaStack


class GptNeoxStack(LlamaStack):
    def __init__(self, backbone: nn.Module, config) -> None:
        nn.Module.__init__(self)
        self.embed, self.layers, self.norm, self.rotary = backbone.embed_in, backbone.layers, backbone.final_layer_norm, backbone.rotary_emb
        self.heads = self.kv_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // self.heads
        self.scale = self.head_dim**-0.5
        self.softcap = None
        self.windows = layer_windows(config, len(self.layers))
        self.parallel = config.use_parallel_residual
        self.shape = StackShape(len(self.layers), self.heads, self.head_dim, config.hidden_size, config.max_position_embeddings)

    def project(self, layer, h):
        d = self.head_dim
        qkv = reshape(layer.attention.query_key_value(h), 0, -1, self.heads, 3 * d).transpose(1, 2)  # [B,H,S,3D]: q, k, v per head
        return qkv[..., :d], qkv[..., d : 2 * d], qkv[..., 2 * d :]

    def output(self, layer, merged):
        return layer.attention.dense(merged)

    def block(self, layer, x, attention):
        attn = attention(layer.input_layernorm(x))
        if self.parallel:
            return x + attn + layer.mlp(layer.post_attention_layernorm(x))
        x = x + attn
        return x + layer.mlp(layer.post_attention_layernorm(x))
