"""Continuous batching's caches: each running request owns one slot, i.e. one row of every model's static KV cache
([slots, Hkv, width, D] buffers held outside the models) at its own position. A request's prompt is prefilled into its
slot's rows alone; a decode step runs rows [0, span) together, each row writing its new token at its own column, in
place (a one-row view of a buffer is contiguous, and so is any run of rows).

The graphs' slot axis is free (`cache_slots`), so the buffers are only as wide as the seated requests need:
`WidthPolicy` says which width, `SlotCaches.resize` re-lays them out when that changes. On a 2-core CPU attending over
all 768 slots of a SmolLM2 bundle costs about a third of an 8-row step. Exactness: a narrower cache changes nothing but
the masked tail of each attention row (exact zeros), and a width congruent to max_context modulo 64 keeps every other
value at the same offset within ONNX Runtime's vectorized reductions as at full width, so logits and rewards stay
bit-identical to a full-width run (measured on SmolLM2, AVX-512: widths 16k slots short of 768 were bit-identical,
other widths differed by up to 2e-4). tests/test_engine.py compares them bit for bit."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .dtypes import ITEMSIZE
from .errors import GenerationError
from .models import CacheRows, CachedGraph


@dataclass(frozen=True)
class WidthPolicy:
    """Which cache width a step runs at: the narrowest max_context - j * step that holds every seated request's next
    write; it grows at once when a request needs more, and shrinks (leaving one step of room) only when it can drop
    two steps, so a width is not re-laid out back and forth."""

    context: int
    step: int = 64

    def fit(self, need: int) -> int:
        """The narrowest allowed width >= need (need >= 1 slot)."""
        need = min(max(need, 1), self.context)
        return self.context - ((self.context - need) // self.step) * self.step

    def next(self, width: int, need: int) -> int:
        """The width to run at now, given the current one and the slots the seated requests need."""
        fitted = self.fit(need)
        if fitted > width:
            return fitted
        return fitted + self.step if fitted + 2 * self.step <= width else width


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
        return sum(self.nbytes_each)

    @property
    def nbytes_each(self) -> list[int]:
        """Bytes held by each model's buffers, in the models' order."""
        return [len(buffers) * self.slots * m.spec.num_kv_heads * self.width * m.spec.head_dim * ITEMSIZE[m.spec.dtype]
                for m, buffers in zip(self.models, self.buffers)]

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
