"""The models' part of a continuous-batching step (runtime/engine.py), behind one small interface with two
implementations: `PairSteps` runs the LM and the RM (the LM proposes, the RM scores), `FusedSteps` runs a fused
bundle's one graph (it scores each row's candidates and proposes their next ones, which it keeps per slot until the
request's choice is known). Both give the engine, per row, the candidates' LM logits and ids and their rewards."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .models import CacheRows, FusedModel, Proposals, TopK

if TYPE_CHECKING:
    from .generator import ArgsGenerator
    from .slots import SlotCaches


@dataclass
class Scored:
    """The candidates of rows [0, n) and their rewards, on the host: [n, k] each."""

    logits: np.ndarray
    ids: np.ndarray
    rewards: np.ndarray


class PairSteps:
    """Two graphs: the LM extends its rows and proposes the top-k, the RM extends its rows and scores them."""

    def __init__(self, models: tuple, slots: int) -> None:
        self.lm, self.rm = models
        self.models = (self.lm, self.rm)

    def prefill(self, caches: "SlotCaches", slot: int, prompt: list[int], mask: np.ndarray, k: int) -> Scored:
        ids, positions = _prompt_inputs(prompt)
        lm_rows, rm_rows = caches.rows(slot, slot + 1, mask, positions)
        return self._scored(self.lm.extend(ids, positions, lm_rows, k), self.rm, ids, positions, rm_rows)

    def decode(self, caches: "SlotCaches", ids: np.ndarray, positions: np.ndarray, mask: np.ndarray, k: int) -> Scored:
        lm_rows, rm_rows = caches.rows(0, len(ids), mask, positions)
        return self._scored(self.lm.extend(ids, positions, lm_rows, k), self.rm, ids, positions, rm_rows)

    @staticmethod
    def _scored(top: TopK, rm, ids: np.ndarray, positions: np.ndarray, rows: CacheRows) -> Scored:
        rewards = rm.extend_and_score(ids, positions, rows, top)
        return Scored(top.logits, top.ids, rewards)

    def chosen(self, slot: int, row: int, token: int) -> None:
        """Nothing to keep: the LM proposes afresh at every step."""

    def move(self, source: int, target: int) -> None:
        pass


class FusedSteps:
    """A fused bundle's one graph: each slot keeps its next candidates, the proposals after its chosen token. Choices
    arrive row by row (`chosen`); the LM head runs once per pass over all of its rows' chosen candidates, before the
    next pass."""

    def __init__(self, models: tuple, slots: int) -> None:
        [self.model] = models  # a FusedModel
        self.models = (self.model,)
        # each slot's next candidates: a TopK [1, k], or (the pass's Proposals, row, pick) until the head has run
        self.pending: list[TopK | tuple[Proposals, int, int] | None] = [None] * slots
        self._last = None  # (the run's candidates, its Proposals), until every row's choice is known

    def prefill(self, caches: "SlotCaches", slot: int, prompt: list[int], mask: np.ndarray, k: int) -> Scored:
        """The prompt but its last token, with that token as the one candidate (its proposals: the first candidates);
        then the last token and the candidates, as a decode step of this row alone."""
        self._head_chosen()  # before a pass of ours: an engine may reuse the buffers of the last one's hidden states
        ids, positions = _prompt_inputs(prompt)
        head = mask.copy()
        head[0, len(prompt) - 1] = 0
        [rows] = caches.rows(slot, slot + 1, head, positions[:, :-1])
        top = self.model.propose(ids, positions, rows, k)
        [rows] = caches.rows(slot, slot + 1, mask, positions[:, -1:])
        return self._scored(top, ids[:, -1:], positions[:, -1:], rows, k)

    def decode(self, caches: "SlotCaches", ids: np.ndarray, positions: np.ndarray, mask: np.ndarray, k: int) -> Scored:
        self._head_chosen()
        [rows] = caches.rows(0, len(ids), mask, positions)
        logits, candidates = np.zeros((len(ids), k), np.float32), np.zeros((len(ids), k), np.int64)
        for slot, top in enumerate(self.pending[: len(ids)]):
            if top is not None:  # fewer than k (a request with a smaller k): repeat its last, which it never reads
                n = min(k, top.ids.shape[1])
                logits[slot, :n], candidates[slot, :n] = top.logits[0, :n], top.ids[0, :n]
                logits[slot, n:], candidates[slot, n:] = top.logits[0, n - 1], top.ids[0, n - 1]
        top = TopK(self.model.backend, logits, candidates, len(ids))
        return self._scored(top, ids, positions, rows, k)

    def _scored(self, top: TopK, ids: np.ndarray, positions: np.ndarray, rows: CacheRows, k: int) -> Scored:
        rewards, proposals = self.model.score_and_propose(ids, positions, rows, top, k)
        self._last = (top, proposals)
        return Scored(top.logits, top.ids, rewards)

    def chosen(self, slot: int, row: int, token: int) -> None:
        """Slot `slot`'s next candidates are the proposals after the token row `row` of the last run chose."""
        top, proposals = self._last
        pick = int(np.argmax(top.ids[row] == token))  # the first occurrence: padding repeats come after
        self.pending[slot] = (proposals, row, pick)

    def _head_chosen(self) -> None:
        """Run the LM head over every chosen candidate still waiting for it: once per pass that left some."""
        waiting: dict[int, tuple[Proposals, list[tuple[int, int, int]]]] = {}
        for slot, entry in enumerate(self.pending):
            if isinstance(entry, tuple):
                proposals, row, pick = entry
                waiting.setdefault(id(proposals), (proposals, []))[1].append((slot, row, pick))
        for proposals, entries in waiting.values():
            picks = np.zeros(proposals.batch, np.int64)  # rows nobody waits for (finished) take candidate 0
            for _, row, pick in entries:
                picks[row] = pick
            top = proposals.picked(picks)
            for slot, row, _ in entries:
                self.pending[slot] = TopK(self.model.backend, top.logits[row : row + 1], top.ids[row : row + 1], 1)

    def move(self, source: int, target: int) -> None:
        self.pending[target], self.pending[source] = self.pending[source], None


def _prompt_inputs(prompt: list[int]) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray([prompt], np.int64), np.arange(len(prompt), dtype=np.int64)[None]


def step_models(generator: "ArgsGenerator") -> tuple:
    """The models a step runs: a fused bundle's one graph, or the LM and the RM."""
    return (generator.rm,) if isinstance(generator.rm, FusedModel) else (generator.lm, generator.rm)


def model_steps(models: tuple, slots: int) -> PairSteps | FusedSteps:
    """The steps over `models` (step_models' own, or the same kinds over other sessions: runtime/context_width.py)."""
    return (FusedSteps if len(models) == 1 else PairSteps)(models, slots)
