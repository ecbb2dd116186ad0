"""ArgsEngine: continuous batching for ARGS. Requests join and leave the running batch between steps (iteration-level
scheduling, as Orca and vLLM do it), in both models at once: each request owns one slot (runtime/slots.py), i.e. one
row of the LM's and the RM's static KV caches, at its own position.

One thread of the engine's own runs the steps. Each turn it seats waiting requests in free slots and prefills each
prompt into its slot's rows alone (which also chooses that request's first token), then runs one ARGS step for every
seated request together: the LM's top-K for all rows (K = the largest k seated), the RM's rewards of those K
candidates, and each request's own choice among its own first k (its w, greedy or sampled, temperature, and its own
seeded stream). A request that finishes or is cancelled frees its slot at once.

Every request gets exactly the tokens `ArgsGenerator.generate` gives it alone: its prompt is prefilled as a batch of
one, a candidate's reward never depends on the others (the RM's tree mask), the LM's top-k is the first k of its top-K,
and a sampled request draws one uniform per step from its own PCG64(seed), as generate() does for it alone.

A step attends only over the cache slots in use: the caches are as wide as the seated requests need, re-laid out when
that changes (runtime/context_width.py: copies of the graphs with a free context dimension; bit-identical results).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .choice import Chooser, Chosen, make_chooser
from .context_width import WidthPolicy, narrow_models
from .engine_steps import model_steps, step_models
from .errors import ArgsError, BundleError, GenerationError, RequestCancelled
from .results import GenerationResult, Row, TokenEvent, TokenStream
from .settings import Settings
from .slots import SlotCaches, SlotTable
from .stepper import EOS, LIMIT, RUNNING, Step

if TYPE_CHECKING:
    from .generator import ArgsGenerator
    from .tokenizer import Prompt

__all__ = ["ArgsEngine", "EngineHooks", "RequestHandle", "unsupported"]

log = logging.getLogger("args_runtime.engine")


def _ignore(n: int) -> None:
    pass


def _ignore_model(role: str, model: Any) -> None:
    pass


@dataclass
class EngineHooks:
    """What the engine reports as it works, e.g. to Prometheus gauges (args-serve's metrics): requests waiting for a slot,
    requests seated in one, and the requests each decode step ran together. Called from the engine's thread (and from
    submit()/cancel()), so keep them cheap. `model(role, model)` is called once for each model the engine runs that is
    not the generator's own ("lm", "rm": its context-free copies, runtime/context_width.py), so that what times the
    generator's model runs (args-serve's metrics wrap `run`) can time these too."""

    queue_depth: Callable[[int], None] = _ignore
    running: Callable[[int], None] = _ignore
    batch: Callable[[int], None] = _ignore
    model: Callable[[str, Any], None] = _ignore_model


class RequestHandle:
    """A submitted request. Iterate it for its TokenEvents as they are chosen (`for` in a thread, `async for` on an event
    loop; the last event carries the result), wait for its GenerationResult (`result()`, or `await handle`), or
    `cancel()` it. Thread-safe; the engine's thread fills it. A cancelled or failed request raises its error
    (RequestCancelled, or what failed) from `result()`, `await` and the end of an iteration."""

    def __init__(self, engine: "ArgsEngine", request_id: int) -> None:
        self.id = request_id
        self._engine = engine
        self._lock = threading.Condition()
        self._events: list[TokenEvent] = []
        self._result: GenerationResult | None = None
        self._error: BaseException | None = None
        self._done = False
        self._wakeups: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []

    # ------------------------------------------------------------------ the caller's side

    def __iter__(self) -> Iterator[TokenEvent]:
        seen = 0
        while True:
            with self._lock:
                self._lock.wait_for(lambda: seen < len(self._events) or self._done)
                if seen == len(self._events):
                    break
                event = self._events[seen]
            seen += 1
            yield event
        self._raise_error()

    def __aiter__(self) -> AsyncIterator[TokenEvent]:
        return self._iterate_async()

    async def _iterate_async(self) -> AsyncIterator[TokenEvent]:
        seen = 0
        while True:
            with self._lock:
                event = self._events[seen] if seen < len(self._events) else None
                wakeup = None if event is not None or self._done else self._wakeup()
            if event is not None:
                seen += 1
                yield event
            elif wakeup is not None:
                await wakeup
            else:
                break
        self._raise_error()

    def result(self, timeout: float | None = None) -> GenerationResult:
        """Block until the request finished; its result (or its error). TimeoutError after `timeout` seconds."""
        with self._lock:
            if not self._lock.wait_for(lambda: self._done, timeout):
                raise TimeoutError(f"request {self.id} has not finished within {timeout} s")
        self._raise_error()
        return self._result

    async def wait(self) -> GenerationResult:
        """The result, awaited on an event loop (`await handle` does the same)."""
        while True:
            with self._lock:
                if self._done:
                    break
                wakeup = self._wakeup()
            await wakeup
        return self.result()

    def __await__(self):
        return self.wait().__await__()

    def cancel(self) -> None:
        """Stop the request: a waiting one never starts, a running one leaves the batch before the next step and frees
        its slot. Idempotent; does nothing once it finished."""
        self._engine._cancel(self)

    @property
    def done(self) -> bool:
        return self._done

    # ------------------------------------------------------------------ the engine's side

    def _publish(self, event: TokenEvent) -> None:
        with self._lock:
            self._events.append(event)
            self._wake()

    def _settle(self, result: GenerationResult | None = None, error: BaseException | None = None) -> None:
        with self._lock:
            if self._done:
                return
            self._result, self._error, self._done = result, error, True
            self._wake()

    def _wakeup(self) -> asyncio.Future:
        """A future the next event or the end sets (called with the lock held)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._wakeups.append((loop, future))
        return future

    def _wake(self) -> None:
        self._lock.notify_all()
        for loop, future in self._wakeups:
            try:
                loop.call_soon_threadsafe(_set_done, future)
            except RuntimeError:  # that event loop is closed: nobody waits there any more
                pass
        self._wakeups.clear()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error


