"""The ARGS decode loop (Khanov et al., 2024), one step per token:

    LM proposes its top-k next tokens → RM scores the k continuations in one pass against its cache →
    score = logit + w·reward, choose → both models append the chosen token.

Choosing is a chooser's job (runtime/choice.py: on the host in numpy or C++, or on the device), the books are a
stepper's (runtime/stepper.py); the loop knows neither which one runs nor which engine. It yields every step and never
decides when to stop: the caller closes it (EOS, stop strings, token budget), so generate() and stream() share it.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .choice import Chooser
from .models import FusedModel, LanguageModel, RewardModel
from .stepper import Step, Stepper


def args_decode(lm: LanguageModel, rm: RewardModel, choose: Chooser, stepper: Stepper, k: int) -> Iterator[Step]:
    """ARGS over a batch of prompts; yields one Step per generated token until the caller stops."""
    ids, positions = stepper.prompt_ids, stepper.prompt_positions
    lm.reset(len(ids))
    rm.reset(len(ids))
    while True:
        top = lm.extend(ids, positions, stepper, k)  # the LM's top-k
        rewards = rm.extend_and_score(ids, positions, stepper, top, on_host=choose.on_host)  # RM reward of each prefix + candidate
        step = stepper.step(choose(top, rewards))  # score = logit + w·reward, choose; the books
        yield step
        ids, positions = step.next_ids, step.positions


def fused_decode(model: FusedModel, choose: Chooser, stepper: Stepper, k: int) -> Iterator[Step]:
    """ARGS over a fused bundle, one pass per token: the pass that scores the candidates also proposes each one's next
    top-k (the RM's head sits on the LM's backbone), so the chosen candidate's proposals are the next step's."""
    ids, positions = stepper.prompt_ids, stepper.prompt_positions
    model.reset(len(ids))
    top = model.propose(ids, positions, stepper, k)  # the LM's top-k after the prompt
    ids, positions = ids[:, -1:], positions[:, -1:]
    while True:
        rewards, proposals = model.score_and_propose(ids, positions, stepper, top, k, on_host=choose.on_host)
        step = stepper.step(choose(top, rewards))  # score = logit + w·reward, choose; the books
        yield step
        top = proposals.after(top, step.tokens)  # the chosen candidate's own next top-k
        ids, positions = step.next_ids, step.positions


def lm_decode(lm: LanguageModel, choose: Chooser, stepper: Stepper, k: int = 1) -> Iterator[Step]:
    """The LM alone, no reward model: plain greedy (k = 1, the baseline ARGS is compared with) or sampling among its
    top-k (what best-of-n draws its candidates with); every reward is 0."""
    ids, positions = stepper.prompt_ids, stepper.prompt_positions
    lm.reset(len(ids))
    no_rewards = np.zeros((len(ids), k), np.float32)
    while True:
        top = lm.extend(ids, positions, stepper, k)
        step = stepper.step(choose(top, no_rewards))
        yield step
        ids, positions = step.next_ids, step.positions
