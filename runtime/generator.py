"""ArgsGenerator: open a bundle, then generate or stream with ARGS (or the LM alone) over one prompt or a batch. A call
is a set of requests decoded together (runtime/batch.py), driven in the caller's thread: the same step, choosers and
books as ArgsEngine's, so a prompt gets the same tokens either way."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .batch import Batcher
from .bundle import Bundle
from .choice import make_chooser
from .errors import GenerationError
from .requests import Request, RequestHandle
from .results import GenerationResult, TokenEvent
from .settings import Settings
from .tokenizer import Prompt
from .turns import Stream

__all__ = ["ArgsGenerator", "GenerationResult", "TokenEvent"]


class ArgsGenerator:
    """ARGS decoding over an exported bundle (see args-export). Torch-free: numpy, ONNX Runtime, tokenizers.

    Every argument and prompt is checked before any engine work (a bad one raises an ArgsError subclass naming it and
    the fix). One generator runs one call at a time: calls from several threads take turns (runtime/turns.py), a stream
    holds the generator until it ends or is closed, and a call interrupted by an exception or Ctrl-C leaves it ready
    for the next one. Separate generators run side by side."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        # What callers read of the opened bundle.
        self.manifest, self.tokenizer, self.options = bundle.manifest, bundle.tokenizer, bundle.options
        self.lm, self.rm, self.device_chooser = bundle.lm, bundle.rm, bundle.device_chooser
        self.loop, self.backend = bundle.options.loop, bundle.options.backend  # "cpp" | "python": the host loop
        self.choice = "device" if bundle.device_chooser is not None else "host"

    @classmethod
    def from_bundle(cls, path: str | Path, device: str = "cpu", **options: Any) -> "ArgsGenerator":
        """Open a bundle. Keywords (see RuntimeOptions): lm_device= / rm_device= (default: `device`); backend=
        "onnxruntime" (CPU or CUDA by device), "onnxruntime-trt" (ORT's TensorRT provider) or "tensorrt" (the bundle's
        TensorRT engines); threads=; shared_threads=False; verify_checksums=True; loop="cpp" | "python";
        cuda_graph=False (capture decode steps as CUDA graphs: ORT on CUDA, static-cache bundles); choice="auto" |
        "host" | "device" (where ARGS combines and chooses: the host, or the bundle's choose.onnx on the models' device;
        auto: the device when both models share a CUDA device and the engine's values are ONNX Runtime's)."""
        return cls(Bundle.open(path, device, **options))

    # ------------------------------------------------------------------ public API

    def generate(self, prompt: Prompt | list[Prompt], **kwargs: Any) -> GenerationResult | list[GenerationResult]:
        """ARGS-generate for one prompt (text, chat messages or ids) or a list of prompts (a batch; each row gets the
        tokens it gets alone, a sampled row from its own stream seeded with `seed`).
        Keywords: k=10, w=1.0, max_new_tokens=128, method="greedy"|"stochastic", temperature=0.7, seed=0,
        ignore_eos=False, stop=None (a string or a list of strings)."""
        settings = self.settings(**kwargs)
        return self._run(prompt, settings, lm_only=False)

    def stream(self, prompt: Prompt, **kwargs: Any) -> Stream[TokenEvent]:
        """Like generate() for one prompt, yielding each token as it is chosen; the last event carries the result.
        Text that could still begin a stop string is held back until it is known not to be one. The prompt and keywords
        are checked here, at the call; the generation runs as the stream is read. Close a stream you stop reading early
        (`close()`, a `with` block, or let it go out of scope): until then it holds the generator."""
        prompts, is_batch = self.bundle.encode(prompt)
        if is_batch:
            raise GenerationError("stream() takes one prompt, not a batch (a list of prompts): use generate() for a batch")
        settings = self.settings(**kwargs)

        def events(end_stream) -> Iterator[TokenEvent]:
            with self.bundle.turns.turn(end_stream):
                batcher, [handle] = self._start(prompts, settings, lm_only=False, stream=True, chats=self.bundle.chats(prompt, False))
                seen = 0
                while True:
                    fresh = handle.events_from(seen)
                    seen += len(fresh)
                    yield from fresh
                    if handle.done or not batcher.busy:
                        break
                    _advance(batcher)
                handle.result()  # raises what failed

        return Stream(events)

    def greedy(self, prompt: Prompt | list[Prompt], max_new_tokens: int = 128, ignore_eos: bool = False, stop: str | list[str] | None = None):
        """Plain greedy decoding of the LM alone, the baseline ARGS is measured against."""
        settings = self.settings(k=1, w=0.0, max_new_tokens=max_new_tokens, ignore_eos=ignore_eos, stop=stop)
        return self._run(prompt, settings, lm_only=True)

    def sample(self, prompt: Prompt | list[Prompt], k: int = 50, temperature: float = 0.7, seed: int | None = 0, **kwargs: Any):
        """Sampling from the LM alone among its top-k, softmax(logit / temperature), no reward model: the sampler
        best-of-n draws its candidates with. Keywords: max_new_tokens, ignore_eos, stop. Rewards in the result are 0."""
        unknown = [name for name in kwargs if name not in ("max_new_tokens", "ignore_eos", "stop")]
        if unknown:
            raise TypeError(f"sample() got an unexpected keyword argument {unknown[0]!r}; its keywords are k, temperature, seed, "
                            "max_new_tokens, ignore_eos, stop")
        settings = self.settings(k=k, w=0.0, method="stochastic", temperature=temperature, seed=seed, **kwargs)
        return self._run(prompt, settings, lm_only=True)

    def settings(self, **kwargs: Any) -> Settings:
        """generate()'s keywords, checked against their ranges and this bundle's limits."""
        return self.bundle.settings("generate", **kwargs)

    def prompt_ids(self, prompt: Prompt, where: str = "the prompt") -> list[int]:
        """One prompt (text, chat messages or token ids) as checked token ids: what generate() would run."""
        return self.bundle.prompt_ids(prompt, where)

    def encode(self, prompt: Any) -> tuple[list[list[int]], bool]:
        """Token ids of one prompt or a batch, each checked against the bundle's vocabulary and context."""
        return self.bundle.encode(prompt)

    def engine_info(self) -> dict[str, Any]:
        """What runs, for every result's timings."""
        return self.bundle.engine_info()

    # ------------------------------------------------------------------ one call: its requests decoded together

    def _run(self, prompt: Prompt | list[Prompt], settings: Settings, lm_only: bool):
        """One call to its end: the prompts checked, then the generator's turn (waiting for a call in another thread)."""
        prompts, is_batch = self.bundle.encode(prompt)
        with self.bundle.turns.turn():
            batcher, handles = self._start(prompts, settings, lm_only, stream=False, chats=self.bundle.chats(prompt, is_batch))
            while batcher.busy:
                _advance(batcher)
        results = [h.result() for h in handles]  # raises what failed
        return results if is_batch else results[0]

    def _start(self, prompts: list[list[int]], settings: Settings, lm_only: bool, stream: bool,
               chats: list | None = None) -> tuple[Batcher, list[RequestHandle]]:
        """The call's requests, seated and prefilled (each has its first token)."""
        device = (self.bundle.device_chooser, settings.choice) if self.bundle.device_chooser is not None and not lm_only else None
        chooser = make_chooser(self.loop, len(prompts), device) if device else None
        batcher = Batcher(self.bundle, len(prompts), lm_only=lm_only, chooser=chooser)
        requests = [Request(p, settings, stream, chat) for p, chat in zip(prompts, chats or [None] * len(prompts))]
        batcher.seat(requests)
        return batcher, [r.handle for r in requests]


def _advance(batcher: Batcher) -> None:
    """One more token for every row still running (the rows kept few and contiguous)."""
    batcher.close_holes()
    batcher.step()
