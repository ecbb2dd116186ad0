"""Choosing on the device: the bundle's choose.onnx combines the LM's top-k and the RM's rewards where they already
are and returns only the chosen candidate of each row, so per step [B, 1] ids, logits and rewards cross to the
host instead of [B, k] of each. The host stepper then only does bookkeeping (EOS, limits, next inputs).

Same arithmetic as the host choosers (selection.py): greedy takes the first argmax of logit + w·reward; sampling
inverts softmax(score / T)'s cumulative sum at a uniform draw from the same seeded PCG64 stream, one per row."""

from __future__ import annotations

import numpy as np

from .backend import Backend
from .models import TopK

CHOICES = ("host", "device")


def choice_settings(w: float, sample: bool, temperature: float) -> dict[str, np.ndarray]:
    """choose.onnx's inputs that stay fixed for a generation: the reward weight, greedy or sampled, the temperature."""
    return {"w": np.array([w], np.float32), "sample": np.array([sample]), "temperature": np.array([temperature], np.float64)}


def choice_feeds(values: object, ids: object, rewards: object, settings: dict[str, np.ndarray], draws: np.ndarray) -> dict[str, object]:
    """choose.onnx's inputs for one step: the LM's top-k (values, ids) and the rewards [B, k], the settings, and one
    uniform draw per row (unused when greedy)."""
    return {"topk_values": values, "topk_ids": ids, "rewards": rewards, **settings, "draws": draws}


class DeviceChooser:
    """Runs choose.onnx on the RM's device; returns the host's (logits, ids, rewards), each [B, 1]."""

    def __init__(self, backend: Backend, w: float, method: str, temperature: float, seed: int | None) -> None:
        self.backend = backend
        self.sample = method == "stochastic"
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.settings = choice_settings(w, self.sample, temperature)

    def __call__(self, top: TopK, rewards: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        batch = top.batch
        draws = self.rng.random(batch) if self.sample else np.zeros(batch)
        out = self.backend.run(choice_feeds(top.engine_logits, top.engine_ids, rewards, self.settings, draws))
        host = self.backend.to_host
        return host(out["chosen_logits"]), host(out["chosen_ids"]), host(out["chosen_rewards"])
