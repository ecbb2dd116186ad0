"""The LM and the RM as the decode loop sees them: each owns a backend and the KV cache of the committed
prefix; the bookkeeping both share (padding mask, next positions) lives in one PrefixState. A fused bundle's RM
(`FusedModel`) also proposes the LM's next top-k after the candidate chosen among those it scored: the LM never
runs in ARGS."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Protocol

import numpy as np

from .backend import Backend
from .dtypes import ITEMSIZE
from .manifest import GraphSpec


class Masked(Protocol):
    """What a model run over its own cache needs of the prefix: its attention mask (left-padded rows: runtime/batch.py)."""

    attention_mask: np.ndarray


@dataclass
class PrefixState:
    """The committed prefix of a left-padded batch: which cache slots hold real tokens, and each row's next position."""

    attention_mask: np.ndarray  # [B, T] int64, 0 on left padding
    next_position: np.ndarray  # [B] int64

    @staticmethod
    def for_prompts(prompts: list[list[int]], pad_id: int) -> tuple["PrefixState", np.ndarray, np.ndarray]:
        """Left-pad the prompts; return the state after them, their ids and their position ids."""
        width = max(len(p) for p in prompts)
        ids = np.full((len(prompts), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(prompts), width), dtype=np.int64)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = prompt
            mask[row, width - len(prompt) :] = 1
        positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
        return PrefixState(mask, positions[:, -1] + 1), ids, positions

    def next_inputs(self) -> tuple[np.ndarray, np.ndarray]:
        """Grow the mask by one real token per row; return (attention_mask, position_ids) for that token."""
        self.attention_mask = np.concatenate([self.attention_mask, np.ones((len(self.next_position), 1), np.int64)], axis=1)
        positions = self.next_position[:, None].copy()
        self.next_position = self.next_position + 1
        return self.attention_mask, positions


@dataclass
class CacheRows:
    """Rows of static KV-cache buffers held outside the model (continuous batching's slots, runtime/slots.py): a run
    reads and writes them in place and leaves the model's own cache alone. The mask spans every slot of each row and
    `cache_position` gives each row its own write slots."""

    attention_mask: np.ndarray  # [n, C] int64
    cache_position: np.ndarray  # [n, S] int64
    past: dict[str, object]  # past_key_values.* → this model's buffers, the n rows of them (Backend.rows)


@dataclass
class MaskOnly:
    """A prefix known by its mask alone: a fused model's first pass covers the prompt but its last token."""

    attention_mask: np.ndarray


class TopK:
    """The LM's k proposals per row as the engine holds them (the RM and choose.onnx take them from there) and,
    copied only when asked for, on the host (for a choice made on the host)."""

    def __init__(self, backend: Backend, logits: object, ids: object, batch: int) -> None:
        self.engine_logits, self.engine_ids, self.batch = logits, ids, batch
        self.device, self._to_host = backend.device, backend.to_host

    @cached_property
    def logits(self) -> np.ndarray:  # [B, k] float32
        return self._to_host(self.engine_logits)

    @cached_property
    def ids(self) -> np.ndarray:  # [B, k] int64
        return self._to_host(self.engine_ids)


