"""The exported graphs. Each takes a KV cache of the committed prefix and extends it by S tokens.

- LMStep: prefill (S = prompt) and decode (S = 1) in one graph; returns the top-k (values, ids) of the last
  position's logits, computed in the graph (k = the length of the `candidate_slots` input, at most `max_k`), plus the
  extended cache. The top-k ids can be fed to the RM as they are, without leaving the device; the full logits never
  leave the graph.
- RMScorer: extends the RM cache by S tokens (the prompt at prefill, the chosen token afterwards) and in
  the same pass scores K candidate next tokens. All candidates sit at the same position P; each attends
  to the prefix and to itself only (a tree mask), so there is one cache, never K copies. The reward is
  the score head read at each candidate's own position.
- TailScorer: the text path's RMScorer (an RM with a tokenizer of its own): extends the RM cache by S tokens of its
  own and scores K candidate *tails*, each the RM tokens its text adds after the cache (re-tokenized, so of different
  lengths, right-padded to L); a tail's tokens attend to the prefix and causally to their own tail only. The reward
  is read at each tail's `tail_read` index.
- FusedStep: the RMScorer of a *fused* bundle, whose reward head sits on the LM's own backbone. The candidates'
  hidden states are then the LM's too, so the same pass also returns them: once a candidate is chosen, ProposalHead
  (the LM head over that one row, and its top-k) gives the next step's proposals, and the LM step disappears.

Two cache layouts (the manifest's `cache`): "dynamic" caches grow by concatenation ([B,Hkv,T,D] in, T+S out);
"static" caches are fixed [B,Hkv,C,D] buffers written in place at `cache_position` (see StaticCache).
"""

from __future__ import annotations

import torch
from torch import nn

from .stacks.base import KV, ConcatCache, DecoderStack, Masks, StaticCache, reshape

