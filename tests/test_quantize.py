"""Weight-only quantized bundles (args-export --quantize int8|int4): ONNX Runtime's MatMulNBits quantizer rewrites the
graphs, the PyTorch check holds them to quantization limits and says so, and the runtime drives them unchanged."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from args_export.bundle import ExportOptions, export_bundle
from args_export.validate import TOLERANCES
from args_runtime import ArgsGenerator
from args_runtime.errors import ExportError
from args_runtime.manifest import load_manifest
from args_runtime.models import PrefixState

from .conftest import ARCHS

PROMPT = [{"role": "user", "content": "Tell me about the sea."}]


def weight_bytes(bundle, graph: str) -> int:
    return sum(f.stat().st_size for f in bundle.iterdir() if f.name.startswith(graph))


def ops(bundle, graph: str) -> set[str]:
    return {n.op_type for n in onnx.load(str(bundle / graph), load_external_data=False).graph.node}


@pytest.fixture(scope="module")
def quantized(tiny_pairs, tmp_path_factory):
    """The tiny Llama pair as int8 and int4 bundles."""
    folder = tmp_path_factory.mktemp("quantized")
    pair = tiny_pairs["llama"]
    for q in ("int8", "int4"):
        export_bundle(ExportOptions(pair.lm_dir, pair.rm_dir, folder / q, max_k=48, quantize=q), quiet=True)
    return {q: folder / q for q in ("int8", "int4")}


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_quantized_bundle_records_its_scheme_and_shrinks_its_weights(quantized, tiny_pairs, scheme):
    bundle, fp32 = quantized[scheme], tiny_pairs["llama"].bundle
    manifest = load_manifest(bundle)  # checksums of the rewritten graphs verify
    for spec, graph in ((manifest.lm, "lm.onnx"), (manifest.rm, "rm.onnx")):
        assert spec.quantization["scheme"] == scheme and spec.quantization["bits"] == int(scheme[3:])
        assert spec.weights == scheme and spec.dtype == "float32"  # activations and caches stay fp32
        assert "MatMulNBits" in ops(bundle, graph)  # the weight MatMuls (attention's Q·K stays a MatMul: no constant side)
        assert weight_bytes(bundle, graph) < weight_bytes(fp32, graph)
    checks = manifest.validation["checks"]
    assert all(c["ok"] for c in checks.values())
    lm_check = next(c for name, c in checks.items() if name.startswith("after quantization: lm top-"))
    atol, rtol = TOLERANCES[scheme]
    assert lm_check["limit"] > atol  # held to the scheme's limits, not fp32's 1e-4
    assert lm_check["max_abs_diff"] > TOLERANCES["float32"][0]  # the weights really changed


def test_the_reward_heads_one_column_stays_unquantized(quantized):
    """The score head (a [hidden, 1] weight) is left in fp32: it costs nothing and a reward is read from it."""
    model = onnx.load(str(quantized["int8"] / "rm.onnx"), load_external_data=False)
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    heads = [n for n in model.graph.node if n.op_type == "MatMul" and shapes.get(n.input[1], [0])[-1:] == [1]]
    assert len(heads) == 1


def test_int4_is_smaller_than_int8(quantized):
    assert weight_bytes(quantized["int4"], "lm.onnx") < weight_bytes(quantized["int8"], "lm.onnx")


def test_check_lines_say_quantization_limits(tiny_pairs, tmp_path, capsys):
    pair = tiny_pairs["qwen2"]
    export_bundle(ExportOptions(pair.lm_dir, pair.rm_dir, tmp_path / "b", max_k=8, quantize="int8", quantize_models=("rm",)))
    log = capsys.readouterr().err
    assert "quantizing the RM weights to int8" in log
    assert "after quantization: rm rewards of 4 candidates, step 0: max |onnx - torch float32, int8 weights' limits|" in log
    assert "after quantization: lm top-4 logits, step 0: max |onnx - torch|" in log  # the LM was left in fp32 and keeps fp32 limits
    manifest = load_manifest(tmp_path / "b")
    assert manifest.lm.quantization is None and manifest.rm.quantization["scheme"] == "int8"


@pytest.mark.parametrize("arch", ARCHS)
def test_every_architecture_quantizes_within_limits_and_generates(tiny_pairs, tmp_path, arch):
    """int8 on every architecture: the export's check passes, and the runtime generates with the bundle; with tiny
    random weights the tokens need not equal fp32's, so this asserts the check and the run, not agreement."""
    pair = tiny_pairs[arch]
    if arch == "gpt2":  # its Conv1D layers are Gemm nodes: only the LM head (a MatMul) can be quantized
        with pytest.raises(ExportError, match="rm.onnx: .* no MatMul with a constant weight .* Gemm"):
            export_bundle(ExportOptions(pair.lm_dir, pair.rm_dir, tmp_path / "q", max_k=8, quantize="int8"), quiet=True)
        assert not (tmp_path / "q").exists()
    export_bundle(ExportOptions(pair.lm_dir, pair.rm_dir, tmp_path / "q", max_k=8, quantize="int8",
                                quantize_models=("lm",) if arch == "gpt2" else ("lm", "rm")), quiet=True)
    result = ArgsGenerator.from_bundle(tmp_path / "q").generate(PROMPT, k=4, w=1.0, max_new_tokens=6, ignore_eos=True)
    assert len(result.token_ids) == 6 and np.isfinite(result.rewards).all()


