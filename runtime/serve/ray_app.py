"""The args-serve app as a Ray Serve deployment: a thin `@serve.deployment` + `@serve.ingress(app)` class over the very
FastAPI app the single-process server runs. Each replica loads its own generator (the app's lifespan) and runs it on
its own worker thread; Ray places replicas (`num_gpus` each), routes requests and scales. The API keys and limits
(security.py, limits.py) are the app's, so each replica enforces them as the single-process server does.

    args-serve BUNDLE --ray --replicas 2                     # local Ray, started by the CLI
    serve run args_runtime.serve.ray_app:app_builder bundle=/models/smol replicas=2 gpus_per_replica=1 device=cuda
    serve deploy serve_config.yaml                           # an existing cluster (README: "Serve")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ArgsError
from .app import create_app
from .config import MIB, ServeConfig
from .security import api_keys

DEPLOYMENT_NAME = "ArgsServe"


@dataclass(frozen=True)
class RayScale:
    """How many replicas (a fixed number, or autoscaling between two bounds) and what each one reserves."""

    replicas: int = 1
    autoscale: tuple[int, int] | None = None  # (min, max) replicas, scaled on ongoing requests per replica
    gpus_per_replica: float = 0.0
    cpus_per_replica: float = 1.0


def parse_autoscale(text: str) -> tuple[int, int]:
    """'1:4' → (1, 4)."""
    lo, sep, hi = text.partition(":")
    if not (sep and lo.isdigit() and hi.isdigit()) or not 0 <= int(lo) <= int(hi) or int(hi) < 1:
        raise ArgsError(f"--autoscale {text!r} must be MIN:MAX replicas with 0 <= MIN <= MAX and MAX >= 1, e.g. 1:4")
    return int(lo), int(hi)


def deployment_options(config: ServeConfig, scale: RayScale) -> dict[str, Any]:
    """serve.deployment's options: resources per replica, replicas or autoscaling, requests a replica takes at once."""
    if scale.replicas < 1 and scale.autoscale is None:
        raise ArgsError(f"--replicas {scale.replicas} must be >= 1")
    if scale.gpus_per_replica < 0 or scale.cpus_per_replica < 0:
        raise ArgsError("--gpus-per-replica and --cpus-per-replica must be >= 0")
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": scale.cpus_per_replica, "num_gpus": scale.gpus_per_replica},
        # A replica runs max_batch requests and lets max_queue wait (its own --max-queue); Ray hands it one more, so that
        # the one over is refused by the replica (503 with Retry-After, an OpenAI error) rather than queued in Ray's router.
        "max_ongoing_requests": config.max_batch + config.max_queue + 1,
    }
    if scale.autoscale is not None:
        lo, hi = scale.autoscale
        options["autoscaling_config"] = {"min_replicas": lo, "max_replicas": hi, "target_ongoing_requests": config.max_batch}
    else:
        options["num_replicas"] = scale.replicas
    return options


def build_app(config: ServeConfig, scale: RayScale = RayScale()):
    """The Ray Serve application (pass it to serve.run). Replicas load in the foreground: Ray routes to a replica only
    once its app's lifespan has loaded the bundle, and `check_health` reports a dead worker thread."""
    from ray import serve

    app = create_app(config.with_changes(load_in_background=False))

    @serve.deployment(name=DEPLOYMENT_NAME, **deployment_options(config, scale))
    @serve.ingress(app)
    class ArgsServe:
        """One ARGS generator per replica, behind the args-serve FastAPI app."""

        def check_health(self) -> None:
            state = self.app.state.args
            if not state.healthy():
                raise RuntimeError(f"args-serve replica unhealthy: status {state.status}, {state.error or 'worker thread stopped'}")

    return ArgsServe.bind()


def app_builder(args: dict[str, str]):
    """For `serve run` / a Serve config file: `args` are the application's arguments (all strings from the command line):
    bundle (required), served_model_name (comma-separated; model_name is the same), device, threads, shared_threads
    ("true"/"false"), k, w, max_batch, batch_wait_ms, replicas, autoscale ("MIN:MAX"), gpus_per_replica, cpus_per_replica,
    and the security and limits options: api_key (comma-separated; $ARGS_RT_API_KEY where the application is built is
    added, and keeps keys out of the config file), metrics_need_key, max_body_bytes, max_queue, request_timeout."""
    known = {"bundle", "served_model_name", "model_name", "device", "threads", "shared_threads", "k", "w", "max_batch", "batch_wait_ms",
             "replicas", "autoscale", "gpus_per_replica", "cpus_per_replica", "api_key", "metrics_need_key", "max_body_bytes",
             "max_queue", "request_timeout"}
    unknown = sorted(set(args) - known)
    if unknown:
        raise ArgsError(f"unknown args-serve application argument(s) {unknown}: known are {sorted(known)}")
    if "bundle" not in args:
        raise ArgsError("the args-serve application needs bundle=/path/to/bundle")
    config = ServeConfig(
        bundle=Path(args["bundle"]), served_model_names=_names(args.get("served_model_name", args.get("model_name", ""))),
        device=args.get("device", "cpu"), threads=_number(args, "threads", int, None), shared_threads=_flag(args, "shared_threads", True),
        k=_number(args, "k", int, 10), w=_number(args, "w", float, 1.5), max_batch=_number(args, "max_batch", int, 8),
        batch_wait_ms=_number(args, "batch_wait_ms", float, 10.0), api_keys=api_keys(_names(args.get("api_key", ""))),
        metrics_need_key=_flag(args, "metrics_need_key", False), max_body_bytes=_number(args, "max_body_bytes", int, MIB),
        max_queue=_number(args, "max_queue", int, 256), request_timeout_s=_number(args, "request_timeout", float, None),
    )
    scale = RayScale(
        replicas=_number(args, "replicas", int, 1),
        autoscale=parse_autoscale(str(args["autoscale"])) if "autoscale" in args else None,
        gpus_per_replica=_number(args, "gpus_per_replica", float, 0.0), cpus_per_replica=_number(args, "cpus_per_replica", float, 1.0),
    )
    return build_app(config, scale)


def _names(value: Any) -> tuple[str, ...]:
    """'a,b' (or a YAML list) → ('a', 'b')."""
    parts = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return tuple(p for p in (str(part).strip() for part in parts) if p)


def _flag(args: dict[str, Any], key: str, default: bool) -> bool:
    if key not in args:
        return default
    value = str(args[key]).strip().lower()
    if value not in ("true", "false", "1", "0"):
        raise ArgsError(f"application argument {key}={args[key]!r} must be true or false")
    return value in ("true", "1")


def _number(args: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    if key not in args:
        return default
    try:
        return kind(args[key])
    except (TypeError, ValueError):
        raise ArgsError(f"application argument {key}={args[key]!r} must be {'an integer' if kind is int else 'a number'}") from None
