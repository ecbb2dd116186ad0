"""Where would ONNX Runtime's CUDA provider run each node of a graph? A prediction that runs without a GPU, to
check that the decode step can be captured as a CUDA graph.

ORT refuses `enable_cuda_graph` when partitioning leaves a Memcpy node in the graph, and a replayed capture skips
every CPU node and every feed copy: a value the host reads from a graph input (a CPU node's input, a kernel's
CPU-memory input such as Slice's `ends`, or an input staged in host memory and copied over) is frozen at its
captured value. This module repeats ORT's placement rules on the graph:

1. a node goes to CUDA when the CUDA provider has a kernel for its op and type (``CUDA_KERNELS``), else to CPU;
2. small shape computations move to CPU as in ``GetCpuPreferredNodes`` (core/framework/fallback_cpu_capability.cc):
   starting from the consumers of CPU outputs (Shape), a node whose every input is a CPU tensor, a small
   initializer or a graph input runs on CPU, unless the CUDA kernel takes that CPU tensor as a CPU input;
3. a Memcpy is inserted wherever a value is produced on one side and consumed on the other, as in
   ``TransformerMemcpyImpl::ModifyGraph`` (core/optimizer/transformer_memcpy.cc).

The kernel table is transcribed from ORT's CUDA provider sources (``KERNEL_SOURCE``) for the ops our exporter
emits; it is a list kept in the code, like the TensorRT op list, not a run of the real provider. Run it on the
graph ORT sees after its basic optimizations (``ort_basic_graph``): constant folding there decides what is an
initializer.

    python -m args_export.gpu.cuda_placement BUNDLE [--host-input NAME]
"""

from __future__ import annotations

import argparse
import heapq
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from onnx import TensorProto

from args_runtime.backend import EngineOptions
from args_runtime.engines.onnxruntime_engine import ort_session_options

KERNEL_SOURCE = ("ONNX Runtime CUDA provider kernel registrations for opset 17: cuda_execution_provider.cc at a0c50604, "
                 "docs/OperatorKernels.md, and each kernel's InputMemoryType/OutputMemoryType")
SMALL_INITIALIZER = 100  # kSmallInitializerThreshold: initializers up to this many elements may be read on CPU

_TYPES = {"f32": TensorProto.FLOAT, "f64": TensorProto.DOUBLE, "f16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16,
          "i8": TensorProto.INT8, "i16": TensorProto.INT16, "i32": TensorProto.INT32, "i64": TensorProto.INT64,
          "u8": TensorProto.UINT8, "u16": TensorProto.UINT16, "u32": TensorProto.UINT32, "u64": TensorProto.UINT64,
          "bool": TensorProto.BOOL}
_NEVER_ON_CPU = {TensorProto.FLOAT16, TensorProto.BFLOAT16}  # GetCpuPreferredNodes keeps half-precision nodes on the device


@dataclass(frozen=True)
class Kernel:
    """One CUDA kernel registration: the types of its main type constraint (read from input `type_of`, or from
    output 0 when `type_of` is -1) and the inputs/outputs it keeps in CPU memory."""

    types: frozenset[int]
    cpu_inputs: frozenset[int] = frozenset()
    cpu_outputs: frozenset[int] = frozenset()
    type_of: int = 0


def _k(types: str, cpu_inputs=(), cpu_outputs=(), type_of: int = 0) -> Kernel:
    names = _TYPES if types == "ALL" else types.split()
    return Kernel(frozenset(_TYPES[n] for n in names), frozenset(cpu_inputs), frozenset(cpu_outputs), type_of)


