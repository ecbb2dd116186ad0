"""ARGS's combine-and-choose step, behind one small interface: a chooser takes the LM's top-k and the RM's rewards
and returns one candidate per row, score = logit + w·reward, greedy (first argmax) or sampled (softmax(score / T)
inverted at one seeded uniform draw per row). Three implementations give the same picks:

- `HostChooser`: numpy on the host (selection.py), the reference;
- `CppHostChooser`: the same in the optional C++ extension, the GIL released;
- `DeviceChooser`: the bundle's choose.onnx, run by ONNX Runtime where the top-k and rewards already are (the GPU),
  so per step only [B, 1] ids, logits and rewards reach the host instead of [B, k] of each.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from .backend import Backend, EngineOptions
from .engines import BundleGraph, open_graph
from .errors import BundleError, GenerationError
from .loops import native
from .manifest import Manifest
from .models import TopK
from .selection import StochasticChooser, args_scores, choose_greedy

if TYPE_CHECKING:
    from .options import RuntimeOptions


@dataclass
class Chosen:
    """One candidate per row: its token id, LM logit and reward, each [B]."""

    tokens: np.ndarray  # int64
    logits: np.ndarray  # float32
    rewards: np.ndarray  # float32


@dataclass(frozen=True)
class ChoiceConfig:
    """How to choose: k candidates per row of `batch`, weight w, greedy or sampled at `temperature` from `seed`."""

    batch: int
    k: int
    w: float
    sample: bool
    temperature: float
    seed: int | None


class Chooser(Protocol):
    on_host: bool  # wants the rewards copied to the host

    def __call__(self, top: TopK, rewards: object) -> Chosen: ...


class HostChooser:
    """numpy on the host: readable, and the reference the other choosers must match bit for bit."""

    on_host = True

    def __init__(self, config: ChoiceConfig) -> None:
        self.w = config.w
        self.choose = StochasticChooser(config.temperature, config.seed) if config.sample else choose_greedy
        self.rows = np.arange(config.batch)

    def __call__(self, top: TopK, rewards: np.ndarray) -> Chosen:
        logits, candidates = top.logits, top.ids
        pick = self.choose(args_scores(logits, rewards, self.w))
        return Chosen(candidates[self.rows, pick], logits[self.rows, pick], rewards[self.rows, pick])


class CppHostChooser:
    """The same choice in C++ (args_runtime._steploop.HostChooser), writing into buffers allocated once."""

    on_host = True

    def __init__(self, config: ChoiceConfig) -> None:
        steploop = native()
        c = steploop.ChooserConfig()
        c.batch, c.k, c.w, c.sample, c.temperature = config.batch, config.k, np.float32(config.w), config.sample, config.temperature
        # numpy seeds the stream (SeedSequence → PCG64 state); the C++ continues it with the same PCG64.
        state = np.random.PCG64(config.seed).state["state"]
        c.state_hi, c.state_lo = int(state["state"]) >> 64, int(state["state"]) & (2**64 - 1)
        c.inc_hi, c.inc_lo = int(state["inc"]) >> 64, int(state["inc"]) & (2**64 - 1)
        self.native = steploop.HostChooser(c)
        self._chosen = Chosen(self.native.tokens, self.native.logits, self.native.rewards)

    def __call__(self, top: TopK, rewards: np.ndarray) -> Chosen:
        self.native.choose(top.logits, top.ids, rewards)
        return self._chosen


def choice_settings(w: float, sample: bool, temperature: float) -> dict[str, np.ndarray]:
    """choose.onnx's inputs that stay fixed for a generation: the reward weight, greedy or sampled, the temperature."""
    return {"w": np.array([w], np.float32), "sample": np.array([sample]), "temperature": np.array([temperature], np.float64)}


def choice_feeds(values: object, ids: object, rewards: object, settings: dict[str, np.ndarray], draws: np.ndarray) -> dict[str, object]:
    """choose.onnx's inputs for one step: the LM's top-k (values, ids) and the rewards [B, k], the settings, and one
    uniform draw per row (unused when greedy)."""
    return {"topk_values": values, "topk_ids": ids, "rewards": rewards, **settings, "draws": draws}


class DeviceChooser:
    """Runs choose.onnx on the models' device; the draws come from the same seeded PCG64 stream as the host's."""

    on_host = False

    def __init__(self, backend: Backend, config: ChoiceConfig) -> None:
        self.backend, self.sample, self.batch = backend, config.sample, config.batch
        self.rng = np.random.Generator(np.random.PCG64(config.seed))
        self.settings = choice_settings(config.w, config.sample, config.temperature)
        self.no_draws = np.zeros(config.batch)

    def __call__(self, top: TopK, rewards: object) -> Chosen:
        draws = self.rng.random(self.batch) if self.sample else self.no_draws
        out = self.backend.run(choice_feeds(top.engine_logits, top.engine_ids, rewards, self.settings, draws))
        host = self.backend.to_host
        return Chosen(host(out["chosen_ids"]).reshape(-1), host(out["chosen_logits"]).reshape(-1), host(out["chosen_rewards"]).reshape(-1))


def make_chooser(config: ChoiceConfig, loop: str, device_backend: Backend | None = None) -> Chooser:
    """choose.onnx on the device when it has a backend for it, else the host chooser of the active loop."""
    if device_backend is not None:
        return DeviceChooser(device_backend, config)
    return CppHostChooser(config) if loop == "cpp" else HostChooser(config)


def open_device_chooser(bundle: Path, manifest: Manifest, options: "RuntimeOptions", backends: tuple[Backend, ...]) -> Backend | None:
    """ONNX Runtime running choose.onnx on the models' device, or None when the host chooses (`options.choice`; "auto"
    picks the device when both models share a CUDA device and their values are ONNX Runtime's). `backends`: those of
    the models ARGS runs (a fused bundle's RM alone: its choice never reads the LM's values)."""
    shared = manifest.fused or options.lm_device == options.rm_device
    ort_values = all(b.ort_values for b in backends)  # choose.onnx (always ONNX Runtime) reads the models' values in place
    choice = options.choice
    if choice == "auto":
        choice = "device" if ort_values and shared and options.rm_device.is_cuda and manifest.choice_file else "host"
    if choice == "host":
        return None
    if not ort_values:
        raise GenerationError(f"choice='device' runs choose.onnx on ONNX Runtime, which cannot read backend={options.backend!r}'s values; "
                              "use choice='host'")
    if not manifest.choice_file:
        raise BundleError(f"{bundle} has no choice graph (choose.onnx): re-export it with this args-export, or use choice='host'")
    if not shared:
        raise GenerationError(f"choice='device' needs the LM and the RM on one device (got {str(options.lm_device)!r} and "
                              f"{str(options.rm_device)!r}); use choice='host'")
    return open_graph("onnxruntime", BundleGraph(bundle, "choose", manifest.choice_file), options.rm_device, EngineOptions(threads=options.threads))
