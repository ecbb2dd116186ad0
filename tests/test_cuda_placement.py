"""The CUDA placement prediction (ORT's CUDA provider rules, run without a GPU): it finds the Memcpy nodes and the
host reads that stop a CUDA graph capture, and finds none in any exported graph."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from args_export.gpu.cuda_placement import main, predict, predict_file
from args_runtime.backend import EngineOptions
from args_runtime.engines.onnxruntime_engine import ort_session_options
from args_runtime.manifest import load_manifest

from .conftest import ARCHS


def _model(nodes, inputs, outputs, initializers=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _i64(name, values):
    return helper.make_tensor(name, TensorProto.INT64, [len(values)], values)


X = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 48])
Y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "k"])
AXES = [_i64("zero", [0]), _i64("one", [1])]


def test_a_slice_end_read_from_a_value_needs_a_device_to_host_copy():
    """The LM's former `num_candidates` [1] value: Gather/Unsqueeze run on CUDA, Slice wants `ends` on the host."""
    k = helper.make_tensor_value_info("k", TensorProto.INT64, [1])
    nodes = [helper.make_node("Gather", ["k", "zero"], ["k0"], axis=0), helper.make_node("Unsqueeze", ["k0", "zero"], ["end"]),
             helper.make_node("Slice", ["x", "zero", "end", "one"], ["y"])]
    placement = predict(_model(nodes, [X, k], [Y], AXES))
    assert placement.copies == ["end (device -> host)"] and not placement.capturable
    assert predict(_model(nodes, [X, k], [Y], AXES), host_inputs=("k",)).frozen_inputs == ["k"]  # staged on the host: the device copy is frozen


def test_a_slice_end_read_from_a_shape_stays_on_the_host_side():
    """`candidate_slots` [k]: Shape's output is host memory, so the end is computed on CPU and no copy is needed."""
    slots = helper.make_tensor_value_info("slots", TensorProto.INT64, ["k"])
    nodes = [helper.make_node("Shape", ["slots"], ["shape"]), helper.make_node("Slice", ["x", "zero", "shape", "one"], ["y"])]
    placement = predict(_model(nodes, [X, slots], [Y], AXES))
    assert placement.capturable and placement.copies == [] and placement.frozen_inputs == []


def test_a_shape_value_added_to_device_data_needs_a_host_to_device_copy():
    """The former prefix mask: arange(S) + (T - S) adds a host-computed scalar to a device Range."""
    mask = helper.make_tensor_value_info("mask", TensorProto.INT64, ["b", "t"])
    out = helper.make_tensor_value_info("idx", TensorProto.INT64, ["s"])
    nodes = [helper.make_node("Shape", ["mask"], ["shape"]), helper.make_node("Gather", ["shape", "one"], ["t"], axis=0),
             helper.make_node("Sub", ["t", "one"], ["start"]), helper.make_node("Range", ["zero_s", "t", "one_s"], ["r"]),
             helper.make_node("Add", ["r", "start"], ["idx"])]
    scalars = [helper.make_tensor("zero_s", TensorProto.INT64, [], [0]), helper.make_tensor("one_s", TensorProto.INT64, [], [1])]
    placement = predict(_model(nodes, [mask], [out], [*AXES, *scalars]))
    assert placement.copies == ["start (host -> device)"]
    assert "Gather t" in " ".join(placement.cpu_nodes) and "Sub start" in " ".join(placement.cpu_nodes)


def test_a_graph_input_read_by_a_host_shape_node_is_frozen_on_replay():
    """A CPU shape node that also reads an input's value (here: adds it) would keep the captured value on replay."""
    pos = helper.make_tensor_value_info("pos", TensorProto.INT64, [1])
    nodes = [helper.make_node("Shape", ["x"], ["shape"]), helper.make_node("Add", ["shape", "pos"], ["s2"]),
             helper.make_node("Reshape", ["x", "s2"], ["y"])]
    placement = predict(_model(nodes, [X, pos], [Y]))
    assert placement.frozen_inputs == ["pos"] and not placement.capturable


def test_an_op_without_a_cuda_kernel_falls_back_with_copies():
    nodes = [helper.make_node("Hardmax", ["x"], ["h"]), helper.make_node("Relu", ["h"], ["y"])]
    placement = predict(_model(nodes, [X], [Y]))
    assert placement.no_kernel and placement.copies == ["h (host -> device)"]


@pytest.mark.parametrize("arch", ARCHS)
def test_every_exported_graph_places_on_cuda_without_copies(tiny_pairs, static_bundles, arch):
    """No Memcpy and no changing input read on the host, for both layouts: ORT would accept a CUDA graph (the static
    layout also has the fixed shapes it needs), and no step pays a hidden device sync."""
    for bundle in (tiny_pairs[arch].bundle, static_bundles[arch]):
        for name in ("lm.onnx", "rm.onnx", "choose.onnx"):
            placement = predict_file(bundle / name)
            assert placement.capturable, placement.describe()
            if name != "choose.onnx":
                assert placement.cpu_nodes  # the shape subgraph did move to the CPU: the rules ran on real graphs


def test_bf16_graphs_are_placed_with_their_own_types(tiny_pairs, tmp_path):
    """ORT's CPU provider cannot load bf16 graphs: they are optimized as an fp16 twin, then placed as bf16 (which
    some CUDA kernels lack, e.g. Sin, Cos, ReduceMean: a bf16 rotary or norm there would show up as no_kernel)."""
    from args_export.loading import ModelSpec, load_lm
    from args_export.onnx_export import export_lm
    from args_export.plan import GraphPlan

    lm = load_lm(ModelSpec.read(tiny_pairs["llama"].lm_dir, "LM"), "bf16")
    export_lm(lm, GraphPlan("bfloat16", "static", 64, 8, lm.model.get_output_embeddings().weight.shape[0]), tmp_path / "lm.onnx")
    placement = predict_file(tmp_path / "lm.onnx")
    assert placement.capturable, placement.describe()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lm.onnx", "lm.onnx.data"]  # the twin lived elsewhere
    bf16_sin = _model([helper.make_node("Sin", ["x"], ["y"])], [X], [Y])
    assert predict(bf16_sin, half_is_bf16=True).capturable  # fp32 Sin: fine either way
    half = helper.make_tensor_value_info("h", TensorProto.FLOAT16, ["b", 48])
    half_out = helper.make_tensor_value_info("o", TensorProto.FLOAT16, ["b", 48])
    sin = _model([helper.make_node("Sin", ["h"], ["o"])], [half], [half_out])
    assert predict(sin).capturable and not predict(sin, half_is_bf16=True).capturable


def test_cli_reports_each_graph(static_bundles, capsys):
    assert main([str(static_bundles["llama"])]) == 0
    out = capsys.readouterr().out
    assert [line.split(":")[0] for line in out.splitlines()] == ["choose.onnx", "lm.onnx", "rm.onnx"]


def test_lm_reads_only_the_length_of_candidate_slots(tiny_pairs):
    """k travels as the length of `candidate_slots`; its values are never read."""
    bundle = tiny_pairs["llama"].bundle
    spec = load_manifest(bundle).lm
    session = ort.InferenceSession(str(bundle / "lm.onnx"), ort_session_options(ort, EngineOptions()), providers=["CPUExecutionProvider"])
    ids = np.array([[5, 9, 11]], np.int64)
    feeds = {"input_ids": ids, "position_ids": np.arange(3)[None], "attention_mask": np.ones_like(ids),
             **{t.name: np.zeros((1, spec.num_kv_heads, 0, spec.head_dim), np.float32) for t in spec.inputs if t.name.startswith("past")}}
    names = ["topk_values", "topk_ids"]
    zeros = session.run(names, {**feeds, "candidate_slots": np.zeros(4, np.int64)})
    other = session.run(names, {**feeds, "candidate_slots": np.array([7, -1, 3, 2**40], np.int64)})
    assert zeros[1].shape == (1, 4) and all(np.array_equal(a, b) for a, b in zip(zeros, other))
    assert session.run(names, {**feeds, "candidate_slots": np.zeros(9, np.int64)})[1].shape == (1, 9)
