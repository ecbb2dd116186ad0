"""The per-step bookkeeping of the decode loop, behind one small interface with two implementations.

A stepper owns everything between two model runs: combine the LM's top-k logits with the rewards, choose
one candidate per row, mark rows that hit EOS or their token limit, and prepare the next step's inputs
(ids, positions, the left-padded attention mask). `PythonStepper` does it with numpy; `CppStepper` calls
the optional C++ extension (`args_runtime._steploop`), which does the same arithmetic in the same order
with the GIL released, so both give bit-identical tokens for the same seed.

Which one runs is chosen at import (`LOOP_IMPL`: "cpp" when the extension is built, else "python"); the
environment variable ARGS_RT_LOOP=python|cpp, or `loop=` on ArgsGenerator.from_bundle, overrides it.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import GenerationError
from .models import PrefixState
from .selection import StochasticChooser, args_scores, choose_greedy

try:
    from . import _steploop
except ImportError as error:  # built without the extension (ARGS_RT_NO_CPP_EXT, no compiler): the Python loop runs
    _steploop = None
    # The install records what happened to the extension (CMakeLists.txt); a source checkout has no record.
    _status_file = Path(__file__).with_name("cpp_ext_status.txt")
    _status = _status_file.read_text().strip() if _status_file.exists() else "skipped"
    if not _status.startswith("skipped"):
        _why = _status if _status.startswith("failed") else f"built, but it does not import: {error}"
        warnings.warn(f"args_runtime: the C++ step loop is not available ({_why}); using the Python loop. "
                      f"Reinstall with ARGS_RT_REQUIRE_CPP_EXT=1 to see the build error.", RuntimeWarning, stacklevel=2)

LOOPS = ("python", "cpp")
RUNNING, EOS, LIMIT = 0, 1, 2  # Step.finish codes


def resolve_loop(requested: str | None = None) -> str:
    """The loop to use: `requested`, else $ARGS_RT_LOOP, else "cpp" when the extension is built."""
    loop = requested or os.environ.get("ARGS_RT_LOOP") or ("cpp" if _steploop is not None else "python")
    if loop not in LOOPS:
        raise GenerationError(f"loop={loop!r} is not one of {LOOPS} (from the loop= argument or $ARGS_RT_LOOP)")
    if loop == "cpp" and _steploop is None:
        raise GenerationError(
            "loop='cpp' was requested but args_runtime._steploop is not built: reinstall with a C++ compiler "
            "(ARGS_RT_REQUIRE_CPP_EXT=1 pip install ... shows why it failed) or use loop='python'"
        )
    return loop


LOOP_IMPL = resolve_loop()


def available_loops() -> list[str]:
    """The step loops this install can run: always "python", and "cpp" when the extension is built."""
    return ["python", "cpp"] if _steploop is not None else ["python"]


@dataclass
class StepConfig:
    """How a stepper chooses and when rows finish."""

    k: int
    w: float
    method: str  # "greedy" | "stochastic"
    temperature: float
    seed: int | None
    eos_ids: list[int]
    ignore_eos: bool
    limits: list[int]  # per row: tokens it may generate


@dataclass
class Step:
    """One chosen token per row, the LM logit and reward that chose it, and the inputs of the next step.
    The arrays may be the stepper's own buffers: read them before the next step."""

    tokens: np.ndarray  # [B] int64
    logits: np.ndarray  # [B] float32
    rewards: np.ndarray  # [B] float32
    finish: np.ndarray  # [B] RUNNING | EOS | LIMIT for this step's token
    next_ids: np.ndarray  # [B, 1] int64
    positions: np.ndarray  # [B, 1] int64


class PythonStepper:
    """The step in numpy: readable, and the reference the C++ stepper must match bit for bit."""

    def __init__(self, prompts: list[list[int]], pad_id: int, config: StepConfig) -> None:
        self.config = config
        self.prefix, self.prompt_ids, self.prompt_positions = PrefixState.for_prompts(prompts, pad_id)
        self.choose = choose_greedy if config.method == "greedy" else StochasticChooser(config.temperature, config.seed)
        self.rows = np.arange(len(prompts))
        self.counts = np.zeros(len(prompts), np.int64)
        self.limits = np.asarray(config.limits, np.int64)
        self.eos = np.asarray(config.eos_ids, np.int64)

    @property
    def attention_mask(self) -> np.ndarray:
        return self.prefix.attention_mask

    def step(self, logits: np.ndarray, candidates: np.ndarray, rewards: np.ndarray) -> Step:
        pick = self.choose(args_scores(logits, rewards, self.config.w))
        token = candidates[self.rows, pick]
        self.counts += 1
        is_eos = np.isin(token, self.eos) & (not self.config.ignore_eos)
        finish = np.where(is_eos, EOS, np.where(self.counts >= self.limits, LIMIT, RUNNING)).astype(np.int8)
        _, positions = self.prefix.next_inputs()
        return Step(token, logits[self.rows, pick], rewards[self.rows, pick], finish, token[:, None], positions)


class CppStepper:
    """The same step in C++ (args_runtime._steploop.StepLoop), writing into buffers allocated once."""

    def __init__(self, prompts: list[list[int]], pad_id: int, config: StepConfig) -> None:
        if _steploop is None:
            raise GenerationError("the C++ step loop is not built (args_runtime._steploop is missing); use loop='python'")
        prefix, self.prompt_ids, self.prompt_positions = PrefixState.for_prompts(prompts, pad_id)
        self.attention_mask = prefix.attention_mask
        # numpy seeds the stream (SeedSequence → PCG64 state); the C++ continues it with the same PCG64.
        rng = np.random.PCG64(config.seed).state["state"]
        state, inc = int(rng["state"]), int(rng["inc"])
        width = self.attention_mask.shape[1]
        self.loop = _steploop.StepLoop(
            [len(p) for p in prompts], width + max(config.limits) + 1, int(config.k), np.float32(config.w),
            0 if config.method == "greedy" else 1, float(config.temperature),
            state >> 64, state & (2**64 - 1), inc >> 64, inc & (2**64 - 1),
            [int(e) for e in config.eos_ids], bool(config.ignore_eos), [int(n) for n in config.limits],
        )
        self.batch = len(prompts)
        loop = self.loop
        self._step = Step(loop.tokens, loop.logits, loop.rewards, loop.finish, loop.tokens.reshape(self.batch, 1), loop.positions)
        self._mask = loop.mask

    def step(self, logits: np.ndarray, candidates: np.ndarray, rewards: np.ndarray) -> Step:
        width = self.loop.step(logits, candidates, rewards)
        self.attention_mask = self._mask[: self.batch * width].reshape(self.batch, width)
        return self._step


def make_stepper(loop: str, prompts: list[list[int]], pad_id: int, config: StepConfig) -> PythonStepper | CppStepper:
    return (CppStepper if loop == "cpp" else PythonStepper)(prompts, pad_id, config)
