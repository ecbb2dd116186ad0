"""ArgsGenerator: load a bundle, then generate or stream with ARGS (or plain greedy) over one prompt or a batch."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .backend import Backend, open_backend
from .choice import CHOICES, DeviceChooser
from .decode import args_decode, lm_decode
from .errors import BundleError, GenerationError
from .manifest import Manifest, load_manifest
from .models import LanguageModel, RewardModel
from .stepper import EOS, LIMIT, Step, StepConfig, make_stepper, resolve_loop
from .tokenizer import Prompt, Tokenizer

METHODS = ("greedy", "stochastic")


@dataclass
class GenerationResult:
    """What one prompt produced: new tokens only, their text, and why generation stopped."""

    token_ids: list[int]
    text: str
    chosen_logits: list[float]
    rewards: list[float]
    finish_reason: str  # "eos" | "stop" | "length" | "context"
    prompt_tokens: int
    timings: dict[str, Any] = field(default_factory=dict)


@dataclass
class TokenEvent:
    """One streamed token: its id, the text it adds, its logit and reward; `result` is set on the last one."""

    token_id: int
    text: str
    logit: float
    reward: float
    result: GenerationResult | None = None


@dataclass
class Settings:
    """Checked generation arguments."""

    k: int
    w: float
    max_new_tokens: int
    method: str
    temperature: float
    seed: int | None
    ignore_eos: bool
    stop: list[str]


class _Row:
    """Per-prompt bookkeeping: tokens so far and whether (and why) the row has finished."""

    def __init__(self, prompt_len: int, budget: int, context_budget: int) -> None:
        self.prompt_len, self.ids, self.logits, self.rewards = prompt_len, [], [], []
        self.limit, self.limit_reason = (budget, "length") if budget <= context_budget else (context_budget, "context")
        self.finish_reason: str | None = None
        self.text = ""


class ArgsGenerator:
    """ARGS decoding over an exported bundle (see args-export). Torch-free: numpy, ONNX Runtime, tokenizers."""

    def __init__(self, bundle: Path, manifest: Manifest, lm: LanguageModel, rm: RewardModel, tokenizer: Tokenizer, backend: str,
                 loop: str | None = None, chooser: Backend | None = None) -> None:
        self.bundle, self.manifest, self.lm, self.rm, self.tokenizer, self.backend = bundle, manifest, lm, rm, tokenizer, backend
        self.loop = resolve_loop(loop)  # "cpp" | "python": which stepper does the per-step bookkeeping
        self.chooser = chooser  # runs choose.onnx on the RM's device; None: the stepper chooses on the host
        self.choice = "device" if chooser is not None else "host"

    @classmethod
    def from_bundle(
        cls,
        path: str | Path,
        device: str = "cpu",
        *,
        lm_device: str | None = None,
        rm_device: str | None = None,
        backend: str = "onnxruntime",
        threads: int | None = None,
        verify_checksums: bool = True,
        loop: str | None = None,
        cuda_graph: bool = False,
        choice: str = "auto",
    ) -> "ArgsGenerator":
        """Open a bundle. `backend`: "onnxruntime" (CPU or CUDA by device), "onnxruntime-trt" (ORT's TensorRT provider)
        or "tensorrt" (the bundle's TensorRT engines). `cuda_graph`: capture decode steps as CUDA graphs (ORT on CUDA,
        static-cache bundles). `choice`: where ARGS combines and chooses, "host" (the stepper), "device" (the bundle's
        choose.onnx, by ONNX Runtime on the models' device) or "auto" (device when both models share a CUDA device).
        `loop`: "cpp" | "python" (default: args_runtime.LOOP_IMPL, i.e. "cpp" when built)."""
        bundle = Path(path)
        manifest = load_manifest(bundle, verify_checksums=verify_checksums)
        if cuda_graph and manifest.lm.cache != "static":
            raise BundleError(f"cuda_graph=True needs fixed shapes, i.e. a static-cache bundle: re-export {bundle} with `args-export ... --cache static`")
        graphs = {}
        for role, spec, graph_device in (("lm", manifest.lm, lm_device or device), ("rm", manifest.rm, rm_device or device)):
            if backend == "tensorrt":
                stamp = manifest.engines.get(role)
                if not stamp:
                    raise BundleError(f"{bundle} has no TensorRT engine for the {role.upper()}: build them with `args-export --tensorrt-only {bundle}`")
                graphs[role] = open_backend(backend, bundle / stamp["file"], graph_device, threads, stamp=stamp)
            else:
                # both graphs keep fixed addresses even if ORT refuses one a CUDA graph: the RM binds the LM's top-k ids as they are
                options = {"cuda_graph": True, "fixed_addresses": True} if cuda_graph else {}
                if backend == "onnxruntime-trt":
                    options["trt_fp16"] = spec.dtype == "float16"  # fp16 kernels only where the bundle is fp16
                graphs[role] = open_backend(backend, bundle / spec.file, graph_device, threads, **options)
        lm = LanguageModel(graphs["lm"], manifest.lm, manifest.max_context)
        rm = RewardModel(graphs["rm"], manifest.rm, manifest.max_context)
        chooser = _open_chooser(bundle, manifest, choice, backend, lm_device or device, rm_device or device, threads)
        return cls(bundle, manifest, lm, rm, Tokenizer(bundle, manifest.tokenizer), backend, loop, chooser)

    # ------------------------------------------------------------------ public API

    def generate(self, prompt: Prompt | list[Prompt], **kwargs: Any) -> GenerationResult | list[GenerationResult]:
        """ARGS-generate for one prompt (text, chat messages or ids) or a list of prompts (a batch).
        Keywords: k=10, w=1.0, max_new_tokens=128, method="greedy"|"stochastic", temperature=0.7, seed=0,
        ignore_eos=False, stop=None (a string or a list of strings)."""
        prompts, is_batch = self._split_batch(prompt)
        results = self._finish(self._drive(prompts, self.settings(**kwargs), lm_only=False))
        return results if is_batch else results[0]

    def stream(self, prompt: Prompt, **kwargs: Any) -> Iterator[TokenEvent]:
        """Like generate() for one prompt, yielding each token as it is chosen; the last event carries the result.
        Text that could still begin a stop string is held back until it is known not to be one."""
        prompts, is_batch = self._split_batch(prompt)
        if is_batch:
            raise GenerationError("stream() takes one prompt; use generate() for a batch")
        settings = self.settings(**kwargs)
        yield from self._stream_events(self._drive(prompts, settings, lm_only=False), settings.stop)

    def greedy(self, prompt: Prompt | list[Prompt], max_new_tokens: int = 128, ignore_eos: bool = False, stop: str | list[str] | None = None):
        """Plain greedy decoding of the LM alone, the baseline ARGS is measured against."""
        prompts, is_batch = self._split_batch(prompt)
        settings = self.settings(k=1, w=0.0, max_new_tokens=max_new_tokens, ignore_eos=ignore_eos, stop=stop)
        results = self._finish(self._drive(prompts, settings, lm_only=True))
        return results if is_batch else results[0]

    def sample(self, prompt: Prompt | list[Prompt], k: int = 50, temperature: float = 0.7, seed: int | None = 0, max_new_tokens: int = 128,
               ignore_eos: bool = False, stop: str | list[str] | None = None):
        """Sampling from the LM alone among its top-k, softmax(logit / temperature), no reward model: the sampler
        best-of-n draws its candidates with. Rewards in the result are 0 (the RM does not run)."""
        prompts, is_batch = self._split_batch(prompt)
        settings = self.settings(k=k, w=0.0, max_new_tokens=max_new_tokens, method="stochastic", temperature=temperature, seed=seed,
                                 ignore_eos=ignore_eos, stop=stop)
        results = self._finish(self._drive(prompts, settings, lm_only=True))
        return results if is_batch else results[0]

    def settings(
        self,
        k: int = 10,
        w: float = 1.0,
        max_new_tokens: int = 128,
        method: str = "greedy",
        temperature: float = 0.7,
        seed: int | None = 0,
        ignore_eos: bool = False,
        stop: str | list[str] | None = None,
    ) -> Settings:
        """Check generation arguments against their ranges and the bundle's limits."""
        max_k = self.manifest.max_k
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= max_k:
            raise GenerationError(f"k={k!r} is out of range: this bundle supports 1 <= k <= {max_k} (re-export with --max-k for more)")
        if not isinstance(w, (int, float, np.floating)) or isinstance(w, bool) or not math.isfinite(w):
            raise GenerationError(f"w={w!r} must be a finite number (the reward weight)")
        if method not in METHODS:
            raise GenerationError(f"method={method!r} is not one of {METHODS}")
        if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature <= 0:
            raise GenerationError(f"temperature={temperature!r} must be a finite number > 0")
        if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
            raise GenerationError(f"max_new_tokens={max_new_tokens!r} must be an integer >= 1")
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if any(not isinstance(s, str) or not s for s in stops):
            raise GenerationError(f"stop={stop!r} must be a non-empty string or a list of them")
        return Settings(int(k), float(w), int(max_new_tokens), method, float(temperature), seed, bool(ignore_eos), stops)

    # ------------------------------------------------------------------ the drive loop shared by generate/stream

    def _split_batch(self, prompt: Any) -> tuple[list[list[int]], bool]:
        is_batch = isinstance(prompt, list) and bool(prompt) and all(isinstance(p, (str, list)) for p in prompt)
        prompts = [self.tokenizer.encode(p) for p in (prompt if is_batch else [prompt])]
        limit = self.manifest.max_context
        for i, ids in enumerate(prompts):
            if not ids:
                raise GenerationError(f"prompt {i} is empty: give at least one token")
            if len(ids) >= limit:
                raise GenerationError(
                    f"prompt {i} has {len(ids)} tokens, but the bundle's context is {limit} tokens (the prompt must leave room "
                    f"for at least one new token): shorten the prompt or re-export with a larger --max-context"
                )
        return prompts, is_batch

    def _drive(self, prompts: list[list[int]], s: Settings, lm_only: bool) -> Iterator[tuple[list[_Row], float]]:
        """Run the decode loop, keep each row's bookkeeping; yield (rows, elapsed seconds) after every step."""
        # Rows share one left-padded cache: the longest prompt's positions run out of context first, for all.
        context_budget = self.manifest.max_context - max(len(p) for p in prompts)
        rows = [_Row(len(p), s.max_new_tokens, context_budget) for p in prompts]
        on_device = self.chooser is not None and not lm_only
        # Chosen on the device, one candidate per row reaches the stepper: it keeps the books with k = 1.
        k, method = (1, "greedy") if on_device else (s.k, s.method)
        config = StepConfig(k, s.w, method, s.temperature, s.seed, list(self.manifest.tokenizer.eos_token_ids), s.ignore_eos,
                            [r.limit for r in rows])
        stepper = make_stepper(self.loop, prompts, self.manifest.tokenizer.pad_token_id, config)
        chooser = DeviceChooser(self.chooser, s.w, s.method, s.temperature, s.seed) if on_device else None
        steps = lm_decode(self.lm, stepper, s.k) if lm_only else args_decode(self.lm, self.rm, stepper, s.k, chooser)
        start = time.perf_counter()
        try:
            for step in steps:
                for i, row in enumerate(rows):
                    if row.finish_reason is None:
                        self._append(row, step, i, s)
                yield rows, time.perf_counter() - start
                if all(r.finish_reason is not None for r in rows):
                    return
        finally:
            steps.close()

    def _append(self, row: _Row, step: Step, i: int, s: Settings) -> None:
        """Record row i's token; the stepper flagged EOS and the token limit, stop strings are matched on text here."""
        finish = step.finish[i]
        row.ids.append(int(step.tokens[i]))
        row.logits.append(float(step.logits[i]))
        row.rewards.append(float(step.rewards[i]))
        if finish == EOS:
            row.finish_reason = "eos"
        elif s.stop:
            text = self.tokenizer.decode(row.ids)
            hits = [text.find(stop) for stop in s.stop if stop in text]
            if hits:
                row.finish_reason, row.text = "stop", text[: min(hits)]
        if row.finish_reason is None and finish == LIMIT:
            row.finish_reason = row.limit_reason

    def _finish(self, drive: Iterator[tuple[list[_Row], float]]) -> list[GenerationResult]:
        clock: list[float] = []
        rows: list[_Row] = []
        for rows, elapsed in drive:
            clock.append(elapsed)
        return [self._result(r, clock) for r in rows]

    def _stream_events(self, drive: Iterator[tuple[list[_Row], float]], stops: list[str]) -> Iterator[TokenEvent]:
        clock: list[float] = []
        shown = ""
        for rows, elapsed in drive:
            row = rows[0]
            clock.append(elapsed)
            done = row.finish_reason is not None
            text = row.text if row.finish_reason == "stop" else self.tokenizer.decode(row.ids)
            visible = text if done else text[: _safe_length(text, stops)]
            delta = visible[len(shown) :]
            shown += delta
            result = self._result(row, clock) if done else None
            yield TokenEvent(row.ids[-1], delta, row.logits[-1], row.rewards[-1], result)

    def _result(self, row: _Row, clock: list[float]) -> GenerationResult:
        """`clock[i]`: seconds from the start until step i's token was chosen (the batch shares the steps)."""
        text = row.text if row.finish_reason == "stop" else self.tokenizer.decode(row.ids)
        n = len(row.ids)
        mine = clock[:n]
        timings = {
            "time_to_first_token_ms": mine[0] * 1e3,
            "decode_ms_per_token": (mine[-1] - mine[0]) * 1e3 / (n - 1) if n > 1 else 0.0,
            "total_ms": mine[-1] * 1e3,
            "step_ms": [round((b - a) * 1e3, 4) for a, b in zip(mine, mine[1:])],  # decode steps, after the first token
            "loop": self.loop,
            "backend": self.backend,
            "lm_device": self.lm.backend.device,
            "rm_device": self.rm.backend.device,
            "cache": self.manifest.lm.cache,
            "choice": self.choice,
            "engines": {"lm": self.lm.backend.describe(), "rm": self.rm.backend.describe()},
        }
        return GenerationResult(row.ids, text, row.logits, row.rewards, row.finish_reason or "length", row.prompt_len, timings)


def _open_chooser(bundle: Path, manifest: Manifest, choice: str, backend: str, lm_device: str, rm_device: str,
                  threads: int | None) -> Backend | None:
    """ONNX Runtime running choose.onnx on the models' device, or None when the host stepper chooses."""
    if choice not in (*CHOICES, "auto"):
        raise GenerationError(f"choice={choice!r} is not one of {(*CHOICES, 'auto')}")
    on_ort = backend.startswith("onnxruntime")  # choose.onnx takes ORT values; the native TensorRT backend's stay its own
    if choice == "auto":
        choice = "device" if on_ort and rm_device.startswith("cuda") and lm_device == rm_device and manifest.choice_file else "host"
    if choice == "host":
        return None
    if not on_ort:
        raise GenerationError(f"choice='device' runs choose.onnx on ONNX Runtime, not with backend={backend!r}; use choice='host'")
    if not manifest.choice_file:
        raise BundleError(f"{bundle} has no choice graph (choose.onnx): re-export it with this args-export, or use choice='host'")
    if lm_device != rm_device:
        raise GenerationError(f"choice='device' needs the LM and the RM on one device (got {lm_device!r} and {rm_device!r}); use choice='host'")
    return open_backend("onnxruntime", bundle / manifest.choice_file, rm_device, threads)


def _safe_length(text: str, stops: list[str]) -> int:
    """How much of a growing text can be shown: not a partial UTF-8 character, nor a tail that may begin a stop string."""
    end = len(text) - 1 if text.endswith("\ufffd") else len(text)
    for cut in range(max(0, end - max((len(s) for s in stops), default=0) + 1), end):
        if any(stop.startswith(text[cut:end]) for stop in stops):
            return cut
    return end
