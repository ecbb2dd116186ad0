"""args-serve: an OpenAI-compatible HTTP server for ARGS decoding (FastAPI + uvicorn), and the same app as a Ray Serve
deployment for scale-out. Needs `pip install "args-rt[serve]"` (and `"args-rt[ray]"` for Ray). Importing the package
needs neither (its names load on first use), so `args-serve` can say what to install instead of a traceback."""

from __future__ import annotations

__all__ = ["ServeConfig", "create_app"]


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        from .app import create_app
        from .config import ServeConfig
    except ImportError as e:
        raise ImportError(f"args_runtime.serve needs the serve extra: pip install \"args-rt[serve]\" ({e})") from e
    return {"ServeConfig": ServeConfig, "create_app": create_app}[name]
