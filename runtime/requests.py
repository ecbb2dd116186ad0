"""One request as it is decoded, and the one handle its caller holds. A `Request` is a checked prompt (token ids) with
its checked `Settings`; the decode loop books its tokens in its `Row` (stop strings, why it finished) and turns them
into events. Its `RequestHandle` is how `generate()`, `stream()`, `ArgsEngine.submit()` and args-serve all wait for it:
iterate its TokenEvents (`for` in a thread, `async for` on an event loop), wait for its GenerationResult
(`result()`, `await handle`), or `cancel()` it."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from .books import Step
from .errors import RequestCancelled
from .results import GenerationResult, Row, TokenEvent, TokenStream
from .settings import Settings


class RequestHandle:
    """A submitted request. Thread-safe; the decode loop fills it. A cancelled or failed request raises its error
    (RequestCancelled, or what failed) from `result()`, `await` and the end of an iteration. `submitted_at` and
    `first_token_at` are perf_counter times (for latency metrics)."""

    _ids = itertools.count()  # every handle of the process gets its own id

    def __init__(self, on_cancel: Callable[["RequestHandle"], None] | None = None) -> None:
        self.id = next(RequestHandle._ids)
        self.submitted_at = time.perf_counter()
        self.first_token_at: float | None = None
        self._on_cancel = on_cancel
        self._lock = threading.Condition()
        self._events: list[TokenEvent] = []
        self._result: GenerationResult | None = None
        self._error: BaseException | None = None
        self._done = False
        self.cancelled = False
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
        its row. Idempotent; does nothing once it finished."""
        if self._done:
            return
        self.cancelled = True
        if self._on_cancel is not None:
            self._on_cancel(self)

    @property
    def done(self) -> bool:
        return self._done

    def events_from(self, seen: int) -> list[TokenEvent]:
        """The events published after the first `seen`, without waiting (a stream driven in the caller's thread)."""
        with self._lock:
            return self._events[seen:]

    # ------------------------------------------------------------------ the decode loop's side

    def publish(self, event: TokenEvent) -> None:
        with self._lock:
            if self.first_token_at is None:
                self.first_token_at = time.perf_counter()
            self._events.append(event)
            self._wake()

    def settle(self, result: GenerationResult | None = None, error: BaseException | None = None) -> None:
        with self._lock:
            if self._done:
                return
            if result is not None and self.first_token_at is None:  # not streamed: when its first token was chosen
                self.first_token_at = self.submitted_at + result.timings["time_to_first_token_ms"] / 1e3
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


class Request:
    """One prompt (checked token ids) with its checked settings, its handle, and its books once it runs: the Row that
    records its tokens and stop strings, and (`stream`) the events that show them as they come."""

    def __init__(self, prompt: list[int], settings: Settings, stream: bool = True, chat: list[dict[str, Any]] | None = None) -> None:
        self.prompt, self.settings, self.stream = prompt, settings, stream
        self.chat = chat  # the prompt's chat messages, when it was one: an RM that reads text renders them its own way
        self.reward_row: Any = None  # the text path's RM state for this request (runtime/text_reward.py), once seated
        self.handle = RequestHandle()
        self.row: Row | None = None
        self.events: TokenStream | None = None
        self.info: dict[str, Any] = {}

    def start(self, context_budget: int, decode: Callable[[list[int]], str], info: dict[str, Any]) -> None:
        """Seated: it may generate up to `context_budget` tokens before its row runs out of cache columns."""
        self.row = Row(len(self.prompt), self.settings.max_new_tokens, context_budget, decode)
        self.info = {**info, "queue_ms": (time.perf_counter() - self.handle.submitted_at) * 1e3}
        self.events = TokenStream(list(self.settings.stop), self.info)

    @property
    def limit(self) -> int:
        return self.row.limit

    def record(self, step: Step, i: int, at_step: int, cache_bytes: Callable[[], dict[str, int]]) -> bool:
        """Book row i's token of `step` (the decode loop's step `at_step`; 0: the prefills before the first); publish
        its event (streamed requests), settle the handle when it is the last, with the KV-cache bytes its batch held
        then (`cache_bytes()`). True when the request finished."""
        row = self.row
        row.record(step, i, self.settings.stop)
        done = row.finish_reason is not None
        if done:
            self.info["left_at_step"], self.info["kv_cache_bytes"] = at_step, cache_bytes()
        if self.stream or done:
            event = self.events.next(row, time.perf_counter() - self.handle.submitted_at)
            if self.stream:
                self.handle.publish(event)
            if done:
                self.handle.settle(event.result)
        else:
            self.events.clock.append(time.perf_counter() - self.handle.submitted_at)
        return done

    def cancelled_error(self, started: bool) -> RequestCancelled:
        where = "while generating" if started else "before it started"
        return RequestCancelled(f"request {self.handle.id} was cancelled {where}")