def additive_mask(allowed: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Boolean [B,S,T] → additive float mask [B,1,S,T] (0 where allowed, a large negative elsewhere)."""
    zero = torch.zeros((), dtype=dtype)
    neg = torch.full((), torch.finfo(dtype).min, dtype=dtype)
    return torch.where(allowed, zero, neg).unsqueeze(1)


def prefix_mask(attention_mask: torch.Tensor, num_queries: int | torch.Tensor) -> torch.Tensor:
    """Causal + padding mask for the last `num_queries` positions over all T = attention_mask.shape[1] keys."""
    total = attention_mask.shape[1]
    query_index = torch.arange(total - num_queries, total)  # bounds from shapes only: a Range ORT sets up on the host
    causal = torch.arange(total).unsqueeze(0) <= query_index.unsqueeze(1)  # [S, T]
    return causal.unsqueeze(0) & (attention_mask.unsqueeze(1) > 0)  # [B, S, T]


def tree_mask(attention_mask: torch.Tensor, num_new: int | torch.Tensor, num_candidates: int | torch.Tensor) -> torch.Tensor:
    """Mask over [prefix, new tokens, candidates] for queries [new tokens, candidates]: new tokens are
    causal; every candidate sees the whole (unpadded) prefix and itself, never another candidate."""
    return with_candidates(prefix_mask(attention_mask, num_new), attention_mask, num_candidates)  # [B, S+K, T+K]


def with_candidates(new_rows: torch.Tensor, attention_mask: torch.Tensor, num_candidates: int | torch.Tensor) -> torch.Tensor:
    """Extend the new tokens' mask [B,S,T] with K candidate rows and columns: each candidate sees every real key
    (the new tokens included) and itself, never another candidate; new tokens see no candidate. → [B, S+K, T+K]."""
    batch, num_new = attention_mask.shape[0], new_rows.shape[1]
    cand_rows = (attention_mask > 0).unsqueeze(1).expand(batch, num_candidates, attention_mask.shape[1])  # [B, K, T]
    to_prefix = torch.cat([new_rows, cand_rows], dim=1)  # [B, S+K, T]
    cand_index = torch.arange(num_candidates)
    eye = cand_index.unsqueeze(1) == cand_index.unsqueeze(0)  # not torch.eye: ORT has no bool EyeLike
    to_cands = torch.cat([torch.zeros(num_new, num_candidates, dtype=torch.bool), eye], dim=0)  # [S+K, K]
    return torch.cat([to_prefix, to_cands.unsqueeze(0).expand(batch, -1, -1)], dim=2)


def slot_mask(attention_mask: torch.Tensor, cache_position: torch.Tensor) -> torch.Tensor:
    """Static layout: each row's queries, written at its own slots `cache_position` [B,S], see every real slot up to
    their own, [B,S,C]."""
    slots = torch.arange(attention_mask.shape[1])
    causal = slots.view(1, 1, -1) <= cache_position.unsqueeze(-1)  # [B, S, C]
    return causal & (attention_mask.unsqueeze(1) > 0)


def slot_tree_mask(attention_mask: torch.Tensor, cache_position: torch.Tensor, num_candidates: int | torch.Tensor) -> torch.Tensor:
    """Static layout, RM: new tokens as slot_mask, candidates as in tree_mask (the runtime has marked the new
    tokens' slots). Keys are [C cache slots, K candidates]: [B, S+K, C+K]."""
    return with_candidates(slot_mask(attention_mask, cache_position), attention_mask, num_candidates)


def unflatten_past(flat: tuple[torch.Tensor, ...]) -> list[KV]:
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


def flatten_presents(presents: list[KV]) -> list[torch.Tensor]:
    return [t for kv in presents for t in kv]


class LMStep(nn.Module):
    """Dynamic: (input_ids, position_ids, attention_mask, candidate_slots, *past) → (topk_values, topk_ids, *present).
    `candidate_slots` is any [k] tensor: only its length is read, the k of the top-k (a shape, so that ORT's CUDA
    provider and TensorRT see k on the host without a device read, and a CUDA graph can capture the step).
    Static: the same with `cache_position` after `attention_mask`, whose width is then the cache's C slots."""

    def __init__(self, stack: DecoderStack, lm_head: nn.Module, max_k: int, cache: str = "dynamic") -> None:
        super().__init__()
        self.stack, self.lm_head, self.max_k, self.static = stack, lm_head, max_k, cache == "static"

    def forward(self, input_ids, position_ids, attention_mask, *rest):
        num_new = input_ids.shape[1]
        if self.static:
            cache_position, candidate_slots, *past = rest
            bias = additive_mask(slot_mask(attention_mask, cache_position))
            cache = StaticCache(cache_position, num_new, with_candidates=False)
        else:
            candidate_slots, *past = rest
            bias = additive_mask(prefix_mask(attention_mask, num_new))
            cache = ConcatCache(num_new)
        masks = Masks(bias, attention_mask, position_ids)
        hidden, presents = self.stack(input_ids, position_ids, masks, unflatten_past(tuple(past)), cache)
        logits = self.lm_head(hidden[:, -1, :]).float()
        values, ids = torch.topk(logits, self.max_k, dim=-1)  # a constant k (TensorRT wants one); sliced to the asked k
        k = candidate_slots.shape[0]  # k is a shape, not a value: the slice is set up on the host without reading the device
        return (values[:, :k], ids[:, :k], *flatten_presents(presents))


class RMScorer(nn.Module):
    """Dynamic: (input_ids, position_ids, attention_mask, candidate_ids, *past) → (rewards, *present).
    Static: the same with `cache_position` after `attention_mask`, whose width is then the cache's C slots."""

    def __init__(self, stack: DecoderStack, score_head: nn.Module, cache: str = "dynamic") -> None:
        super().__init__()
        self.stack, self.score, self.static = stack, score_head, cache == "static"

    def forward(self, input_ids, position_ids, attention_mask, *rest):
        num_new = input_ids.shape[1]
        if self.static:
            cache_position, candidate_ids, *past = rest
            bias = additive_mask(slot_tree_mask(attention_mask, cache_position, candidate_ids.shape[1]))
            cache = StaticCache(cache_position, num_new, with_candidates=True)
        else:
            candidate_ids, *past = rest
            bias = additive_mask(tree_mask(attention_mask, num_new, candidate_ids.shape[1]))
            cache = ConcatCache(num_new)
        num_cands = candidate_ids.shape[1]
        cand_positions = (position_ids[:, -1:] + 1).expand(-1, num_cands)
        tokens = torch.cat([input_ids, candidate_ids], dim=1)
        positions = torch.cat([position_ids, cand_positions], dim=1)
        masks = Masks(bias, attention_mask, positions, cand_positions)
        hidden, presents = self.stack(tokens, positions, masks, unflatten_past(tuple(past)), cache)
        rewards = self.score(hidden[:, num_new:, :]).squeeze(-1).float()
        return (rewards, *flatten_presents(presents))


def tail_tree_mask(attention_mask: torch.Tensor, num_new: int | torch.Tensor, tails: torch.Tensor) -> torch.Tensor:
    """Mask over [prefix, new tokens, K tails of L tokens] for queries [new tokens, tail tokens]: new tokens are causal;
    tail token (c, j) sees every real key of the prefix and tokens (c, 0 … j) of its own tail. → [B, S+K*L, T+K*L]."""
    batch, num_tails, length = tails.shape[0], tails.shape[1], tails.shape[2]
    new_rows = prefix_mask(attention_mask, num_new)  # [B, S, T]
    flat = torch.arange(num_tails * length)
    tail, place = flat // length, flat % length
    own = (tail.unsqueeze(1) == tail.unsqueeze(0)) & (place.unsqueeze(0) <= place.unsqueeze(1))  # [KL, KL]
    tail_rows = (attention_mask > 0).unsqueeze(1).expand(batch, num_tails * length, attention_mask.shape[1])
    to_prefix = torch.cat([new_rows, tail_rows], dim=1)
    to_tails = torch.cat([torch.zeros(num_new, num_tails * length, dtype=torch.bool), own], dim=0)
    return torch.cat([to_prefix, to_tails.unsqueeze(0).expand(batch, -1, -1)], dim=2)


class TailScorer(nn.Module):
    """(input_ids, position_ids, attention_mask, tail_ids [B, K, L], tail_read [B, K], *past) → (rewards [B, K], *present):
    the RM cache extended by the S new tokens, and each of the K tails scored over it at its `tail_read` token. A
    tail's token j sits at the row's count of real tokens + j. Dynamic layout only (the text path's RM cache is its own,
    per request: runtime/text_reward.py)."""

    def __init__(self, stack: DecoderStack, score_head: nn.Module) -> None:
        super().__init__()
        self.stack, self.score = stack, score_head

    def forward(self, input_ids, position_ids, attention_mask, tail_ids, tail_read, *past):
        num_new = input_ids.shape[1]
        num_tails, length = tail_ids.shape[1], tail_ids.shape[2]
        bias = additive_mask(tail_tree_mask(attention_mask, num_new, tail_ids))
        place = torch.arange(length).repeat(num_tails).unsqueeze(0)  # [1, K*L]
        tail_positions = attention_mask.sum(dim=1, keepdim=True) + place
        tokens = torch.cat([input_ids, reshape(tail_ids, 0, -1)], dim=1)
        positions = torch.cat([position_ids, tail_positions], dim=1)
        masks = Masks(bias, attention_mask, positions, tail_positions)
        hidden, presents = self.stack(tokens, positions, masks, unflatten_past(tuple(past)), ConcatCache(num_new))
        width = int(hidden.shape[2])
        tails = hidden[:, num_new:, :].reshape(hidden.shape[0], num_tails, length, width)  # [B, K, L, H]
        index = tail_read.unsqueeze(-1).unsqueeze(-1).expand(-1, -1, 1, width)  # [B, K, 1, H]
        read = tails.gather(2, index).squeeze(2)  # [B, K, H]
        rewards = self.score(read).squeeze(-1).float()
        return (rewards, *flatten_presents(presents))


class FusedStep(nn.Module):
    """Dynamic: (input_ids, position_ids, attention_mask, candidate_ids, *past) → (rewards [B, K], candidate_hidden
    [B, K, H], *present): extends the one cache by the S new tokens and, for each of the K candidates (a tree mask, as
    RMScorer), returns its reward (the score head) and its final hidden state, which the LM head turns into the LM's
    next top-k once the candidate is chosen (ProposalHead: one row's head, not K). Static: `cache_position` after the
    mask.

    A candidate sits at its row's count of real tokens (the mask's sum), not at the last new position + 1: the first
    pass brings the prompt but its last token, which is the one candidate whose proposals start the generation, and a
    row of a left-padded batch may then have no real new token at all."""

    def __init__(self, stack: DecoderStack, score_head: nn.Module, cache: str = "dynamic") -> None:
        super().__init__()
        self.stack, self.score, self.static = stack, score_head, cache == "static"

    def forward(self, input_ids, position_ids, attention_mask, *rest):
        num_new = input_ids.shape[1]
        if self.static:
            cache_position, candidate_ids, *past = rest
            bias = additive_mask(slot_tree_mask(attention_mask, cache_position, candidate_ids.shape[1]))
            cache = StaticCache(cache_position, num_new, with_candidates=True)
        else:
            candidate_ids, *past = rest
            bias = additive_mask(tree_mask(attention_mask, num_new, candidate_ids.shape[1]))
            cache = ConcatCache(num_new)
        cand_positions = attention_mask.sum(dim=1, keepdim=True).expand(-1, candidate_ids.shape[1])
        tokens = torch.cat([input_ids, candidate_ids], dim=1)
        positions = torch.cat([position_ids, cand_positions], dim=1)
        masks = Masks(bias, attention_mask, positions, cand_positions)
        hidden, presents = self.stack(tokens, positions, masks, unflatten_past(tuple(past)), cache)
        candidates = hidden[:, num_new:, :]
        rewards = self.score(candidates).squeeze(-1).float()
        return (rewards, candidates, *flatten_presents(presents))


class ProposalHead(nn.Module):
    """(candidate_hidden [B, K, H], pick [B], candidate_slots [k]) → (topk_values [B, k], topk_ids [B, k]): the LM
    head over each row's picked candidate only, and its top-k (k = the length of `candidate_slots`, as LMStep's).
    Heading the one chosen row instead of all K is what a fused bundle saves by choosing between its two graphs."""

    def __init__(self, lm_head: nn.Module, max_k: int) -> None:
        super().__init__()
        self.lm_head, self.max_k = lm_head, max_k

    def forward(self, candidate_hidden, pick, candidate_slots):
        width = int(candidate_hidden.shape[2])  # fixed by the model
        # [B, 1, H] indices by broadcasting against a constant, and a constant-shape Reshape out: no Shape/Where/If
        # nodes (an expand(-1, …) and a squeeze(1) trace to both), which CUDA graphs and TensorRT would not take
        index = reshape(pick, -1, 1, 1) + torch.zeros(1, 1, width, dtype=torch.int64)
        chosen = reshape(candidate_hidden.gather(1, index), -1, width)  # [B, H]
        values, ids = torch.topk(self.lm_head(chosen).float(), self.max_k, dim=-1)  # a constant k, sliced as LMStep's
        k = candidate_slots.shape[0]
        return values[:, :k], ids[:, :k]
