"""Pure checks for TensorRT engines in a bundle (no `import tensorrt` here: runs anywhere)."""

from __future__ import annotations

from typing import Any

from .errors import BundleError


def rebuild_command(bundle: str) -> str:
    return f"args-export --tensorrt-only {bundle}  (on this machine)"


def check_engine_stamp(stamp: dict[str, Any], trt_version: str, compute_capability: str, bundle: str = "BUNDLE") -> None:
    """A serialized engine only loads on the TensorRT version and GPU architecture it was built for."""
    built = (stamp.get("tensorrt_version"), stamp.get("compute_capability"))
    if built != (trt_version, compute_capability):
        raise BundleError(
            f"engine {stamp.get('file', '?')} was built with TensorRT {built[0]} for {built[1]}, this machine has "
            f"TensorRT {trt_version} on {compute_capability}; rebuild it: {rebuild_command(bundle)}"
        )
