"""ONNX Runtime CUDA: the same tokens as the CPU, caches on the device, CUDA graphs reported. Skipped without a GPU
and onnxruntime-gpu (`pip install 'args-rt[gpu]'`)."""

from __future__ import annotations

import onnxruntime as ort
import pytest

from args_export.bundle import ExportOptions, export_bundle
from args_export.demo.models import seeded_reward_model
from args_runtime.backend import EngineOptions
from args_runtime.engines.onnxruntime_engine import ort_session_options
from args_runtime import ArgsGenerator

from .conftest import CHAT_PROMPTS, TEXT_PROMPTS

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(),
                       reason="needs an NVIDIA GPU and onnxruntime-gpu (CUDAExecutionProvider); this onnxruntime has none"),
]


@pytest.fixture(scope="module")
def bundles(tiny_pairs, tmp_path_factory):
    pair, folder = tiny_pairs["llama"], tmp_path_factory.mktemp("gpu")
    out = {"dynamic": pair.bundle}
    for cache in ("static",):
        out[cache] = folder / cache
        export_bundle(ExportOptions(pair.lm_dir, pair.rm_dir, out[cache], max_k=48, max_context=256, cache=cache), quiet=True)
    fused_rm = seeded_reward_model(pair.lm_dir, folder / "fused-rm", init_std=0.5)  # a head on the LM's own backbone
    out["fused"] = folder / "fused"
    export_bundle(ExportOptions(pair.lm_dir, fused_rm, out["fused"], max_k=48, max_context=256, cache="static"), quiet=True)
    return out


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_fp32_cuda_tokens_equal_cpu_tokens(bundles, cache):
    cpu, cuda = ArgsGenerator.from_bundle(bundles[cache]), ArgsGenerator.from_bundle(bundles[cache], device="cuda")
    for prompt in (CHAT_PROMPTS[0], TEXT_PROMPTS[1]):
        for k, w in ((1, 0.0), (10, 1.5), (40, 3.0)):
            assert cuda.generate(prompt, k=k, w=w, max_new_tokens=48, ignore_eos=True).token_ids == \
                cpu.generate(prompt, k=k, w=w, max_new_tokens=48, ignore_eos=True).token_ids, (cache, k, w)
    kinds = {value.device_name().lower() for value in cuda.lm.past.values()} | {value.device_name().lower() for value in cuda.rm.past.values()}
    assert kinds == {"cuda"}  # the caches never left the device


def test_cuda_graphs_engage_and_change_no_token(bundles):
    """The placement prediction says every static graph places with no Memcpy, so ORT must accept CUDA graphs for both."""
    plain = ArgsGenerator.from_bundle(bundles["static"], device="cuda")
    graphs = ArgsGenerator.from_bundle(bundles["static"], device="cuda", cuda_graph=True)
    assert [graphs.lm.backend.describe()["cuda_graph"], graphs.rm.backend.describe()["cuda_graph"]] == ["on", "on"]
    for prompt in TEXT_PROMPTS:  # two prompts: the second replays the graphs the first captured
        for k in (10, 4):  # another k: other shapes, other graphs
            expected = plain.generate(prompt, k=k, w=1.0, max_new_tokens=32, ignore_eos=True).token_ids
            assert graphs.generate(prompt, k=k, w=1.0, max_new_tokens=32, ignore_eos=True).token_ids == expected
    assert len(graphs.lm.backend._graph_ids) == len(graphs.rm.backend._graph_ids) == 2  # one decode graph per k


def test_fused_bundle_on_cuda_gives_the_cpu_tokens(bundles):
    """One pass per token on the GPU: the device chooser (auto on CUDA), the proposals copied back, CUDA graphs."""
    cpu = ArgsGenerator.from_bundle(bundles["fused"])
    cuda = ArgsGenerator.from_bundle(bundles["fused"], device="cuda")
    graphs = ArgsGenerator.from_bundle(bundles["fused"], device="cuda", cuda_graph=True)
    assert cpu.manifest.fused and cuda.choice == "device" and graphs.rm.backend.describe()["cuda_graph"] == "on"
    assert graphs.rm.head.describe()["cuda_graph"] == "on"
    for prompt in (CHAT_PROMPTS[0], TEXT_PROMPTS[1], "Hi"):
        for k, w in ((10, 1.5), (40, 3.0)):
            expected = cpu.generate(prompt, k=k, w=w, max_new_tokens=32, ignore_eos=True).token_ids
            assert cuda.generate(prompt, k=k, w=w, max_new_tokens=32, ignore_eos=True).token_ids == expected, (prompt, k)
            assert graphs.generate(prompt, k=k, w=w, max_new_tokens=32, ignore_eos=True).token_ids == expected, (prompt, k)


