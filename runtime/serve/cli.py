"""`args-serve`: serve a bundle over an OpenAI-compatible HTTP API, with uvicorn in this process or on Ray Serve."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from ..errors import ArgsError, MissingDependencyError
from ..options import SHARED_THREADS_HELP
from ..settings import PAPER_W

MIB = 1 << 20  # config.MIB (imported from there only once the serve extra is known to be installed)

DESCRIPTION = """\
Serve ARGS (reward-guided search) decoding of a bundle over the OpenAI API: POST /v1/chat/completions and
/v1/completions (streaming with stream=true), GET /v1/models, /health (503 while loading) and /metrics (Prometheus).
ARGS's own settings go in the request body as "args": {"k", "w", "method", "return_rewards", "ignore_eos"}
(OpenAI SDKs: extra_body={"args": {...}}); left out, they take --k and --w.
A static-cache bundle (args-export's default layout) is served with continuous batching: every request joins the
running batch between two steps and leaves it when done, whatever its settings. A dynamic-cache bundle (--cache
dynamic) is served in fixed batches of the requests that wait together. The log and /health say which.
With --api-key (or ARGS_RT_API_KEY=KEY1,KEY2) every /v1/* request needs `Authorization: Bearer KEY` (OpenAI clients:
api_key=KEY); /health stays open. Listening beyond this machine (--host 0.0.0.0) needs a key, or --allow-open.

  args-serve bundles/smol --port 8000
  ARGS_RT_API_KEY=$(cat key.txt) args-serve bundles/smol --host 0.0.0.0 --served-model-name smol
  args-serve bundles/smol --device cuda --max-batch 16
  args-serve bundles/smol --ray --replicas 2 --gpus-per-replica 1 --device cuda     # Ray Serve, started locally
  args-serve bundles/smol --ray --autoscale 1:4                                       # replicas follow the load"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="args-serve", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", type=Path, help="bundle folder written by args-export")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads per graph (default: ORT's choice)")
    p.add_argument("--shared-threads", action=argparse.BooleanOptionalAction, default=True,
                   help=SHARED_THREADS_HELP + "; with several Ray replicas on one machine, --no-shared-threads keeps them from "
                                              "spinning against each other")
    p.add_argument("--k", type=int, default=10, help="default candidates per step, for requests without args.k (default 10)")
    p.add_argument("--w", type=float, default=PAPER_W, help=f"default reward weight, for requests without args.w (default {PAPER_W:g}, the paper's)")
    p.add_argument("--max-batch", type=int, default=8,
                   help="most requests decoded together: continuous batching's slots (static-cache bundle), else the largest "
                        "fixed batch (default 8)")
    p.add_argument("--batch-wait-ms", type=float, default=10.0,
                   help="fixed batches only: how long the first waiting request waits for others to join its batch (default 10 ms)")
    p.add_argument("--served-model-name", "--model-name", nargs="+", default=[], metavar="NAME", dest="served_model_names",
                   help="the model id(s) clients send as `model` (vLLM's convention): GET /v1/models lists them and responses carry "
                        "the first; the bundle folder's name is accepted too (default: the bundle folder's name)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    sec = p.add_argument_group("security and limits")
    sec.add_argument("--api-key", action="append", default=[], metavar="KEY",
                     help="a key clients must send as `Authorization: Bearer KEY` to every /v1/* route (repeatable; also "
                          "ARGS_RT_API_KEY=KEY1,KEY2, which keeps keys out of the process list)")
    sec.add_argument("--allow-open", action="store_true",
                     help="serve without an API key on an address other machines reach (--host other than loopback)")
    sec.add_argument("--metrics-need-key", action="store_true", help="GET /metrics needs an API key too (default: open, as /health)")
    sec.add_argument("--max-body-bytes", type=int, default=MIB, metavar="N",
                     help=f"largest request body in bytes; a larger one gets 413 (default {MIB}, 1 MiB)")
    sec.add_argument("--max-queue", type=int, default=256, metavar="N",
                     help="most requests waiting for a slot beyond the --max-batch running; one more gets 503 with Retry-After "
                          "(default 256)")
    sec.add_argument("--request-timeout", type=float, default=None, metavar="SECONDS",
                     help="a request still waiting or running after this many seconds is stopped, its slot freed, and "
                          "answered 504 (default: no deadline)")
    ray = p.add_argument_group("Ray Serve (pip install \"args-rt[ray]\")")
    ray.add_argument("--ray", action="store_true", help="run as a Ray Serve deployment (one generator per replica)")
    scale = ray.add_mutually_exclusive_group()
    scale.add_argument("--replicas", type=int, default=1, help="number of replicas (default 1)")
    scale.add_argument("--autoscale", metavar="MIN:MAX", help="autoscale between MIN and MAX replicas on ongoing requests")
    ray.add_argument("--gpus-per-replica", type=float, default=0.0, help="GPUs each replica reserves (default 0; fractions allowed)")
    ray.add_argument("--cpus-per-replica", type=float, default=1.0, help="CPUs each replica reserves (default 1; fractions allowed)")
    ray.add_argument("--ray-address", default=None,
                     help="join this Ray cluster (e.g. auto, or ray://head:10001) instead of starting Ray locally")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        _require_serve_extra()
    except MissingDependencyError as e:  # before parsing: even --help needs the extra's install hint first
        print(f"args-serve: error: {e}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = _config(args)
        from .security import check_exposure

        check_exposure(args.host, config.api_keys, args.allow_open)
        return _run_ray(args, config) if args.ray else _run_uvicorn(args, config)
    except ArgsError as e:
        print(f"args-serve: error: {e}", file=sys.stderr)
        return 2


def _require_serve_extra() -> None:
    """The serve extra's packages, or MissingDependencyError naming the install command."""
    from ..optional import require

    for module in ("fastapi", "uvicorn", "prometheus_client"):
        require(module, "args-serve", "args-rt[serve]")


def _config(args: argparse.Namespace):
    """The server's configuration, with the bundle's manifest read now so a wrong path or --k fails before serving."""
    from ..manifest import load_manifest
    from .config import ServeConfig
    from .limits import check_limits
    from .security import api_keys

    manifest = load_manifest(args.bundle, verify_checksums=False)  # checksums: verified when the bundle loads
    if not 1 <= args.k <= manifest.max_k:
        raise ArgsError(f"--k {args.k} is out of range for this bundle: it supports 1 <= k <= {manifest.max_k}")
    if args.max_batch < 1:
        raise ArgsError(f"--max-batch {args.max_batch} must be >= 1")
    if args.batch_wait_ms < 0:
        raise ArgsError(f"--batch-wait-ms {args.batch_wait_ms} must be >= 0")
    check_limits(args.max_body_bytes, args.max_queue, args.request_timeout)
    keys = api_keys(args.api_key, os.environ)
    return ServeConfig(bundle=args.bundle.resolve(), served_model_names=tuple(args.served_model_names), device=args.device,
                       threads=args.threads, shared_threads=args.shared_threads, k=args.k, w=args.w, max_batch=args.max_batch,
                       batch_wait_ms=args.batch_wait_ms, api_keys=keys, metrics_need_key=args.metrics_need_key,
                       max_body_bytes=args.max_body_bytes, max_queue=args.max_queue, request_timeout_s=args.request_timeout)


def _run_uvicorn(args: argparse.Namespace, config) -> int:
    import uvicorn

    from .app import create_app

    failed: list[BaseException] = []
    server: uvicorn.Server | None = None

    def on_load_error(error: BaseException) -> None:
        failed.append(error)
        if server is not None:
            server.should_exit = True

    app = create_app(config, on_load_error)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5))
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn shut down gracefully, then re-raised the Ctrl-C: a normal stop
        pass
    if failed:
        print(f"args-serve: error: cannot load {config.bundle}: {failed[0]}", file=sys.stderr)
        return 1
    return 0


def _run_ray(args: argparse.Namespace, config) -> int:
    try:
        import ray
        from ray import serve
    except ImportError:
        raise ArgsError("--ray needs Ray Serve: pip install \"args-rt[ray]\"") from None
    from .ray_app import RayScale, build_app, parse_autoscale

    scale = RayScale(replicas=args.replicas, autoscale=parse_autoscale(args.autoscale) if args.autoscale else None,
                     gpus_per_replica=args.gpus_per_replica, cpus_per_replica=args.cpus_per_replica)
    application = build_app(config, scale)
    ray.init(address=args.ray_address, include_dashboard=False)
    signal.signal(signal.SIGTERM, _interrupt)  # after ray.init, which sets its own: a stop shuts Serve and Ray down as Ctrl-C does
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        print(f"args-serve: Ray Serve is starting {config.served_name} on http://{args.host}:{args.port} (Ctrl-C stops it)",
              file=sys.stderr)
        serve.run(application, name="args-serve", route_prefix="/", blocking=True)
    except KeyboardInterrupt:
        pass
    finally:
        if args.ray_address:  # someone else's cluster: take our application off it, leave Serve and Ray running
            serve.delete("args-serve")
        else:
            serve.shutdown()
            ray.shutdown()
    return 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
