"""The one place model work happens: one worker thread per generator runs the submitted requests, off the event loop.

The interface is small on purpose (submit a job → a handle to iterate token events from, await and cancel). A
static-cache bundle is served by continuous batching (continuous.py: every request through ArgsEngine). This module's
`BatchScheduler` serves the bundles the engine cannot run (the dynamic cache layout, TensorRT, CUDA graphs): requests
waiting together are decoded together with `generate(list_of_prompts)`, up to `max_batch`, but only those that give
exactly the tokens they give alone (`plan_batches`); the others run alone through `stream()`, which a cancel stops
between two tokens.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ..engine import EngineHooks as SchedulerHooks
from ..errors import ArgsError, RequestCancelled
from ..generator import GenerationResult, TokenEvent

log = logging.getLogger("args_runtime.serve")


@dataclass(frozen=True)
class GenerationSettings:
    """The runtime's generate() keywords for one request, checked (see protocol.generation_settings)."""

    k: int
    w: float
    max_new_tokens: int
    method: str
    temperature: float
    seed: int | None
    stop: tuple[str, ...]
    ignore_eos: bool

    def kwargs(self) -> dict[str, Any]:
        return {**asdict(self), "stop": list(self.stop) or None}


@dataclass
class Job:
    """One request as the scheduler sees it: prompt ids, settings, and whether its tokens are streamed."""

    prompt: list[int]
    settings: GenerationSettings
    stream: bool
    submitted_at: float = field(default_factory=time.perf_counter)


_END = object()


