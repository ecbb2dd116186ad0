"""The serving state of one process (or one Ray replica): the generator, its scheduler, its metrics, and whether the
bundle is loading, ready, or failed to load (what /health reports)."""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time

from ..errors import ArgsError, GenerationError
from .config import ServeConfig
from .metrics import ServeMetrics
from .protocol import Limits
from .continuous import make_scheduler
from .scheduler import Scheduler

log = logging.getLogger("args_runtime.serve")


def replica_name() -> str:
    """Who answers: the Ray Serve replica's id inside a replica, else host:pid."""
    try:
        from ray import serve

        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # not inside a Ray Serve replica (or Ray is not installed)
        return f"{socket.gethostname()}:{os.getpid()}"


class ServerState:
    """Loads the bundle once (`load`, blocking: run it off the event loop), then hands out the scheduler and limits."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.metrics = ServeMetrics()
        self.status = "loading"  # "loading" | "ready" | "failed"
        self.error: str | None = None
        self.generator = None
        self.scheduler: Scheduler | None = None
        self.limits: Limits | None = None
        self.replica = replica_name()
        self.created = int(time.time())
        self._lock = threading.Lock()
        self._closed = False

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    def load(self) -> None:
        """Open the bundle, check the server's defaults against it, start the scheduler; on failure keep the reason."""
        from ..generator import ArgsGenerator

        c = self.config
        try:
            gen = ArgsGenerator.from_bundle(c.bundle, device=c.device, threads=c.threads, shared_threads=c.shared_threads)
            self.limits = _limits(c, gen)
            self.metrics.instrument(gen)
            scheduler = make_scheduler(gen, c.max_batch, c.batch_wait_ms / 1e3, self.metrics.hooks())
            scheduler.start()
        except Exception as e:
            self.status, self.error = "failed", str(e)
            log.error("args-serve: cannot serve %s: %s", c.bundle, e)
            raise
        with self._lock:
            self.generator, self.scheduler = gen, scheduler
            self.status = "ready"
            if self._closed:  # shut down while loading
                scheduler.stop()
        log.info("args-serve: %s ready (replica %s)", c.served_name, self.replica)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            scheduler = self.scheduler
        if scheduler is not None:
            scheduler.stop()

    def healthy(self) -> bool:
        return self.ready and self.scheduler is not None and self.scheduler.alive()


def _limits(config: ServeConfig, gen) -> Limits:
    """The bundle's limits with the server's defaults, refused here if the bundle cannot take them."""
    m = gen.manifest
    if not 1 <= config.k <= m.max_k:
        raise GenerationError(f"--k {config.k} is out of range for this bundle: it supports 1 <= k <= {m.max_k}")
    if not math.isfinite(config.w):
        raise GenerationError(f"--w {config.w} must be a finite number")
    if config.max_batch < 1:
        raise ArgsError(f"--max-batch {config.max_batch} must be >= 1")
    return Limits(config.served_name, m.max_context, m.max_k, config.k, float(config.w))
