"""TensorRT. Without TensorRT or a GPU: the op check, profile derivation and selection on the real tiny bundles, bf16
conversion, and the CLI/backend failure paths. With TensorRT and a GPU (marker `tensorrt`): engine build, native backend
vs ONNX Runtime CPU, the stamp check."""

from __future__ import annotations

import json

import onnx
import pytest
from onnx import TensorProto, helper

from args_export.gpu.tensorrt_ops import TENSORRT_OPS, check_model, check_paths, main

from args_runtime.backend import EngineOptions
from args_runtime.engines.onnxruntime_engine import ort_session_options
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
    from args_runtime.engines.tensorrt_stamp import check_engine_stamp

    stamp = {"file": "lm.engine", "tensorrt_version": "10.8.0", "compute_capability": "sm_90"}
    check_engine_stamp(stamp, "10.8.0", "sm_90")
    with pytest.raises(BundleError, match=r"10\.8\.0.*sm_90.*10\.9\.0.*sm_89.*args-export --tensorrt-only b"):
        check_engine_stamp(stamp, "10.9.0", "sm_89", bundle="b")


def test_missing_tensorrt_gives_install_hint():
    from args_export.gpu.tensorrt_build import require_build_stack
    from args_runtime.errors import MissingDependencyError

    if _tensorrt_usable():
        pytest.skip("TensorRT is importable here")
    with pytest.raises(MissingDependencyError, match=r"args-rt\[trt\]"):
        require_build_stack()


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


# --- optimization profiles (pure) ---------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_profiles_derived_from_real_bundle_graphs(tiny_pairs, arch):
    from args_export.gpu.tensorrt_build import dim_ranges, graph_profiles
    from args_runtime.manifest import load_manifest

    m = load_manifest(tiny_pairs[arch].bundle)
    C, K = m.max_context, m.max_k
    for spec in (m.lm, m.rm):
        profiles = graph_profiles(spec.inputs, 4, C, K)
        assert [p.name for p in profiles] == ["decode", "prefill"]
        for p in profiles:
            assert set(p.shapes) == {t.name for t in spec.inputs}
            for t in spec.inputs:
                lo, opt, hi = p.shapes[t.name]
                assert len(lo) == len(opt) == len(hi) == len(t.shape)
                for i, d in enumerate(t.shape):
                    expect = (d, d, d) if isinstance(d, int) else dim_ranges(4, C, K)[p.name][d]
                    assert (lo[i], opt[i], hi[i]) == expect and lo[i] <= opt[i] <= hi[i]
        decode, prefill = (p.shapes for p in profiles)
        assert decode["input_ids"] == ((1, 1), (2, 1), (4, 1))
        assert prefill["input_ids"] == ((1, 1), (2, min(128, C)), (4, C))
        assert prefill["attention_mask"][2] == (4, C)
        past = next(t for t in spec.inputs if t.name.startswith("past"))
        assert prefill[past.name][0][2] == 0 and prefill[past.name][2][2] == C - 1
        assert prefill[past.name][2][1] == spec.num_kv_heads and prefill[past.name][2][3] == spec.head_dim
    cands = graph_profiles(m.rm.inputs, 4, C, K)[0].shapes["candidate_ids"]
    assert cands == ((1, 1), (2, K), (4, K))


def test_profile_graph_without_sequence_axis_has_one_profile_and_fixed_dims():
    from args_export.gpu.tensorrt_build import graph_profiles
    from args_runtime.manifest import TensorSpec

    (only,) = graph_profiles([TensorSpec("x", ["batch_size", 8], "float32")], 6, 64, 8)
    assert only.name == "prefill" and only.shapes == {"x": ((1, 8), (3, 8), (6, 8))}
    assert json.loads(json.dumps(only.as_json())) == {"shapes": {"x": [[1, 8], [3, 8], [6, 8]]}}


def test_profile_errors_name_the_problem():
    from args_export.gpu.tensorrt_build import graph_profiles
    from args_runtime.errors import ExportError
    from args_runtime.manifest import TensorSpec

    with pytest.raises(ExportError, match=r"'x'.*'height'"):
        graph_profiles([TensorSpec("x", ["batch_size", "height"], "float32")], 2, 64, 8)
    with pytest.raises(ExportError, match=r"max_batch=0"):
        graph_profiles([TensorSpec("x", ["batch_size"], "float32")], 0, 64, 8)


