"""OPT's stack: learned positions (offset 2), pre- or post-LayerNorm blocks, ReLU MLP, optional in/out projections."""

from __future__ import annotations

from torch import nn

from .base import DecoderStack, StackShape, attend, merge_heads, split_heads


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

    def forward(self, input_ids, position_ids, masks, past, cache):
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
            x = x + attn.out_proj(merge_heads(attend(q, blocks, masks.full, self.head_dim**-0.5)))
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