def test_smollm2_int8_follows_fp32_next_tokens(smollm2_pair, tmp_path):
    """On real weights int8 stays close to fp32: along fp32's own greedy text (teacher-forced, so one early difference
    does not decide the rest), the int8 LM's next token equals fp32's at most steps and fp32's is always in its top 10.
    Free-running agreement and the reward cost are measured by `args-bench quantized`."""
    export_bundle(ExportOptions(smollm2_pair.lm_dir, smollm2_pair.rm_dir, tmp_path / "q", max_context=256, max_k=10, quantize="int8"), quiet=True)
    fp32_gen, q_gen = ArgsGenerator.from_bundle(smollm2_pair.bundle), ArgsGenerator.from_bundle(tmp_path / "q")
    text = fp32_gen.greedy(PROMPT, max_new_tokens=24, ignore_eos=True).token_ids
    prompt = fp32_gen.tokenizer.encode(PROMPT)
    prefix, ids, positions = PrefixState.for_prompts([prompt], pad_id=0)
    q_gen.lm.reset(1)
    same, within_top10 = [], []
    for token in text:
        top = q_gen.lm.extend(ids, positions, prefix, 10)
        top_ids = top.ids[0].tolist()
        same.append(top_ids[0] == token)
        within_top10.append(token in top_ids)
        ids = np.array([[token]], np.int64)
        _, positions = prefix.next_inputs()
    assert all(within_top10)
    assert sum(same) / len(same) >= 0.75, same


