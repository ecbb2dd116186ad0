"""What one args-serve process (or one Ray Serve replica) is configured with, shared by the app, the CLI and Ray."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path


@dataclass(frozen=True)
class ServeConfig:
    """The bundle to serve, where it runs, ARGS's defaults for requests that leave them out, and batching limits.

    `load_in_background`: the single-process server answers /health with 503 while the bundle loads; a Ray replica
    loads before it takes traffic (Ray routes only to started replicas), so it loads in the foreground."""

    bundle: Path
    model_name: str = ""  # the id clients send as `model` (default: the bundle folder's name)
    device: str = "cpu"
    threads: int | None = None  # ONNX Runtime intra-op threads per graph (default: ORT's choice)
    shared_threads: bool = False  # one ONNX Runtime thread pool for the process (RuntimeOptions.shared_threads; args-serve: on)
    k: int = 10
    w: float = 1.5  # the README demo's reward weight
    max_batch: int = 8
    batch_wait_ms: float = 10.0  # how long a batchable request waits for others to join its batch
    load_in_background: bool = True

    @property
    def served_name(self) -> str:
        return self.model_name or Path(self.bundle).name

    def with_changes(self, **changes) -> "ServeConfig":
        return replace(self, **changes)
