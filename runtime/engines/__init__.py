"""The engines that can run a bundle's graphs, by name, each in a module of its own (imported only when used), each
opened the same way: `open_graph(engine, graph, device, options)`. The generator names no engine; it passes the
user's choice through."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from ..backend import Backend, Device, EngineOptions
from ..errors import GenerationError
from ..manifest import GraphSpec

# engine name → (module in this package, its opener)
ENGINES = {
    "onnxruntime": ("onnxruntime_engine", "open_onnxruntime"),  # ONNX Runtime on the CPU or CUDA, by device
    "onnxruntime-trt": ("onnxruntime_engine", "open_onnxruntime_tensorrt"),  # ONNX Runtime's TensorRT execution provider
    "tensorrt": ("tensorrt_engine", "open_tensorrt"),  # the bundle's own TensorRT engines (args-export --tensorrt)
}


@dataclass(frozen=True)
class BundleGraph:
    """One graph of a bundle as an engine opens it: its ONNX file and spec, and its TensorRT engine's manifest entry
    (None when none was built). choose.onnx has no spec."""

    bundle: Path
    role: str  # "lm" | "rm" | "choose"
    onnx_file: str
    spec: GraphSpec | None = None
    engine: dict | None = None

    @property
    def onnx_path(self) -> Path:
        return self.bundle / self.onnx_file


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise GenerationError(f"backend={engine!r} is not one of {list(ENGINES)}")
    return engine


def open_graph(engine: str, graph: BundleGraph, device: Device, options: EngineOptions) -> Backend:
    """Open `graph` on `engine` at `device`."""
    module, opener = ENGINES[check_engine(engine)]
    return getattr(importlib.import_module(f"{__name__}.{module}"), opener)(graph, device, options)
