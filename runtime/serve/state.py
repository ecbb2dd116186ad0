"""The serving state of one process (or one Ray replica): the opened bundle, the engine that decodes its requests, its
metrics, and whether the bundle is loading, ready, or failed to load (what /health reports)."""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time

from ..engine import ArgsEngine
from ..errors import ArgsError, GenerationError
from .config import ServeConfig
from .metrics import ServeMetrics
from .protocol import Limits

log = logging.getLogger("args_runtime.serve")


def replica_name() -> str:
    """Who answers: the Ray Serve replica's id inside a replica, else host:pid."""
    try:
        from ray import serve

        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # not inside a Ray Serve replica (or Ray is not installed)
        return f"{socket.gethostname()}:{os.getpid()}"


class ServerState:
    """Loads the bundle once (`load`, blocking: run it off the event loop), then hands out the engine and limits."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.metrics = ServeMetrics()
        self.status = "loading"  # "loading" | "ready" | "failed"
        self.error: str | None = None
        self.bundle = None
        self.engine: ArgsEngine | None = None
        self.limits: Limits | None = None
        self.replica = replica_name()
        self.created = int(time.time())
        self._lock = threading.Lock()
        self._closed = False

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    def load(self) -> None:
        """Open the bundle, check the server's defaults against it, start the engine; on failure keep the reason."""
        from ..bundle import Bundle

        c = self.config
        try:
            bundle = Bundle.open(c.bundle, device=c.device, threads=c.threads, shared_threads=c.shared_threads)
            self.limits = _limits(c, bundle)
            self.metrics.instrument(bundle)
            engine = ArgsEngine(bundle, slots=c.max_batch, hooks=self.metrics.hooks(), batch_wait_s=c.batch_wait_ms / 1e3)
        except Exception as e:
            self.status, self.error = "failed", str(e)
            log.error("args-serve: cannot serve %s: %s", c.bundle, e)
            raise
        with self._lock:
            self.bundle, self.engine = bundle, engine
            self.status = "ready"
            if self._closed:  # shut down while loading
                engine.close()
        log.info("args-serve: %s ready (replica %s): %s", c.served_name, self.replica, engine.batching)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            engine = self.engine
        if engine is not None:
            engine.close()

    def healthy(self) -> bool:
        return self.ready and self.engine is not None and self.engine.alive()


def _limits(config: ServeConfig, bundle) -> Limits:
    """The bundle's limits with the server's defaults, refused here if the bundle cannot take them."""
    m = bundle.manifest
    if not 1 <= config.k <= m.max_k:
        raise GenerationError(f"--k {config.k} is out of range for this bundle: it supports 1 <= k <= {m.max_k}")
    if not math.isfinite(config.w):
        raise GenerationError(f"--w {config.w} must be a finite number")
    if config.max_batch < 1:
        raise ArgsError(f"--max-batch {config.max_batch} must be >= 1")
    return Limits(config.served_name, m.max_context, m.max_k, config.k, float(config.w), config.model_names)
