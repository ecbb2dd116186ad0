"""GPT-2's stack: learned absolute positions, pre-LayerNorm blocks with fused QKV (Conv1D), GELU MLP."""

from __future__ import annotations

from torch import nn

from args_runtime.errors import UnsupportedModelError

from .base import DecoderStack, StackShape, attend, merge_heads, split_heads


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

    def forward(self, input_ids, position_ids, masks, past, cache):
        x = self.wte(input_ids) + self.wpe(position_ids)
        presents = []
        for block, layer_past in zip(self.blocks, past):
            q, k, v = block.attn.c_attn(block.ln_1(x)).split(self.heads * self.head_dim, dim=2)
            q, k, v = (split_heads(t, self.heads, self.head_dim) for t in (q, k, v))
            blocks, present = cache.update(layer_past, k, v)
            presents.append(present)
            x = x + block.attn.c_proj(merge_heads(attend(q, blocks, masks.full, self.scale)))
            x = x + block.mlp(block.ln_2(x))
        return self.ln_f(x), presents


