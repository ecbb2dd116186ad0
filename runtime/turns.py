"""One call at a time on one ArgsGenerator. Its models keep one KV cache each (the static layout reuses fixed buffers
from call to call), so calls take turns: a call from another thread waits until the running one has finished. A stream
holds its turn from its first token until it ends, is closed, or is garbage-collected; a later call from the thread
that holds a suspended stream ends that stream first, so a stream left behind by an exception or Ctrl-C never blocks
its own thread. Separate generators share nothing and run side by side."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

from .errors import GenerationError

T = TypeVar("T")


class Turns:
    """The lock behind one generator's calls, and which thread holds it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: int | None = None  # the thread whose call holds the turn
        self._end_stream: Callable[[], None] | None = None  # ends the holder when it is a (suspended) stream

    @contextmanager
    def turn(self, end_stream: Callable[[], None] | None = None) -> Iterator[None]:
        """Hold the generator for one call, waiting for the running one. `end_stream`: how a later call from this
        thread ends the caller, a stream, while it is suspended."""
        me = threading.get_ident()
        if self._thread == me:
            if self._end_stream is None:
                raise GenerationError("this generator is already running a call in this thread (a call made from inside another, "
                                      "e.g. by a signal handler): make the second call after the first returns")
            self._end_stream()  # it gives its turn back as it closes
        self._lock.acquire()
        self._thread, self._end_stream = me, end_stream
        try:
            yield
        finally:
            self._thread = self._end_stream = None
            self._lock.release()

    def acquire(self) -> None:
        """Hold the turn until `release` (a holder that spans many calls of its own: a fixed batch in ArgsEngine's thread)."""
        self._lock.acquire()
        self._thread, self._end_stream = threading.get_ident(), None

    def release(self) -> None:
        self._thread = self._end_stream = None
        self._lock.release()


class Stream(Generic[T]):
    """What ArgsGenerator.stream() returns: an iterator over one generation's events. `close()` (or leaving a `with`
    block) ends it early and frees the generator; so does a later call on the same generator from the same thread, after
    which reading the stream raises GenerationError."""

    def __init__(self, events: Callable[[Callable[[], None]], Iterator[T]]) -> None:
        self._ended_by_later_call = False
        self._events = events(self._end)

    def __iter__(self) -> "Stream[T]":
        return self

    def __next__(self) -> T:
        if self._ended_by_later_call:
            raise GenerationError("this stream was ended by a later call on the same generator from this thread (a generator runs "
                                  "one call at a time): start a new stream, or finish this one before the next call")
        return next(self._events)

    def close(self) -> None:
        """End the generation now; the generator is free for the next call."""
        self._events.close()

    def __enter__(self) -> "Stream[T]":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _end(self) -> None:
        self._ended_by_later_call = True
        self._events.close()
