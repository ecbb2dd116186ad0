"""The engines that can run a bundle's graphs, by name, each in a module of its own (imported only when used), each
opened the same way: `open_graph(engine, graph, device, options)`. The generator names no engine; it passes the
user's choice through."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    role: str  # "lm" | "rm" | "propose" | "choose"
    onnx_file: str
    spec: GraphSpec | None = None
    engine: dict | None = None

    @property
    def onnx_path(self) -> Path:
        return self.bundle / self.onnx_file


def check_engine(engine: str) -> str:
    if not isinstance(engine, str) or engine not in ENGINES:
        raise GenerationError(f"backend={engine!r} is not one of {list(ENGINES)}")
    return engine


def open_graph(engine: str, graph: BundleGraph, device: Device, options: EngineOptions) -> Backend:
    """Open `graph` on `engine` at `device`."""
    module, opener = ENGINES[check_engine(engine)]
    return getattr(importlib.import_module(f"{__name__}.{module}"), opener)(graph, device, options)


class OpenedOnFirstUse(Backend):
    """A graph that is opened when it is first used: a fused bundle's LM, which ARGS never runs (plain greedy and
    sampling do), so that a process that only runs ARGS holds one model's weights, not two. Only `name` and `device`
    are known before the opening; everything else opens the graph and asks it."""

    def __init__(self, engine: str, graph: BundleGraph, device: Device, options: EngineOptions) -> None:
        self.name, self.device = check_engine(engine), device
        self._args, self._opened = (engine, graph, device, options), None

    @property
    def opened(self) -> Backend:
        if self._opened is None:
            self._opened = open_graph(*self._args)
        return self._opened

    @property
    def ort_values(self) -> bool:  # type: ignore[override]
        return self.opened.ort_values

    @property
    def row_views(self) -> bool:  # type: ignore[override]
        return self.opened.row_views

    def run(self, feeds, into=None) -> dict[str, Any]:
        return self.opened.run(feeds, into)

    def to_host(self, value: Any):
        return self.opened.to_host(value)

    def empty(self, shape: tuple[int, ...], dtype: str) -> Any:
        return self.opened.empty(shape, dtype)

    def rows(self, value: Any, start: int, stop: int) -> Any:
        return self.opened.rows(value, start, stop)

    def host_view(self, value: Any):
        return self.opened.host_view(value)

    def describe(self) -> dict[str, Any]:
        if self._opened is None:
            return {"backend": self.name, "device": str(self.device), "opened": False}
        return self.opened.describe()