def test_cli_quantize_flags(tmp_path):
    help_text = subprocess.run([sys.executable, "-m", "args_export.cli", "--help"], capture_output=True, text=True, check=True).stdout
    assert "--quantize {int8,int4}" in help_text and "--quantize-only {lm,rm}" in help_text
    run = subprocess.run([sys.executable, "-m", "args_export.cli", "--lm", "a", "--rm", "b", "--out", str(tmp_path / "o"), "--quantize-only", "rm"],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "--quantize-only needs --quantize" in run.stderr


def test_args_bench_quantized_races_fp32_int8_and_int4(tiny_pairs, tmp_path, monkeypatch):
    """`args-bench quantized --quick` on the tiny pair: one row per bundle, fp32 first and agreeing with itself, the
    reference's tokens equal to the fp32 bundle's, JSON, CSV and plot written. No speed is asserted."""
    from args_benchmarks import cli

    pair = tiny_pairs["llama"]
    monkeypatch.setenv("ARGS_RT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    assert cli.main(["quantized", "--lm", str(pair.lm_dir), "--rm", str(pair.rm_dir), "--quick", "--out", str(out)]) == 0
    result = json.loads((out / "quantized.json").read_text())
    rows = {r["bundle"]: r for r in result["rows"]}
    assert list(rows) == ["fp32", "int8 (lm+rm)", "int4 (lm+rm)"]
    assert rows["fp32"]["token_agreement"] == 1.0 and rows["fp32"]["reward_change_pct"] == 0.0
    assert rows["int4 (lm+rm)"]["weights_mib"] < rows["int8 (lm+rm)"]["weights_mib"] < rows["fp32"]["weights_mib"]
    assert all(0.0 <= r["token_agreement"] <= 1.0 and r["speedup_vs_reference"] > 0 for r in rows.values())
    assert result["meta"]["fp32_equals_reference"] == [True]
    assert (out / "quantized.csv").read_text().startswith("bundle,") and (out / "quantized.png").stat().st_size > 0


def test_args_bench_reward_shift_judges_each_bundle_against_the_fp32_base(tiny_pairs, tmp_path, monkeypatch):
    """`args-bench reward-shift` on the tiny pair, 5 prompts in batches of 2 (the last batch holds one): the fp32 base
    agrees with itself and is "within"; every row scored all 5 prompts; JSON, CSV and plot written."""
    from args_benchmarks import cli

    pair = tiny_pairs["llama"]
    monkeypatch.setenv("ARGS_RT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    argv = ["reward-shift", "--lm", str(pair.lm_dir), "--rm", str(pair.rm_dir), "--new-tokens", "8", "--prompts", "5", "--batch", "2",
            "--schemes", "int8", "--out", str(out)]
    assert cli.main(argv) == 0
    result = json.loads((out / "reward_shift.json").read_text())
    rows = {r["bundle"]: r for r in result["rows"]}
    assert list(rows) == ["fp32", "int8 (lm+rm)"]
    assert rows["fp32"]["token_agreement"] == 1.0 and rows["fp32"]["reward_change_pct"] == 0.0 and rows["fp32"]["verdict"] == "within"
    assert all(r["prompts"] == 5 and r["verdict"] in ("within", "outside", "undecided") for r in rows.values())
    assert result["meta"]["prompts"] == 5 and result["meta"]["prompt_file"] == "sentiment_prompts_heldout.jsonl"
    assert (out / "reward_shift.csv").read_text().startswith("bundle,") and (out / "reward_shift.png").stat().st_size > 0
    [target] = result["targets"]  # the int8 bundle's reward, judged by its verdict (None: undecided)
    assert target["name"] == "int8 (lm+rm): mean reward vs fp32 args-rt" and target["met"] == {"within": True, "outside": False}.get(rows["int8 (lm+rm)"]["verdict"])


@pytest.mark.parametrize(("change", "half_width", "expected"), [
    (0.0, 1.9, "within"), (-1.0, 1.0, "within"), (-1.5, 1.0, "undecided"), (0.5, 3.0, "undecided"), (-3.0, 0.9, "outside"),
    (2.5, 0.4, "outside"), (-2.0, 0.0, "within"),
])
def test_reward_shift_verdict_needs_the_whole_interval_on_one_side_of_the_tolerance(change, half_width, expected):
    from args_benchmarks.reward_shift import verdict

    assert verdict(change, half_width, 2.0) == expected


def test_args_bench_reward_shift_refuses_a_bad_batch():
    run = subprocess.run([sys.executable, "-m", "args_benchmarks", "reward-shift", "--batch", "0"], capture_output=True, text=True)
    assert run.returncode == 2 and "--batch 0" in run.stderr


def test_the_heldout_prompts_are_800_on_topics_neither_the_rm_nor_the_quality_benchmark_saw():
    from args_export.data import SENTIMENT_HELDOUT, SENTIMENT_PROMPTS
    from args_export.rewards.sentiment_data import load_prompts

    heldout = load_prompts("heldout", SENTIMENT_HELDOUT)
    seen = load_prompts("train") + load_prompts("eval")
    assert len(heldout) == len(set(heldout)) == 800
    topic = lambda prompt: prompt.removeprefix("Write a sentence about ").removesuffix(".")  # noqa: E731
    topics = {topic(p) for p in heldout if p.startswith("Write a sentence about ")}
    assert len(topics) == 200 and not topics & {topic(p) for p in seen if p.startswith("Write a sentence about ")}
    assert not set(heldout) & set(seen) and SENTIMENT_PROMPTS.parent == SENTIMENT_HELDOUT.parent
