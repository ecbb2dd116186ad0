"""The one small interface between the decode loop and an inference engine, and its ONNX Runtime implementation.

A backend runs one exported graph. Inputs may be host numpy arrays or values the backend itself returned
(KV caches stay in the engine's memory between steps); outputs stay engine-side until `to_host`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BundleError

NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64}


class Backend(ABC):
    """Runs one graph; the decode loop talks only to this."""

    name: str
    device: str

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
        return {"backend": self.name, "device": self.device}


def parse_device(device: str) -> tuple[str, int]:
    """'cpu' → ('cpu', 0); 'cuda' → ('cuda', 0); 'cuda:1' → ('cuda', 1)."""
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()):
        raise ValueError(f"device {device!r} is not one of 'cpu', 'cuda', 'cuda:N'")
    return kind, int(index or 0)


class OrtBackend(Backend):
    """ONNX Runtime with IO binding: outputs are bound to the device, so caches never leave it."""

    name = "onnxruntime"

    def __init__(self, graph_path: str | Path, device: str = "cpu", threads: int | None = None) -> None:
        import onnxruntime as ort

        self._ort = ort
        self.device = device
        self.device_type, self.device_id = parse_device(device)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Two sessions (LM, RM) alternate on the same cores: spinning threads would starve each other.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
        if self.device_type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BundleError(
                    f"device {device!r} needs onnxruntime-gpu (CUDAExecutionProvider); this onnxruntime has only "
                    f"{ort.get_available_providers()}: `pip install 'args-rt[gpu]'` or use device='cpu'"
                )
            providers = [("CUDAExecutionProvider", {"device_id": self.device_id}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(graph_path), options, providers=providers)
        except Exception as e:  # ORT raises its own types for bad protobuf / missing data
            raise BundleError(f"ONNX Runtime cannot load {graph_path}: {str(e).splitlines()[0]}; re-export the bundle with --force") from e
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        binding = self.session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, value)
            else:
                binding.bind_ortvalue_input(name, value)
        for name in self.output_names:
            binding.bind_output(name, self.device_type, self.device_id)
        self.session.run_with_iobinding(binding)
        return dict(zip(self.output_names, binding.get_outputs()))

    def to_host(self, value: Any) -> np.ndarray:
        return value if isinstance(value, np.ndarray) else value.numpy()

    def empty(self, shape: tuple[int, ...], dtype: str) -> Any:
        if dtype == "bfloat16":  # numpy has no bfloat16: same-width uint16 bits, typed as ONNX element type 16
            # A host value; ORT moves it to the session's device on binding (it is empty: nothing to copy).
            return self._ort.OrtValue.ortvalue_from_numpy_with_onnx_type(np.zeros(shape, np.uint16), 16)
        array = np.zeros(shape, dtype=NUMPY_DTYPES[dtype])
        if self.device_type == "cpu":
            return array
        return self._ort.OrtValue.ortvalue_from_numpy(array, self.device_type, self.device_id)


def _open_tensorrt(engine_path: str | Path, device: str, threads: int | None = None, stamp: dict | None = None) -> Backend:
    """`engine_path`: a serialized engine from the bundle's manifest `engines`; `stamp`: its manifest entry."""
    from .tensorrt_backend import TensorRTBackend  # lazy: tensorrt and cuda-python are optional

    return TensorRTBackend(engine_path, device=device, stamp=stamp)


BACKENDS = {"onnxruntime": OrtBackend, "tensorrt": _open_tensorrt}


def open_backend(kind: str, graph_path: str | Path, device: str, threads: int | None = None, **options: Any) -> Backend:
    if kind not in BACKENDS:
        raise ValueError(f"backend {kind!r} is not available; choose one of {sorted(BACKENDS)}")
    return BACKENDS[kind](graph_path, device=device, threads=threads, **options)
