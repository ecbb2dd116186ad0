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

from .choice import DeviceChooser
from .models import LanguageModel, RewardModel
from .stepper import CppStepper, PythonStepper, Step

Stepper = PythonStepper | CppStepper


def args_decode(lm: LanguageModel, rm: RewardModel, stepper: Stepper, k: int, chooser: DeviceChooser | None = None) -> Iterator[Step]:
    """ARGS over a batch of prompts; yields one Step per generated token until the caller stops. With a `chooser`
    the combine-and-choose runs on the device and the stepper (built for k = 1) only keeps the books."""
    ids, positions = stepper.prompt_ids, stepper.prompt_positions
    lm.reset(len(ids))
    rm.reset(len(ids))
    while True:
        top = lm.extend(ids, positions, stepper, k)  # LM top-k
        rewards = rm.extend_and_score(ids, positions, stepper, top, on_host=chooser is None)  # RM reward of each prefix + candidate
        if chooser is None:
            step = stepper.step(top.logits, top.ids, rewards)  # score = logit + w·reward, choose, next inputs
        else:
            step = stepper.step(*chooser(top, rewards))  # chosen on the device: one candidate per row reaches the host
        yield step
        ids, positions = step.next_ids, step.positions


def lm_decode(lm: LanguageModel, stepper: Stepper, k: int = 1) -> Iterator[Step]:
    """The LM alone, no reward model: plain greedy (k = 1, the baseline ARGS is compared with) or sampling among its
    top-k (what best-of-n draws its candidates with); the stepper chooses with every reward at 0."""
    ids, positions = stepper.prompt_ids, stepper.prompt_positions
    lm.reset(len(ids))
    no_rewards = np.zeros((len(ids), k), np.float32)
    while True:
        top = lm.extend(ids, positions, stepper, k)
        step = stepper.step(top.logits, top.ids, no_rewards)
        yield step
        ids, positions = step.next_ids, step.positions
