"""The books of the decode loop, one row per request, behind one small interface with two implementations: after each
choice, count every seated row's tokens, flag the rows that hit EOS or their own token limit, and write the next step's
inputs (ids, position ids, cache columns, the attention mask over the cache). `Books` does it in numpy; `CppBooks`
calls the optional C++ extension (`args_runtime._steploop.Books`), which does the same in the same order with the GIL
released.

A row is seated with its prompt at some cache columns: a request alone in its slot of a static cache writes its prompt
at columns [0, n) (continuous batching), the rows of a left-padded batch end their prompts at the same column (a fixed
batch). Either way each row's next token is written at its own next column, at its own position id; the mask says which
columns of its row hold its tokens. Rows keep their settings' limits and `ignore_eos` themselves, so requests with any
settings share one set of books."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .choice import Chosen
from .errors import GenerationError
from .loops import native

RUNNING, EOS, LIMIT = 0, 1, 2  # Step.finish codes


@dataclass(frozen=True)
class Seat:
    """One row's start: its prompt's length and first cache column, how many tokens it may generate, and whether an
    end-of-sequence token ends it."""

    prompt_len: int
    first_column: int
    limit: int
    ignore_eos: bool


@dataclass
class Step:
    """One chosen token per row of [0, span), the LM logit and reward that chose it, and why each row finished with it
    (RUNNING | EOS | LIMIT). The arrays may be the choosers' or the books' own buffers: read them before the next step."""

    tokens: np.ndarray  # [span] int64
    logits: np.ndarray  # [span] float32
    rewards: np.ndarray  # [span] float32
    finish: np.ndarray  # [span] int8


class RowBooks(Protocol):
    mask: np.ndarray  # [rows, context] int64: which cache columns of each row hold its tokens
    next_ids: np.ndarray  # [rows, 1] int64: each row's token to feed next
    positions: np.ndarray  # [rows, 1] int64: its position id (once seated, before the first choice: the prompt's last token's)
    columns: np.ndarray  # [rows, 1] int64: the cache column it is written at (likewise)

    def seat(self, row: int, seat: Seat) -> None: ...
    def release(self, row: int) -> None: ...
    def move(self, source: int, target: int) -> None: ...
    def step(self, chosen: Chosen, rows: range) -> Step: ...


class Books:
    """The books in numpy: readable, and the reference the C++ books must match bit for bit. An idle row sees cache
    column 0 only and writes there, so a run over it computes finite numbers nobody reads."""

    def __init__(self, rows: int, context: int, eos_ids: tuple[int, ...]) -> None:
        self.mask = np.zeros((rows, context), np.int64)
        self.mask[:, 0] = 1
        self.next_ids = np.zeros((rows, 1), np.int64)
        self.positions = np.zeros((rows, 1), np.int64)
        self.columns = np.zeros((rows, 1), np.int64)
        self.counts = np.zeros(rows, np.int64)
        self.limits = np.zeros(rows, np.int64)
        self.ignore_eos = np.zeros(rows, bool)
        self.seated = np.zeros(rows, bool)
        self.eos = np.asarray(eos_ids, np.int64)
        self.finish = np.zeros(rows, np.int8)

    def seat(self, row: int, seat: Seat) -> None:
        """Row `row` holds a prompt of `seat.prompt_len` tokens at columns [first_column, first_column + prompt_len)."""
        self.mask[row] = 0
        self.mask[row, seat.first_column : seat.first_column + seat.prompt_len] = 1
        self.positions[row] = seat.prompt_len - 1
        self.columns[row] = seat.first_column + seat.prompt_len - 1
        self.counts[row], self.limits[row], self.ignore_eos[row], self.seated[row] = 0, seat.limit, seat.ignore_eos, True

    def release(self, row: int) -> None:
        """Free a row at once; what its cache row holds is left as it is (a new row's mask never reaches past its writes)."""
        self.mask[row] = 0
        self.mask[row, 0] = 1
        self.next_ids[row] = self.positions[row] = self.columns[row] = 0
        self.counts[row] = self.limits[row] = 0
        self.seated[row] = False

    def move(self, source: int, target: int) -> None:
        """Move the books of row `source` to the free row `target` (the caller moves the cache rows)."""
        for books in (self.mask, self.next_ids, self.positions, self.columns, self.counts, self.limits, self.ignore_eos, self.seated):
            books[target] = books[source]
        self.release(source)

    def step(self, chosen: Chosen, rows: range) -> Step:
        """Book one chosen token per row of `rows` (a run of rows, in order): count it, flag EOS and limits, and make
        it each seated row's next input (one position and one cache column further, marked in the mask)."""
        mine = slice(rows.start, rows.stop)
        seated, token = self.seated[mine], chosen.tokens
        self.counts[mine] += seated
        is_eos = np.isin(token, self.eos) & ~self.ignore_eos[mine]
        finish = np.where(is_eos, EOS, np.where(self.counts[mine] >= self.limits[mine], LIMIT, RUNNING)).astype(np.int8)
        self.finish[mine] = np.where(seated, finish, RUNNING)
        live = rows.start + np.flatnonzero(seated)
        self.next_ids[live, 0] = token[live - rows.start]
        self.positions[live, 0] += 1
        self.columns[live, 0] += 1
        if (self.columns[live, 0] >= self.mask.shape[1]).any():
            raise GenerationError(f"a row has no cache column left (the context is {self.mask.shape[1]}): its limit was not kept")
        self.mask[live, self.columns[live, 0]] = 1
        return Step(token, chosen.logits, chosen.rewards, self.finish[mine])


class CppBooks:
    """The same books in C++ (args_runtime._steploop.Books), its arrays allocated once and shared with numpy."""

    def __init__(self, rows: int, context: int, eos_ids: tuple[int, ...]) -> None:
        self.native = native().Books(rows, context, list(eos_ids))
        n = self.native
        self.mask, self.next_ids, self.positions, self.columns, self.finish = n.mask, n.next_ids, n.positions, n.columns, n.finish

    def seat(self, row: int, seat: Seat) -> None:
        self.native.seat(row, seat.prompt_len, seat.first_column, seat.limit, seat.ignore_eos)

    def release(self, row: int) -> None:
        self.native.release(row)

    def move(self, source: int, target: int) -> None:
        self.native.move(source, target)

    def step(self, chosen: Chosen, rows: range) -> Step:
        self.native.step(chosen.tokens, rows.start, rows.stop)
        return Step(chosen.tokens, chosen.logits, chosen.rewards, self.finish[rows.start : rows.stop])


def make_books(loop: str, rows: int, context: int, eos_ids: tuple[int, ...]) -> RowBooks:
    return (CppBooks if loop == "cpp" else Books)(rows, context, eos_ids)
