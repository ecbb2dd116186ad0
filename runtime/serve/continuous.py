"""Continuous batching behind args-serve's scheduler interface: every request (streamed or not, greedy or sampled,
whatever its settings) is submitted to one ArgsEngine, which re-forms the batch at every step, so a request joins the
running batch at once and leaves it as soon as it is done, and still gets exactly its single-request tokens."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from ..engine import ArgsEngine, RequestHandle, unsupported
from ..generator import GenerationResult, TokenEvent
from .scheduler import BatchScheduler, Job, Scheduler, SchedulerHooks

log = logging.getLogger("args_runtime.serve")


class EngineHandle:
    """A job submitted to the engine, as the app sees a handle: `async for event in handle` (streamed jobs),
    `await handle.result()`, `handle.cancel()`; it records when the first token came (for the TTFT metric)."""

    def __init__(self, job: Job, request: RequestHandle) -> None:
        self.job, self._request = job, request
        self.first_token_at: float | None = None

    def __aiter__(self) -> AsyncIterator[TokenEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[TokenEvent]:
        async for event in self._request:  # raises the request's error (e.g. RequestCancelled) at its end
            if self.first_token_at is None:
                self.first_token_at = time.perf_counter()
            yield event

    async def result(self) -> GenerationResult:
        """The finished result; raises the run's ArgsError, or RequestCancelled."""
        result = await self._request.wait()
        if self.first_token_at is None:  # not streamed: the engine's clock started at submit(), as the job's did
            self.first_token_at = self.job.submitted_at + result.timings["time_to_first_token_ms"] / 1e3
        return result

    def cancel(self) -> None:
        """Stop the job: a waiting one never starts, a running one leaves the batch before the next step. Idempotent."""
        self._request.cancel()

    @property
    def done(self) -> bool:
        return self._request.done


class EngineScheduler(Scheduler):
    """args-serve over an ArgsEngine with `max_batch` slots: the engine's own thread runs the steps; submit() returns
    at once. Its hooks feed the server's metrics (queue depth, running requests, requests per decode step)."""

    def __init__(self, generator: Any, max_batch: int = 8, hooks: SchedulerHooks | None = None) -> None:
        self.gen, self.max_batch, self.hooks = generator, max_batch, hooks or SchedulerHooks()
        self.engine: ArgsEngine | None = None

    def start(self) -> None:
        self.engine = ArgsEngine(self.gen, slots=self.max_batch, hooks=self.hooks)

    def submit(self, job: Job) -> EngineHandle:
        return EngineHandle(job, self.engine.submit(job.prompt, **job.settings.kwargs()))

    def stop(self) -> None:
        if self.engine is not None:
            self.engine.close()

    def alive(self) -> bool:
        return self.engine is not None and self.engine.alive()


def make_scheduler(generator: Any, max_batch: int, batch_wait_s: float, hooks: SchedulerHooks) -> Scheduler:
    """Continuous batching where the engine can run over the bundle; otherwise (a dynamic-cache bundle, TensorRT, CUDA
    graphs) the fixed-batch BatchScheduler, with the reason in the log."""
    reason = unsupported(generator)
    if reason is None:
        return EngineScheduler(generator, max_batch, hooks)
    log.warning("args-serve: no continuous batching (%s); serving with fixed batches of equal settings", reason)
    return BatchScheduler(generator, max_batch, batch_wait_s, hooks)
