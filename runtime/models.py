"""The LM and the RM as the decode loop sees them: each owns a backend and the KV cache of the committed
prefix; the bookkeeping both share (padding mask, next positions) lives in one PrefixState."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .backend import Backend
from .manifest import GraphSpec


class Masked(Protocol):
    """What a model run needs of the prefix: its attention mask (a PrefixState, or a stepper that owns one)."""

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


class CachedGraph:
    """One graph plus the KV cache of the prefix it has seen: every run feeds the past and keeps the present."""

    def __init__(self, backend: Backend, spec: GraphSpec) -> None:
        self.backend, self.spec = backend, spec
        self.past_names = [t.name for t in spec.inputs if t.name.startswith("past_key_values.")]
        self.present_names = [t.name for t in spec.outputs if t.name.startswith("present.")]
        self.past: dict[str, object] = {}

    def reset(self, batch: int) -> None:
        shape = (batch, self.spec.num_kv_heads, 0, self.spec.head_dim)
        empty = self.backend.empty(shape, self.spec.dtype)
        self.past = {name: empty for name in self.past_names}

    def run(self, feeds: dict[str, np.ndarray], host_outputs: tuple[str, ...]) -> list[np.ndarray]:
        outputs = self.backend.run({**feeds, **self.past})
        self.past = {past: outputs[present] for past, present in zip(self.past_names, self.present_names)}
        return [self.backend.to_host(outputs[name]) for name in host_outputs]

    def cache_bytes(self) -> int:
        """Bytes held by this model's KV cache now."""
        total = 0
        for value in self.past.values():
            shape = value.shape if isinstance(value, np.ndarray) else value.shape()
            total += int(np.prod(shape)) * (2 if self.spec.dtype in ("float16", "bfloat16") else 4)
        return total


class LanguageModel(CachedGraph):
    """Extends its cache by some tokens; proposes the top-k next tokens of each row."""

    def extend(self, ids: np.ndarray, positions: np.ndarray, prefix: Masked, k: int) -> tuple[np.ndarray, np.ndarray]:
        feeds = {"input_ids": ids, "position_ids": positions, "attention_mask": prefix.attention_mask}
        values, topk_ids = self.run(feeds, ("topk_values", "topk_ids"))
        return np.ascontiguousarray(values[:, :k]), np.ascontiguousarray(topk_ids[:, :k])


class RewardModel(CachedGraph):
    """Extends its cache by some tokens and, in the same pass, scores candidate next tokens against it."""

    def extend_and_score(self, ids: np.ndarray, positions: np.ndarray, prefix: Masked, candidates: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": ids, "position_ids": positions, "attention_mask": prefix.attention_mask, "candidate_ids": candidates}
        (rewards,) = self.run(feeds, ("rewards",))
        return rewards