# The registration covering opset 17 of every op the exporter emits (and a few neighbours): types and CPU memory.
CUDA_KERNELS: dict[str, Kernel] = {
    "Add": _k("f32 f64 f16 bf16 i8 i16 i32 i64 u8 u16 u32 u64"),
    "And": _k("bool"),
    "ArgMax": _k("f32 f64 f16"),
    "Cast": _k("ALL"),
    "Clip": _k("f32 f64 f16 i8 i64 u8 u64", cpu_inputs=(1, 2)),
    "Concat": _k("ALL"),
    "ConstantOfShape": _k("ALL", cpu_inputs=(0,), type_of=-1),
    "Cos": _k("f32 f64 f16"),
    "CumSum": _k("f32 f64 f16 i32 i64 u32 u64", cpu_inputs=(1,)),
    "Div": _k("f32 f64 f16 bf16 i8 i16 i32 i64 u8 u16 u32 u64"),
    "Equal": _k("f32 f64 f16 i32 i64 u32 u64 bool"),
    "Exp": _k("f32 f64 f16 bf16"),
    "Expand": _k("ALL", cpu_inputs=(1,)),
    "Gather": _k("ALL"),
    "GatherElements": _k("ALL"),
    "Gemm": _k("f32 f64 f16 bf16"),
    "Greater": _k("f32 f64 f16 i32 i64 u32 u64"),
    "Identity": _k("ALL"),
    "LayerNormalization": _k("f32 f64 f16 bf16"),
    "Less": _k("f32 f64 f16 i32 i64 u32 u64"),
    "LessOrEqual": _k("f32 f64 f16 i32 i64 u32 u64"),
    "MatMul": _k("f32 f64 f16 bf16"),
    "Max": _k("f32 f64 f16 bf16 i32 i64 u32 u64"),
    "Min": _k("f32 f64 f16 bf16 i32 i64 u32 u64"),
    "Mul": _k("f32 f64 f16 bf16 i8 i16 i32 i64 u8 u16 u32 u64"),
    "Neg": _k("f32 f64 f16 bf16 i8 i16 i32 i64"),
    "Pow": _k("f32 f64 f16 bf16 i32 i64"),
    "Range": _k("f32 f64 i16 i32 i64", cpu_inputs=(0, 1, 2)),
    "Reciprocal": _k("f32 f64 f16"),  # the dynamo exporter's rsqrt (RMSNorm, in float32); no bf16 kernel
    "ReduceMax": _k("f32 f64 f16 i32 i64"),
    "ReduceMean": _k("f32 f64 f16 i32"),
    "ReduceSum": _k("f32 f64 f16 bf16 i32 i64", cpu_inputs=(1,)),
    "Relu": _k("f32 f64 f16 bf16"),
    "Reshape": _k("ALL", cpu_inputs=(1,)),
    "ScatterND": _k("ALL"),
    "Shape": _k("ALL", cpu_outputs=(0,)),
    "Sigmoid": _k("f32 f64 f16 bf16"),
    "Sin": _k("f32 f64 f16"),
    "Slice": _k("ALL", cpu_inputs=(1, 2, 3, 4)),
    "Softmax": _k("f32 f64 f16 bf16"),
    "Split": _k("ALL", cpu_inputs=(1,)),
    "Sqrt": _k("f32 f64 f16 bf16"),
    "Squeeze": _k("ALL", cpu_inputs=(1,)),
    "Sub": _k("f32 f64 f16 bf16 i8 i16 i32 i64 u8 u16 u32 u64"),
    "Tanh": _k("f32 f64 f16 bf16"),
    "Tile": _k("f32 f64 f16 bf16 i32 i64", cpu_inputs=(1,)),
    "TopK": _k("f32 f64 f16 i32 i64", cpu_inputs=(1,)),
    "Transpose": _k("ALL"),
    "Trilu": _k("ALL", cpu_inputs=(1,)),
    "Unsqueeze": _k("ALL", cpu_inputs=(1,)),
    "Where": _k("f32 f64 f16 bf16 i32 i64 u8", type_of=1),
}


@dataclass
class Placement:
    """What the CUDA provider would do with one graph: CPU nodes, Memcpy nodes, graph inputs read on the host."""

    path: str
    cpu_nodes: list[str] = field(default_factory=list)  # "op name" of every node left on CPU
    no_kernel: list[str] = field(default_factory=list)  # nodes on CPU because CUDA has no kernel for them
    copies: list[str] = field(default_factory=list)  # the values ORT would wrap in a Memcpy node
    frozen_inputs: list[str] = field(default_factory=list)  # graph inputs a replayed capture would not reread

    @property
    def capturable(self) -> bool:
        """True when the placement lets ORT capture a CUDA graph and a replay rereads every changing input (the shapes
        must also stay fixed between steps: the static cache layout)."""
        return not (self.copies or self.frozen_inputs or self.no_kernel)

    def describe(self) -> str:
        if self.capturable:
            return f"{self.path}: capturable (no Memcpy, no input read on the host; {len(self.cpu_nodes)} shape node(s) on CPU)"
        lines = [f"{self.path}: NOT capturable as a CUDA graph"]
        lines += [f"  no CUDA kernel: {n}" for n in self.no_kernel]
        lines += [f"  Memcpy: {c}" for c in self.copies]
        lines += [f"  input read on the host (frozen on replay): {i}" for i in self.frozen_inputs]
        return "\n".join(lines)


def ort_basic_graph(path: Path, directory: Path) -> onnx.ModelProto:
    """The graph as ORT partitions it: after its basic (provider-independent) optimizations, constants folded."""
    import onnxruntime as ort

    options = ort_session_options(ort, EngineOptions())  # the process's shared thread pool, if it has one
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(directory / path.name)
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", path.name + ".data")
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return onnx.load(str(directory / path.name), load_external_data=False)


