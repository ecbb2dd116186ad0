"""Continuous batching's books: each running request owns one slot, i.e. one row of both models' static KV caches
([slots, Hkv, C, D] buffers, allocated once) and one row of the attention mask, at its own position. A request's prompt
is prefilled into its slot's rows alone; a decode step runs rows [0, span) together, each row writing its new token at
its own position, in place. Requests take the lowest free slot, and when nothing waits for a hole the highest row moves
down into it, so the rows a step runs stay few and contiguous (a one-row view of a buffer is contiguous, and so is
any run of rows). The buffers are only as wide as the seated requests need (`width` cache slots; runtime/
context_width.py says which width and why that is exact): `resize` re-lays them out when that changes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .dtypes import ITEMSIZE
from .errors import GenerationError
from .models import CacheRows, CachedGraph


class SlotCaches:
    """Both models' static KV caches with one row per slot, `width` cache slots wide ([slots, Hkv, width, D] buffers),
    and the views a run binds: rows [start, stop) of every buffer. Where the buffers live in host memory, a row can be
    moved to another slot (`move`) and the buffers re-laid out at another width (`resize`)."""

    def __init__(self, models: Sequence[CachedGraph], slots: int, width: int | None = None) -> None:
        self.models, self.slots = tuple(models), slots
        self.width = width or self.models[0].max_context
        self.buffers, self.host = self._allocate(self.width)
        self.movable = all(view is not None for views in self.host for view in views.values())

    def _allocate(self, width: int) -> tuple[list[dict[str, Any]], list[dict[str, np.ndarray | None]]]:
        buffers, host = [], []
        for model in self.models:
            spec = model.spec
            shape = (self.slots, spec.num_kv_heads, width, spec.head_dim)
            values = {name: model.backend.empty(shape, spec.dtype) for name in model.past_names}
            buffers.append(values)
            host.append({name: model.backend.host_view(value) for name, value in values.items()})
        return buffers, host

    @property
    def nbytes(self) -> int:
        """Bytes held by both models' buffers."""
        return sum(len(buffers) * self.slots * m.spec.num_kv_heads * self.width * m.spec.head_dim * ITEMSIZE[m.spec.dtype]
                   for m, buffers in zip(self.models, self.buffers))

    def resize(self, width: int, used: dict[int, int]) -> None:
        """Re-lay the buffers out `width` cache slots wide, keeping the first `used[slot]` slots of each slot listed
        (host memory only; what a row holds past its used slots is masked, never read)."""
        if not self.movable:
            raise GenerationError("cache buffers off the host cannot be re-laid out; run continuous batching at full width")
        if any(n > width for n in used.values()):
            raise GenerationError(f"a width of {width} cache slots cannot hold {max(used.values())} used slots")
        buffers, host = self._allocate(width)
        kept = {slot: min(n, self.width) for slot, n in used.items()}  # a row seated just now holds nothing yet
        for old, new in zip(self.host, host):
            for name, view in new.items():
                for slot, n in kept.items():
                    view[slot, :, :n] = old[name][slot, :, :n]
        self.buffers, self.host, self.width = buffers, host, width

    def rows(self, start: int, stop: int, attention_mask: np.ndarray, cache_position: np.ndarray) -> list[CacheRows]:
        """Rows [start, stop) of every model's cache, with the mask (cut to the width) and write slots of the run (one
        CacheRows per model)."""
        attention_mask = np.ascontiguousarray(attention_mask[:, : self.width])
        return [CacheRows(attention_mask, cache_position, {name: model.backend.rows(value, start, stop) for name, value in buffers.items()})
                for model, buffers in zip(self.models, self.buffers)]

    def move(self, source: int, target: int, used: int) -> None:
        """Copy the first `used` cache slots of row `source` into row `target`, in both models (host memory only)."""
        for views in self.host:
            for view in views.values():
                view[target, :, :used] = view[source, :, :used]


class SlotTable:
    """Who sits in which slot, and each slot's books: its position (the cache slot its next token is written at, which
    is also that token's position id), the token to feed there, and its attention-mask row over the C cache slots.
    An idle row sees cache slot 0 only and writes there, so a step that runs it computes finite numbers nobody reads."""

    def __init__(self, slots: int, context: int) -> None:
        self.occupant: list[Any | None] = [None] * slots
        self.mask = np.zeros((slots, context), np.int64)
        self.mask[:, 0] = 1
        self.position = np.zeros(slots, np.int64)
        self.next_ids = np.zeros((slots, 1), np.int64)

    @property
    def span(self) -> int:
        """Rows a decode step runs: up to the highest occupied slot."""
        return max((i + 1 for i, o in enumerate(self.occupant) if o is not None), default=0)

    def occupied(self) -> list[tuple[int, Any]]:
        return [(i, o) for i, o in enumerate(self.occupant) if o is not None]

    def free_slot(self) -> int | None:
        """The lowest free slot, or None when every slot is taken."""
        return next((i for i, o in enumerate(self.occupant) if o is None), None)

    def place(self, slot: int, occupant: Any, prompt_len: int) -> None:
        """Seat a request whose prompt of `prompt_len` tokens is about to be written at cache slots [0, prompt_len)."""
        if self.occupant[slot] is not None:
            raise GenerationError(f"slot {slot} is taken")
        self.occupant[slot] = occupant
        self.mask[slot] = 0
        self.mask[slot, :prompt_len] = 1
        self.position[slot] = prompt_len

    def release(self, slot: int) -> None:
        """Free a slot at once; its cache row is left as it is (a new request's mask never reaches past its own writes)."""
        self.occupant[slot] = None
        self.mask[slot] = 0
        self.mask[slot, 0] = 1
        self.position[slot] = 0
        self.next_ids[slot] = 0

    def step_inputs(self, span: int) -> tuple[np.ndarray, np.ndarray]:
        """A decode step's ids and positions ([span, 1] each); marks every occupied row's write slot in its mask."""
        for slot, _ in self.occupied():
            self.mask[slot, self.position[slot]] = 1
        return self.next_ids[:span].copy(), self.position[:span, None].copy()

    def advance(self) -> None:
        """After a decode step: every occupied row's next token goes one slot further."""
        for slot, _ in self.occupied():
            self.position[slot] += 1

    def hole(self) -> tuple[int, int] | None:
        """(highest occupied slot, lowest free slot below it), or None when the occupied slots are 0..span-1."""
        span, free = self.span, self.free_slot()
        return (span - 1, free) if free is not None and free < span else None

    def move(self, source: int, target: int) -> None:
        """Move the books of slot `source` to the free slot `target` (the caller moves the cache rows)."""
        self.occupant[target], self.mask[target] = self.occupant[source], self.mask[source]
        self.position[target], self.next_ids[target] = self.position[source], self.next_ids[source]
        self.release(source)
