"""TensorRT as an engine: runs a bundle's serialized engine (lm.engine / rm.engine) with cuda-python memory.

`tensorrt` and cuda-python are imported when a backend is opened, never at module import, so this module (and its
pure helpers: bf16 conversion) loads anywhere. Values stay on the GPU as `DeviceArray`s between runs.
bfloat16: numpy has none, so `to_host` returns bf16 values as float32 (exact), and host bf16 feeds may be float
arrays (rounded to nearest even) or uint16 arrays of raw bf16 bits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..backend import Backend, Device, EngineOptions
from ..dtypes import HOST_TYPES, ITEMSIZE
from ..errors import ArgsError, BundleError, GenerationError, MissingDependencyError
from ..optional import require
from .tensorrt_stamp import check_engine_stamp, rebuild_command, select_profile


class CudaError(ArgsError, RuntimeError):
    """A CUDA runtime call failed; the message names the call's error (e.g. cudaErrorMemoryAllocation)."""


def import_cudart():
    """cuda-python's runtime module: `cuda.bindings.runtime` (cuda-python >= 12.6), else the older `cuda.cudart`."""
    try:
        return require("cuda.bindings.runtime", "the TensorRT engine", "cuda-python")
    except MissingDependencyError:
        return require("cuda.cudart", "the TensorRT engine", "cuda-python")


def import_tensorrt():
    """TensorRT, or MissingDependencyError (its PyPI download stubs import but have no bindings: refused too)."""
    return require("tensorrt", "the TensorRT engine", "tensorrt", usable=lambda trt: trt.Runtime)


def require_stack() -> tuple[Any, Any]:
    """(tensorrt, cudart), or one MissingDependencyError listing everything missing and the fix."""
    found, missing = [], []
    for importer in (import_tensorrt, import_cudart):
        try:
            found.append(importer())
        except MissingDependencyError as e:
            missing.append(str(e))
    if missing:
        raise MissingDependencyError(f"the TensorRT engine needs TensorRT and cuda-python: {'; '.join(missing)}; or use backend='onnxruntime'")
    return found[0], found[1]


def open_tensorrt(graph, device: Device, options: EngineOptions) -> "TensorRTBackend":
    """The bundle's serialized engine for this graph (args-export --tensorrt builds them); no threads to set."""
    if not graph.engine:
        raise BundleError(f"{graph.bundle} has no TensorRT engine for the {graph.role.upper()}: build them with `args-export --tensorrt-only {graph.bundle}`")
    return TensorRTBackend(graph.bundle / graph.engine["file"], device, stamp=graph.engine)


def cuda_call(result: Any, what: str = "CUDA call") -> Any:
    """cuda-python returns (error, *values): raise CudaError with the error's name, else return the value(s)."""
    cudart = import_cudart()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        name = cudart.cudaGetErrorName(err)[1]
        name = name.decode() if isinstance(name, bytes) else str(name)
        raise CudaError(f"{what} failed: {name}")
    return values[0] if len(values) == 1 else tuple(values) or None


def compute_capability(device_id: int = 0) -> str:
    """'sm_XY' of a CUDA device: what a TensorRT engine is built for."""
    cudart = import_cudart()
    prop = cuda_call(cudart.cudaGetDeviceProperties(device_id), f"cudaGetDeviceProperties({device_id})")
    return f"sm_{prop.major}{prop.minor}"


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """uint16 bfloat16 bits → float32 (exact: bf16 is the top half of a float32)."""
    return (np.asarray(bits, np.uint16).astype(np.uint32) << 16).view(np.float32)


def float32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float → uint16 bfloat16 bits, rounded to nearest even (NaN stays NaN)."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(np.asarray(x, np.float32)), np.uint16(0x7FC0), rounded)


def host_array(value: Any, dtype: str) -> np.ndarray:
    """A C-contiguous host array in the engine's element type (bf16 as uint16 bits)."""
    if dtype == "bfloat16":
        arr = np.asarray(value)
        return np.ascontiguousarray(arr) if arr.dtype == np.uint16 else float32_to_bf16_bits(arr)
    return np.ascontiguousarray(value, HOST_TYPES[dtype])


