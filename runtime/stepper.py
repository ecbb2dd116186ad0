"""The books of the decode loop, behind one small interface with two implementations: after each choice, count every
row's tokens, flag rows that hit EOS or their token limit, and prepare the next step's inputs (ids, positions, the
left-padded attention mask). `PythonStepper` does it with numpy; `CppStepper` calls the optional C++ extension
(`args_runtime._steploop.Books`), which does the same in the same order with the GIL released."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .choice import Chosen
from .loops import native
from .models import PrefixState

RUNNING, EOS, LIMIT = 0, 1, 2  # Step.finish codes


@dataclass(frozen=True)
class StopConfig:
    """When rows finish: on an end-of-sequence id (unless ignored), or after their own number of tokens."""

    eos_ids: tuple[int, ...]
    ignore_eos: bool
    limits: tuple[int, ...]  # per row: tokens it may generate


@dataclass
class Step:
    """One chosen token per row, the LM logit and reward that chose it, and the inputs of the next step.
    The arrays may be the chooser's or the stepper's own buffers: read them before the next step."""

    tokens: np.ndarray  # [B] int64
    logits: np.ndarray  # [B] float32
    rewards: np.ndarray  # [B] float32
    finish: np.ndarray  # [B] RUNNING | EOS | LIMIT for this step's token
    next_ids: np.ndarray  # [B, 1] int64
    positions: np.ndarray  # [B, 1] int64


class Stepper(Protocol):
    prompt_ids: np.ndarray  # [B, T] the left-padded prompts, the first step's ids
    prompt_positions: np.ndarray  # [B, T]
    attention_mask: np.ndarray  # [B, width] the mask of the committed prefix (what a model run needs of it)

    def step(self, chosen: Chosen) -> Step: ...


class PythonStepper:
    """The books in numpy: readable, and the reference the C++ stepper must match bit for bit."""

    def __init__(self, prompts: list[list[int]], pad_id: int, stop: StopConfig) -> None:
        self.prefix, self.prompt_ids, self.prompt_positions = PrefixState.for_prompts(prompts, pad_id)
        self.counts = np.zeros(len(prompts), np.int64)
        self.limits = np.asarray(stop.limits, np.int64)
        self.eos = np.asarray(stop.eos_ids, np.int64)
        self.ignore_eos = stop.ignore_eos

    @property
    def attention_mask(self) -> np.ndarray:
        return self.prefix.attention_mask

    def step(self, chosen: Chosen) -> Step:
        token = chosen.tokens
        self.counts += 1
        is_eos = np.isin(token, self.eos) & (not self.ignore_eos)
        finish = np.where(is_eos, EOS, np.where(self.counts >= self.limits, LIMIT, RUNNING)).astype(np.int8)
        _, positions = self.prefix.next_inputs()
        return Step(token, chosen.logits, chosen.rewards, finish, token.reshape(-1, 1), positions)


class CppStepper:
    """The same books in C++ (args_runtime._steploop.Books), writing into buffers allocated once."""

    def __init__(self, prompts: list[list[int]], pad_id: int, stop: StopConfig) -> None:
        prefix, self.prompt_ids, self.prompt_positions = PrefixState.for_prompts(prompts, pad_id)
        self.attention_mask = prefix.attention_mask
        self.batch = len(prompts)
        steploop = native()
        c = steploop.BooksConfig()
        c.prompt_lens, c.eos, c.ignore_eos, c.limits = [len(p) for p in prompts], list(stop.eos_ids), stop.ignore_eos, list(stop.limits)
        c.capacity = self.attention_mask.shape[1] + max(stop.limits) + 1
        self.books = steploop.Books(c)
        self._mask = self.books.mask

    def step(self, chosen: Chosen) -> Step:
        width = self.books.advance(chosen.tokens)
        self.attention_mask = self._mask[: self.batch * width].reshape(self.batch, width)
        books = self.books
        return Step(chosen.tokens, chosen.logits, chosen.rewards, books.finish, chosen.tokens.reshape(-1, 1), books.positions)


def make_stepper(loop: str, prompts: list[list[int]], pad_id: int, stop: StopConfig) -> Stepper:
    return (CppStepper if loop == "cpp" else PythonStepper)(prompts, pad_id, stop)
