"""The rows decoded together: seat requests, run one ARGS step (runtime/decode.py) for all of them per token, book
their tokens. generate() and stream() drive one in the caller's thread, ArgsEngine (and args-serve) in a thread of its
own; both get the same tokens for a request.

Two ways a request sits in the caches, chosen by what the bundle and engine can do (Bundle.why_not_continuous):
- continuous (a static-cache bundle on ONNX Runtime): each request owns one slot, a row of every model's cache held
  here (runtime/slots.py), at its own position. Its prompt is prefilled into its row alone, so a request joins a
  running batch between two steps and leaves it when it is done, and gets exactly the tokens it gets alone.
- fixed batches (the dynamic layout, TensorRT, CUDA graphs): the rows share the models' own left-padded caches. A batch
  is seated when the rows are free, its prompts prefilled together, and runs until every row is done; the longest
  prompt bounds everyone's context (the engine seats only requests whose tokens that cannot change).
Each row chooses by its own settings and stream (runtime/choice.py) and stops by its own limits (runtime/books.py)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from .books import Seat, Step, make_books
from .bundle import Bundle
from .choice import GREEDY, Chooser, Chosen, make_chooser
from .decode import Run, args_step, fused_prompt, fused_step, lm_step
from .errors import ArgsError
from .models import MaskOnly, PrefixState, TopK
from .requests import Request
from .slots import SlotCaches, WidthPolicy
from .text_reward import RewardPrompt, TextRewardModel, TextRows

log = logging.getLogger("args_runtime.engine")


class Batcher:
    """Up to `rows` requests decoded together over `bundle` (`lm_only`: the LM alone, greedy or sampled). `chooser`:
    the device chooser of a call whose rows share one setting (default: the host's, per row). `width_step`: continuous
    batching's caches are only as wide as the seated requests need, in steps of this many slots (a multiple of 64 keeps
    results bit-identical); None attends over all max_context slots every step."""

    def __init__(self, bundle: Bundle, rows: int, lm_only: bool = False, chooser: Chooser | None = None,
                 width_step: int | None = 64) -> None:
        self.bundle, self.rows, self.lm_only = bundle, rows, lm_only
        self.models = bundle.models(lm_only)
        # An RM that reads text keeps its state per request (TextRow), not in rows of a batch's caches.
        self.text_rm = self.models[-1] if isinstance(self.models[-1], TextRewardModel) else None
        self.cached_models = tuple(m for m in self.models if m is not self.text_rm)
        self.fused = not lm_only and bundle.fused
        self.why_fixed = bundle.why_not_continuous(lm_only)
        self.continuous = self.why_fixed is None
        context, loop = bundle.max_context, bundle.options.loop
        self.books = make_books(loop, rows, context, tuple(bundle.manifest.tokenizer.eos_token_ids))
        self.chooser = chooser or make_chooser(loop, rows)
        self.occupant: list[Request | None] = [None] * rows
        self.live = [False] * rows  # seated and not finished (a fixed batch keeps its finished rows until it ends)
        self.pending: list[tuple[TopK, int, int] | None] = [None] * rows  # fused: each row's next candidates (top-k, its row, k)
        self.caches: SlotCaches | None = None
        self.policy: WidthPolicy | None = None
        width = "full: fixed batches run over the models' own caches"
        if self.continuous:
            self.caches, width = self._slot_caches(width_step)
        self.steps = self.moves = self.resizes = 0
        self.info = {**bundle.engine_info(), "choice": "device" if chooser is not None and not chooser.on_host else "host",
                     "scheduler": "continuous" if self.continuous else "fixed batches", "slots": rows, "context_width": width}

    def _slot_caches(self, width_step: int | None) -> tuple[SlotCaches, str]:
        context = self.bundle.max_context
        if width_step is None:
            return SlotCaches(self.cached_models, self.rows, context), "full: width_step=None"
        policy = WidthPolicy(context, width_step)
        caches = SlotCaches(self.cached_models, self.rows, policy.fit(1))
        if caches.movable:
            self.policy = policy
            return caches, "narrow"
        why = "full: cache rows are re-laid out in host memory, so narrower caches need ONNX Runtime on the CPU"
        return SlotCaches(self.cached_models, self.rows, context), why

    # ------------------------------------------------------------------ who sits where

    def seated(self) -> list[tuple[int, Request]]:
        """The live rows and their requests."""
        return [(i, r) for i, r in enumerate(self.occupant) if r is not None and self.live[i]]

    @property
    def busy(self) -> bool:
        return any(self.live)

    @property
    def span(self) -> int:
        """Rows a decode step runs: up to the highest occupied one."""
        return max((i + 1 for i, r in enumerate(self.occupant) if r is not None), default=0)

    def free_rows(self) -> int:
        """How many requests `seat` could take now (a fixed batch: none until the running one has ended)."""
        if self.continuous:
            return self.occupant.count(None)
        return 0 if any(r is not None for r in self.occupant) else self.rows

    def fits(self, group: list[Request], request: Request) -> bool:
        """Whether `request` can join a fixed batch of `group` and still get exactly its tokens alone: the batch's longest
        prompt bounds everyone's context, so no row may then run out of context sooner than it would alone."""
        members = [*group, request]
        longest, context = max(len(r.prompt) for r in members), self.bundle.max_context
        return all(min(r.settings.max_new_tokens, context - len(r.prompt)) <= context - longest for r in members)

    # ------------------------------------------------------------------ seating

    def seat(self, requests: list[Request]) -> None:
        """Seat requests (at most free_rows()) and prefill them, which chooses each one's first token. A request whose
        prefill fails ends with the error; the others go on."""
        if not requests:
            return
        if self.continuous:
            self._seat_slots(requests)
        else:
            self._seat_batch(requests)

    def _seat_slots(self, requests: list[Request]) -> None:
        context, decode = self.bundle.max_context, self.bundle.tokenizer.decode
        placed = []
        for request in requests:
            row = self.occupant.index(None)
            request.start(context - len(request.prompt), decode, self.info)  # alone in its slot
            self._place(row, request, Seat(len(request.prompt), 0, request.limit, request.settings.ignore_eos))
            placed.append((row, request))
        self._fit_width(new={row: len(r.prompt) + 1 for row, r in placed})
        for row, request in placed:
            self._guarded([row], self._prefill_slot, row, request)

    def _seat_batch(self, requests: list[Request]) -> None:
        longest = max(len(r.prompt) for r in requests)
        context, decode = self.bundle.max_context, self.bundle.tokenizer.decode
        for row, request in enumerate(requests):
            request.start(context - longest, decode, self.info)  # the rows share one left-padded cache
            self._place(row, request, Seat(len(request.prompt), longest - len(request.prompt), request.limit, request.settings.ignore_eos))
        n = len(requests)
        self._guarded(list(range(n)), self._prefill_batch, requests)

    def _place(self, row: int, request: Request, seat: Seat) -> None:
        self.occupant[row], self.live[row] = request, True
        request.info["joined_at_step"] = self.steps
        self.books.seat(row, seat)
        self.chooser.seat(row, request.settings.choice)
        if self.text_rm is not None:
            request.reward_row = self.text_rm.row(RewardPrompt(request.prompt, request.chat))

    def _prefill_slot(self, row: int, request: Request) -> None:
        """The prompt, alone, into its slot's rows of the caches: its first step, as it runs alone."""
        prompt = request.prompt
        ids, positions = np.asarray([prompt], np.int64), np.arange(len(prompt), dtype=np.int64)[None]
        rows, mask, k = range(row, row + 1), self.books.mask[row : row + 1], request.settings.k
        if not self.fused:
            prefixes = self._text_prefix(tuple(self.caches.rows(row, row + 1, mask, positions)), rows)
            self._book(self._choose(Run(rows, ids, positions, k, prefixes)), rows)
            return
        head = mask.copy()
        head[0, len(prompt) - 1] = 0  # the prompt but its last token, whose candidates are the first proposals
        top = fused_prompt(self.models[0], Run(rows, ids, positions, k, (), self.caches.rows(row, row + 1, head, positions[:, :-1])[0]))
        last = Run(rows, ids[:, -1:], positions[:, -1:], k, self.caches.rows(row, row + 1, mask, positions[:, -1:]))
        self._book(self._fused_choose(last, top), rows)

    def _prefill_batch(self, requests: list[Request]) -> None:
        """The prompts, left-padded, together into the models' own caches: the batch's first step."""
        n = len(requests)
        for model in self.models:
            model.reset(n)
        _, ids, positions = PrefixState.for_prompts([r.prompt for r in requests], self.bundle.manifest.tokenizer.pad_token_id)
        prefix = MaskOnly(np.ascontiguousarray(self.books.mask[:n, : ids.shape[1]]))
        rows, k = range(n), max(r.settings.k for r in requests)
        if not self.fused:
            self._book(self._choose(Run(rows, ids, positions, k, self._text_prefix((prefix,) * len(self.cached_models), rows))), rows)
            return
        top = fused_prompt(self.models[0], Run(rows, ids, positions, k, (), prefix))
        self._book(self._fused_choose(Run(rows, ids[:, -1:], positions[:, -1:], k, (prefix,)), top), rows)

    # ------------------------------------------------------------------ decoding

    def step(self) -> None:
        """One ARGS step for every seated row, each writing its next token at its own cache column."""
        span = self.span
        if not span:
            return
        if self.continuous:
            self._fit_width()
        rows = range(span)
        self._guarded(list(rows), self._decode, rows)

    def _decode(self, rows: range) -> None:
        span = rows.stop
        books = self.books
        ids, positions = books.next_ids[:span], books.positions[:span]
        k = max(r.settings.k for r in self.occupant[:span] if r is not None)  # each row chooses among its own first k
        if self.continuous:
            prefixes = tuple(self.caches.rows(0, span, books.mask[:span], books.columns[:span]))
        else:
            prefixes = (MaskOnly(np.ascontiguousarray(books.mask[:span, : int(books.columns[0, 0]) + 1])),) * len(self.cached_models)
        run = Run(rows, ids, positions, k, self._text_prefix(prefixes, rows))
        chosen = self._fused_choose(run, self._next_candidates(span, k)) if self.fused else self._choose(run)
        self.steps += 1
        self._book(chosen, rows)

    def _text_prefix(self, prefixes: tuple, rows: range) -> tuple:
        """The models' prefixes, and an RM that reads text its rows' requests' states (None for a row without one)."""
        if self.text_rm is None:
            return prefixes
        live = [self.occupant[r].reward_row if self.occupant[r] is not None and self.live[r] else None for r in rows]
        return (*prefixes, TextRows(live))

    def _choose(self, run: Run) -> Chosen:
        if self.lm_only:
            return lm_step(self.models[0], run, self.chooser)
        return args_step(*self.models, run, self.chooser)

    def _fused_choose(self, run: Run, top: TopK) -> Chosen:
        chosen, after = fused_step(self.models[0], run, top, self.chooser)
        for i, row in enumerate(run.rows):
            self.pending[row] = (after, i, run.k)
        return chosen

    def _next_candidates(self, span: int, k: int) -> TopK:
        """Rows [0, span)'s next candidates: the last pass's own top-k when those rows ran it together (they stay where
        the engine put them, e.g. on the GPU), else each row's gathered on the host, padded to k (a row with a smaller k
        never reads past its own)."""
        first = self.pending[0]
        if first is not None and first[0].batch == span and first[2] == k and all(
                p is not None and p[0] is first[0] and p[1] == row for row, p in enumerate(self.pending[:span])):
            return first[0]
        logits, candidates = np.zeros((span, k), np.float32), np.zeros((span, k), np.int64)
        for row, entry in enumerate(self.pending[:span]):
            if entry is not None and self.occupant[row] is not None:
                top, i, width = entry
                n = min(k, width)
                logits[row, :n], candidates[row, :n] = top.logits[i, :n], top.ids[i, :n]
                logits[row, n:], candidates[row, n:] = top.logits[i, n - 1], top.ids[i, n - 1]
        return TopK(self.models[0].backend, logits, candidates, span)

    def _book(self, chosen: Chosen, rows: range) -> None:
        """Book each row's chosen token; a finished request ends now (continuous: its row is freed at once)."""
        step: Step = self.books.step(chosen, rows)
        for i, row in enumerate(rows):
            request = self.occupant[row]
            if request is not None and self.live[row] and request.record(step, i, self.steps, self.cache_bytes):
                self._end(row)

    # ------------------------------------------------------------------ cancelling, failing, moving

    def cancel_marked(self) -> None:
        """End the seated requests whose callers cancelled them."""
        for row, request in self.seated():
            if request.handle.cancelled:
                request.handle.settle(error=request.cancelled_error(started=True))
                self._end(row)

    def end_all(self, error: BaseException) -> None:
        """End every seated request with `error` (the engine is closing)."""
        for row, request in self.seated():
            request.handle.settle(error=error)
            self._end(row)

    def close_holes(self) -> None:
        """Move the highest occupied rows down into free rows below them, so a step runs few rows (continuous, with
        caches in host memory)."""
        if not self.continuous or not self.caches.movable:
            return
        while (free := self.occupant.index(None) if None in self.occupant else None) is not None and free < self.span - 1:
            source = self.span - 1
            self.caches.move(source, free, int(self.books.columns[source, 0]) + 1)
            self.books.move(source, free)
            self.chooser.move(source, free)
            self.occupant[free], self.live[free], self.pending[free] = self.occupant[source], self.live[source], self.pending[source]
            self.occupant[source], self.live[source], self.pending[source] = None, False, None
            self.moves += 1

    def _end(self, row: int) -> None:
        """Row `row`'s request is done: continuous, its row is free at once; a fixed batch ends with its last row."""
        self.live[row] = False
        if self.continuous:
            self._free(row)
        elif not self.busy:
            for other in range(self.rows):
                if self.occupant[other] is not None:
                    self._free(other)

    def _free(self, row: int) -> None:
        self.occupant[row], self.live[row], self.pending[row] = None, False, None
        self.books.release(row)
        self.chooser.seat(row, GREEDY)

    def _guarded(self, rows: list[int], work, *args: Any) -> None:
        """Run `work`; if it fails, the requests of `rows` end with the error and the others go on."""
        try:
            work(*args)
        except Exception as error:
            if not isinstance(error, ArgsError):
                log.exception("a decode step failed; its requests end with the error", exc_info=error)
            for row in rows:
                request = self.occupant[row]
                if request is not None and self.live[row]:
                    request.handle.settle(error=error)
                    self._end(row)

    def _fit_width(self, new: dict[int, int] | None = None) -> None:
        """Caches wide enough for every live row's next write (and `new` rows' prompt and first token), and no wider
        than the policy allows."""
        if self.policy is None:
            return
        new = new or {}
        need = max([int(self.books.columns[row, 0]) + 1 for row, _ in self.seated() if row not in new] + list(new.values()) + [1])
        width = self.policy.next(self.caches.width, need)
        if width != self.caches.width:
            used = {row: int(self.books.columns[row, 0]) + 1 for row, _ in self.seated() if row not in new}
            self.caches.resize(width, used)
            self.resizes += 1

    def cache_bytes(self) -> dict[str, int]:
        """Bytes held now by the KV caches this batcher runs over (its slots, or the models' own), by model: "lm", "rm",
        or a fused bundle's one "lm+rm"."""
        names = ("lm",) if self.lm_only else ("lm+rm",) if self.fused else ("lm", "rm")
        each = list(self.caches.nbytes_each) if self.caches is not None else [m.cache_bytes() for m in self.cached_models]
        if self.text_rm is not None:
            each.append(self.text_rm.cache_bytes([r.reward_row for _, r in self.seated()]))
        return dict(zip(names, each))