class DeviceArray:
    """One CUDA allocation with a shape and an element type (names as in the manifest). Freed by `free()` or on GC.
    `capacity` may exceed `nbytes`; a zero-size array still owns a 1-byte allocation, so its address is never null."""

    def __init__(self, shape: tuple[int, ...], dtype: str, capacity: int | None = None) -> None:
        if dtype not in ITEMSIZE:
            raise BundleError(f"element type {dtype!r} is not one of {sorted(ITEMSIZE)}")
        self.shape, self.dtype, self.ptr = tuple(int(d) for d in shape), dtype, 0
        self.capacity = max(1, self.nbytes, capacity or 0)
        self._cudart = import_cudart()
        self.ptr = int(cuda_call(self._cudart.cudaMalloc(self.capacity), f"cudaMalloc({self.capacity} bytes)"))

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * ITEMSIZE[self.dtype]

    def swap_memory(self, other: "DeviceArray") -> None:
        """Exchange the allocations behind two arrays (the objects stay; used for in-place outputs)."""
        self.ptr, other.ptr = other.ptr, self.ptr
        self.capacity, other.capacity = other.capacity, self.capacity

    @classmethod
    def window(cls, owner: "DeviceArray", shape: tuple[int, ...]) -> "DeviceArray":
        """A shaped view of `owner`'s memory (which it keeps alive); freeing the view frees nothing."""
        view = cls.__new__(cls)
        view.shape, view.dtype, view.ptr, view.capacity = tuple(int(d) for d in shape), owner.dtype, owner.ptr, owner.capacity
        view._cudart, view._owner = owner._cudart, owner
        return view

    def free(self) -> None:
        if getattr(self, "_owner", None) is not None:  # a window: the owner frees
            self.ptr = 0
            return
        if self.ptr:
            ptr, self.ptr = self.ptr, 0
            cuda_call(self._cudart.cudaFree(ptr), "cudaFree")

    def __del__(self) -> None:
        try:
            self.free()
        except Exception:  # interpreter shutdown: the CUDA context may already be gone
            pass

    def __repr__(self) -> str:
        return f"DeviceArray(shape={self.shape}, dtype={self.dtype!r}, ptr=0x{self.ptr:x})"


