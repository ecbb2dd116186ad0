"""The two exported graphs. Both take a KV cache of the committed prefix and extend it by S tokens.

- LMStep: prefill (S = prompt) and decode (S = 1) in one graph; returns the last position's logits and
  their top-`max_k` (values, ids) computed in the graph, plus the extended cache.
- RMScorer: extends the RM cache by S tokens (the prompt at prefill, the chosen token afterwards) and in
  the same pass scores K candidate next tokens. All candidates sit at the same position P; each attends
  to the prefix and to itself only (a tree mask), so there is one cache, never K copies. The reward is
  the score head read at each candidate's own position.
"""

from __future__ import annotations

import torch
from torch import nn

from .architectures import KV, DecoderStack


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Boolean [B,S,T] → additive float mask [B,1,S,T] (0 where allowed, a large negative elsewhere)."""
    zero = torch.zeros((), dtype=dtype)
    neg = torch.full((), torch.finfo(dtype).min, dtype=dtype)
    return torch.where(allowed, zero, neg).unsqueeze(1)


def prefix_mask(attention_mask: torch.Tensor, num_queries: int | torch.Tensor) -> torch.Tensor:
    """Causal + padding mask for the last `num_queries` positions over all T = attention_mask.shape[1] keys."""
    total = attention_mask.shape[1]
    query_index = torch.arange(num_queries) + (total - num_queries)
    causal = torch.arange(total).unsqueeze(0) <= query_index.unsqueeze(1)  # [S, T]
    return causal.unsqueeze(0) & (attention_mask.unsqueeze(1) > 0)  # [B, S, T]


def tree_mask(attention_mask: torch.Tensor, num_new: int | torch.Tensor, num_candidates: int | torch.Tensor) -> torch.Tensor:
    """Mask over [prefix, new tokens, candidates] for queries [new tokens, candidates]: new tokens are
    causal; every candidate sees the whole (unpadded) prefix and itself, never another candidate."""
    batch = attention_mask.shape[0]
    new_rows = prefix_mask(attention_mask, num_new)  # [B, S, T]
    cand_rows = (attention_mask > 0).unsqueeze(1).expand(batch, num_candidates, attention_mask.shape[1])  # [B, K, T]
    to_prefix = torch.cat([new_rows, cand_rows], dim=1)  # [B, S+K, T]
    cand_index = torch.arange(num_candidates)
    eye = cand_index.unsqueeze(1) == cand_index.unsqueeze(0)  # not torch.eye: ORT has no bool EyeLike
    to_cands = torch.cat([torch.zeros(num_new, num_candidates, dtype=torch.bool), eye], dim=0)  # [S+K, K]
    return torch.cat([to_prefix, to_cands.unsqueeze(0).expand(batch, -1, -1)], dim=2)  # [B, S+K, T+K]


def unflatten_past(flat: tuple[torch.Tensor, ...]) -> list[KV]:
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


def flatten_presents(presents: list[KV]) -> list[torch.Tensor]:
    return [t for kv in presents for t in kv]


class LMStep(nn.Module):
    """(input_ids, position_ids, attention_mask, *past) → (logits, topk_values, topk_ids, *present)."""

    def __init__(self, stack: DecoderStack, lm_head: nn.Module, max_k: int) -> None:
        super().__init__()
        self.stack, self.lm_head, self.max_k = stack, lm_head, max_k

    def forward(self, input_ids, position_ids, attention_mask, *past):
        num_new = input_ids.shape[1]
        bias = additive_mask(prefix_mask(attention_mask, num_new))
        hidden, presents = self.stack(input_ids, position_ids, bias, unflatten_past(past), num_new)
        logits = self.lm_head(hidden[:, -1, :]).float()
        values, ids = torch.topk(logits, self.max_k, dim=-1)
        return (logits, values, ids, *flatten_presents(presents))


class RMScorer(nn.Module):
    """(input_ids, position_ids, attention_mask, candidate_ids, *past) → (rewards, *present)."""

    def __init__(self, stack: DecoderStack, score_head: nn.Module) -> None:
        super().__init__()
        self.stack, self.score = stack, score_head

    def forward(self, input_ids, position_ids, attention_mask, candidate_ids, *past):
        num_new, num_cands = input_ids.shape[1], candidate_ids.shape[1]
        bias = additive_mask(tree_mask(attention_mask, num_new, num_cands))
        cand_positions = (position_ids[:, -1:] + 1).expand(-1, num_cands)
        tokens = torch.cat([input_ids, candidate_ids], dim=1)
        positions = torch.cat([position_ids, cand_positions], dim=1)
        hidden, presents = self.stack(tokens, positions, bias, unflatten_past(past), num_new)
        rewards = self.score(hidden[:, num_new:, :]).squeeze(-1).float()
        return (rewards, *flatten_presents(presents))
