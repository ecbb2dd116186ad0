"""Trace an LMStep / RMScorer / FusedStep (+ its ProposalHead) to ONNX with named, dynamic I/O and weights in an external data file; each export returns
the graph's spec for the manifest."""

from __future__ import annotations

import inspect
import os
import re
import shutil
import sys
import warnings
from collections import Counter
from dataclasses import replace
from pathlib import Path

import onnx
import torch

from args_runtime.errors import ExportError
from args_runtime.manifest import CACHE_SLOTS, GraphSpec, TensorSpec

from .stacks.base import DecoderStack
from .hf_compat import quiet_exporter
from .graphs import FusedStep, LMStep, ProposalHead, RMScorer, TailScorer
from .loading import LoadedModel
from .plan import GraphPlan

OPSET = 17  # the TorchScript path's opset
DYNAMO_OPSET = 18  # the dynamo path's: torchlib's own opset (onnx's converter cannot take its ReduceMean down to 17)


def kv_names(num_layers: int, prefix: str) -> list[str]:
    return [f"{prefix}.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]


def _kv_dummies(stack: DecoderStack, batch: int, past: int, dtype: torch.dtype) -> list[torch.Tensor]:
    s = stack.shape
    return [torch.zeros(batch, s.num_kv_heads, past, s.head_dim, dtype=dtype) for _ in range(2 * s.num_layers)]


def _spec_list(names_shapes_dtypes) -> list[TensorSpec]:
    return [TensorSpec(name, list(shape), dtype) for name, shape, dtype in names_shapes_dtypes]


def _cache_io(stack: DecoderStack, cache_dtype: str, cache: str) -> tuple[list, list]:
    """past_key_values.{i}.key|value inputs and present.{i}.key|value outputs, [batch, kv_heads, seq, head_dim]."""
    s = stack.shape
    past_seq, present_seq = (CACHE_SLOTS, CACHE_SLOTS) if cache == "static" else ("past_sequence_length", "total_sequence_length")

    def specs(prefix: str, seq: str) -> list:
        return [(n, ["batch_size", s.num_kv_heads, seq, s.head_dim], cache_dtype) for n in kv_names(s.num_layers, prefix)]

    return specs("past_key_values", past_seq), specs("present", present_seq)


def _step_inputs(cache: str) -> list:
    """Inputs both graphs share; the static layout's mask spans all cache slots and says where the new tokens go."""
    mask_width = CACHE_SLOTS if cache == "static" else "total_sequence_length"
    inputs = [
        ("input_ids", ["batch_size", "sequence_length"], "int64"),
        ("position_ids", ["batch_size", "sequence_length"], "int64"),
        ("attention_mask", ["batch_size", mask_width], "int64"),
    ]
    if cache == "static":
        inputs.append(("cache_position", ["batch_size", "sequence_length"], "int64"))  # each row's own write slots
    return inputs


def lm_io(stack: DecoderStack, cache_dtype: str, cache: str = "dynamic") -> tuple[list[TensorSpec], list[TensorSpec]]:
    past, present = _cache_io(stack, cache_dtype, cache)
    inputs = [*_step_inputs(cache), ("candidate_slots", ["num_candidates"], "int64"), *past]
    outputs = [
        ("topk_values", ["batch_size", "num_candidates"], "float32"),
        ("topk_ids", ["batch_size", "num_candidates"], "int64"),
        *present,
    ]
    return _spec_list(inputs), _spec_list(outputs)


def rm_io(stack: DecoderStack, cache_dtype: str, cache: str = "dynamic") -> tuple[list[TensorSpec], list[TensorSpec]]:
    past, present = _cache_io(stack, cache_dtype, cache)
    inputs = [*_step_inputs(cache), ("candidate_ids", ["batch_size", "num_candidates"], "int64"), *past]
    outputs = [("rewards", ["batch_size", "num_candidates"], "float32"), *present]
    return _spec_list(inputs), _spec_list(outputs)


def text_rm_io(stack: DecoderStack, cache_dtype: str) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """TailScorer: the RM's own new tokens, and K re-tokenized tails of L tokens with the index each is read at."""
    past, present = _cache_io(stack, cache_dtype, "dynamic")
    inputs = [*_step_inputs("dynamic"), ("tail_ids", ["batch_size", "num_candidates", "tail_length"], "int64"),
              ("tail_read", ["batch_size", "num_candidates"], "int64"), *past]
    outputs = [("rewards", ["batch_size", "num_candidates"], "float32"), *present]
    return _spec_list(inputs), _spec_list(outputs)


def fused_io(stack: DecoderStack, cache_dtype: str, cache: str, width: int) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The RM's I/O plus each candidate's final hidden state, `width` wide (ProposalHead's input)."""
    past, present = _cache_io(stack, cache_dtype, cache)
    inputs = [*_step_inputs(cache), ("candidate_ids", ["batch_size", "num_candidates"], "int64"), *past]
    outputs = [
        ("rewards", ["batch_size", "num_candidates"], "float32"),
        ("candidate_hidden", ["batch_size", "num_candidates", width], cache_dtype),
        *present,
    ]
    return _spec_list(inputs), _spec_list(outputs)


def proposal_io(hidden_dtype: str, width: int) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """ProposalHead: the fused pass's hidden states, one picked candidate per row, k as `candidate_slots`' length."""
    inputs = [
        ("candidate_hidden", ["batch_size", "num_candidates", width], hidden_dtype),
        ("pick", ["batch_size"], "int64"),
        ("candidate_slots", ["num_proposals"], "int64"),
    ]
    outputs = [("topk_values", ["batch_size", "num_proposals"], "float32"), ("topk_ids", ["batch_size", "num_proposals"], "int64")]
    return _spec_list(inputs), _spec_list(outputs)


def _dynamic_axes(specs: list[TensorSpec]) -> dict[str, dict[int, str]]:
    return {t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)} for t in specs}