class CachedGraph:
    """One graph plus the KV cache of the prefix it has seen: every run feeds the past and keeps the present.

    Dynamic layout: the present (past + new tokens) becomes the next past. Static layout: one fixed buffer per
    cache tensor, [B, Hkv, max_context, D], allocated once per batch size and fed as the past while the graph
    writes the new tokens into it in place (the backend's `into`); the mask spans all slots and `cache_position`
    says where the new tokens go."""

    def __init__(self, backend: Backend, spec: GraphSpec, max_context: int) -> None:
        self.backend, self.spec, self.max_context = backend, spec, max_context
        self.static = spec.cache == "static"
        self.past_names = [t.name for t in spec.inputs if t.name.startswith("past_key_values.")]
        self.present_names = [t.name for t in spec.outputs if t.name.startswith("present.")]
        self.past: dict[str, object] = {}
        self.into: dict[str, object] | None = None
        self._slot_mask = np.zeros((0, max_context), np.int64)

    def reset(self, batch: int) -> None:
        if not self.static:
            empty = self.backend.empty((batch, self.spec.num_kv_heads, 0, self.spec.head_dim), self.spec.dtype)
            self.past = {name: empty for name in self.past_names}
            return
        if len(self._slot_mask) != batch:  # stale slots from an earlier call are masked out, never read
            shape = (batch, self.spec.num_kv_heads, self.max_context, self.spec.head_dim)
            self.past = {name: self.backend.empty(shape, self.spec.dtype) for name in self.past_names}
            self.into = dict(zip(self.present_names, self.past.values()))
        self._slot_mask = np.zeros((batch, self.max_context), np.int64)

    def prefix_feeds(self, prefix: Masked | CacheRows, num_new: int) -> dict[str, np.ndarray]:
        """The mask (and, static, the slots of the `num_new` newest tokens) for a run over the prefix."""
        if isinstance(prefix, CacheRows):  # rows that keep their own positions
            return {"attention_mask": prefix.attention_mask, "cache_position": prefix.cache_position}
        mask = prefix.attention_mask
        if not self.static:
            return {"attention_mask": mask}
        width = mask.shape[1]
        self._slot_mask[:, :width] = mask
        # Left-padded rows write their new tokens at the same slots; the graph takes them per row ([B, S]).
        slots = np.broadcast_to(np.arange(width - num_new, width, dtype=np.int64), (len(mask), num_new))
        return {"attention_mask": self._slot_mask, "cache_position": np.ascontiguousarray(slots)}

    def run(self, feeds: dict[str, object], rows: CacheRows | None = None) -> dict[str, object]:
        """One pass over this model's cache, or over the outside `rows` (written in place, as the static layout is)."""
        if rows is not None:
            return self.backend.run({**feeds, **rows.past}, into={new: rows.past[old] for old, new in zip(self.past_names, self.present_names)})
        outputs = self.backend.run({**feeds, **self.past}, into=self.into)
        if not self.static:
            self.past = {past: outputs[present] for past, present in zip(self.past_names, self.present_names)}
        return outputs

    def cache_bytes(self) -> int:
        """Bytes held by this model's KV cache now."""
        total = 0
        for value in self.past.values():
            shape = value.shape if isinstance(value, np.ndarray) else value.shape()
            total += int(np.prod(shape)) * ITEMSIZE[self.spec.dtype]
        return total


def _outside(prefix: Masked | CacheRows) -> CacheRows | None:
    return prefix if isinstance(prefix, CacheRows) else None


@lru_cache(maxsize=None)
def _slots(k: int) -> np.ndarray:
    """The LM's `candidate_slots` feed: only its length k is read (the top-k's k as a shape, see LMStep)."""
    slots = np.zeros(k, np.int64)
    slots.flags.writeable = False
    return slots


class LanguageModel(CachedGraph):
    """Extends its cache by some tokens; proposes the top-k next tokens of each row."""

    def extend(self, ids: np.ndarray, positions: np.ndarray, prefix: Masked | CacheRows, k: int) -> TopK:
        feeds = {"input_ids": ids, "position_ids": positions, **self.prefix_feeds(prefix, ids.shape[1]),
                 "candidate_slots": _slots(k)}
        out = self.run(feeds, _outside(prefix))
        return TopK(self.backend, out["topk_values"], out["topk_ids"], len(ids))