def test_select_profile_prefers_decode_and_quotes_min_opt_max(tiny_pairs):
    from args_export.gpu.tensorrt_build import graph_profiles
    from args_runtime.errors import GenerationError
    from args_runtime.manifest import load_manifest
    from args_runtime.engines.tensorrt_stamp import select_profile

    m = load_manifest(tiny_pairs["llama"].bundle)
    C = m.max_context
    profiles = graph_profiles(m.lm.inputs, 4, C, m.max_k)
    ranges, names = [p.shapes for p in profiles], [p.name for p in profiles]

    def observed(batch, seq, past):
        kv = (m.lm.num_kv_heads, m.lm.head_dim)
        return {"input_ids": (batch, seq), "position_ids": (batch, seq), "attention_mask": (batch, past + seq),
                **{t.name: (batch, kv[0], past, kv[1]) for t in m.lm.inputs if t.name.startswith("past")}}

    assert select_profile(ranges, observed(2, 1, 10), "lm.engine", names) == 0
    assert select_profile(ranges, observed(1, 7, 0), "lm.engine", names) == 1
    with pytest.raises(GenerationError, match=rf"decode: input_ids is \[1, {C + 1}\].*\[\[1, 1\], \[2, 1\], \[4, 1\]\].*prefill: input_ids is \[1, {C + 1}\], \[min, opt, max\] = \[\[1, 1\], \[2, 128\], \[4, {C}\]\]"):
        select_profile(ranges, observed(1, C + 1, 0), "lm.engine", names)
    with pytest.raises(GenerationError, match=r"input_ids is \[5, 1\]"):
        select_profile(ranges, observed(5, 1, 0), "lm.engine", names)
    with pytest.raises(GenerationError, match=r"input_ids is \[1\]"):  # wrong rank never fits
        select_profile(ranges, {**observed(1, 1, 0), "input_ids": (1,)}, "lm.engine", names)


# --- pure helpers of the native backend ---------------------------------------------------------------------


def test_bf16_conversion_rounds_to_nearest_even():
    import numpy as np

    from args_runtime.engines.tensorrt_engine import bf16_bits_to_float32, float32_to_bf16_bits, host_array

    exact = np.array([0.0, 1.0, -2.5, 3.140625, 2.0**-10], np.float32)
    assert np.array_equal(bf16_bits_to_float32(float32_to_bf16_bits(exact)), exact)
    halfway = np.array([1 + 2.0**-8, 1 + 3 * 2.0**-8], np.float32)  # ties: to the even mantissa
    assert bf16_bits_to_float32(float32_to_bf16_bits(halfway)).tolist() == [1.0, 1 + 2.0**-6]
    assert np.isnan(bf16_bits_to_float32(float32_to_bf16_bits(np.array([np.nan], np.float32))))[0]
    bits = np.array([0x3F80, 0xC020], np.uint16)
    assert host_array(bits, "bfloat16") is not None and host_array(bits, "bfloat16").tolist() == [0x3F80, 0xC020]
    assert host_array([1, 2], "int64").dtype == np.int64 and host_array([[1.5]], "float16").dtype == np.float16


# --- failure paths without TensorRT -------------------------------------------------------------------------