def _export(module: torch.nn.Module, args: tuple, io: tuple[list[TensorSpec], list[TensorSpec]], path: Path,
            plan: GraphPlan) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Trace `module` to `path` (+ `path.data` holding the weights) with the plan's exporter. A static cache's slot
    axis stays free (`cache_slots`): the runtime allocates its buffers max_context slots wide, or only as wide as the
    requests in them need (continuous batching), with the same graph. Returns the graph's input and output specs."""
    inputs, outputs = io
    trace = _trace_dynamo if plan.exporter == "dynamo" else _trace_torchscript
    trace(module, args, inputs, outputs, path)
    return inputs, outputs


def _first_line(e: BaseException) -> str:
    lines = [line for line in re.sub(r"\x1b\[[0-9;]*m", "", str(e)).splitlines() if line.strip()]
    return lines[0] if lines else ""


def _trace_torchscript(module, args, inputs: list[TensorSpec], outputs: list[TensorSpec], path: Path) -> None:
    """torch.onnx's TorchScript path (dynamo=False, deprecated by torch): one traced file, its weights streamed into one
    data file."""
    scratch = path.parent / f".trace-{path.stem}"  # the tracer may spill one file per tensor for >2 GB models
    scratch.mkdir()
    tmp = scratch / "traced.onnx"
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(
                    module,
                    args,
                    str(tmp),
                    input_names=[t.name for t in inputs],
                    output_names=[t.name for t in outputs],
                    dynamic_axes=_dynamic_axes(inputs + outputs),
                    opset_version=OPSET,
                    do_constant_folding=True,
                    dynamo=False,
                )
            except Exception as e:  # the tracer's errors are long; keep the first line, chain the rest
                raise ExportError(f"tracing {path.name} to ONNX failed: {type(e).__name__}: {_first_line(e)}") from e
        model = onnx.load(str(tmp), load_external_data=False)
        save_with_one_data_file(model, scratch, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _dynamic_shapes(module: torch.nn.Module, inputs: list[TensorSpec]) -> tuple:
    """torch.export's dynamic_shapes for forward(input_ids, position_ids, attention_mask, *rest): one {axis: name}
    per named input, the varargs as one tuple. Named axes become Dim.DYNAMIC; the exporter then names them back."""
    axes = [{i: d for i, d in enumerate(t.shape) if isinstance(d, str)} for t in inputs]
    fixed = len(inspect.signature(module.forward).parameters) - 1  # the parameters before *rest
    return (*axes[:fixed], tuple(axes[fixed:]))


def _trace_dynamo(module, args, inputs: list[TensorSpec], outputs: list[TensorSpec], path: Path) -> None:
    """torch.onnx's dynamo path: torch.export captures the module, torchlib lowers it, onnxscript's optimizer folds
    constants. The I/O dims are then written from our specs (torch.export names derived dims 'Min(48, k)')."""
    from args_runtime.optional import require

    ir = require("onnxscript.ir", "the dynamo exporter (args-export --exporter dynamo)", "onnxscript")

    with torch.no_grad(), quiet_exporter():
        try:
            program = torch.onnx.export(
                module,
                args,
                input_names=[t.name for t in inputs],
                output_names=[t.name for t in outputs],
                dynamic_shapes=_dynamic_shapes(module, inputs),
                opset_version=DYNAMO_OPSET,
                dynamo=True,
                verbose=False,
            )
        except Exception as e:  # torch.onnx wraps the cause in a long report; keep the cause's first line, chain the rest
            cause = e.__cause__ or e
            raise ExportError(f"exporting {path.name} to ONNX failed: {type(cause).__name__}: {_first_line(cause)}") from e
    graph = program.model.graph
    names = [v.name for v in (*graph.inputs, *graph.outputs)]
    if names != [t.name for t in (*inputs, *outputs)]:  # e.g. an input the module never reads, dropped by torch.export
        raise ExportError(f"exporting {path.name} to ONNX gave the I/O {names}, not the {[t.name for t in (*inputs, *outputs)]} expected")
    for value, spec in zip([*graph.inputs, *graph.outputs], [*inputs, *outputs]):
        value.shape = ir.Shape(spec.shape)
    ir.save(program.model, path, external_data=path.name + ".data", size_threshold_bytes=1024)


def _initializers(graph: onnx.GraphProto):
    """Every initializer of `graph` and of its subgraphs, in the order onnx's external-data writer visits them."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)):
                yield from _initializers(sub)


def save_with_one_data_file(model: onnx.ModelProto, source_dir: Path, path: Path, size_threshold: int = 1024) -> None:
    """Save `model` to `path` with every initializer of at least `size_threshold` bytes in `path.name + ".data"`, byte for
    byte as onnx.save_model(..., save_as_external_data=True, all_tensors_to_one_file=True) lays it out, but streaming
    the tensors the tracer already wrote to files under `source_dir` (each removed once copied) instead of loading them
    all into memory and writing them again: a 7B graph's 13 GB cost one copy, and the disk holds them once."""
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    data_name = path.name + ".data"
    tensors = list(_initializers(model.graph))
    readers = Counter(ExternalDataInfo(t).location for t in tensors if uses_external_data(t))  # tensors left to read per file
    with open(path.parent / data_name, "wb") as data:
        for tensor in tensors:
            offset = data.tell()
            if uses_external_data(tensor):
                info = ExternalDataInfo(tensor)
                source = source_dir / info.location
                with open(source, "rb") as f:
                    f.seek(info.offset or 0)
                    left = info.length if info.length is not None else os.fstat(f.fileno()).st_size - (info.offset or 0)
                    if sys.getsizeof(b"") + left < size_threshold:  # small: inline, as onnx would keep it
                        tensor.raw_data = f.read(left)
                        tensor.data_location = onnx.TensorProto.DEFAULT
                        del tensor.external_data[:]
                    while left > 0 and tensor.data_location == onnx.TensorProto.EXTERNAL:
                        block = f.read(min(left, 64 << 20))
                        if not block:
                            raise ExportError(f"the tracer's external data for {tensor.name} in {source} is {left} bytes short")
                        data.write(block)
                        left -= len(block)
                if tensor.data_location == onnx.TensorProto.EXTERNAL:
                    _point_to(tensor, data_name, offset, data.tell() - offset)
                readers[info.location] -= 1
                if not readers[info.location]:  # free the disk as we go
                    source.unlink()
            elif tensor.HasField("raw_data") and sys.getsizeof(tensor.raw_data) >= size_threshold:
                data.write(tensor.raw_data)
                _point_to(tensor, data_name, offset, data.tell() - offset)
                tensor.ClearField("raw_data")
    onnx.save_model(model, str(path))


def _point_to(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    """Mark `tensor` as stored in `location` at `offset`, as onnx's set_external_data writes it."""
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, str(value)


TRACE_BATCH, TRACE_PAST, TRACE_NEW, TRACE_CANDIDATES, TRACE_SLOTS = 2, 3, 4, 5, 16


def _step_dummies(stack: DecoderStack, dtype: torch.dtype, vocab: int, cache: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Trace inputs (ids, positions, mask[, cache_position]) and the past, for either cache layout."""
    batch, past, new = TRACE_BATCH, TRACE_PAST, TRACE_NEW
    ids = torch.randint(0, vocab, (batch, new))
    positions = torch.arange(past, past + new).repeat(batch, 1)
    if cache == "static":
        mask = torch.zeros(batch, TRACE_SLOTS, dtype=torch.int64)
        mask[:, : past + new] = 1
        return [ids, positions, mask, positions.clone()], _kv_dummies(stack, batch, TRACE_SLOTS, dtype)
    return [ids, positions, torch.ones(batch, past + new, dtype=torch.int64)], _kv_dummies(stack, batch, past, dtype)


def export_lm(lm: LoadedModel, plan: GraphPlan, path: Path) -> GraphSpec:
    """The LM step graph (prefill and decode, in-graph top-k) at `path`; its spec for the manifest."""
    stack = lm.stack()
    inputs, outputs = lm_io(stack, plan.dtype, plan.cache)
    step, past = _step_dummies(stack, plan.torch_dtype, plan.vocab, plan.cache)
    args = (*step, torch.zeros(min(3, plan.max_k), dtype=torch.int64), *past)
    io = _export(LMStep(stack, lm.head, plan.max_k, plan.cache).eval(), args, (inputs, outputs), path, plan)
    return graph_spec(path.name, lm, stack, plan, io)


def export_rm(rm: LoadedModel, plan: GraphPlan, path: Path) -> GraphSpec:
    """The RM extend-and-score graph (one cache, k candidates per pass) at `path`; its spec for the manifest."""
    stack = rm.stack()
    inputs, outputs = rm_io(stack, plan.dtype, plan.cache)
    step, past = _step_dummies(stack, plan.torch_dtype, plan.vocab, plan.cache)
    args = (*step, torch.randint(0, plan.vocab, (TRACE_BATCH, TRACE_CANDIDATES)), *past)
    io = _export(RMScorer(stack, rm.head, plan.cache).eval(), args, (inputs, outputs), path, plan)
    return graph_spec(path.name, rm, stack, plan, io)


def export_text_rm(rm: LoadedModel, plan: GraphPlan, path: Path) -> GraphSpec:
    """The text path's RM graph (TailScorer: its own cache, k re-tokenized tails per pass) at `path`; dynamic layout,
    whatever the LM's. Its spec for the manifest."""
    plan = replace(plan, cache="dynamic", vocab=rm.config.vocab_size)
    stack = rm.stack()
    step, past = _step_dummies(stack, plan.torch_dtype, plan.vocab, plan.cache)
    tails = torch.randint(0, plan.vocab, (TRACE_BATCH, TRACE_CANDIDATES, 3))
    read = torch.randint(0, 3, (TRACE_BATCH, TRACE_CANDIDATES))
    io = _export(TailScorer(stack, rm.head).eval(), (*step, tails, read, *past), text_rm_io(stack, plan.dtype), path, plan)
    return graph_spec(path.name, rm, stack, plan, io)


def export_fused(lm: LoadedModel, rm: LoadedModel, plan: GraphPlan, path: Path, head_path: Path) -> tuple[GraphSpec, GraphSpec]:
    """The fused step graph at `path` (the RM's score head on the LM's backbone, which export found equal to the RM's
    own): rewards and each candidate's hidden state in one pass over one cache; and at `head_path` the LM head over
    the chosen candidate (ProposalHead). Their specs for the manifest."""
    stack = lm.stack()  # the LM's
    width = lm.head.in_features  # the stack's output width (OPT's project_out can make it narrower than hidden_size)
    inputs, outputs = fused_io(stack, plan.dtype, plan.cache, width)
    step, past = _step_dummies(stack, plan.torch_dtype, plan.vocab, plan.cache)
    candidates = torch.randint(0, plan.vocab, (TRACE_BATCH, TRACE_CANDIDATES))
    io = _export(FusedStep(stack, rm.head, plan.cache).eval(), (*step, candidates, *past), (inputs, outputs), path, plan)
    hidden = torch.randn(TRACE_BATCH, TRACE_CANDIDATES, width, dtype=plan.torch_dtype)
    pick = torch.tensor([TRACE_CANDIDATES - 1, 1][:TRACE_BATCH], dtype=torch.int64)
    head_args = (hidden, pick, torch.zeros(min(3, plan.max_k), dtype=torch.int64))
    head_plan = replace(plan, cache="dynamic")  # no cache: no slot axis to fix
    head_io = _export(ProposalHead(lm.head, plan.max_k).eval(), head_args, proposal_io(plan.dtype, width), head_path, head_plan)
    return graph_spec(path.name, rm, stack, plan, io), graph_spec(head_path.name, lm, stack, plan, head_io)


def graph_spec(file: str, model: LoadedModel, stack: DecoderStack, plan: GraphPlan, io: tuple[list[TensorSpec], list[TensorSpec]]) -> GraphSpec:
    s, config = stack.shape, model.config
    return GraphSpec(
        file=file,
        source=model.name,
        architecture=config.model_type,
        dtype=plan.dtype,
        num_layers=s.num_layers,
        num_kv_heads=s.num_kv_heads,
        head_dim=s.head_dim,
        vocab_size=plan.vocab,
        inputs=io[0],
        outputs=io[1],
        cache=plan.cache,
        hf_config=config.to_diff_dict() if hasattr(config, "to_diff_dict") else {},
    )
