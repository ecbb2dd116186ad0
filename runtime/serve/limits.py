"""What one client may hold of the server: a request body of at most --max-body-bytes (413), at most --max-queue
requests waiting for a slot beyond the --max-batch running (503 with Retry-After), and, with --request-timeout, a
deadline after which a request is cancelled through the engine (which frees its slot) and answered 504. The stop
strings' limit (4, as OpenAI's) is a field rule: protocol.py checks it."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from concurrent.futures import Future

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import ArgsError, RequestCancelled
from ..requests import RequestHandle
from .refusals import Refused

MIB = 1 << 20
RETRY_AFTER_S = 1  # what a refused client is told to wait: slots free as fast as requests finish


class BodyTooLarge(Refused):
    status = 413
    code = "request_too_large"


class QueueFull(Refused):
    status = 503
    code = "queue_full"


class RequestTimedOut(Refused):
    status = 504
    code = "request_timeout"
    outcome = "timeout"


def check_limits(max_body_bytes: int, max_queue: int, request_timeout_s: float | None) -> None:
    """The limits' values, refused here (ArgsError naming the option) rather than by a confused server later."""
    if not isinstance(max_body_bytes, int) or max_body_bytes < 1:
        raise ArgsError(f"--max-body-bytes {max_body_bytes!r} must be an integer >= 1 (bytes; default {MIB}, 1 MiB)")
    if not isinstance(max_queue, int) or max_queue < 0:
        raise ArgsError(f"--max-queue {max_queue!r} must be an integer >= 0 (requests waiting for a slot; 0: none wait)")
    if request_timeout_s is not None and not (isinstance(request_timeout_s, (int, float)) and math.isfinite(request_timeout_s)
                                              and request_timeout_s > 0):
        raise ArgsError(f"--request-timeout {request_timeout_s!r} must be a number of seconds > 0 (or left out: no deadline)")


class BodyLimit:
    """ASGI middleware: a request whose body is (or says it is, by Content-Length) over `max_bytes` ends in 413 when the
    app reads its body, before more than `max_bytes` are read. Raised from `receive`, the refusal reaches the app's
    exception handlers (FastAPI re-raises an HTTPException from body reading), so it is answered as every refusal is."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = Headers(scope=scope).get("content-length", "")
        too_large = declared.isdigit() and int(declared) > self.max_bytes
        received = 0

        async def limited() -> Message:
            nonlocal received
            if too_large:
                raise self._refusal(f"{declared} bytes")
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._refusal(f"more than {self.max_bytes} bytes")
            return message

        await self.app(scope, limited, send)

    def _refusal(self, size: str) -> BodyTooLarge:
        return BodyTooLarge(f"the request body ({size}) is over this server's limit of {self.max_bytes} bytes "
                            "(--max-body-bytes): send a shorter prompt")


class ScoringJob:
    """A scoring request's job on the engine's thread (ArgsEngine.submit_scoring's future) as Admission holds a
    generation's handle: it counts against the queue and its deadline cancels it (skipped unless the thread took it)."""

    def __init__(self, future: Future) -> None:
        self.future = future

    @property
    def done(self) -> bool:
        return self.future.done()

    def cancel(self) -> None:
        self.future.cancel()

    async def wait(self) -> list[float]:
        """The rewards, or RequestCancelled when the job was cancelled before the engine's thread took it."""
        try:
            return await asyncio.shield(asyncio.wrap_future(self.future))
        except asyncio.CancelledError:
            if self.future.cancelled():
                raise RequestCancelled("the scoring request was cancelled") from None
            raise


class Ticket:
    """One admitted request: its handle, and (`timeout`) the refusal to answer with when its deadline ended it."""

    def __init__(self, handle: RequestHandle | ScoringJob) -> None:
        self.handle = handle
        self.timeout: RequestTimedOut | None = None


class Admission:
    """Counts the requests the engine holds (running or waiting, from submit until the handle settles, however it
    ends) and turns away one more than `slots + max_queue`; with `timeout_s`, cancels a request at its deadline. Used
    from the event loop only (one thread), so counting needs no lock."""

    def __init__(self, slots: int, max_queue: int, timeout_s: float | None) -> None:
        self.capacity, self.max_queue, self.timeout_s = slots + max_queue, max_queue, timeout_s
        self.held = 0
        self._watchers: set[asyncio.Task] = set()

    def admit(self, submit: Callable[[], RequestHandle | ScoringJob]) -> Ticket:
        """Submit one request or scoring job (`submit()`), or raise QueueFull when the queue is full."""
        if self.held >= self.capacity:
            raise QueueFull(f"the server is busy: {self.held} requests are running or waiting, and at most {self.max_queue} may "
                            f"wait for a slot (--max-queue); retry in {RETRY_AFTER_S} s", {"Retry-After": str(RETRY_AFTER_S)})
        ticket = Ticket(submit())
        self.held += 1
        watcher = asyncio.get_running_loop().create_task(self._watch(ticket))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        return ticket

    async def _watch(self, ticket: Ticket) -> None:
        handle = ticket.handle
        try:
            try:
                await asyncio.wait_for(_settled(handle), self.timeout_s)
            except TimeoutError:
                if not handle.done:
                    ticket.timeout = RequestTimedOut(f"the request ran past this server's deadline of {self.timeout_s:g} s "
                                                     "(--request-timeout) and was stopped: ask for fewer max_tokens (or score "
                                                     "fewer inputs), or retry when the server is less busy")
                handle.cancel()  # a waiting request never starts; a running one leaves the batch before the next step
                await _settled(handle)
        finally:
            self.held -= 1

    def close(self) -> None:
        for watcher in list(self._watchers):
            watcher.cancel()


async def _settled(handle: RequestHandle) -> None:
    """Until the request has ended, however it ended."""
    try:
        await handle.wait()
    except Exception:  # cancelled or failed: the HTTP side answers that; here it only has to have ended
        pass
