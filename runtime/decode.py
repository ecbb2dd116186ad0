"""The ARGS decode loop (Khanov et al., 2024), one step per token:

    LM proposes its top-k next tokens → RM scores the k continuations in one pass against its cache →
    score = logit + w·reward → choose → both models append the chosen token.

The loop yields every step and never decides when to stop: the caller closes it (EOS, stop strings,
token budget), so generate() and stream() share it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from .models import LanguageModel, PrefixState, RewardModel
from .selection import args_scores

Chooser = Callable[[np.ndarray], np.ndarray]


@dataclass
class Step:
    """One chosen token per row, with the LM logit and the reward that chose it."""

    tokens: np.ndarray  # [B] int64
    logits: np.ndarray  # [B] float32
    rewards: np.ndarray  # [B] float32


def args_decode(lm: LanguageModel, rm: RewardModel, prompts: list[list[int]], pad_id: int, k: int, w: float, choose: Chooser) -> Iterator[Step]:
    """ARGS over a batch of prompts; yields one Step per generated token until the caller stops."""
    prefix, ids, positions = PrefixState.for_prompts(prompts, pad_id)
    lm.reset(len(prompts))
    rm.reset(len(prompts))
    rows = np.arange(len(prompts))
    logits, candidates = lm.extend(ids, positions, prefix, k)
    rewards = rm.extend_and_score(ids, positions, prefix, candidates)
    while True:
        pick = choose(args_scores(logits, rewards, w))
        token = candidates[rows, pick]
        yield Step(token, logits[rows, pick], rewards[rows, pick])
        chosen = token[:, None]
        _, positions = prefix.next_inputs()
        logits, candidates = lm.extend(chosen, positions, prefix, k)
        rewards = rm.extend_and_score(chosen, positions, prefix, candidates)


def greedy_decode(lm: LanguageModel, prompts: list[list[int]], pad_id: int) -> Iterator[Step]:
    """Plain greedy decoding of the LM alone (the baseline ARGS is compared with)."""
    prefix, ids, positions = PrefixState.for_prompts(prompts, pad_id)
    lm.reset(len(prompts))
    logits, candidates = lm.extend(ids, positions, prefix, 1)
    while True:
        token = candidates[:, 0]
        yield Step(token, logits[:, 0], np.zeros(len(prompts), np.float32))
        _, positions = prefix.next_inputs()
        logits, candidates = lm.extend(token[:, None], positions, prefix, 1)
