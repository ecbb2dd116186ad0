"""The one small interface between the decode loop and an inference engine, the device value it runs on, and the one
options object every engine is opened with. Engines live in runtime/engines/, one module each.

A backend runs one exported graph. Inputs may be host numpy arrays or values the backend itself returned (KV caches
stay in the engine's memory between steps); outputs stay engine-side until `to_host`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import GenerationError


@dataclass(frozen=True)
class Device:
    """Where a graph runs: the host ("cpu") or one CUDA device. Parsed once from the user's text; 'cuda' and 'cuda:0'
    are the same device. CPU indices name no hardware (ONNX Runtime has one CPU device): 'cpu:1' only keeps two models
    apart as if they were on two devices, so values cross through host memory (the tests use it to run that path)."""

    kind: str  # "cpu" | "cuda"
    index: int = 0

    KINDS = ("cpu", "cuda")

    @staticmethod
    def parse(text: "str | Device") -> "Device":
        if isinstance(text, Device):
            return text
        kind, _, index = text.partition(":") if isinstance(text, str) else ("", "", "")
        if kind not in Device.KINDS or (index and not index.isdigit()):
            raise GenerationError(f"device {text!r} is not one of 'cpu', 'cuda', 'cuda:N' (N = the GPU's index, as in nvidia-smi)")
        return Device(kind, int(index or 0))

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"

    def __str__(self) -> str:
        return self.kind if self.kind == "cpu" and self.index == 0 else f"{self.kind}:{self.index}"


@dataclass(frozen=True)
class EngineOptions:
    """How to open an engine, the same for every engine (each reads what applies to it)."""

    threads: int | None = None  # ONNX Runtime's intra-op threads (None: its default); TensorRT has none
    shared_threads: bool = False  # ONNX Runtime: one process-wide thread pool for every session (see claim_shared_pool)
    cuda_graph: bool = False  # capture 1-token decode steps as CUDA graphs (ONNX Runtime on CUDA, static-cache bundles)
    fixed_addresses: bool | None = None  # bind every input and output at a fixed address each step (None: = cuda_graph)
    trt_cache_dir: Path | None = None  # ORT's TensorRT provider: engine and timing cache (None: beside the graph)


class Backend(ABC):
    """Runs one graph; the decode loop talks only to this."""

    name: str  # the engine, e.g. "onnxruntime"
    device: Device
    # Its values are ONNX Runtime OrtValues, so choose.onnx (always run by ONNX Runtime) can read them where they are.
    ort_values: bool = False

    @abstractmethod
    def run(self, feeds: Mapping[str, Any], into: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Run the graph on `feeds` (numpy arrays or values from earlier runs); return engine-side outputs.
        `into` names outputs to write into existing engine-side values (from `empty`) instead of new ones; a value
        may be both a feed and an `into` target (the static KV cache: past in, present written in place)."""

    @abstractmethod
    def to_host(self, value: Any) -> np.ndarray:
        """Copy one engine-side value to a numpy array."""

    @abstractmethod
    def empty(self, shape: tuple[int, ...], dtype: str) -> Any:
        """A zero-filled engine-side value of `shape` (a KV-cache buffer, or an empty past)."""

    def describe(self) -> dict[str, Any]:
        """What runs this graph, for timings and logs."""
        return {"backend": self.name, "device": str(self.device)}

    # Continuous batching (runtime/slots.py) keeps one cache row per request in [slots, ...] buffers and runs some rows
    # of them in place; an engine that can bind part of a buffer says so here.
    row_views: bool = False

    def rows(self, value: Any, start: int, stop: int) -> Any:
        """Rows [start, stop) of an engine-side value from `empty` (rows are contiguous), as a value `run` reads and
        writes in place."""
        raise GenerationError(f"the {self.name} engine cannot run part of a buffer in place; continuous batching needs backend='onnxruntime'")

    def host_view(self, value: Any) -> np.ndarray | None:
        """A numpy array over the very memory of an engine-side value when it lives on the host, else None."""
        return None
