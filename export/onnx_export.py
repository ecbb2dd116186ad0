"""Trace an LMStep / RMScorer to ONNX with named, dynamic I/O and weights in an external data file."""

from __future__ import annotations

import os
import shutil
import sys
import warnings
from collections import Counter
from pathlib import Path

import onnx
import torch

from args_runtime.errors import ExportError
from args_runtime.manifest import GraphSpec, TensorSpec

from .architectures import DecoderStack
from .graphs import LMStep, RMScorer

OPSET = 17
ONNX_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def kv_names(num_layers: int, prefix: str) -> list[str]:
    return [f"{prefix}.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]


CACHE_SLOTS = "cache_slots"  # the static cache's slot axis: traced small, then fixed to the bundle's max context


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
        inputs.append(("cache_position", ["sequence_length"], "int64"))
    return inputs


def lm_io(stack: DecoderStack, vocab: int, max_k: int, cache_dtype: str, cache: str = "dynamic") -> tuple[list[TensorSpec], list[TensorSpec]]:
    past, present = _cache_io(stack, cache_dtype, cache)
    inputs = [*_step_inputs(cache), ("candidate_slots", ["num_candidates"], "int64"), *past]
    outputs = [
        ("logits", ["batch_size", vocab], "float32"),
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


def _dynamic_axes(specs: list[TensorSpec]) -> dict[str, dict[int, str]]:
    return {t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)} for t in specs}


def _fix_dims(model: onnx.ModelProto, name: str, value: int) -> None:
    """Declare every graph input/output axis called `name` as the constant `value`."""
    for info in [*model.graph.input, *model.graph.output]:
        for dim in info.type.tensor_type.shape.dim:
            if dim.dim_param == name:
                dim.dim_value = value


def _fixed_specs(specs: list[TensorSpec], name: str, value: int) -> list[TensorSpec]:
    return [TensorSpec(t.name, [value if d == name else d for d in t.shape], t.dtype) for t in specs]


def _export(module: torch.nn.Module, args: tuple, inputs: list[TensorSpec], outputs: list[TensorSpec], path: Path,
            cache_slots: int | None = None) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Trace `module` to `path` (+ `path.data` holding the weights); a static cache's slot axis is then fixed to
    `cache_slots`. Returns the graph's input and output specs as exported."""
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
                raise ExportError(f"tracing {path.name} to ONNX failed: {type(e).__name__}: {str(e).splitlines()[0]}") from e
        model = onnx.load(str(tmp), load_external_data=False)
        if cache_slots is not None:
            _fix_dims(model, CACHE_SLOTS, cache_slots)
        save_with_one_data_file(model, scratch, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if cache_slots is None:
        return inputs, outputs
    return _fixed_specs(inputs, CACHE_SLOTS, cache_slots), _fixed_specs(outputs, CACHE_SLOTS, cache_slots)


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
        return [ids, positions, mask, torch.arange(past, past + new)], _kv_dummies(stack, batch, TRACE_SLOTS, dtype)
    return [ids, positions, torch.ones(batch, past + new, dtype=torch.int64)], _kv_dummies(stack, batch, past, dtype)


def export_lm(stack: DecoderStack, lm_head: torch.nn.Module, dtype: torch.dtype, max_k: int, vocab: int, path: Path,
              cache: str = "dynamic", max_context: int | None = None) -> tuple[list[TensorSpec], list[TensorSpec]]:
    inputs, outputs = lm_io(stack, vocab, max_k, ONNX_DTYPE_NAMES[dtype], cache)
    step, past = _step_dummies(stack, dtype, vocab, cache)
    args = (*step, torch.zeros(min(3, max_k), dtype=torch.int64), *past)
    return _export(LMStep(stack, lm_head, max_k, cache).eval(), args, inputs, outputs, path, max_context if cache == "static" else None)


def export_rm(stack: DecoderStack, score_head: torch.nn.Module, dtype: torch.dtype, vocab: int, path: Path,
              cache: str = "dynamic", max_context: int | None = None) -> tuple[list[TensorSpec], list[TensorSpec]]:
    inputs, outputs = rm_io(stack, ONNX_DTYPE_NAMES[dtype], cache)
    step, past = _step_dummies(stack, dtype, vocab, cache)
    args = (*step, torch.randint(0, vocab, (TRACE_BATCH, TRACE_CANDIDATES)), *past)
    return _export(RMScorer(stack, score_head, cache).eval(), args, inputs, outputs, path, max_context if cache == "static" else None)


def graph_spec(file: str, source: str, hf_config, stack: DecoderStack, dtype: torch.dtype, vocab: int, io, cache: str = "dynamic") -> GraphSpec:
    s = stack.shape
    return GraphSpec(
        file=file,
        source=source,
        architecture=hf_config.model_type,
        dtype=ONNX_DTYPE_NAMES[dtype],
        num_layers=s.num_layers,
        num_kv_heads=s.num_kv_heads,
        head_dim=s.head_dim,
        vocab_size=vocab,
        inputs=io[0],
        outputs=io[1],
        cache=cache,
        hf_config=hf_config.to_diff_dict() if hasattr(hf_config, "to_diff_dict") else {},
    )
