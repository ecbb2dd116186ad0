"""ONNX Runtime as an engine: sessions with IO binding on the CPU or CUDA (its TensorRT execution provider too), CUDA
graphs for the decode steps, and the version policy that decides when CUDA graphs are safe."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..backend import Backend, Device, EngineOptions
from ..dtypes import HOST_TYPES, ITEMSIZE, ONNX_ELEMENT_TYPES, ORT_TYPES
from ..errors import BundleError, GenerationError, MissingDependencyError
from ..manifest import TensorSpec, check_graph_io
from ..optional import INSTALL

PROVIDERS = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
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


_SHARED_POOL: dict[str, int] = {}  # process-wide: the size of ONNX Runtime's global intra-op pool, once made


def claim_shared_pool(ort: Any, threads: int | None) -> None:
    """Make ONNX Runtime's process-wide intra-op thread pool (once; `threads` None: one per core). Every session of
    this process then runs on it: its threads may spin between runs, since no other pool competes for the cores, which
    per-session pools alternating on the same cores cannot afford (their spinning starves each other, so they sleep and
    pay a wake-up per parallel region). The first claim sizes the pool; later sessions join it whatever `threads` they
    ask (describe() says which pool a session runs on)."""
    if "threads" not in _SHARED_POOL:
        ort.capi._pybind_state.set_global_thread_pool_sizes(threads or 0, 1)
        _SHARED_POOL["threads"] = threads or 0


def ort_session_options(ort: Any, options: EngineOptions) -> Any:
    """Every ONNX Runtime session args-rt opens gets its options here: on the shared pool once this process has one
    (ORT refuses a per-session pool then), else a per-session pool of `threads` that sleeps between runs."""
    made = ort.SessionOptions()
    made.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if options.shared_threads:
        claim_shared_pool(ort, options.threads)
    if "threads" in _SHARED_POOL:
        made.use_per_session_threads = False
        return made
    # Two sessions (LM, RM) alternate on the same cores: spinning threads would starve each other.
    made.add_session_config_entry("session.intra_op.allow_spinning", "0")
    made.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if options.threads:
        made.intra_op_num_threads = options.threads
    return made


def thread_pool() -> str:
    """Which pool this process's sessions run on, for describe()."""
    if "threads" not in _SHARED_POOL:
        return "per session"
    return f"shared ({_SHARED_POOL['threads'] or 'one per core'})"


def open_onnxruntime(graph, device: Device, options: EngineOptions) -> "OrtBackend":
    """ONNX Runtime on the CPU or CUDA, by device."""
    return _checked(graph, OrtBackend(graph.onnx_path, device, options))


def open_onnxruntime_tensorrt(graph, device: Device, options: EngineOptions) -> "OrtBackend":
    """ONNX Runtime's TensorRT execution provider: engines built (and cached) by ORT from the ONNX graph. TensorRT may
    use fp16 kernels only where the bundle is fp16 (on an fp32 bundle that would change the numbers)."""
    fp16 = graph.spec is not None and graph.spec.dtype == "float16"
    return _checked(graph, OrtBackend(graph.onnx_path, device, options, provider="tensorrt", trt_fp16=fp16))


def _checked(graph, backend: "OrtBackend") -> "OrtBackend":
    """The opened graph's inputs and outputs must be those its manifest entry describes (choose.onnx: its names)."""
    inputs, outputs = ([TensorSpec(m.name, list(m.shape), ORT_TYPES.get(m.type, m.type)) for m in ms]
                       for ms in (backend.session.get_inputs(), backend.session.get_outputs()))
    check_graph_io(graph.role, graph.spec, graph.onnx_path, (inputs, outputs))
    return backend