class Handle:
    """A submitted job as the event loop sees it: `async for event in handle` (streamed jobs), `await handle.result()`,
    `handle.cancel()`. The worker thread hands events over with call_soon_threadsafe into a queue bounded by the
    job's own token budget, so the worker never waits for a slow client and a client never holds the worker."""

    def __init__(self, job: Job, loop: asyncio.AbstractEventLoop) -> None:
        self.job, self._loop = job, loop
        self._events: asyncio.Queue = asyncio.Queue(maxsize=job.settings.max_new_tokens + 1)
        self._done: asyncio.Future = loop.create_future()
        self._cancelled = threading.Event()
        self.first_token_at: float | None = None  # perf_counter time of the first token (set by the worker)

    # -- event-loop side
    def __aiter__(self) -> AsyncIterator[TokenEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[TokenEvent]:
        while (event := await self._events.get()) is not _END:
            yield event

    async def result(self) -> GenerationResult:
        """The finished result; raises the run's ArgsError, or RequestCancelled."""
        return await asyncio.shield(self._done)

    def cancel(self) -> None:
        """Stop the job: skipped if it has not started, stopped at the next token if it runs alone. Idempotent."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def done(self) -> bool:
        return self._done.done()

    # -- worker side
    def emit(self, event: TokenEvent) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        if self.job.stream:
            self._call(self._events.put_nowait, event)

    def finish(self, result: GenerationResult | None = None, error: BaseException | None = None) -> None:
        self._call(self._settle, result, error)

    def _settle(self, result: GenerationResult | None, error: BaseException | None) -> None:
        if self._done.done():
            return
        if error is not None:
            self._done.set_exception(error)
            self._done.exception()  # marks it retrieved: a client that left never awaits it
        else:
            self._done.set_result(result)
        self._events.put_nowait(_END)

    def _call(self, fn: Callable, *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the event loop is closed: nobody is waiting any more
            self.cancel()


class Scheduler(ABC):
    """Runs jobs on a generator, one worker per generator; the app talks only to this."""

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def submit(self, job: Job) -> Handle:
        """Queue a job (call from the event loop); returns at once."""

    @abstractmethod
    def stop(self) -> None:
        """Cancel what is queued or running and end the worker."""

    @abstractmethod
    def alive(self) -> bool:
        """Whether the worker is running (a health check)."""


def plan_batches(jobs: list[Job], max_batch: int, max_context: int) -> list[list[Job]]:
    """Group waiting jobs, in arrival order, into runs that give every job exactly the tokens it gets alone.

    The runtime's batch shares one set of settings and a left-padded cache whose longest prompt bounds everyone's
    context; sampled rows draw from one seeded stream in row order, and stream() takes one prompt. So only greedy,
    non-streamed jobs with equal settings batch, and only while the longest prompt leaves every row its token budget.
    """
    groups: list[list[Job]] = []
    for job in jobs:
        s = job.settings
        if s.method == "greedy" and not job.stream:
            for group in groups:
                head = group[0]
                longest = max(len(j.prompt) for j in (*group, job))
                if (not head.stream and head.settings == s and len(group) < max_batch and longest + s.max_new_tokens <= max_context):
                    group.append(job)
                    break
            else:
                groups.append([job])
        else:
            groups.append([job])
    return groups


class BatchScheduler(Scheduler):
    """Today's scheduler: a worker thread takes what is waiting, runs the oldest job's group (see plan_batches),
    and comes back for the rest. A batchable job waits up to `batch_wait_s` for others to join it."""

    def __init__(self, generator: Any, max_batch: int = 8, batch_wait_s: float = 0.010, hooks: SchedulerHooks | None = None) -> None:
        self.gen, self.max_batch, self.batch_wait_s = generator, max_batch, batch_wait_s
        self.hooks = hooks or SchedulerHooks()
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._waiting: list[tuple[Job, Handle]] = []
        self._thread = threading.Thread(target=self._work, name="args-serve-worker", daemon=True)
        self._stopping = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> Handle:
        handle = Handle(job, asyncio.get_running_loop())
        self._inbox.put((job, handle))
        self._report_depth()
        return handle

    def _report_depth(self) -> None:
        self.hooks.queue_depth(self._inbox.qsize() + len(self._waiting))

    def stop(self) -> None:
        self._stopping.set()
        self._inbox.put(None)
        self._thread.join(timeout=30)

    def alive(self) -> bool:
        return self._thread.is_alive()

    # ------------------------------------------------------------------ worker thread

    def _work(self) -> None:
        while not self._stopping.is_set():
            if not self._waiting and not self._take(block=True):
                break
            self._gather()
            self._waiting = [(j, h) for j, h in self._waiting if not self._dropped(h)]
            if not self._waiting:
                continue
            handles = {id(j): h for j, h in self._waiting}
            group = plan_batches([j for j, _ in self._waiting], self.max_batch, self.gen.manifest.max_context)[0]
            chosen = {id(j) for j in group}
            self._waiting = [(j, h) for j, h in self._waiting if id(j) not in chosen]
            self.hooks.running(len(group))  # before the depth drops, so queued + running never reads 0 in between
            self._report_depth()
            self._run(group, [handles[id(j)] for j in group])
        for _, handle in self._waiting + self._drain():
            handle.finish(error=RequestCancelled("the server is shutting down"))

    def _take(self, block: bool, timeout: float | None = None) -> bool:
        """Move one item from the inbox to the waiting list; False on the stop sentinel or when nothing came."""
        try:
            item = self._inbox.get(block=block, timeout=timeout)
        except queue.Empty:
            return False
        if item is None:
            self._stopping.set()
            return False
        self._waiting.append(item)
        return True

    def _gather(self) -> None:
        """Take everything queued; if the oldest job could batch, give others `batch_wait_s` to arrive."""
        while self._take(block=False):
            pass
        head = self._waiting[0][0] if self._waiting else None
        if head is None or head.stream or head.settings.method != "greedy" or self.max_batch < 2:
            return
        deadline = time.perf_counter() + self.batch_wait_s
        while len(self._waiting) < self.max_batch and (left := deadline - time.perf_counter()) > 0:
            if not self._take(block=True, timeout=left) and self._stopping.is_set():
                return

    def _drain(self) -> list[tuple[Job, Handle]]:
        items = []
        while True:
            try:
                item = self._inbox.get(block=False)
            except queue.Empty:
                return items
            if item is not None:
                items.append(item)

    @staticmethod
    def _dropped(handle: Handle) -> bool:
        if handle.cancelled:
            handle.finish(error=RequestCancelled("cancelled before it started"))
        return handle.cancelled

    def _run(self, group: list[Job], handles: list[Handle]) -> None:
        self.hooks.batch(len(group))
        try:
            if len(group) == 1:
                self._run_alone(group[0], handles[0])
            else:
                self._run_batch(group, handles)
        except ArgsError as e:
            for handle in handles:
                handle.finish(error=e)
        except Exception as e:  # a bug or an engine failure: fail these requests, keep serving the others
            log.exception("generation failed")
            for handle in handles:
                handle.finish(error=e)
        finally:
            self.hooks.running(0)

    def _run_alone(self, job: Job, handle: Handle) -> None:
        """stream() for one prompt: tokens reach the handle as they are chosen; a cancel closes the stream, which
        stops the decode loop before the next token."""
        events = self.gen.stream(job.prompt, **job.settings.kwargs())
        try:
            for event in events:
                if handle.cancelled or self._stopping.is_set():
                    handle.finish(error=RequestCancelled("cancelled while generating"))
                    return
                handle.emit(event)
                if event.result is not None:
                    handle.finish(event.result)
        finally:
            events.close()

    def _run_batch(self, group: list[Job], handles: list[Handle]) -> None:
        """generate() over the group's prompts as one batch (equal settings, see plan_batches)."""
        start = time.perf_counter()
        results = self.gen.generate([j.prompt for j in group], **group[0].settings.kwargs())
        for handle, result in zip(handles, results):
            handle.first_token_at = start + result.timings["time_to_first_token_ms"] / 1e3
            if handle.cancelled:
                handle.finish(error=RequestCancelled("cancelled while generating"))
            else:
                handle.finish(result)