def _tensorrt_usable() -> bool:
    try:
        import tensorrt

        return hasattr(tensorrt, "Builder")
    except ImportError:
        return False


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_cli_tensorrt_only_without_tensorrt_leaves_bundle_unchanged(tiny_pairs, tmp_path, capsys):
    import shutil

    from args_export.cli import main as export_main

    if _tensorrt_usable():
        pytest.skip("TensorRT is importable here")
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_pairs["llama"].bundle, bundle)
    before = _snapshot(bundle)
    assert export_main(["--tensorrt-only", str(bundle), "--trt-precision", "fp16", "--trt-max-batch", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("args-export: error: ") and "args-rt[trt]" in err
    assert _snapshot(bundle) == before


def test_build_engines_refuses_bad_precision_and_missing_tensorrt(tiny_pairs):
    from args_export.gpu.tensorrt_build import build_engines
    from args_runtime.errors import ExportError

    bundle = tiny_pairs["llama"].bundle
    with pytest.raises(ExportError, match=r"'int4'.*fp16"):
        build_engines(bundle, precision="int4")
    if not _tensorrt_usable():
        from args_runtime.errors import MissingDependencyError

        before = _snapshot(bundle)
        with pytest.raises(MissingDependencyError, match=r"args-rt\[trt\]"):
            build_engines(bundle)
        assert _snapshot(bundle) == before


@pytest.mark.parametrize("argv, message", [
    (["--tensorrt-only", "b", "--lm", "x"], "drop --lm"),
    (["--tensorrt-only", "b", "--tensorrt"], "drop --tensorrt"),
    (["--lm", "x", "--rm", "y"], "required: --out"),
    (["--tensorrt-only", "b", "--trt-max-batch", "0"], "--trt-max-batch 0"),
])
def test_cli_argument_errors_exit_2(argv, message, capsys):
    from args_export.cli import main as export_main

    with pytest.raises(SystemExit) as exit_info:
        export_main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_cli_help_explains_tensorrt_options():
    from args_export.cli import build_parser

    text = build_parser().format_help()
    for option in ("--tensorrt-only BUNDLE", "--trt-precision", "--trt-max-batch", "--trt-timing-cache", "args-rt[trt]"):
        assert option in text, option


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_open_tensorrt_backend_without_stack_names_the_fix(tmp_path, device):
    from args_runtime.backend import Device, EngineOptions
    from args_runtime.engines import BundleGraph, open_graph
    from args_runtime.errors import BundleError, MissingDependencyError

    if _tensorrt_usable():
        pytest.skip("TensorRT is importable here")
    graph = BundleGraph(tmp_path, "lm", "lm.onnx", engine={"file": "lm.engine"})
    error, message = (MissingDependencyError, r"args-rt\[trt\]") if device == "cuda" else (BundleError, "CUDA devices only")
    with pytest.raises(error, match=message) as info:
        open_graph("tensorrt", graph, Device.parse(device), EngineOptions())
    assert ("TensorRT" in str(info.value)) if device == "cuda" else ("backend='onnxruntime'" in str(info.value))


# --- with TensorRT and a GPU ---------------------------------------------------------------------------------

NO_TENSORRT = ("TensorRT is not installed (its PyPI packages are download stubs here); runs on a GPU machine with "
               "`pip install 'args-rt[trt]'`")


def _require_gpu_stack():
    if not _tensorrt_usable():
        pytest.skip(NO_TENSORRT)
    from args_runtime.engines.tensorrt_engine import import_cudart

    try:
        cudart = import_cudart()
    except Exception:
        pytest.skip(NO_TENSORRT + " (cuda-python is missing)")
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess or count < 1:
        pytest.skip("TensorRT is installed but no CUDA device is visible")


@pytest.fixture(scope="module")
def engine_bundle(tiny_pairs, tmp_path_factory):
    """A copy of the tiny llama bundle with fp16 engines built into it."""
    import shutil

    from args_export.gpu.tensorrt_build import build_engines

    _require_gpu_stack()
    bundle = tmp_path_factory.mktemp("trt") / "llama-bundle"
    shutil.copytree(tiny_pairs["llama"].bundle, bundle)
    build_engines(bundle, precision="fp16", max_batch=2, timing_cache=bundle.parent / "timing.cache", quiet=True)
    return bundle


def _feeds(spec, batch, ids, past_len, past=None):
    import numpy as np

    seq = ids.shape[1]
    feeds = {"input_ids": ids, "position_ids": np.tile(np.arange(past_len, past_len + seq), (batch, 1)).astype(np.int64),
             "attention_mask": np.ones((batch, past_len + seq), np.int64)}
    if any(t.name == "candidate_ids" for t in spec.inputs):
        feeds["candidate_ids"] = np.array([[5, 17, 301, 4000]] * batch, np.int64)
    for i, t in enumerate(t for t in spec.inputs if t.name.startswith("past")):
        feeds[t.name] = past[i] if past is not None else np.zeros((batch, spec.num_kv_heads, 0, spec.head_dim), np.float32)
    return feeds


def _close(got, ref, what):
    import numpy as np

    scale = max(1.0, float(np.abs(ref).max()))
    assert got.shape == ref.shape, what
    assert float(np.abs(got.astype(np.float32) - ref).max()) <= 3e-2 * scale, what  # fp16 engine vs fp32 ORT


@pytest.mark.tensorrt
@pytest.mark.parametrize("role", ["lm", "rm"])
def test_tensorrt_engine_matches_onnxruntime(engine_bundle, role):
    import numpy as np
    import onnxruntime as ort

    from args_runtime.manifest import load_manifest
    from args_runtime.engines.tensorrt_engine import DeviceArray, TensorRTBackend

    m = load_manifest(engine_bundle)  # checksums of the engines included
    spec, stamp = getattr(m, role), m.engines[role]
    assert stamp["file"] == f"{role}.engine" and m.files[stamp["file"]] == stamp["sha256"]
    assert stamp["precision"] == "fp16" and stamp["compute_capability"].startswith("sm_")
    trt_backend = TensorRTBackend(engine_bundle / stamp["file"], device="cuda", stamp=stamp)
    session = ort.InferenceSession(str(engine_bundle / spec.file), ort_session_options(ort, EngineOptions()), providers=["CPUExecutionProvider"])
    out_names = [o.name for o in session.get_outputs()]
    presents = [n for n in out_names if n.startswith("present")]
    ids = np.array([[1, 42, 7, 99, 3], [1, 8, 15, 16, 23]], np.int64)

    prefill = _feeds(spec, 2, ids, 0)
    ref = dict(zip(out_names, session.run(None, prefill)))
    got = trt_backend.run(prefill)
    for name in out_names:
        assert isinstance(got[name], DeviceArray)
        if ref[name].dtype.kind == "f":
            _close(trt_backend.to_host(got[name]), ref[name], f"prefill {name}")

    # decode one token on the engine-side cache, written in place: past in, present out, same DeviceArray
    step = np.array([[11], [12]], np.int64)
    caches = [got[n] for n in presents]
    decode = _feeds(spec, 2, step, ids.shape[1], past=caches)
    ref2 = dict(zip(out_names, session.run(None, _feeds(spec, 2, step, ids.shape[1], past=[ref[n] for n in presents]))))
    got2 = trt_backend.run(decode, into=dict(zip(presents, caches)))
    for name, cache in zip(presents, caches):
        assert got2[name] is cache and cache.shape == ref2[name].shape
    for name in out_names:
        if ref2[name].dtype.kind == "f":
            _close(trt_backend.to_host(got2[name]), ref2[name], f"decode {name}")
    assert trt_backend.describe()["backend"] == "tensorrt"


@pytest.mark.tensorrt
def test_tensorrt_backend_limits_and_empty(engine_bundle):
    from args_runtime.errors import GenerationError
    from args_runtime.manifest import load_manifest
    from args_runtime.engines.tensorrt_engine import TensorRTBackend

    import numpy as np

    m = load_manifest(engine_bundle)
    backend = TensorRTBackend(engine_bundle / "lm.engine", stamp=m.engines["lm"])
    zero = backend.empty((1, m.lm.num_kv_heads, 0, m.lm.head_dim), "float32")
    assert backend.to_host(zero).shape == (1, m.lm.num_kv_heads, 0, m.lm.head_dim)
    assert not backend.to_host(backend.empty((2, 3), "float16")).any()
    too_long = np.ones((1, m.max_context + 1), np.int64)
    with pytest.raises(GenerationError, match=r"\[min, opt, max\]"):
        backend.run(_feeds(m.lm, 1, too_long, 0))
    with pytest.raises(GenerationError, match=r"input_ids is \[3, 1\]"):  # built with max_batch=2
        backend.run(_feeds(m.lm, 3, np.ones((3, 1), np.int64), 0))


@pytest.mark.tensorrt
def test_tensorrt_engine_from_elsewhere_gives_rebuild_command(engine_bundle):
    from args_runtime.errors import BundleError
    from args_runtime.manifest import load_manifest
    from args_runtime.engines.tensorrt_engine import TensorRTBackend

    stamp = dict(load_manifest(engine_bundle).engines["lm"], compute_capability="sm_00")
    import re

    with pytest.raises(BundleError, match=rf"sm_00.*args-export --tensorrt-only {re.escape(str(engine_bundle))}"):
        TensorRTBackend(engine_bundle / "lm.engine", stamp=stamp)


def test_output_buffers_take_turns_grow_when_outgrown_and_never_write_a_fed_buffer():
    """The TensorRT backend's outputs come from two buffers per output used in turn (no cudaMalloc per token). The pool's
    choices are checked here with a stand-in allocator (the real one needs CUDA): a present fed back as the next past is
    never the next present's memory, memory two runs old is reused, a bigger shape grows the buffer."""
    from args_runtime.engines.tensorrt_engine import OutputBuffers

    made = []

    class Allocation:
        def __init__(self, shape, dtype, capacity):
            self.shape, self.dtype, self.capacity, self.ptr, self.freed, self._cudart = shape, dtype, capacity, 4096 * (len(made) + 1), False, None
            made.append(self)

        def free(self):
            self.freed = True

    pool = OutputBuffers(Allocation)
    shape = (1, 2, 5, 8)
    first = pool.take("present.0.key", shape, "float32", set())
    second = pool.take("present.0.key", shape, "float32", {first.ptr})  # the first is this run's past
    third = pool.take("present.0.key", shape, "float32", {second.ptr})
    assert first.ptr != second.ptr and third.ptr == first.ptr and len(made) == 2
    assert third.shape == shape and third.capacity >= 1 * 2 * 5 * 8 * 4
    bigger = pool.take("present.0.key", (1, 2, 50, 8), "float32", {third.ptr})  # outgrows its buffer: replaced
    assert made[1].freed and bigger.ptr == made[2].ptr and bigger.shape == (1, 2, 50, 8)
    both = pool.take("present.0.key", (1, 2, 50, 8), "float32", {made[0].ptr, made[2].ptr})  # both fed: a fresh one
    assert both.ptr == made[3].ptr and pool.pairs["present.0.key"][0] is made[0]
    pool.take("topk_ids", (1, 10), "int64", set())
    assert made[4].dtype == "int64" and len(made) == 5
