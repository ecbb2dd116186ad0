"""choose.onnx: ARGS's combine-and-choose step as a graph, so it runs where the LM's top-k and the rewards already
are (the GPU) and only the chosen ids, logits and rewards cross to the host.

It does the host chooser's arithmetic in the same order: score = logit + w·reward in float32, then either the
first argmax (greedy) or, to sample, softmax(score / temperature) in float64, its cumulative sum, and the first
candidate whose cumulative probability exceeds u·total for a uniform draw u the host passes in (one per row, from
the same seeded stream as the host chooser)."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

CHOICE_FILE = "choose.onnx"
OPSET = 17

INPUTS = [
    ("topk_values", TensorProto.FLOAT, ["batch_size", "num_candidates"]),
    ("topk_ids", TensorProto.INT64, ["batch_size", "num_candidates"]),
    ("rewards", TensorProto.FLOAT, ["batch_size", "num_candidates"]),
    ("w", TensorProto.FLOAT, [1]),
    ("sample", TensorProto.BOOL, [1]),  # False: greedy; True: sample with `draws`
    ("temperature", TensorProto.DOUBLE, [1]),
    ("draws", TensorProto.DOUBLE, ["batch_size"]),
]
OUTPUTS = [
    ("chosen_ids", TensorProto.INT64, ["batch_size", 1]),
    ("chosen_logits", TensorProto.FLOAT, ["batch_size", 1]),
    ("chosen_rewards", TensorProto.FLOAT, ["batch_size", 1]),
]


def _const(name: str, values: list, dtype=TensorProto.INT64):
    return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, dtype, [len(values)], values))


def build_choice_graph() -> onnx.ModelProto:
    node = helper.make_node
    nodes = [
        _const("axis1", [1]),
        _const("last", [-1]),
        _const("end", [2**62]),
        _const("zero", [0]),
        # score = logit + w · reward (float32, as args_scores)
        node("Mul", ["rewards", "w"], ["weighted"]),
        node("Add", ["topk_values", "weighted"], ["scores"]),
        # greedy: the first maximum
        node("ArgMax", ["scores"], ["greedy_index"], axis=1, keepdims=1, select_last_index=0),
        # stochastic: float64 softmax(score / T), cumulative sum, count of entries <= u · total (searchsorted, right)
        node("Cast", ["scores"], ["scores64"], to=TensorProto.DOUBLE),
        node("Div", ["scores64", "temperature"], ["scaled"]),
        node("ReduceMax", ["scaled"], ["peak"], axes=[1], keepdims=1),
        node("Sub", ["scaled", "peak"], ["shifted"]),
        node("Exp", ["shifted"], ["exp"]),
        node("ReduceSum", ["exp", "axis1"], ["norm"], keepdims=1),
        node("Div", ["exp", "norm"], ["probs"]),
        node("CumSum", ["probs", "axis1"], ["cdf"]),
        node("Slice", ["cdf", "last", "end", "axis1"], ["total"]),
        node("Unsqueeze", ["draws", "axis1"], ["draws_col"]),
        node("Mul", ["draws_col", "total"], ["threshold"]),
        # searchsorted over the first k-1 entries only: the count is then at most k-1 (the last candidate when u·total
        # reaches the end), with no Shape-derived bound that ORT's CUDA provider would compute on the host and copy over
        node("Slice", ["cdf", "zero", "last", "axis1"], ["cdf_head"]),
        node("LessOrEqual", ["cdf_head", "threshold"], ["below"]),
        node("Cast", ["below"], ["below_count"], to=TensorProto.INT64),
        node("ReduceSum", ["below_count", "axis1"], ["sampled_index"], keepdims=1),
        node("Where", ["sample", "sampled_index", "greedy_index"], ["index"]),
        # only these three [B, 1] values leave the device
        node("GatherElements", ["topk_ids", "index"], ["chosen_ids"], axis=1),
        node("GatherElements", ["topk_values", "index"], ["chosen_logits"], axis=1),
        node("GatherElements", ["rewards", "index"], ["chosen_rewards"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "args_choose",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in INPUTS],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in OUTPUTS],
    )
    opsets = [helper.make_opsetid("", OPSET)]
    # the oldest IR that holds this opset, not onnx's newest: an ONNX Runtime older than the onnx package refuses a newer
    # IR ("Unsupported model IR version: 14, max supported IR version: 13", ORT 1.31 beside onnx 1.23 on the GPU box)
    model = helper.make_model(graph, opset_imports=opsets, producer_name="args-export", ir_version=helper.find_min_ir_version_for(opsets))
    onnx.checker.check_model(model, full_check=True)
    return model


def write_choice_graph(folder: Path) -> Path:
    path = Path(folder) / CHOICE_FILE
    onnx.save(build_choice_graph(), str(path))
    return path
