"""ARGS's combine-and-choose step, behind one small interface: a chooser takes the LM's top-k and the RM's rewards
and returns one candidate per row, score = logit + w·reward, greedy (first argmax) or sampled (softmax(score / T)
inverted at one uniform draw per row and step). Each row chooses by its own settings (k, w, method, temperature) and
draws from its own stream seeded with its own seed, so a request gets the same tokens in any company. Three
implementations give the same picks:

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
from .selection import args_scores, choose_greedy, sample_index

if TYPE_CHECKING:
    from .options import RuntimeOptions


@dataclass
class Chosen:
    """One candidate per row: its token id, LM logit and reward, each [rows]."""

    tokens: np.ndarray  # int64
    logits: np.ndarray  # float32
    rewards: np.ndarray  # float32


@dataclass(frozen=True)
class ChoiceConfig:
    """How one row chooses: among its first k candidates, weight w, greedy or sampled at `temperature` from its own
    seeded stream (`seed`; None: a fresh one)."""

    k: int
    w: float
    sample: bool
    temperature: float
    seed: int | None


GREEDY = ChoiceConfig(1, 0.0, False, 1.0, 0)  # what an idle row "chooses" (nobody reads it)


class Chooser(Protocol):
    """Chooses for the batch rows `rows` (a run of rows; the top-k's and rewards' rows are theirs, in order), each row
    by its own ChoiceConfig (set by `seat`)."""

    on_host: bool  # wants the rewards copied to the host

    def seat(self, row: int, config: ChoiceConfig) -> None: ...
    def move(self, source: int, target: int) -> None: ...
    def __call__(self, top: TopK, rewards: object, rows: range) -> Chosen: ...


class HostChooser:
    """numpy on the host: readable, and the reference the other choosers must match bit for bit. Greedy rows choose
    together (each among its own first k); a sampled row draws one uniform per step from its own stream."""

    on_host = True

    def __init__(self, rows: int) -> None:
        self.k = np.ones(rows, np.int64)
        self.w = np.zeros((rows, 1), np.float32)
        self.temperature = np.ones(rows)
        self.rngs: list[np.random.Generator | None] = [None] * rows  # a sampled row's stream; None: greedy

    def seat(self, row: int, config: ChoiceConfig) -> None:
        self.k[row], self.w[row], self.temperature[row] = config.k, np.float32(config.w), config.temperature
        self.rngs[row] = np.random.Generator(np.random.PCG64(config.seed)) if config.sample else None

    def move(self, source: int, target: int) -> None:
        self.k[target], self.w[target], self.temperature[target], self.rngs[target] = (
            self.k[source], self.w[source], self.temperature[source], self.rngs[source])
        self.seat(source, GREEDY)

    def __call__(self, top: TopK, rewards: np.ndarray, rows: range) -> Chosen:
        n, mine = len(rows), slice(rows.start, rows.stop)
        logits, candidates, rewards = top.logits[:n], top.ids[:n], rewards[:n]
        k = self.k[mine]
        scores = args_scores(logits, rewards, self.w[mine])  # score = logit + w·reward
        width = scores.shape[1]
        if (k < width).any():  # a row chooses among its own first k: the others cannot win
            scores = np.where(np.arange(width) < k[:, None], scores, np.float32(-np.inf))
        pick = choose_greedy(scores)
        for i, rng in enumerate(self.rngs[mine]):
            if rng is not None:
                pick[i] = sample_index(scores[i : i + 1, : k[i]], self.temperature[rows.start + i], rng.random(1))[0]
        at = np.arange(n)
        return Chosen(candidates[at, pick], logits[at, pick], rewards[at, pick])


class CppHostChooser:
    """The same choice in C++ (args_runtime._steploop.HostChooser), writing into buffers allocated once."""

    on_host = True

    def __init__(self, rows: int) -> None:
        self.native = native().HostChooser(rows)

    def seat(self, row: int, config: ChoiceConfig) -> None:
        # numpy seeds the stream (SeedSequence → PCG64 state); the C++ continues it with the same PCG64.
        state = np.random.PCG64(config.seed).state["state"] if config.sample else {"state": 0, "inc": 0}
        s, inc = int(state["state"]), int(state["inc"])
        self.native.seat(row, config.k, np.float32(config.w), config.sample, config.temperature, (s >> 64, s & MASK64, inc >> 64, inc & MASK64))

    def move(self, source: int, target: int) -> None:
        self.native.move(source, target)

    def __call__(self, top: TopK, rewards: np.ndarray, rows: range) -> Chosen:
        n, count = self.native, len(rows)
        n.choose(top.logits, top.ids, rewards, rows.start, rows.stop)
        return Chosen(n.tokens[:count], n.logits[:count], n.rewards[:count])


MASK64 = 2**64 - 1


def choice_settings(w: float, sample: bool, temperature: float) -> dict[str, np.ndarray]:
    """choose.onnx's inputs that stay fixed for a generation: the reward weight, greedy or sampled, the temperature."""
    return {"w": np.array([w], np.float32), "sample": np.array([sample]), "temperature": np.array([temperature], np.float64)}


def choice_feeds(values: object, ids: object, rewards: object, settings: dict[str, np.ndarray], draws: np.ndarray) -> dict[str, object]:
    """choose.onnx's inputs for one step: the LM's top-k (values, ids) and the rewards [B, k], the settings, and one
    uniform draw per row (unused when greedy)."""
    return {"topk_values": values, "topk_ids": ids, "rewards": rewards, **settings, "draws": draws}


class DeviceChooser:
    """Runs choose.onnx on the models' device; the draws come from each row's own seeded PCG64 stream, as the host's.
    choose.onnx takes one w, method and temperature for all rows (a call's settings: generate() of one prompt or a
    batch); rows of other settings choose on the host."""

    on_host = False

    def __init__(self, backend: Backend, rows: int, config: ChoiceConfig) -> None:
        self.backend, self.config = backend, config
        self.settings = choice_settings(config.w, config.sample, config.temperature)
        self.rngs: list[np.random.Generator | None] = [None] * rows

    def seat(self, row: int, config: ChoiceConfig) -> None:
        if config != self.config:
            raise GenerationError(f"the device chooser runs one setting for all rows ({self.config}); got {config}")
        self.rngs[row] = np.random.Generator(np.random.PCG64(config.seed)) if config.sample else None

    def move(self, source: int, target: int) -> None:
        self.rngs[target], self.rngs[source] = self.rngs[source], None

    def __call__(self, top: TopK, rewards: object, rows: range) -> Chosen:
        draws = np.array([rng.random() if rng is not None else 0.0 for rng in self.rngs[rows.start : rows.stop]])
        out = self.backend.run(choice_feeds(top.engine_logits, top.engine_ids, rewards, self.settings, draws))
        host = self.backend.to_host
        return Chosen(host(out["chosen_ids"]).reshape(-1), host(out["chosen_logits"]).reshape(-1), host(out["chosen_rewards"]).reshape(-1))


def make_chooser(loop: str, rows: int, device: tuple[Backend, ChoiceConfig] | None = None) -> Chooser:
    """choose.onnx on the device when given its backend and the one setting it runs, else the host chooser of the
    active loop."""
    if device is not None:
        return DeviceChooser(device[0], rows, device[1])
    return CppHostChooser(rows) if loop == "cpp" else HostChooser(rows)


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
