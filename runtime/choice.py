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


class DeviceChooser:
    """Runs choose.onnx on the RM's device; returns the host's (logits, ids, rewards), each [B, 1]."""

    def __init__(self, backend: Backend, w: float, method: str, temperature: float, seed: int | None) -> None:
        self.backend = backend
        self.sample = method == "stochastic"
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.constants = {"w": np.array([w], np.float32), "sample": np.array([self.sample]), "temperature": np.array([temperature], np.float64)}

    def __call__(self, top: TopK, rewards: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        batch = top.batch
        draws = self.rng.random(batch) if self.sample else np.zeros(batch)
        feeds = {"topk_values": top.engine_logits, "topk_ids": top.engine_ids, "rewards": rewards, **self.constants, "draws": draws}
        out = self.backend.run(feeds)
        host = self.backend.to_host
        return host(out["chosen_logits"]), host(out["chosen_ids"]), host(out["chosen_rewards"])
