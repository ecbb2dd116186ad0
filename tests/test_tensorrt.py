"""TensorRT: what can be checked without TensorRT or a GPU (the op-support check)."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from args_export.tensorrt_ops import TENSORRT_OPS, check_model, check_paths, main

from .conftest import ARCHS


def _model(op_type: str, domain: str = "", opset: int = 17, subgraph: bool = False):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    node = helper.make_node(op_type, ["x"], ["y"], name="the_node", domain=domain)
    if subgraph:
        then = helper.make_graph([node], "then", [], [y])
        els = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "else", [], [y])
        c = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
        node = helper.make_node("If", ["c"], ["y"], name="if", then_branch=then, else_branch=els)
        graph = helper.make_graph([node], "g", [c, x], [y])
    else:
        graph = helper.make_graph([node], "g", [x], [y])
    opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets)


def test_checker_accepts_supported_op():
    assert "TopK" in TENSORRT_OPS and check_model(_model("Relu")).ok


@pytest.mark.parametrize("op", ["Bernoulli", "Unique", "MadeUpOp"])
def test_checker_reports_unsupported_op(op):
    report = check_model(_model(op))
    assert not report.ok and report.unsupported == [(op, 1, "the_node")]
    assert op in report.describe()


def test_checker_reports_custom_domain_and_subgraphs():
    assert check_model(_model("Gelu", domain="com.microsoft")).unsupported[0][0] == "com.microsoft::Gelu"
    report = check_model(_model("Bernoulli", subgraph=True))
    assert [u[0] for u in report.unsupported] == ["Bernoulli"]


@pytest.mark.parametrize("opset", [8, 21])
def test_checker_reports_opset_outside_range(opset):
    report = check_model(_model("Relu", opset=opset))
    assert not report.ok and "9-20" in report.opset_problem


def test_cli_exit_codes(tmp_path, capsys):
    onnx.save(_model("Relu"), tmp_path / "good.onnx")
    onnx.save(_model("MadeUpOp"), tmp_path / "bad.onnx")
    assert main([str(tmp_path / "good.onnx")]) == 0
    assert main([str(tmp_path)]) == 1
    assert "MadeUpOp" in capsys.readouterr().out


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_bundle_ops_supported_by_tensorrt(tiny_pairs, arch):
    reports = check_paths([tiny_pairs[arch].bundle])
    assert len(reports) >= 2
    assert all(r.ok for r in reports), "\n".join(r.describe() for r in reports)


@pytest.mark.slow
def test_smollm2_bundle_ops_supported_by_tensorrt(smollm2_pair):
    reports = check_paths([smollm2_pair.bundle])
    assert all(r.ok for r in reports), "\n".join(r.describe() for r in reports)
