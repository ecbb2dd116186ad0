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

from .errors import BundleError, GenerationError

NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64}
ONNX_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}  # ORT's type names


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


ORT_PROVIDERS = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


CUDA_GRAPH_MIN_ORT = (1, 30)


def cuda_graph_blocker(ort_version: str) -> str | None:
    """Why this ONNX Runtime must not capture our decode steps, or None. Before 1.30 a replay could re-read host
    staging buffers (ScatterND's and Concat's kernel metadata) that a prefill run in between had reused
    (microsoft/onnxruntime#32121): wrong caches, silently. The fix's `RetainBufferForGraphCapture` is in the CUDA
    provider library of onnxruntime-gpu 1.30.0 and 1.31.1, and not in 1.29.0 (checked in the wheels)."""
    parts = ort_version.split("+")[0].split(".")
    numbers = tuple(int(p) if p.isdigit() else 0 for p in parts[:2])
    if numbers >= CUDA_GRAPH_MIN_ORT:
        return None
    need = ".".join(map(str, CUDA_GRAPH_MIN_ORT))
    return (f"off: onnxruntime {ort_version} can replay stale kernel metadata after a prefill (microsoft/onnxruntime#32121); "
            f"CUDA graphs need onnxruntime-gpu >= {need}")


class OrtBackend(Backend):
    """ONNX Runtime with IO binding: outputs are bound to the device, so caches never leave it.

    On CUDA, `cuda_graph=True` asks ORT to capture each 1-token decode step as a CUDA graph (replayed on later
    steps with the same shapes). That needs fixed input/output addresses, so host inputs are then copied into
    device buffers kept per shape, and outputs go to buffers kept likewise; it needs the static cache layout,
    and ORT refuses it when partitioning leaves a Memcpy node (`describe()["cuda_graph"]` says which happened).
    `provider="tensorrt"` runs ORT's TensorRT execution provider (CUDA and CPU as fallbacks), with its engines
    and timing cache kept in `trt_cache_dir` (default: a `trt-ep-cache` folder beside the graph); `trt_fp16` lets
    TensorRT use fp16 kernels (meant for fp16 bundles: on an fp32 one it changes the numbers)."""

    name = "onnxruntime"

    def __init__(self, graph_path: str | Path, device: str = "cpu", threads: int | None = None, cuda_graph: bool = False,
                 provider: str = "cuda", trt_cache_dir: str | Path | None = None, fixed_addresses: bool | None = None,
                 trt_fp16: bool = False) -> None:
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
        self.trt_fp16 = trt_fp16
        too_old = cuda_graph_blocker(ort.__version__) if cuda_graph and self.device_type == "cuda" else None
        cuda_graph = cuda_graph and too_old is None
        providers = self._providers(Path(graph_path), provider, cuda_graph, trt_cache_dir)
        try:
            self.session = self._open(graph_path, options, providers)
            self.cuda_graph = "on" if cuda_graph and self.device_type == "cuda" else (too_old or "off")
        except BundleError as e:
            if not (cuda_graph and self.device_type == "cuda"):
                raise
            # ORT refuses CUDA graphs when some node runs on the CPU: say so and run without them.
            self.cuda_graph = f"refused by ONNX Runtime: {str(e.__cause__ or e).splitlines()[0]}"
            self.session = self._open(graph_path, options, self._providers(Path(graph_path), provider, False, trt_cache_dir))
        self.output_names = [o.name for o in self.session.get_outputs()]
        # What CUDA graphs need: every input and output at the same address each run (on by default with them).
        self.fixed_addresses = self.cuda_graph == "on" if fixed_addresses is None else fixed_addresses
        self._graph_ids: dict[tuple, int] = {}  # decode-step shapes → CUDA graph annotation id (1, 2, …)
        self._buffers: dict[tuple, Any] = {}  # (name, shape, dtype) → device value at a fixed address
        self._addresses: dict[tuple, dict[str, int]] = {}  # feed shapes → the addresses bound at their first run
        self._specs: dict[tuple, dict[str, tuple]] = {}  # (feed shapes, `into` names) → the other outputs' (shape, dtype)

    def _providers(self, graph_path: Path, provider: str, cuda_graph: bool, trt_cache_dir: str | Path | None) -> list:
        if self.device_type == "cpu":
            if provider == "tensorrt":
                raise BundleError(f"ONNX Runtime's TensorRT provider needs device='cuda' (got {self.device!r}); use backend='onnxruntime' on the CPU")
            return ["CPUExecutionProvider"]
        available = self._ort.get_available_providers()
        needed = ORT_PROVIDERS.get(provider)
        if needed is None:
            raise ValueError(f"provider {provider!r} is not one of {sorted(ORT_PROVIDERS)}")
        if needed not in available:
            extra = "onnxruntime-gpu built with TensorRT, and TensorRT's libraries" if provider == "tensorrt" else "onnxruntime-gpu"
            raise BundleError(
                f"device {self.device!r} with provider {provider!r} needs {needed}, which this onnxruntime lacks (it has {available}): "
                f"install {extra} (`pip install 'args-rt[gpu]'`), or use device='cpu'"
            )
        cuda = ("CUDAExecutionProvider", {"device_id": self.device_id, **({"enable_cuda_graph": "1"} if cuda_graph else {})})
        if provider != "tensorrt":
            return [cuda, "CPUExecutionProvider"]
        cache = Path(trt_cache_dir) if trt_cache_dir else graph_path.parent / "trt-ep-cache"
        trt = {"device_id": self.device_id, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
               "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache), "trt_fp16_enable": self.trt_fp16,
               **({"trt_cuda_graph_enable": True} if cuda_graph else {})}
        return [("TensorrtExecutionProvider", trt), cuda, "CPUExecutionProvider"]

    def _open(self, graph_path: str | Path, options, providers: list):
        try:
            return self._ort.InferenceSession(str(graph_path), options, providers=providers)
        except Exception as e:  # ORT raises its own types for bad protobuf / missing data
            raise BundleError(f"ONNX Runtime cannot load {graph_path}: {str(e).splitlines()[0]}; re-export the bundle with --force") from e

    def run(self, feeds: Mapping[str, Any], into: Mapping[str, Any] | None = None) -> dict[str, Any]:
        into = into or {}
        # The feeds' shapes: which fixed buffers, which recorded addresses and which CUDA graph this run uses.
        key = tuple((n, _shape(v)) for n, v in feeds.items()) if self.fixed_addresses or self.cuda_graph == "on" else ()
        binding = self.session.io_binding()
        for name, value in feeds.items():
            if not isinstance(value, np.ndarray):
                binding.bind_ortvalue_input(name, value)
            elif self.fixed_addresses:
                binding.bind_ortvalue_input(name, self._staged(name, value))
            else:
                binding.bind_cpu_input(name, value)
        kept = dict(into)  # outputs bound to values we hold
        if self.fixed_addresses:
            kept.update({n: self._buffer(n, *spec) for n, spec in self._output_specs(key, feeds, into).items()})
            self._check_addresses(key, feeds, kept)
        for name in self.output_names:
            if name in kept:
                binding.bind_ortvalue_output(name, kept[name])
            else:
                binding.bind_output(name, self.device_type, self.device_id)
        self.session.run_with_iobinding(binding, self._run_options(key, feeds) if self.cuda_graph == "on" else None)
        return dict(zip(self.output_names, binding.get_outputs()))

    def _check_addresses(self, key: tuple, feeds: Mapping[str, Any], outputs: Mapping[str, Any]) -> None:
        """A replayed CUDA graph reads and writes the addresses it captured, whatever is bound: an engine value fed from
        elsewhere (a cache, the LM's top-k ids) must come back at the same address for the same shapes, or the step
        would silently compute on stale memory. Checked before the run; staged host feeds are fixed by construction."""
        seen = {n: v.data_ptr() for n, v in feeds.items() if not isinstance(v, np.ndarray)}
        seen.update({f"output {n}": v.data_ptr() for n, v in outputs.items()})
        first = self._addresses.setdefault(key, seen)
        moved = sorted(n for n in seen if first.get(n) != seen[n])
        if moved:
            raise GenerationError(
                f"{moved} moved to a new device address between runs of the same shapes; with fixed addresses (CUDA graphs) every "
                "engine value must be bound from the same buffer each step (keep it with Backend.empty() or a kept output)"
            )

    # ------------------------------------------------------------------ CUDA graphs: fixed addresses, one graph per decode shape

    def _run_options(self, key: tuple, feeds: Mapping[str, Any]):
        """Capture/replay 1-token steps (fixed shapes, one graph per shape); prefill lengths vary, so never capture them."""
        options = self._ort.RunOptions()
        decode = _shape(feeds["input_ids"])[1] == 1
        graph_id = self._graph_ids.setdefault(key, len(self._graph_ids) + 1) if decode else -1
        options.add_run_config_entry("gpu_graph_id", str(graph_id))
        return options

    def _buffer(self, name: str, shape: tuple[int, ...], dtype) -> Any:
        key = (name, shape, np.dtype(dtype).str)
        if key not in self._buffers:
            self._buffers[key] = self._ort.OrtValue.ortvalue_from_shape_and_type(list(shape), dtype, self.device_type, self.device_id)
        return self._buffers[key]

    def _staged(self, name: str, array: np.ndarray) -> Any:
        """The host array copied into this input's device buffer for its shape (same address every step)."""
        value = self._buffer(name, array.shape, array.dtype)
        value.update_inplace(np.ascontiguousarray(array))
        return value

    def _output_specs(self, key: tuple, feeds: Mapping[str, Any], into: Mapping[str, Any]) -> dict[str, tuple[tuple[int, ...], Any]]:
        """(shape, numpy dtype) of every output not bound `into` a caller's value, for these feed shapes, from the
        declared dims: worked out on the first run of each shape, looked up after."""
        cached = (key, frozenset(into))
        if cached not in self._specs:
            dims: dict[str, int] = {}
            for meta in self.session.get_inputs():
                if meta.name in feeds:
                    dims.update({d: n for d, n in zip(meta.shape, _shape(feeds[meta.name])) if isinstance(d, str)})
            self._specs[cached] = {
                meta.name: (tuple(d if isinstance(d, int) else dims[d] for d in meta.shape), ONNX_TYPES[meta.type])
                for meta in self.session.get_outputs() if meta.name not in into
            }
        return self._specs[cached]

    # ------------------------------------------------------------------

    def to_host(self, value: Any) -> np.ndarray:
        return value if isinstance(value, np.ndarray) else value.numpy()

    def empty(self, shape: tuple[int, ...], dtype: str) -> Any:
        if dtype == "bfloat16":  # numpy has no bfloat16: same-width uint16 bits, typed as ONNX element type 16
            zeros = self._ort.OrtValue.ortvalue_from_numpy_with_onnx_type(np.zeros(shape, np.uint16), 16)
            if self.device_type == "cpu" or not np.prod(shape):
                return zeros  # empty, or on the host: ORT moves it to the session's device on binding (nothing to copy)
            value = self._ort.OrtValue.ortvalue_from_shape_and_type(list(shape), 16, self.device_type, self.device_id)
            value.update_inplace(np.zeros(shape, np.uint16))
            return value
        # Zero-filled: a static cache's unused slots are masked, but must hold finite numbers (0 · NaN = NaN).
        return self._ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, dtype=NUMPY_DTYPES[dtype]), self.device_type, self.device_id)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "device": self.device, "providers": self.session.get_providers(), "cuda_graph": self.cuda_graph}


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape) if isinstance(value, np.ndarray) else tuple(value.shape())


def _open_tensorrt(engine_path: str | Path, device: str, threads: int | None = None, stamp: dict | None = None) -> Backend:
    """`engine_path`: a serialized engine from the bundle's manifest `engines`; `stamp`: its manifest entry."""
    from .tensorrt_backend import TensorRTBackend  # lazy: tensorrt and cuda-python are optional

    return TensorRTBackend(engine_path, device=device, stamp=stamp)


def _open_ort_tensorrt(graph_path: str | Path, device: str, threads: int | None = None, **options: Any) -> Backend:
    """ONNX Runtime's TensorRT execution provider: TensorRT engines built (and cached) by ORT from the ONNX graph."""
    return OrtBackend(graph_path, device, threads, provider="tensorrt", **options)


BACKENDS = {"onnxruntime": OrtBackend, "onnxruntime-trt": _open_ort_tensorrt, "tensorrt": _open_tensorrt}


def open_backend(kind: str, graph_path: str | Path, device: str, threads: int | None = None, **options: Any) -> Backend:
    if kind not in BACKENDS:
        raise ValueError(f"backend {kind!r} is not available; choose one of {sorted(BACKENDS)}")
    return BACKENDS[kind](graph_path, device=device, threads=threads, **options)