class OrtBackend(Backend):
    """ONNX Runtime with IO binding: outputs are bound to the device, so caches never leave it.

    On CUDA, `options.cuda_graph` asks ORT to capture each 1-token decode step as a CUDA graph (replayed on later steps
    with the same shapes). That needs fixed input/output addresses, so host inputs are then copied into device buffers
    kept per shape, and outputs go to buffers kept likewise; it needs the static cache layout, and ORT refuses it when
    partitioning leaves a Memcpy node (`describe()["cuda_graph"]` says which happened). `provider="tensorrt"` runs ORT's
    TensorRT execution provider (CUDA and CPU as fallbacks), with its engines and timing cache kept in
    `options.trt_cache_dir` (default: a `trt-ep-cache` folder beside the graph)."""

    name = "onnxruntime"
    ort_values = True
    row_views = True

    def __init__(self, graph_path: str | Path, device: Device | str = "cpu", options: EngineOptions = EngineOptions(),
                 provider: str = "cuda", trt_fp16: bool = False) -> None:
        import onnxruntime as ort

        self._ort = ort
        self.device = Device.parse(device)
        self.graph_path, self.provider, self.trt_fp16, self.options = Path(graph_path), provider, trt_fp16, options
        session_options = ort_session_options(ort, options)
        on_cuda = self.device.is_cuda
        too_old = cuda_graph_blocker(ort.__version__) if options.cuda_graph and on_cuda else None
        capture = options.cuda_graph and on_cuda and too_old is None
        try:
            self.session = self._open(session_options, self._providers(capture))
            self.cuda_graph = "on" if capture else (too_old or "off")
        except BundleError as e:
            if not capture:
                raise
            # ORT refuses CUDA graphs when partitioning leaves a Memcpy node: say so and run without them.
            self.cuda_graph = f"refused by ONNX Runtime: {str(e.__cause__ or e).splitlines()[0]}"
            self.session = self._open(session_options, self._providers(False))
        self.output_names = [o.name for o in self.session.get_outputs()]
        # What CUDA graphs need: every input and output at the same address each run (on by default with them).
        self.fixed_addresses = self.cuda_graph == "on" if options.fixed_addresses is None else options.fixed_addresses
        self._graph_ids: dict[tuple, int] = {}  # decode-step shapes → CUDA graph annotation id (1, 2, …)
        self._buffers: dict[tuple, Any] = {}  # (name, shape, dtype) → device value at a fixed address
        self._addresses: dict[tuple, dict[str, int]] = {}  # feed shapes → the addresses bound at their first run
        self._specs: dict[tuple, dict[str, tuple]] = {}  # (feed shapes, `into` names) → the other outputs' (shape, dtype)

    def _providers(self, cuda_graph: bool) -> list:
        if not self.device.is_cuda:
            if self.provider == "tensorrt":
                raise BundleError(f"ONNX Runtime's TensorRT provider needs device='cuda' (got {str(self.device)!r}); use backend='onnxruntime' on the CPU")
            return ["CPUExecutionProvider"]
        available = self._ort.get_available_providers()
        needed = PROVIDERS[self.provider]
        if needed not in available:
            extra = "onnxruntime-gpu built with TensorRT, and TensorRT's libraries" if self.provider == "tensorrt" else INSTALL["onnxruntime-gpu"]
            raise MissingDependencyError(
                f"device {str(self.device)!r} with ONNX Runtime's {self.provider} provider needs {needed}, which this onnxruntime "
                f"lacks (it has {available}): install {extra}, or use device='cpu'"
            )
        cuda = ("CUDAExecutionProvider", {"device_id": self.device.index, **({"enable_cuda_graph": "1"} if cuda_graph else {})})
        if self.provider != "tensorrt":
            return [cuda, "CPUExecutionProvider"]
        cache = Path(self.options.trt_cache_dir) if self.options.trt_cache_dir else self.graph_path.parent / "trt-ep-cache"
        trt = {"device_id": self.device.index, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
               "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache), "trt_fp16_enable": self.trt_fp16,
               **({"trt_cuda_graph_enable": True} if cuda_graph else {})}
        return [("TensorrtExecutionProvider", trt), cuda, "CPUExecutionProvider"]

    def _open(self, session_options, providers: list):
        try:
            return self._ort.InferenceSession(str(self.graph_path), session_options, providers=providers)
        except Exception as e:  # ORT raises its own types for bad protobuf / missing data
            raise BundleError(f"ONNX Runtime cannot load {self.graph_path}: {str(e).splitlines()[0]}; re-export the bundle with --force") from e

    def run(self, feeds: Mapping[str, Any], into: Mapping[str, Any] | None = None) -> dict[str, Any]:
        into = into or {}
        # The feeds' shapes: which fixed buffers, which recorded addresses and which CUDA graph this run uses.
        key = tuple((n, _shape(v)) for n, v in feeds.items()) if self.fixed_addresses or self.cuda_graph == "on" else ()
        binding = self.session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, OrtRows):
                binding.bind_input(name, self.device.kind, self.device.index, value.element_type, value.shape(), value.data_ptr())
            elif not isinstance(value, np.ndarray):
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
            if isinstance(kept.get(name), OrtRows):
                rows = kept[name]
                binding.bind_output(name, self.device.kind, self.device.index, rows.element_type, rows.shape(), rows.data_ptr())
            elif name in kept:
                binding.bind_ortvalue_output(name, kept[name])
            else:
                binding.bind_output(name, self.device.kind, self.device.index)
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
        """Capture/replay 1-token steps (fixed shapes, one graph per shape); prefill lengths vary, so never capture them.
        A graph without input_ids (a fused bundle's propose head) has one shape per batch and k: every run is a step."""
        options = self._ort.RunOptions()
        decode = "input_ids" not in feeds or _shape(feeds["input_ids"])[1] == 1
        graph_id = self._graph_ids.setdefault(key, len(self._graph_ids) + 1) if decode else -1
        options.add_run_config_entry("gpu_graph_id", str(graph_id))
        return options

    def _buffer(self, name: str, shape: tuple[int, ...], dtype: str) -> Any:
        key = (name, shape, dtype)
        if key not in self._buffers:
            element = ONNX_ELEMENT_TYPES[dtype] if dtype == "bfloat16" else HOST_TYPES[dtype]  # numpy has no bfloat16
            self._buffers[key] = self._ort.OrtValue.ortvalue_from_shape_and_type(list(shape), element, self.device.kind, self.device.index)
        return self._buffers[key]

    def _staged(self, name: str, array: np.ndarray) -> Any:
        """The host array copied into this input's device buffer for its shape (same address every step)."""
        value = self._buffer(name, array.shape, array.dtype.name)
        value.update_inplace(np.ascontiguousarray(array))
        return value

    def _output_specs(self, key: tuple, feeds: Mapping[str, Any], into: Mapping[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
        """(shape, element type) of every output not bound `into` a caller's value, for these feed shapes, from the
        declared dims: worked out on the first run of each shape, looked up after."""
        cached = (key, frozenset(into))
        if cached not in self._specs:
            dims: dict[str, int] = {}
            for meta in self.session.get_inputs():
                if meta.name in feeds:
                    dims.update({d: n for d, n in zip(meta.shape, _shape(feeds[meta.name])) if isinstance(d, str)})
            self._specs[cached] = {
                meta.name: (tuple(d if isinstance(d, int) else dims[d] for d in meta.shape), ORT_TYPES[meta.type])
                for meta in self.session.get_outputs() if meta.name not in into
            }
        return self._specs[cached]

    # ------------------------------------------------------------------

    def to_host(self, value: Any) -> np.ndarray:
        return value if isinstance(value, np.ndarray) else value.numpy()

    def empty(self, shape: tuple[int, ...], dtype: str) -> Any:
        zeros = np.zeros(shape, HOST_TYPES[dtype])  # a static cache's unused slots are masked, but must hold finite numbers (0 · NaN = NaN)
        if dtype != "bfloat16":
            return self._ort.OrtValue.ortvalue_from_numpy(zeros, self.device.kind, self.device.index)
        # numpy has no bfloat16: the same-width uint16 bits, typed as ONNX's bfloat16
        host = self._ort.OrtValue.ortvalue_from_numpy_with_onnx_type(zeros, ONNX_ELEMENT_TYPES["bfloat16"])
        if not self.device.is_cuda or not zeros.size:
            return host  # empty, or on the host: ORT moves it to the session's device on binding (nothing to copy)
        value = self._ort.OrtValue.ortvalue_from_shape_and_type(list(shape), ONNX_ELEMENT_TYPES["bfloat16"], self.device.kind, self.device.index)
        value.update_inplace(zeros)
        return value

    def rows(self, value: Any, start: int, stop: int) -> "OrtRows":
        return OrtRows(value, start, stop)

    def host_view(self, value: Any) -> np.ndarray | None:
        if self.device.is_cuda:
            return None
        array = value.numpy()  # on the host ORT hands out its own memory; checked, not assumed
        return array if array.size and array.ctypes.data == value.data_ptr() else None

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "device": str(self.device), "providers": self.session.get_providers(), "cuda_graph": self.cuda_graph,
                "threads": thread_pool()}


class OrtRows:
    """Rows [start, stop) of an OrtValue [N, ...]: bound by address (IOBinding's bind_input/bind_output at a raw
    pointer, on the CPU and CUDA alike), so a run reads and writes these rows of the buffer and no others. Holds the
    buffer, so the memory lives as long as the view."""

    def __init__(self, base: Any, start: int, stop: int) -> None:
        shape = tuple(base.shape())
        dtype = ORT_TYPES[base.data_type()]
        if not 0 <= start < stop <= shape[0]:
            raise GenerationError(f"rows [{start}, {stop}) are outside a buffer of {shape[0]} rows")
        self.base, self._shape = base, (stop - start, *shape[1:])
        self.element_type = ONNX_ELEMENT_TYPES[dtype] if dtype == "bfloat16" else HOST_TYPES[dtype]
        self._address = base.data_ptr() + start * int(np.prod(shape[1:], dtype=np.int64)) * ITEMSIZE[dtype]

    def shape(self) -> tuple[int, ...]:
        return self._shape

    def data_ptr(self) -> int:
        return self._address


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape) if isinstance(value, np.ndarray) else tuple(value.shape())