def _element_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {}
    for info in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        types[info.name] = info.type.tensor_type.elem_type
    for init in inferred.graph.initializer:
        types[init.name] = init.data_type
    return types


def _size(tensor: onnx.TensorProto) -> int:
    size = 1
    for d in tensor.dims:
        size *= d
    return size


@dataclass
class _Graph:
    """The graph as the placement steps read it: nodes in topological order (Constant nodes become initializers, as
    in ORT), element types, initializer sizes, graph inputs, and each value's consumers (node indices)."""

    nodes: list[onnx.NodeProto]
    types: dict[str, int]
    initializer_size: dict[str, int]
    inputs: set[str]
    consumers: dict[str, list[int]]

    @classmethod
    def read(cls, model: onnx.ModelProto, half_is_bf16: bool) -> "_Graph":
        types = _element_types(model)
        if half_is_bf16:
            types = {name: TensorProto.BFLOAT16 if t == TensorProto.FLOAT16 else t for name, t in types.items()}
        sizes = {t.name: _size(t) for t in model.graph.initializer}
        for n in model.graph.node:
            if n.op_type == "Constant":
                sizes[n.output[0]] = _size(n.attribute[0].t) if n.attribute[0].type == onnx.AttributeProto.TENSOR else 1
        nodes = [n for n in model.graph.node if n.op_type != "Constant"]
        consumers: dict[str, list[int]] = {}
        for index, n in enumerate(nodes):
            for name in n.input:
                consumers.setdefault(name, []).append(index)
        return cls(nodes, types, sizes, {i.name for i in model.graph.input} - set(sizes), consumers)

    @staticmethod
    def label(n: onnx.NodeProto) -> str:
        return f"{n.op_type} {n.name or n.output[0]}"


def _cuda_kernels(g: _Graph, placement: Placement) -> dict[int, Kernel]:
    """Step 1: the CUDA kernel of every node that has one (by op and type); the others are recorded as no_kernel."""
    kernel: dict[int, Kernel] = {}
    for index, n in enumerate(g.nodes):
        spec = CUDA_KERNELS.get(n.op_type) if n.domain in ("", "ai.onnx") else None
        typed = g.types.get(n.output[0] if spec.type_of < 0 else n.input[spec.type_of], 0) if spec else 0
        if spec is not None and typed in spec.types:
            kernel[index] = spec
        else:
            why = f"{n.op_type} with {TensorProto.DataType.Name(typed)}" if spec else "no CUDA kernel"
            placement.no_kernel.append(f"{_Graph.label(n)} ({why})")
    return kernel


def _cpu_preferred(g: _Graph, kernel: dict[int, Kernel]) -> set[int]:
    """Step 2, GetCpuPreferredNodes: grow the CPU shape subgraph from the consumers of CPU outputs, in topological
    order. Returns the indices of every node left on CPU (no kernel, or moved there)."""
    cpu_values: set[str] = set()
    candidates: list[int] = []
    for index, n in enumerate(g.nodes):
        for i, out in enumerate(n.output):
            if index in kernel and i in kernel[index].cpu_outputs:
                cpu_values.add(out)
                candidates.extend(g.consumers.get(out, []))
    heapq.heapify(candidates)
    on_cpu = {index for index in range(len(g.nodes)) if index not in kernel}
    visited: set[int] = set()
    while candidates:
        index = heapq.heappop(candidates)
        if index in visited:
            continue
        visited.add(index)
        n = g.nodes[index]
        if index in kernel and not _reads_only_host_values(g, n, kernel[index], cpu_values):
            continue
        on_cpu.add(index)  # no CUDA kernel (on CPU anyway), or a shape computation moved there
        cpu_values.update(n.output)
        for out in n.output:
            for c in g.consumers.get(out, []):
                heapq.heappush(candidates, c)
    return on_cpu


def _reads_only_host_values(g: _Graph, n: onnx.NodeProto, spec: Kernel, cpu_values: set[str]) -> bool:
    """GetCpuPreferredNodes' test: every input is a small initializer, a graph input, or a CPU value that the CUDA
    kernel would not itself take as a CPU input; no half-precision input."""
    for i, name in enumerate(n.input):
        if not name:
            continue
        if g.types.get(name) in _NEVER_ON_CPU:
            return False
        if g.initializer_size.get(name, SMALL_INITIALIZER + 1) <= SMALL_INITIALIZER or name in g.inputs:
            continue
        if name not in cpu_values or i in spec.cpu_inputs:
            return False
    return True