class OutputBuffers:
    """Two allocations per output name, used in turn (ping-pong) and grown only when a shape outgrows them, so a run
    allocates nothing in the steady state: an output of one run stays valid through the next run (a dynamic cache's
    present is the next run's past), and its memory is reused by the run after that. A buffer that is being fed to
    this run is never written."""

    def __init__(self, allocate=None) -> None:
        self.allocate = allocate or (lambda shape, dtype, capacity: DeviceArray(shape, dtype, capacity))
        self.pairs: dict[str, list] = {}
        self.turn: dict[str, int] = {}

    def take(self, name: str, shape: tuple[int, ...], dtype: str, fed_ptrs: set[int]) -> DeviceArray:
        need = max(1, math.prod(shape) * ITEMSIZE[dtype])
        pair = self.pairs.setdefault(name, [None, None])
        order = [self.turn.get(name, 0), 1 - self.turn.get(name, 0)]
        slot = next((i for i in order if pair[i] is None or pair[i].ptr not in fed_ptrs), None)
        if slot is None:  # both are fed to this run: a fresh allocation, as before pooling
            return self.allocate(shape, dtype, need)
        buf = pair[slot]
        if buf is None or buf.capacity < need or buf.dtype != dtype:
            if buf is not None:
                buf.free()
            buf = pair[slot] = self.allocate(shape, dtype, need + need // 2)  # headroom: a dynamic cache grows every step
        self.turn[name] = 1 - slot
        return DeviceArray.window(buf, shape)


class TensorRTBackend(Backend):
    """Runs one serialized TensorRT engine. Host feeds are uploaded into per-input buffers kept between runs (grown when
    needed); DeviceArray feeds are bound directly; outputs not named in `into` land in `OutputBuffers` (two per output,
    used in turn): an output stays valid through the next run of this backend."""

    name = "tensorrt"

    def __init__(self, engine_path: str | Path, device: Device | str = "cuda", stamp: dict | None = None) -> None:
        self.device = Device.parse(device)
        if not self.device.is_cuda:
            raise BundleError(f"backend 'tensorrt' runs on CUDA devices only, not {str(self.device)!r}; use backend='onnxruntime' on the CPU")
        self.device_id = self.device.index
        trt, self._cudart = require_stack()
        self._trt, self.stamp = trt, dict(stamp or {})
        self.engine_path = Path(engine_path)
        bundle = str(self.engine_path.parent)
        if not self.engine_path.is_file():
            raise BundleError(f"TensorRT engine {self.engine_path} is missing; build it: {rebuild_command(bundle)}")
        cuda_call(self._cudart.cudaSetDevice(self.device_id), f"cudaSetDevice({self.device_id})")
        self.compute_capability = compute_capability(self.device_id)
        if stamp is not None:  # before deserializing: a foreign engine fails there with a far less helpful message
            check_engine_stamp(stamp, trt.__version__, self.compute_capability, bundle)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            raise BundleError(f"TensorRT {trt.__version__} cannot load {self.engine_path} (see the log above); rebuild it: {rebuild_command(bundle)}")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise BundleError(f"TensorRT could not create an execution context for {self.engine_path} (GPU memory?)")
        self._stream = cuda_call(self._cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._read_io()
        self._profile = 0
        self._in_bufs: dict[str, DeviceArray] = {}  # host feeds land here; addresses stay fixed until a feed outgrows one
        self._shadows: dict[str, DeviceArray] = {}  # in-place outputs are written here, then swapped with the caller's array
        self._host_keep: dict[str, np.ndarray] = {}  # host memory of pending uploads, alive until the stream reads it
        self._outputs = OutputBuffers()

    def _read_io(self) -> None:
        trt, engine = self._trt, self.engine
        names = {getattr(trt, n): s for n, s in (("float32", "float32"), ("float16", "float16"), ("bfloat16", "bfloat16"),
                 ("int64", "int64"), ("int32", "int32"), ("int8", "int8"), ("uint8", "uint8"), ("bool", "bool")) if hasattr(trt, n)}
        self.inputs, self.outputs, self.dtypes = [], [], {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_dtype(name) not in names:
                raise BundleError(f"{self.engine_path.name}: tensor {name!r} has element type {engine.get_tensor_dtype(name)}, which this backend does not handle")
            self.dtypes[name] = names[engine.get_tensor_dtype(name)]
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.inputs.append(name)
                if engine.is_shape_inference_io(name):
                    raise BundleError(f"{self.engine_path.name}: input {name!r} is a shape tensor, which args-rt engines never have "
                                      f"(an engine from an older bundle?); rebuild it: {rebuild_command(str(self.engine_path.parent))}")
            else:
                self.outputs.append(name)
        self.profiles = []
        for p in range(engine.num_optimization_profiles):
            ranges = {}
            for name in self.inputs:
                triple = engine.get_tensor_profile_shape(name, p)
                ranges[name] = tuple(tuple(int(d) for d in dims) for dims in triple)
            self.profiles.append(ranges)
        self.profile_names = list(self.stamp.get("profiles", {})) or None

    # --- Backend interface -------------------------------------------------------------------------------------

    def run(self, feeds: Mapping[str, Any], into: Mapping[str, Any] | None = None) -> dict[str, Any]:
        into = dict(into or {})
        if set(feeds) != set(self.inputs):
            raise GenerationError(f"{self.engine_path.name} takes inputs {sorted(self.inputs)}; got {sorted(feeds)}")
        if set(into) - set(self.outputs):
            raise GenerationError(f"`into` names {sorted(set(into) - set(self.outputs))}, not outputs of {self.engine_path.name}")
        cudart, ctx, stream = self._cudart, self.context, self._stream
        cuda_call(cudart.cudaSetDevice(self.device_id), "cudaSetDevice")
        observed = {n: tuple(feeds[n].shape) for n in self.inputs}
        index = select_profile(self.profiles, observed, self.engine_path.name, self.profile_names)
        if index != self._profile:
            if not ctx.set_optimization_profile_async(index, int(stream)):
                raise BundleError(f"TensorRT refused optimization profile {index} of {self.engine_path.name}")
            self._profile = index
        for name in self.inputs:
            value = feeds[name]
            if not ctx.set_input_shape(name, tuple(value.shape)):
                raise GenerationError(f"TensorRT refused shape {tuple(value.shape)} for input {name!r} of {self.engine_path.name}")
            if isinstance(value, DeviceArray):
                if value.dtype != self.dtypes[name]:
                    raise GenerationError(f"input {name!r} is {value.dtype} on the GPU; {self.engine_path.name} wants {self.dtypes[name]}")
                ctx.set_tensor_address(name, value.ptr)
            else:
                ctx.set_tensor_address(name, self._upload(name, host_array(value, self.dtypes[name])))
        fed_ids = {id(v) for v in feeds.values()}
        fed_ptrs = {v.ptr for v in feeds.values() if isinstance(v, DeviceArray)}
        results, swaps = {}, []
        for name in self.outputs:
            shape, dtype = tuple(int(d) for d in ctx.get_tensor_shape(name)), self.dtypes[name]
            if any(d < 0 for d in shape):
                raise GenerationError(f"TensorRT could not infer the shape of output {name!r} ({shape}) from the inputs")
            target = into.get(name)
            if target is None:
                out = results[name] = self._outputs.take(name, shape, dtype, fed_ptrs)
            else:
                if not isinstance(target, DeviceArray) or target.dtype != dtype:
                    raise GenerationError(f"`into[{name!r}]` must be a {dtype} DeviceArray from this backend's empty(); got {target!r}")
                results[name] = target
                if id(target) in fed_ids or target.ptr in fed_ptrs:  # past in, present out: TensorRT must not alias them
                    out = self._shadow(name, shape, dtype)
                    swaps.append((target, out, shape))
                else:
                    if target.capacity < math.prod(shape) * ITEMSIZE[dtype]:
                        raise GenerationError(f"`into[{name!r}]` holds {target.capacity} bytes; output {name!r} {shape} needs more")
                    target.shape, out = shape, target
            ctx.set_tensor_address(name, out.ptr)
        if not ctx.execute_async_v3(int(stream)):
            raise BundleError(f"TensorRT execution of {self.engine_path.name} failed (see the TensorRT log)")
        for target, shadow, shape in swaps:
            target.swap_memory(shadow)
            target.shape = shadow.shape = shape
        # One sync per run: the next run, to_host, or the other graph's backend (its own stream) may read these outputs.
        cuda_call(cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        return results

    def to_host(self, value: Any) -> np.ndarray:
        if not isinstance(value, DeviceArray):
            return np.asarray(value)
        host = np.empty(value.shape, HOST_TYPES[value.dtype])
        if value.nbytes:
            kind = self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
            cuda_call(self._cudart.cudaMemcpyAsync(host.ctypes.data, value.ptr, value.nbytes, kind, self._stream), "cudaMemcpyAsync(D2H)")
            cuda_call(self._cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return bf16_bits_to_float32(host) if value.dtype == "bfloat16" else host

    def empty(self, shape: tuple[int, ...], dtype: str) -> DeviceArray:
        array = DeviceArray(shape, dtype)
        cuda_call(self._cudart.cudaMemsetAsync(array.ptr, 0, array.capacity, self._stream), "cudaMemsetAsync")
        cuda_call(self._cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return array

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "device": str(self.device), "engine": self.engine_path.name,
                "tensorrt_version": self._trt.__version__, "compute_capability": self.compute_capability,
                "precision": self.stamp.get("precision"), "profiles": self.profile_names or len(self.profiles)}

    # --- buffers -----------------------------------------------------------------------------------------------

    def _upload(self, name: str, host: np.ndarray) -> int:
        """Copy a host feed into this input's kept device buffer (grown when too small); return its address."""
        buf = self._in_bufs.get(name)
        if buf is None or buf.capacity < host.nbytes:
            buf = self._in_bufs[name] = DeviceArray(host.shape, self.dtypes[name])
        if host.nbytes:
            kind = self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
            cuda_call(self._cudart.cudaMemcpyAsync(buf.ptr, host.ctypes.data, host.nbytes, kind, self._stream), f"cudaMemcpyAsync(H2D {name})")
        self._host_keep[f"upload:{name}"] = host  # alive until the stream has read it
        return buf.ptr

    def _shadow(self, name: str, shape: tuple[int, ...], dtype: str) -> DeviceArray:
        need = math.prod(shape) * ITEMSIZE[dtype]
        shadow = self._shadows.get(name)
        if shadow is None or shadow.capacity < need:
            shadow = self._shadows[name] = DeviceArray(shape, dtype)
        return shadow

    def __del__(self) -> None:
        try:
            self._cudart.cudaStreamDestroy(self._stream)
        except Exception:
            pass
