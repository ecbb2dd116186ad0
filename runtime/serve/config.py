"""What one args-serve process (or one Ray Serve replica) is configured with, shared by the app, the CLI and Ray."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

MIB = 1 << 20


@dataclass(frozen=True)
class ServeConfig:
    """The bundle to serve, where it runs, ARGS's defaults for requests that leave them out, batching, who may use the
    server and what one request may hold of it.

    `served_model_names`: the ids clients send as `model` (vLLM's --served-model-name): /v1/models lists them,
    responses carry the first; the bundle folder's name is accepted too. Left out: the folder's name.
    `api_keys`: with any, /v1/* (and /metrics with `metrics_need_key`) needs `Authorization: Bearer KEY` (never shown
    in a repr or a log). `load_in_background`: the single-process server answers /health with 503 while the bundle
    loads; a Ray replica loads before it takes traffic (Ray routes only to started replicas), so it loads in the
    foreground."""

    bundle: Path
    served_model_names: tuple[str, ...] = ()
    device: str = "cpu"
    threads: int | None = None  # ONNX Runtime intra-op threads per graph (default: ORT's choice)
    shared_threads: bool = False  # one ONNX Runtime thread pool for the process (RuntimeOptions.shared_threads; args-serve: on)
    k: int = 10
    w: float = 1.5  # the README demo's reward weight
    max_batch: int = 8
    batch_wait_ms: float = 10.0  # how long a batchable request waits for others to join its batch
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    metrics_need_key: bool = False
    max_body_bytes: int = MIB  # a larger request body gets 413
    max_queue: int = 256  # requests waiting for a slot beyond the max_batch running; one more gets 503
    request_timeout_s: float | None = None  # a request still running after this is cancelled (504); None: no deadline
    load_in_background: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.served_model_names, str):  # one name given as a string
            object.__setattr__(self, "served_model_names", (self.served_model_names,))
        object.__setattr__(self, "api_keys", tuple(self.api_keys))

    @property
    def served_name(self) -> str:
        """The name responses carry and /health reports: the first served name, else the bundle folder's."""
        return self.served_model_names[0] if self.served_model_names else Path(self.bundle).name

    @property
    def listed_names(self) -> tuple[str, ...]:
        """The models GET /v1/models lists: the served names, else the bundle folder's name."""
        return self.served_model_names or (Path(self.bundle).name,)

    @property
    def model_names(self) -> tuple[str, ...]:
        """Every name a request may give as `model`: the served names, then the bundle folder's name."""
        return tuple(dict.fromkeys((*self.served_model_names, Path(self.bundle).name)))

    def with_changes(self, **changes) -> "ServeConfig":
        return replace(self, **changes)