def _copies(g: _Graph, kernel: dict[int, Kernel], on_cpu: set[int], host_inputs: tuple[str, ...], placement: Placement) -> None:
    """Step 3, TransformerMemcpyImpl: a Memcpy wherever a value is produced on one side and read on the other; graph
    inputs read on the host (or staged there and read on the device) are frozen by a replay."""
    device_in, host_in, device_out, host_out = set(), set(), set(), set()
    for index, n in enumerate(g.nodes):
        spec = None if index in on_cpu else kernel[index]
        for i, name in enumerate(n.input):
            if name and name not in g.initializer_size:
                (device_in if spec and i not in spec.cpu_inputs else host_in).add(name)
        for i, name in enumerate(n.output):
            if name:
                (device_out if spec and i not in spec.cpu_outputs else host_out).add(name)
    placement.copies = sorted(
        [f"{v} (host -> device)" for v in host_out & device_in]
        + [f"{v} (device -> host)" for v in device_out & host_in]
        + [f"{v} (graph input read on both sides)" for v in g.inputs & device_in & host_in]
    )
    placement.frozen_inputs = sorted((g.inputs & host_in) | (set(host_inputs) & device_in))


def predict(model: onnx.ModelProto, path: str = "<model>", host_inputs: tuple[str, ...] = (), half_is_bf16: bool = False) -> Placement:
    """Place every node as ORT's CUDA provider would; `host_inputs` are graph inputs the runtime binds in host memory;
    `half_is_bf16` reads every fp16 tensor as bf16 (the fp16 twin of a bf16 graph)."""
    g, placement = _Graph.read(model, half_is_bf16), Placement(path)
    kernel = _cuda_kernels(g, placement)
    on_cpu = _cpu_preferred(g, kernel)
    placement.cpu_nodes = [_Graph.label(n) for index, n in enumerate(g.nodes) if index in on_cpu]
    _copies(g, kernel, on_cpu, host_inputs, placement)
    return placement


def _bf16_as_fp16(path: Path, directory: Path) -> Path:
    """A copy of a bf16 graph typed fp16 (same width, same structure) that ORT's CPU provider can load and optimize;
    its weights are zeros, not read."""
    model = onnx.load(str(path), load_external_data=False)

    def retype(tensor: onnx.TensorProto) -> None:
        if tensor.data_type == TensorProto.BFLOAT16:
            tensor.data_type = TensorProto.FLOAT16

    for t in model.graph.initializer:
        retype(t)
    for info in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        if info.type.tensor_type.elem_type == TensorProto.BFLOAT16:
            info.type.tensor_type.elem_type = TensorProto.FLOAT16
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.name == "to" and attr.i == TensorProto.BFLOAT16:
                attr.i = TensorProto.FLOAT16
            if attr.type == onnx.AttributeProto.TENSOR:
                retype(attr.t)
    for data in path.parent.glob(path.name + ".data"):  # a sparse file of zeros: weights do not decide placement
        with open(directory / data.name, "wb") as f:
            f.truncate(data.stat().st_size)
    copy = directory / path.name
    onnx.save(model, str(copy))
    return copy


def predict_file(path: Path, host_inputs: tuple[str, ...] = ()) -> Placement:
    """Predict the placement of one exported .onnx file as ORT would see it. A bf16 graph, which ORT's CPU provider
    cannot load, is optimized as its fp16 twin and then placed with its own bf16 types."""
    path = Path(path)
    with tempfile.TemporaryDirectory() as scratch:
        source, optimized = Path(scratch) / "source", Path(scratch) / "optimized"
        source.mkdir(), optimized.mkdir()
        header = onnx.load(str(path), load_external_data=False)
        bf16 = any(t.data_type == TensorProto.BFLOAT16 for t in header.graph.initializer)
        model = ort_basic_graph(_bf16_as_fp16(path, source) if bf16 else path, optimized)
        return predict(model, path.name, host_inputs, half_is_bf16=bf16)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m args_export.gpu.cuda_placement",
        description="Predict, without a GPU, whether ONNX Runtime's CUDA provider can capture each graph of a bundle "
        "as a CUDA graph: no Memcpy node, and no changing input read on the host. " + KERNEL_SOURCE + ".",
    )
    parser.add_argument("paths", nargs="+", type=Path, help="bundle folders or .onnx files")
    parser.add_argument("--host-input", action="append", default=[], help="a graph input the runtime binds in host memory")
    args = parser.parse_args(argv)
    files = [f for p in args.paths for f in (sorted(p.glob("*.onnx")) if p.is_dir() else [p])]
    results = [predict_file(f, tuple(args.host_input)) for f in files]
    for r in results:
        print(r.describe())
    return 0 if all(r.capturable for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