def _set_done(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


@dataclass
class RowTop:
    """One row's first k proposals of the LM on the host: what a host chooser reads of a TopK."""

    logits: np.ndarray  # [1, k] float32
    ids: np.ndarray  # [1, k] int64


class Request:
    """One request's books in the engine: its prompt and settings, its own chooser (and seeded stream), the Row that
    records its tokens and stop strings, and the stream of its events."""

    def __init__(self, prompt: list[int], settings: Settings, handle: RequestHandle, engine: "ArgsEngine") -> None:
        gen = engine.gen
        self.prompt, self.settings, self.handle = prompt, settings, handle
        self.submitted = time.perf_counter()
        self.cancelled = False
        # Alone in its slot, nothing else bounds its context.
        self.row = Row(len(prompt), settings.max_new_tokens, gen.manifest.max_context - len(prompt), gen.tokenizer.decode)
        self.chooser: Chooser = make_chooser(settings.choice(1), gen.loop)
        self.info = {**engine.info, "queue_ms": None, "joined_at_step": None, "left_at_step": None}
        self.events = TokenStream(settings.stop, self.info)
        self.eos = engine.eos

    def admitted(self, step: int) -> None:
        """Seated in a slot before decode step `step + 1` (its prompt is prefilled now)."""
        self.info["queue_ms"] = (time.perf_counter() - self.submitted) * 1e3
        self.info["joined_at_step"] = step

    def choose(self, logits: np.ndarray, ids: np.ndarray, rewards: np.ndarray) -> Chosen:
        """This request's choice among its own first k candidates of one row ([1, >= k] each)."""
        k = self.settings.k
        return self.chooser(RowTop(logits[:, :k], ids[:, :k]), rewards[:, :k])

    def record(self, chosen: Chosen, position: int, step: int) -> bool:
        """Book the token chosen at decode step `step` (0: the prefill), written at cache slot `position` next; publish
        its event. True when the request finished."""
        token = int(chosen.tokens[0])
        count = len(self.row.ids) + 1
        is_eos = token in self.eos and not self.settings.ignore_eos
        finish = np.array([EOS if is_eos else LIMIT if count >= self.row.limit else RUNNING], np.int8)
        self.row.record(Step(chosen.tokens, chosen.logits, chosen.rewards, finish, chosen.tokens.reshape(1, 1), np.array([[position]])),
                        0, self.settings.stop)
        if self.row.finish_reason is not None:
            self.info["left_at_step"] = step
        event = self.events.next(self.row, time.perf_counter() - self.submitted)
        self.handle._publish(event)
        if event.result is not None:
            self.handle._settle(event.result)
        return event.result is not None


class ArgsEngine:
    """Continuous batching over an ArgsGenerator's models: `submit(prompt, **settings)` at any time, from any thread,
    returns a RequestHandle; one thread of the engine's own runs the steps. `slots`: how many requests run at once
    (each holds one row of both models' static caches, up to `max_context` slots long). `width_step`: the caches are
    only as wide as the seated requests need, in steps of this many slots (a multiple of 64 keeps results bit-identical,
    see runtime/context_width.py); None attends over all max_context slots every step. Needs a static-cache bundle
    (`args-export --cache static`) on ONNX Runtime. Close it (`close()`, or use it as a context manager) to stop the
    thread; what is still waiting or running then ends with RequestCancelled."""

    def __init__(self, generator: "ArgsGenerator", slots: int = 8, hooks: EngineHooks | None = None, width_step: int | None = 64) -> None:
        _check(generator, slots, width_step)
        self.gen, self.slots = generator, slots
        self.hooks = hooks or EngineHooks()
        context = generator.manifest.max_context
        used = step_models(generator)  # the LM and the RM, or a fused bundle's one graph
        narrow, width = narrow_models(generator, used) if width_step else (None, "full: width_step=None")
        self.policy = WidthPolicy(context, width_step) if narrow else None
        self.info = {**generator.engine_info(), "choice": "host", "scheduler": "continuous", "slots": slots, "context_width": width}
        self.eos = frozenset(generator.manifest.tokenizer.eos_token_ids)
        self.models = model_steps(narrow or used, slots)
        for role, model in zip(("rm",) if len(used) == 1 else ("lm", "rm"), narrow or ()):
            self.hooks.model(role, model)
        self.caches = SlotCaches(self.models.models, slots, self.policy.fit(1) if self.policy else context)
        self.table = SlotTable(slots, context)
        self._waiting: deque[Request] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._next_id = 0
        self.steps = 0  # decode steps run (prefills not counted)
        self.moves = 0  # requests moved down into a lower free slot
        self.resizes = 0  # times the caches were re-laid out at another width
        self._thread = threading.Thread(target=self._work, name="args-engine", daemon=True)
        self._thread.start()

    @classmethod
    def from_bundle(cls, path: str | Path, slots: int = 8, device: str = "cpu", **options: Any) -> "ArgsEngine":
        """Open a static-cache bundle (keywords as ArgsGenerator.from_bundle) and start an engine over it."""
        from .generator import ArgsGenerator

        return cls(ArgsGenerator.from_bundle(path, device=device, **options), slots)

    # ------------------------------------------------------------------ public API

    def submit(self, prompt: "Prompt", **settings: Any) -> RequestHandle:
        """Queue one prompt (text, chat messages or token ids) with generate()'s keywords: k, w, max_new_tokens, method,
        temperature, seed, ignore_eos, stop. Bad input raises here, at once (GenerationError); returns at once."""
        checked = self.gen.settings(**settings)
        prompts, is_batch = self.gen.encode(prompt)
        if is_batch:
            raise GenerationError("submit() takes one prompt; submit each prompt of a batch on its own")
        with self._cond:
            if self._closing:
                raise GenerationError("this ArgsEngine is closed; start a new one")
            handle = RequestHandle(self, self._next_id)
            self._next_id += 1
            self._waiting.append(Request(prompts[0], checked, handle, self))
            self._cond.notify_all()
            self.hooks.queue_depth(len(self._waiting))
        return handle

    def generate(self, prompt: "Prompt", **settings: Any) -> GenerationResult:
        """submit() and wait for the result."""
        return self.submit(prompt, **settings).result()

    def alive(self) -> bool:
        """Whether the engine's thread is running (a health check)."""
        return self._thread.is_alive() and not self._closing

    def stats(self) -> dict[str, int]:
        """What the engine holds now: requests running (seated in a slot) and waiting, slots, the caches' width; decode
        steps, moves and re-layouts so far."""
        with self._cond:
            return {"running": len(self.table.occupied()), "waiting": len(self._waiting), "slots": self.slots, "steps": self.steps,
                    "moves": self.moves, "width": self.caches.width, "resizes": self.resizes}

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
                    handle._settle(error=RequestCancelled(f"request {handle.id} was cancelled before it started"))
                    self.hooks.queue_depth(len(self._waiting))
                    return
            for _, request in self.table.occupied():
                if request.handle is handle:
                    request.cancelled = True  # the engine's thread frees its slot before the next step

    # ------------------------------------------------------------------ the engine's thread

    def _work(self) -> None:
        try:
            while self._turn():
                pass
        finally:
            self._shut_down()

    def _turn(self) -> bool:
        """Seat what waits in free slots (prefilling each), free cancelled requests' slots, close holes, run one step."""
        with self._cond:
            self._cond.wait_for(lambda: self._closing or self._waiting or self.table.span)
            if self._closing:
                return False
            seated = []
            while self._waiting and (slot := self.table.free_slot()) is not None:
                request = self._waiting.popleft()
                self.table.place(slot, request, len(request.prompt))
                seated.append((slot, request))
            if seated:  # running first, so that waiting + running never reads 0 in between
                self.hooks.running(len(self.table.occupied()))
                self.hooks.queue_depth(len(self._waiting))
            self._fit_width()
        for slot, request in seated:
            self._prefill(slot, request)
        with self._cond:
            for slot, request in self.table.occupied():
                if request.cancelled:
                    self._release(slot, error=RequestCancelled(f"request {request.handle.id} was cancelled while generating"))
            if not self._waiting and self.caches.movable:
                while (hole := self.table.hole()) is not None:
                    source, target = hole
                    self.caches.move(source, target, int(self.table.position[source]))
                    self.table.move(source, target)
                    self.models.move(source, target)
                    self.moves += 1
        if self.table.span:
            self._decode()
        with self._cond:
            self.hooks.running(len(self.table.occupied()))
        return True

    def _fit_width(self) -> None:
        """Before this turn's prefills and step: caches wide enough for every seated request's writes, and no wider than
        the policy allows (called with the lock held; seated requests' positions are their next write slots)."""
        if self.policy is None:
            return
        seated = self.table.occupied()
        width = self.policy.next(self.caches.width, max((int(self.table.position[s]) + 1 for s, _ in seated), default=1))
        if width != self.caches.width:
            self.caches.resize(width, {s: int(self.table.position[s]) for s, _ in seated})
            self.resizes += 1

    def _prefill(self, slot: int, request: Request) -> None:
        """The request's prompt, alone, into its slot's rows of both caches: its first step, as generate() runs it."""
        request.admitted(self.steps)
        try:
            scored = self.models.prefill(self.caches, slot, request.prompt, self.table.mask[slot : slot + 1], request.settings.k)
            chosen = request.choose(scored.logits, scored.ids, scored.rewards)
            self.models.chosen(slot, 0, int(chosen.tokens[0]))
        except Exception as error:  # this request fails; the engine keeps serving the others
            self._fail([slot], error)
            return
        self._book(slot, request, chosen)

    def _decode(self) -> None:
        """One ARGS step for every seated request: rows [0, span) of both caches, in place."""
        span = self.table.span
        seated = self.table.occupied()
        try:
            ids, positions = self.table.step_inputs(span)
            scored = self.models.decode(self.caches, ids, positions, self.table.mask[:span], max(r.settings.k for _, r in seated))
            self.table.advance()
            logits, candidates, rewards = scored.logits, scored.ids, scored.rewards
            chosen = [(slot, r, r.choose(logits[slot : slot + 1], candidates[slot : slot + 1], rewards[slot : slot + 1])) for slot, r in seated]
            for slot, _, choice in chosen:
                self.models.chosen(slot, slot, int(choice.tokens[0]))
        except Exception as error:
            self._fail([slot for slot, _ in seated], error)
            return
        self.steps += 1
        self.hooks.batch(len(seated))
        for slot, request, choice in chosen:
            self._book(slot, request, choice)

    def _book(self, slot: int, request: Request, chosen: Chosen) -> None:
        """Record a request's new token; a finished request leaves its slot now, a running one feeds the token next."""
        try:
            finished = request.record(chosen, int(self.table.position[slot]), self.steps)
        except Exception as error:
            self._fail([slot], error)
            return
        with self._cond:
            if finished:
                self.table.release(slot)
            else:
                self.table.next_ids[slot, 0] = chosen.tokens[0]

    def _release(self, slot: int, error: BaseException) -> None:
        request = self.table.occupant[slot]
        self.table.release(slot)
        request.handle._settle(error=error)

    def _fail(self, slots: list[int], error: Exception) -> None:
        if not isinstance(error, ArgsError):
            log.exception("continuous batching: a step failed; its requests end with the error", exc_info=error)
        with self._cond:
            for slot in slots:
                if self.table.occupant[slot] is not None:
                    self._release(slot, error)

    def _shut_down(self) -> None:
        with self._cond:
            self._closing = True
            for slot, _ in self.table.occupied():
                self._release(slot, RequestCancelled("the engine was closed"))
            while self._waiting:
                self._waiting.popleft().handle._settle(error=RequestCancelled("the engine was closed"))
            self.hooks.running(0)
            self.hooks.queue_depth(0)


def unsupported(generator: "ArgsGenerator") -> str | None:
    """Why continuous batching cannot run over this generator (and how to fix it), or None when it can: it needs a
    static-cache bundle on an engine that runs rows of a buffer in place, without CUDA graphs."""
    manifest = generator.manifest
    if manifest.lm.cache != "static" or manifest.rm.cache != "static":
        return (f"continuous batching keeps each request at its own position in a static cache, but {generator.bundle} has "
                f"the {manifest.lm.cache} layout: re-export it with `args-export ... --cache static`")
    engines = sorted({m.backend.name for m in step_models(generator) if not m.backend.row_views})  # a fused bundle: its RM only
    if engines:
        return (f"continuous batching runs some rows of a cache buffer in place, which the {' and '.join(engines)} engine "
                "cannot: open the generator with backend='onnxruntime'")
    if generator.options.cuda_graph:
        return ("ArgsEngine does not capture CUDA graphs (a prefill writes a different slot's rows each time): "
                "open the generator with cuda_graph=False")
    return None


def _check(generator: "ArgsGenerator", slots: int, width_step: int | None) -> None:
    """What continuous batching needs: a sane slot count and width step, and a generator it can run over (see
    `unsupported`)."""
    if not isinstance(slots, int) or isinstance(slots, bool) or slots < 1:
        raise GenerationError(f"slots={slots!r} must be an integer >= 1 (how many requests run at once)")
    if width_step is not None and (not isinstance(width_step, int) or isinstance(width_step, bool) or width_step < 1):
        raise GenerationError(f"width_step={width_step!r} must be None (attend over every cache slot) or an integer >= 1 "
                              "(a multiple of 64 keeps results bit-identical)")
    if (reason := unsupported(generator)) is not None:
        raise (BundleError if generator.manifest.lm.cache != "static" else GenerationError)(reason)
