"""args-serve: an OpenAI-compatible HTTP server for ARGS decoding (FastAPI + uvicorn), and the same app as a Ray Serve
deployment for scale-out. Needs `pip install "args-rt[serve]"` (and `"args-rt[ray]"` for Ray)."""

from __future__ import annotations

try:
    import fastapi  # noqa: F401
    import prometheus_client  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError(f"args_runtime.serve needs the serve extra: pip install \"args-rt[serve]\" ({e})") from e

from .app import create_app
from .config import ServeConfig

__all__ = ["ServeConfig", "create_app"]