class RewardModel(CachedGraph):
    """Extends its cache by some tokens and, in the same pass, scores candidate next tokens against it."""

    def extend_and_score(self, ids: np.ndarray, positions: np.ndarray, prefix: Masked | CacheRows, candidates: TopK | np.ndarray,
                         on_host: bool = True) -> np.ndarray | object:
        """The k rewards per row, on the host or (`on_host=False`) left in the engine for a choice made there."""
        if isinstance(candidates, TopK):  # the LM's ids stay on the device when both models share it
            candidates = candidates.engine_ids if candidates.device == self.backend.device else candidates.ids
        rewards = self._score(ids, positions, prefix, candidates)["rewards"]
        return self.backend.to_host(rewards) if on_host else rewards

    def _score(self, ids: np.ndarray, positions: np.ndarray, prefix: Masked | CacheRows, candidates: object) -> dict[str, object]:
        feeds = {"input_ids": ids, "position_ids": positions, **self.prefix_feeds(prefix, ids.shape[1]), "candidate_ids": candidates}
        return self.run(feeds, _outside(prefix))


class Proposals:
    """A fused pass's candidates as the LM sees them: their final hidden states [B, K, H], left in the engine. Once a
    candidate is chosen per row, the LM head over that one row (the bundle's propose graph, ProposalHead) gives the
    next step's TopK: one row headed per token, not K."""

    def __init__(self, head: Backend, hidden: object, batch: int, k: int) -> None:
        self.head, self.hidden, self.batch, self.k = head, hidden, batch, k

    def picked(self, pick: np.ndarray) -> TopK:
        """The LM's top-k after candidate `pick[b]` of each row b."""
        out = self.head.run({"candidate_hidden": self.hidden, "pick": np.ascontiguousarray(pick, np.int64), "candidate_slots": _slots(self.k)})
        return TopK(self.head, out["topk_values"], out["topk_ids"], len(pick))

    def after(self, candidates: TopK, tokens: np.ndarray) -> TopK:
        """The proposals after each row's chosen token (a top-k's ids are distinct, so the token names its candidate)."""
        return self.picked(np.argmax(candidates.ids == tokens.reshape(-1, 1), axis=1))


class FusedModel(RewardModel):
    """A fused bundle's RM (export/graphs.py FusedStep): its score head sits on the LM's backbone, so the pass that
    scores the candidates also gives their hidden states, from which `head` (the LM head, ProposalHead) proposes the
    next top-k after the chosen one; one cache serves both models."""

    def __init__(self, backend: Backend, spec: GraphSpec, max_context: int, head: Backend) -> None:
        super().__init__(backend, spec, max_context)
        self.head = head

    def propose(self, prompt_ids: np.ndarray, prompt_positions: np.ndarray, prefix: Masked | CacheRows, k: int) -> TopK:
        """The first pass: the prompt but its last token extends the cache, and that last token, as the one candidate,
        brings the LM's top-k after the prompt; the next pass brings the last token. `prefix` is the whole prompt's, or
        (continuous batching) the outside rows already set for the prompt but its last token."""
        head = prefix if isinstance(prefix, CacheRows) else MaskOnly(prefix.attention_mask[:, :-1])
        out = self._score(prompt_ids[:, :-1], prompt_positions[:, :-1], head, prompt_ids[:, -1:])
        return Proposals(self.head, out["candidate_hidden"], len(prompt_ids), k).picked(np.zeros(len(prompt_ids), np.int64))

    def score_and_propose(self, ids: np.ndarray, positions: np.ndarray, prefix: Masked | CacheRows, candidates: TopK, k: int,
                          on_host: bool = True) -> tuple[np.ndarray | object, Proposals]:
        """Extend the cache by `ids` and score the k candidates, as RewardModel.extend_and_score; and the candidates'
        hidden states, from which the chosen one's next top-k comes (Proposals.after)."""
        engine_ids = candidates.engine_ids if candidates.device == self.backend.device else candidates.ids
        out = self._score(ids, positions, prefix, engine_ids)
        rewards = self.backend.to_host(out["rewards"]) if on_host else out["rewards"]
        return rewards, Proposals(self.head, out["candidate_hidden"], len(ids), k)