@pytest.mark.parametrize("graph", ["lm.onnx", "rm.onnx", "fused/rm.onnx", "fused/propose.onnx"])
def test_placement_prediction_matches_onnx_runtime(bundles, graph, capfd):
    """ORT logs each shape node it moves to the CPU and warns when it adds Memcpy nodes: compare with the prediction."""
    import re

    from args_export.gpu.cuda_placement import predict_file

    options = ort_session_options(ort, EngineOptions())
    options.log_severity_level = 1  # INFO: the CPU fallback decisions (logged to the session or the default logger)
    ort.set_default_logger_severity(1)
    path = bundles["fused"] / graph.removeprefix("fused/") if graph.startswith("fused/") else bundles["static"] / graph
    try:
        ort.InferenceSession(str(path), options, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    finally:
        ort.set_default_logger_severity(2)
    log = capfd.readouterr().err
    moved = set(re.findall(r"Force fallback to CPU execution for node: (\S+)", log))
    predicted = predict_file(path)
    assert "Memcpy nodes are added" not in log
    assert moved == {label.split(" ", 1)[1] for label in predicted.cpu_nodes}


def test_lm_and_rm_on_different_devices(bundles):
    split = ArgsGenerator.from_bundle(bundles["static"], lm_device="cuda", rm_device="cpu")
    cpu = ArgsGenerator.from_bundle(bundles["static"])
    assert split.generate("Hi", k=10, w=1.0, max_new_tokens=16).token_ids == cpu.generate("Hi", k=10, w=1.0, max_new_tokens=16).token_ids


def test_int8_bundle_on_cuda_decodes_with_the_cpu_tokens(tiny_pairs, tmp_path):
    """MatMulNBits on ORT's CUDA provider: an int8 bundle runs and, on this tiny pair, chooses the CPU's int8 tokens
    (both dequantize the same blocks; a difference is reported by the assertion)."""
    pair = tiny_pairs["llama"]
    export_bundle(ExportOptions(pair.lm_dir, pair.rm_dir, tmp_path / "int8", max_k=16, max_context=256, quantize="int8"), quiet=True)
    cpu, cuda = ArgsGenerator.from_bundle(tmp_path / "int8"), ArgsGenerator.from_bundle(tmp_path / "int8", device="cuda")
    for prompt in (CHAT_PROMPTS[0], TEXT_PROMPTS[1]):
        assert cuda.generate(prompt, k=10, w=1.5, max_new_tokens=24, ignore_eos=True).token_ids == \
            cpu.generate(prompt, k=10, w=1.5, max_new_tokens=24, ignore_eos=True).token_ids


def test_every_new_family_on_cuda_gives_the_cpu_tokens(family_pairs):
    """The families of tests/test_families.py (sliding windows, soft caps, q/k norms) on CUDA, fused and two-graph,
    static layout (CUDA graphs too): the CPU's tokens."""
    from .conftest import PROMPTS

    for family, pair in family_pairs.items():
        for kind in ("two-graph", "fused"):
            bundle = pair.bundles[kind, "static"]
            expected = [ArgsGenerator.from_bundle(bundle).generate(p, k=6, w=1.5, max_new_tokens=20, ignore_eos=True).token_ids for p in PROMPTS]
            for options in ({}, {"cuda_graph": True}):
                cuda = ArgsGenerator.from_bundle(bundle, device="cuda", **options)
                got = [cuda.generate(p, k=6, w=1.5, max_new_tokens=20, ignore_eos=True).token_ids for p in PROMPTS]
                assert got == expected, (family, kind, options)


@pytest.fixture(scope="module")
def text_bundles(tmp_path_factory):
    """Text-path bundles (an RM with a tokenizer of its own): a cached decoder RM, and one whose texts outgrow it."""
    from .test_text_path import _pair
    from .tiny_tokenizers import byte_bpe, unigram

    root = tmp_path_factory.mktemp("gpu-text")
    return {"cached": _pair(root, "bpe-unigram", byte_bpe(), unigram(), 0),
            "short": _pair(root, "bpe-short", byte_bpe(), unigram(), 6, rm_positions=24)}


@pytest.mark.parametrize("name", ["cached", "short"])
def test_text_path_on_cuda_gives_the_cpu_tokens(text_bundles, name):
    """The text path's RM cache lives on the device; a cache cut back (re-tokenizing changed it, or the texts outgrew
    the RM) goes through the host. The tokens are the CPU's, alone and batched."""
    from .test_text_path import CHATS, RAW

    bundle = text_bundles[name].bundles["static"]
    cpu, cuda = ArgsGenerator.from_bundle(bundle), ArgsGenerator.from_bundle(bundle, device="cuda")
    prompts = RAW + CHATS
    expected = [cpu.generate(p, k=6, w=3.0, max_new_tokens=24, ignore_eos=True).token_ids for p in prompts]
    assert [cuda.generate(p, k=6, w=3.0, max_new_tokens=24, ignore_eos=True).token_ids for p in prompts] == expected
    assert [r.token_ids for r in cuda.generate(prompts, k=6, w=3.0, max_new_tokens=24, ignore_eos=True)] == expected
