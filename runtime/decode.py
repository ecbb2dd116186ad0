"""The ARGS decode loop (Khanov et al., 2024), one step per token:

    LM proposes its top-k next tokens → RM scores the k continuations in one pass against its cache →
    score = logit + w·reward → choose → both models append the chosen token.

The combine/choose/append bookkeeping lives in a stepper (runtime/stepper.py: numpy or the optional C++
extension); the loop does not know which. It yields every step and never decides when to stop: the caller
closes it (EOS, stop strings, token budget), so generate() and stream() share it.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .models import LanguageModel, RewardModel
from .stepper import CppStepper, PythonStepper, Step

Stepper = PythonStepper | CppStepper


def args_decode(lm: LanguageModel, rm: RewardModel, stepper: Stepper, k: int) -> Iterator[Step]:
    """ARGS over a batch of prompts; yields one Step per generated token until the caller stops."""
    ids, positions = stepper.prompt_ids, stepper.prompt_positions
    lm.reset(len(ids))
    rm.reset(len(ids))
    top = lm.extend(ids, positions, stepper, k)  # LM top-k
    rewards = rm.extend_and_score(ids, positions, stepper, top)  # RM reward of each prefix + candidate
    while True:
        step = stepper.step(top.logits, top.ids, rewards)  # score = logit + w·reward, choose, next inputs
        yield step
        top = lm.extend(step.next_ids, step.positions, stepper, k)
        rewards = rm.extend_and_score(step.next_ids, step.positions, stepper, top)


def greedy_decode(lm: LanguageModel, stepper: Stepper) -> Iterator[Step]:
    """Plain greedy decoding of the LM alone (the baseline ARGS is compared with): k = 1, no rewards."""
    ids, positions = stepper.prompt_ids, stepper.prompt_positions
    lm.reset(len(ids))
    no_rewards = np.zeros((len(ids), 1), np.float32)
    top = lm.extend(ids, positions, stepper, 1)
    while True:
        step = stepper.step(top.logits, top.ids, no_rewards)
        yield step
        top = lm.extend(step.next_ids, step.positions, stepper, 1)
