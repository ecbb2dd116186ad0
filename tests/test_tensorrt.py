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


def test_manifest_engines_round_trip_and_old_bundles_load(tiny_pairs):
    import json

    from args_runtime.manifest import Manifest, load_manifest

    m = load_manifest(tiny_pairs["llama"].bundle)
    assert m.engines == {}
    raw = json.loads(m.to_json())
    raw.pop("engines")  # a bundle written before the field existed
    assert Manifest.from_dict(raw).engines == {}
    m.engines = {"lm": {"file": "lm.engine", "tensorrt_version": "10.8.0", "compute_capability": "sm_90"}}
    assert Manifest.from_dict(json.loads(m.to_json())).engines == m.engines


def test_engine_stamp_mismatch_names_both_and_rebuild():
    from args_runtime.errors import BundleError
    from args_runtime.tensorrt_stamp import check_engine_stamp

    stamp = {"file": "lm.engine", "tensorrt_version": "10.8.0", "compute_capability": "sm_90"}
    check_engine_stamp(stamp, "10.8.0", "sm_90")
    with pytest.raises(BundleError, match=r"10\.8\.0.*sm_90.*10\.9\.0.*sm_89.*args-export --tensorrt-only b"):
        check_engine_stamp(stamp, "10.9.0", "sm_89", bundle="b")


def test_profiles_cover_prefill_decode_and_candidates():
    from args_export.tensorrt_build import lm_profiles, rm_profile

    p = lm_profiles(max_batch=4, max_context=1024)
    assert p["prefill"]["sequence"] == (1, 128, 1024) and p["prefill"]["past"][2] == 1023
    assert p["decode"]["sequence"] == (1, 1, 1) and p["decode"]["batch"] == (1, 2, 4)
    for prof in p.values():
        assert all(lo <= opt <= hi for lo, opt, hi in prof.values())
    assert rm_profile(4, 1024, 64)["candidates"] == (0, 64, 64)


def test_missing_tensorrt_gives_install_hint():
    from args_export.tensorrt_build import require_tensorrt
    from args_runtime.errors import ExportError

    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is importable here")
    except ImportError:
        pass
    with pytest.raises(ExportError, match=r"args-rt\[trt\]"):
        require_tensorrt()


def test_cli_tensorrt_without_tensorrt_fails_cleanly(tmp_path, capsys):
    from args_export.cli import main as export_main

    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is importable here")
    except ImportError:
        pass
    out = tmp_path / "bundle"
    assert export_main(["--lm", str(tmp_path / "lm"), "--rm", str(tmp_path / "rm"), "--out", str(out), "--tensorrt"]) == 2
    assert "args-rt[trt]" in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == []
