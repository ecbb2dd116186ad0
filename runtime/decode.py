"""The ARGS step (Khanov et al., 2024), one per token, for every caller (generate(), stream(), ArgsEngine, args-serve):

    the LM proposes its top-k next tokens → the RM scores the k continuations in one pass against its cache →
    score = logit + w·reward, choose (each row by its own settings).

A `Run` says which rows run and what they feed; choosing is a chooser's job (runtime/choice.py: on the host in numpy
or C++, or on the device), the books are the caller's (runtime/books.py). These functions know neither which engine
runs nor how the rows sit in their caches (runtime/batch.py)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .choice import Chooser, Chosen
from .models import CacheRows, FusedModel, LanguageModel, Masked, RewardModel, TopK


@dataclass
class Run:
    """One pass over some batch rows: their ids and position ids, the top-k width K (the largest k among them), and what
    each model needs of their prefix (the rows of caches held outside it, or a mask over its own cache). `head`: a fused
    prompt's prefix without its last token (runtime/batch.py)."""

    rows: range
    ids: np.ndarray  # [n, S] int64
    positions: np.ndarray  # [n, S] int64
    k: int
    prefixes: tuple[Masked | CacheRows, ...]  # per model: the LM's, the RM's (a fused bundle: its one graph's)
    head: Masked | CacheRows | None = None


def args_step(lm: LanguageModel, rm: RewardModel, run: Run, choose: Chooser) -> Chosen:
    """ARGS over two graphs: the LM's top-k, each candidate's reward, one choice per row."""
    top = lm.extend(run.ids, run.positions, run.prefixes[0], run.k)  # the LM's top-k
    rewards = rm.extend_and_score(run.ids, run.positions, run.prefixes[1], top, on_host=choose.on_host)  # reward of prefix + v
    return choose(top, rewards, run.rows)  # score = logit + w·reward, choose


def fused_step(model: FusedModel, run: Run, top: TopK, choose: Chooser) -> tuple[Chosen, TopK]:
    """ARGS over a fused bundle, one pass per token: the pass that scores the candidates `top` also gives their hidden
    states (the RM's head sits on the LM's backbone), from which the chosen one's own next top-k comes."""
    rewards, proposals = model.score_and_propose(run.ids, run.positions, run.prefixes[0], top, run.k, on_host=choose.on_host)
    chosen = choose(top, rewards, run.rows)  # score = logit + w·reward, choose
    return chosen, proposals.after(top, chosen.tokens)  # the chosen candidate's own next top-k


def fused_prompt(model: FusedModel, run: Run) -> TopK:
    """A fused bundle's first pass over prompts: all but their last token extend the cache, and that last token, as the
    one candidate, brings the LM's top-k after the prompt; the next pass (fused_step) feeds the last token."""
    return model.propose(run.ids, run.positions, run.head, run.k)


def lm_step(lm: LanguageModel, run: Run, choose: Chooser) -> Chosen:
    """The LM alone, no reward model: plain greedy (k = 1, the baseline ARGS is compared with) or sampling among its
    top-k (what best-of-n draws its candidates with); every reward is 0."""
    top = lm.extend(run.ids, run.positions, run.prefixes[0], run.k)
    return choose(top, np.zeros((len(run.ids), run.k), np.float32), run.rows)


__all__ = ["Run", "args_step", "fused_prompt", "fused_step", "lm_step"]
