"""The things the latency harness races, behind one small interface: each runs a batch of prompts for a fixed
number of new tokens (EOS ignored) and reports its tokens, its time to first token, its per-step times and
the KV-cache bytes it held.

(a) the reference ARGS on transformers eager, structured like the paper's official code;
(b) args-rt ARGS on one engine (ONNX Runtime on CPU or CUDA; the Python or C++ step loop);
(c) plain greedy decoding of the LM alone on the same engine;
(d) the two-model floor on the same engine: per token one 1-token LM step and one 1-token RM extension, and
    nothing else (no candidates, no selection) — what any decoder that runs both models must pay.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass
class Run:
    """One timed generation: tokens per prompt, first-token time, decode-step times (ms), KV bytes per model."""

    tokens: list[list[int]]
    first_ms: float
    step_ms: list[float]
    cache_bytes: dict[str, int] = field(default_factory=dict)


class Contender(Protocol):
    name: str  # e.g. "args-rt ARGS"
    engine: str  # e.g. "onnxruntime cpu, python loop"
    kind: str  # "reference" | "args" | "greedy" | "floor"

    def run(self, prompts: list[list[int]], k: int, w: float, new_tokens: int) -> Run: ...


class ReferenceContender:
    """(a) The paper's structure on transformers eager: k-fold RM cache, reordered every step. One prompt at a time."""

    kind = "reference"

    def __init__(self, reference, device: str = "cpu") -> None:
        self.reference, self.name, self.engine = reference, "reference ARGS", f"transformers eager {device}"

    def run(self, prompts: list[list[int]], k: int, w: float, new_tokens: int) -> Run:
        if len(prompts) != 1:
            raise ValueError("the reference ARGS (like the official code) decodes one prompt at a time")
        steps = self.reference.steps(prompts[0], k, w)
        tokens, clock = [], []
        start = time.perf_counter()
        for token, _, _ in steps:
            _synchronize()
            clock.append(time.perf_counter() - start)
            tokens.append(token)
            if len(tokens) == new_tokens:
                break
        steps.close()
        return Run([tokens], clock[0] * 1e3, _diffs_ms(clock), self.reference.cache_bytes())


class ArgsContender:
    """(b) args-rt ARGS-greedy through the public ArgsGenerator API."""

    kind = "args"

    def __init__(self, generator, engine: str) -> None:
        self.gen, self.name, self.engine = generator, "args-rt ARGS", engine

    def run(self, prompts: list[list[int]], k: int, w: float, new_tokens: int) -> Run:
        results = self.gen.generate(prompts, k=k, w=w, max_new_tokens=new_tokens, ignore_eos=True)
        return _from_results(results)


class GreedyContender:
    """(c) Plain greedy decoding of the LM alone, on the same engine."""

    kind = "greedy"

    def __init__(self, generator, engine: str) -> None:
        self.gen, self.name, self.engine = generator, "args-rt plain greedy", engine

    def run(self, prompts: list[list[int]], k: int, w: float, new_tokens: int) -> Run:
        results = self.gen.greedy(prompts, max_new_tokens=new_tokens, ignore_eos=True)
        run = _from_results(results)
        run.cache_bytes.pop("rm", None)  # the RM did not run
        return run


class FloorContender:
    """(d) The two-model floor: per token, one 1-token LM step (top-1) and one 1-token RM cache extension
    scoring no candidate. It drives the runtime's models directly, with no selection or bookkeeping."""

    kind = "floor"

    def __init__(self, generator, engine: str) -> None:
        self.gen, self.name, self.engine = generator, "two-model floor", engine

    def run(self, prompts: list[list[int]], k: int, w: float, new_tokens: int) -> Run:
        from args_runtime.models import PrefixState

        lm, rm = self.gen.lm, self.gen.rm
        prefix, ids, positions = PrefixState.for_prompts(prompts, self.gen.manifest.tokenizer.pad_token_id)
        no_candidates = np.zeros((len(prompts), 0), np.int64)
        lm.reset(len(prompts))
        rm.reset(len(prompts))
        tokens: list[np.ndarray] = []
        clock = []
        start = time.perf_counter()
        top = lm.extend(ids, positions, prefix, 1).ids
        rm.extend_and_score(ids, positions, prefix, no_candidates)
        while True:
            clock.append(time.perf_counter() - start)
            tokens.append(top[:, 0])
            if len(tokens) == new_tokens:
                break
            chosen = top[:, :1]
            _, positions = prefix.next_inputs()
            top = lm.extend(chosen, positions, prefix, 1).ids
            rm.extend_and_score(chosen, positions, prefix, no_candidates)
        by_row = np.stack(tokens, axis=1).tolist()
        return Run(by_row, clock[0] * 1e3, _diffs_ms(clock), {"lm": lm.cache_bytes(), "rm": rm.cache_bytes()})


def _from_results(results) -> Run:
    first = results[0].timings  # a batch shares its steps: the first row ran them all (EOS is ignored)
    held = first["kv_cache_bytes"]  # by model, when the row ended: "lm", "rm", or a fused bundle's one "lm+rm"
    cache = {"lm": held.get("lm", held.get("lm+rm", 0)), "rm": held.get("rm", 0 if "lm+rm" in held else None)}
    return Run([r.token_ids for r in results], first["time_to_first_token_ms"], list(first["step_ms"]), cache)


def _diffs_ms(clock: list[float]) -> list[float]:
    return [(b - a) * 1e3 for a, b in zip(clock, clock[1:])]


def _synchronize() -> None:
    """Wait for queued CUDA work (transformers on a GPU) so that a step's time is the step's own."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
