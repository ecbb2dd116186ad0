"""ArgsEngine: requests submitted at any time, from any thread, decoded together by one thread of the engine's own
(the one scheduler behind args-serve). Each turn it seats waiting requests in free rows (prefilling each, which also
chooses its first token), ends cancelled ones, and runs one ARGS step for every seated request (runtime/batch.py).

Over a static-cache bundle on ONNX Runtime this is continuous batching (iteration-level scheduling, as Orca and vLLM
do it): a request joins the running batch between two steps and leaves it as soon as it is done. Over the others (the
dynamic layout, TensorRT, CUDA graphs) the rows share the models' own left-padded caches, so requests that wait together
are decoded together as a fixed batch, which runs to its end before the next one is seated. Either way every request gets
exactly the tokens `ArgsGenerator.generate` gives it alone (a fixed batch seats only requests whose context the batch's
longest prompt cannot shorten), whatever its settings (k, w, method, temperature, seed, stop, limits).

`score(inputs)` (args-serve's /pooling and /classify) queues reward-model jobs that the same thread runs between two
steps, over buffers of their own (runtime/scoring.py): the running requests' caches and tokens are left alone."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .batch import Batcher
from .bundle import Bundle
from .errors import GenerationError, RequestCancelled
from .requests import Request, RequestHandle
from .results import GenerationResult
from .scoring import ScoreInput, is_token_ids, rewards, rm_ids
from .settings import Settings
from .tokenizer import is_chat

if TYPE_CHECKING:
    from .generator import ArgsGenerator
    from .tokenizer import Prompt

__all__ = ["ArgsEngine", "EngineHooks", "RequestHandle"]

log = logging.getLogger("args_runtime.engine")


def _ignore(n: int) -> None:
    pass


@dataclass
class EngineHooks:
    """What the engine reports as it works, e.g. to Prometheus gauges (args-serve's metrics): requests waiting for a row,
    requests seated in one, and the requests each decode step ran together. Called from the engine's thread (and from
    submit()/cancel()), so keep them cheap."""

    queue_depth: Callable[[int], None] = _ignore
    running: Callable[[int], None] = _ignore
    batch: Callable[[int], None] = _ignore


class ArgsEngine:
    """Requests decoded together over one bundle: `submit(prompt, **settings)` returns a RequestHandle at once; one
    thread of the engine's own runs the steps. `slots`: how many requests run at once. `width_step`: continuous
    batching's caches are only as wide as the seated requests need, in steps of this many slots (a multiple of 64 keeps
    results bit-identical); None attends over all max_context slots every step. `batch_wait_s`: fixed batches only, how
    long the first waiting request waits for others to join its batch. Close it (`close()`, or use it as a context
    manager) to stop the thread; what is still waiting or running then ends with RequestCancelled."""

    def __init__(self, bundle: "Bundle | ArgsGenerator", slots: int = 8, hooks: EngineHooks | None = None,
                 width_step: int | None = 64, batch_wait_s: float = 0.0) -> None:
        bundle = bundle if isinstance(bundle, Bundle) else bundle.bundle
        _check(slots, width_step, batch_wait_s)
        self.bundle, self.slots, self.batch_wait_s = bundle, slots, batch_wait_s
        self.hooks = hooks or EngineHooks()
        self.batcher = Batcher(bundle, slots, width_step=width_step)
        self.continuous = self.batcher.continuous
        self.info = self.batcher.info
        if not self.continuous:
            log.info("ArgsEngine: fixed batches over %s (%s)", bundle.path, self.batcher.why_fixed)
        self._waiting: deque[Request] = deque()
        self._jobs: deque[tuple[list[list[int]], Future]] = deque()  # scoring, run between two steps
        self._cond = threading.Condition()
        self._closing = False
        self._holding_turn = False  # a fixed batch runs over the models' own caches: it holds the bundle's turn
        self._thread = threading.Thread(target=self._work, name="args-engine", daemon=True)
        self._thread.start()

    @classmethod
    def from_bundle(cls, path: str | Path, slots: int = 8, device: str = "cpu", **options: Any) -> "ArgsEngine":
        """Open a bundle (keywords as ArgsGenerator.from_bundle) and start an engine over it."""
        return cls(Bundle.open(path, device, **options), slots)

    @property
    def batching(self) -> str:
        """How this engine batches, in a line (args-serve logs it and /health reports it)."""
        if self.continuous:
            return f"continuous batching, {self.slots} slots"
        return f"fixed batches of up to {self.slots} requests: {self.batcher.why_fixed}"

    @property
    def steps(self) -> int:
        """Decode steps run so far (prefills not counted)."""
        return self.batcher.steps

    # ------------------------------------------------------------------ public API

    def submit(self, prompt: "Prompt | Request", stream: bool = True, **settings: Any) -> RequestHandle:
        """Queue one prompt (text, chat messages or token ids) with generate()'s keywords: k, w, max_new_tokens, method,
        temperature, seed, ignore_eos, stop. Bad input raises here, at once (GenerationError); returns at once.
        `stream=False`: the handle gives the result only, no events. A `Request` (prompt ids and Settings checked at
        the door, e.g. by args-serve) is queued as it is."""
        request = prompt if isinstance(prompt, Request) else self.request(prompt, self.bundle.settings("submit", **settings), stream)
        with self._cond:
            if self._closing:
                raise GenerationError("this ArgsEngine is closed; start a new one")
            request.handle._on_cancel = self._cancel
            self._waiting.append(request)
            self._cond.notify_all()
            self.hooks.queue_depth(len(self._waiting))
        return request.handle

    def request(self, prompt: "Prompt", settings: Settings, stream: bool = True) -> Request:
        """A request for this engine: the prompt checked at the bundle's door, with checked settings."""
        prompts, is_batch = self.bundle.encode(prompt)
        if is_batch:
            raise GenerationError("submit() takes one prompt; submit each prompt of a batch on its own")
        if settings.k > self.bundle.manifest.max_k:
            raise GenerationError(f"k={settings.k} is out of range: this bundle supports 1 <= k <= {self.bundle.manifest.max_k}")
        return Request(prompts[0], settings, stream, self.bundle.chats(prompt, False)[0])

    def generate(self, prompt: "Prompt", **settings: Any) -> GenerationResult:
        """submit() and wait for the result."""
        return self.submit(prompt, stream=False, **settings).result()

    def score(self, inputs: "ScoreInput | list[ScoreInput]", timeout: float | None = None) -> list[float]:
        """The reward model's reward of each whole input (a text, the RM's token ids, or chat messages ending with the
        reply), in order; one input gives a list of one. Thread-safe: the RM runs on the engine's thread between two steps, over buffers of its
        own (the running requests' caches and tokens are not touched). Bad input raises GenerationError at once."""
        items = [inputs] if isinstance(inputs, str) or is_chat(inputs) or is_token_ids(inputs) else list(inputs)
        sequences = [rm_ids(self.bundle, item, f"input {i}") for i, item in enumerate(items)]
        return self.submit_scoring(sequences).result(timeout)

    def submit_scoring(self, sequences: list[list[int]]) -> "Future[list[float]]":
        """Queue the rewards of whole RM id sequences (scoring.rm_ids makes them) for the engine's thread; returns at once.
        Cancelling the future before the thread takes it skips it."""
        future: Future[list[float]] = Future()
        with self._cond:
            if self._closing:
                raise GenerationError("this ArgsEngine is closed; start a new one")
            self._jobs.append((sequences, future))
            self._cond.notify_all()
        return future

    def alive(self) -> bool:
        """Whether the engine's thread is running (a health check)."""
        return self._thread.is_alive() and not self._closing

    def stats(self) -> dict[str, int]:
        """What the engine holds now: requests running (seated) and waiting, slots, the caches' width; decode steps,
        moves and re-layouts so far."""
        b = self.batcher
        with self._cond:
            return {"running": len(b.seated()), "waiting": len(self._waiting), "slots": self.slots, "steps": b.steps,
                    "moves": b.moves, "width": b.caches.width if b.caches else self.bundle.max_context, "resizes": b.resizes}

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop the engine's thread after its current step; waiting and running requests end with RequestCancelled."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def __enter__(self) -> "ArgsEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _cancel(self, handle: RequestHandle) -> None:
        with self._cond:
            for request in self._waiting:
                if request.handle is handle:
                    self._waiting.remove(request)
                    handle.settle(error=request.cancelled_error(started=False))
                    self.hooks.queue_depth(len(self._waiting))
                    return
            self._cond.notify_all()  # a seated one: the engine's thread ends it before the next step

    # ------------------------------------------------------------------ the engine's thread

    def _work(self) -> None:
        try:
            while self._turn():
                pass
        except BaseException:
            log.exception("ArgsEngine: the engine's thread stopped")
            raise
        finally:
            self._shut_down()

    def _turn(self) -> bool:
        """Seat what waits in free rows (prefilling each), end cancelled requests, close holes, run one step."""
        b = self.batcher
        with self._cond:
            self._cond.wait_for(lambda: self._closing or self._waiting or b.busy or self._jobs)
            if self._closing:
                return False
            jobs = list(self._jobs)
            self._jobs.clear()
        self._score(jobs)
        if not b.busy and not self.continuous and self._waiting:
            self._gather()
        with self._cond:
            seated = self._take_seats()
        if seated:
            self.hooks.running(len(b.seated()) + len(seated))  # running first, so that waiting + running never reads 0
            self.hooks.queue_depth(len(self._waiting))
            if not self.continuous:
                self._hold_turn()
            b.seat(seated)
        b.cancel_marked()
        with self._cond:
            if not self._waiting:
                b.close_holes()
        if b.busy:
            running = len(b.seated())
            b.step()
            self.hooks.batch(running)
        if not b.busy:
            self._give_turn_back()
        self.hooks.running(len(b.seated()))
        return True

    def _score(self, jobs: list[tuple[list[list[int]], Future]]) -> None:
        """Run the queued scoring jobs (between two steps: no step runs while the RM scores them)."""
        for sequences, future in jobs:
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(rewards(self.bundle, sequences))
            except Exception as e:  # the caller gets what failed; the engine goes on
                future.set_exception(e)

    def _take_seats(self) -> list[Request]:
        """The waiting requests that sit down now (called with the lock held): continuous, as many as there are free
        rows; fixed batches, when no batch runs, those that do not shorten each other's context, in arrival order."""
        free, taken = self.batcher.free_rows(), []
        while self._waiting and len(taken) < free:
            if not self.continuous and taken and not self.batcher.fits(taken, self._waiting[0]):
                break
            taken.append(self._waiting.popleft())
        return taken

    def _gather(self) -> None:
        """A fixed batch about to start waits up to batch_wait_s for more requests to join it."""
        deadline = time.perf_counter() + self.batch_wait_s
        with self._cond:
            while len(self._waiting) < self.slots and not self._closing and (left := deadline - time.perf_counter()) > 0:
                self._cond.wait(left)

    def _hold_turn(self) -> None:
        if not self._holding_turn:
            self.bundle.turns.acquire()
            self._holding_turn = True

    def _give_turn_back(self) -> None:
        if self._holding_turn:
            self._holding_turn = False
            self.bundle.turns.release()

    def _shut_down(self) -> None:
        with self._cond:
            self._closing = True
            self.batcher.end_all(RequestCancelled("the engine was closed"))
            while self._waiting:
                self._waiting.popleft().handle.settle(error=RequestCancelled("the engine was closed"))
            while self._jobs:
                _, future = self._jobs.popleft()
                if future.set_running_or_notify_cancel():
                    future.set_exception(RequestCancelled("the engine was closed"))
            self.hooks.running(0)
            self.hooks.queue_depth(0)
        self._give_turn_back()


def _check(slots: int, width_step: int | None, batch_wait_s: float) -> None:
    """A sane slot count, width step and batch wait."""
    if not isinstance(slots, int) or isinstance(slots, bool) or slots < 1:
        raise GenerationError(f"slots={slots!r} must be an integer >= 1 (how many requests run at once)")
    if width_step is not None and (not isinstance(width_step, int) or isinstance(width_step, bool) or width_step < 1):
        raise GenerationError(f"width_step={width_step!r} must be None (attend over every cache slot) or an integer >= 1 "
                              "(a multiple of 64 keeps results bit-identical)")
    if not isinstance(batch_wait_s, (int, float)) or isinstance(batch_wait_s, bool) or not 0 <= batch_wait_s <= 60:
        raise GenerationError(f"batch_wait_s={batch_wait_s!r} must be a number of seconds from 0 to 60")
