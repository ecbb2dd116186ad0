"""Choosing among the k candidates from their ARGS scores: greedy (argmax) or stochastic (seeded softmax sampling)."""

from __future__ import annotations

import math

import numpy as np


def args_scores(lm_logits: np.ndarray, rewards: np.ndarray, w: float) -> np.ndarray:
    """score(v) = LM_logit(v | x) + w * reward([x, v]), for each row's k candidates."""
    return lm_logits + np.float32(w) * rewards


def choose_greedy(scores: np.ndarray) -> np.ndarray:
    """Argmax per row; ties go to the first index, i.e. the candidate the LM ranks higher."""
    return np.argmax(scores, axis=-1)


_libm_exp = np.frompyfunc(math.exp, 1, 1)


def softmax(x: np.ndarray) -> np.ndarray:
    """float64 softmax over the last axis with the C library's exp: numpy's SIMD exp differs from it in the last bit
    for about 5 % of inputs on AVX-512 machines, and the C++ loop (std::exp) must sample exactly as this does."""
    shifted = np.asarray(x, np.float64) - np.max(x, axis=-1, keepdims=True)
    z = _libm_exp(shifted).astype(np.float64)
    return z / z.sum(axis=-1, keepdims=True)


def sample_index(scores: np.ndarray, temperature: float, uniform: np.ndarray) -> np.ndarray:
    """Invert each row's cumulative softmax(score / temperature) (float64) at u · total, u in [0, 1) per row."""
    probs = softmax(scores.astype(np.float64) / temperature)
    cdf = np.cumsum(probs, axis=-1)
    draws = uniform * cdf[:, -1]
    picks = np.array([np.searchsorted(c, u, side="right") for c, u in zip(cdf, draws)])
    return np.minimum(picks, scores.shape[-1] - 1)


class StochasticChooser:
    """Samples from softmax(score / temperature) per row with a seeded stream.

    One uniform draw per row per step, in row order, inverted through the cumulative distribution: a
    stream simple enough that another implementation (the C++ loop, choose.onnx) can reproduce it exactly."""

    def __init__(self, temperature: float, seed: int | None) -> None:
        self.temperature = temperature
        self.rng = np.random.Generator(np.random.PCG64(seed))

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        return sample_index(scores, self.temperature, self.rng.random(scores.shape[0]))
