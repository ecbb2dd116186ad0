"""args-bench: the harness runs end to end on a tiny pair and writes well-formed results; its summaries and
target verdicts are computed correctly. No speed is asserted here: figures live in benchmarks/results."""

from __future__ import annotations

import csv
import json
import os

import pytest

from args_benchmarks import latency
from args_benchmarks.contenders import FloorContender, GreedyContender, Run
from args_benchmarks.report import Case, Record, judge_targets, summarise
from args_runtime import ArgsGenerator
from args_runtime.errors import ExportError, GenerationError

KINDS = {"reference", "args", "greedy", "floor"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, tiny_pairs):
    """Both cache layouts raced: args-bench exports one bundle of each from the tiny pair into its cache."""
    pair = tiny_pairs["llama"]
    out = tmp_path_factory.mktemp("bench")
    argv = ["--lm", str(pair.lm_dir), "--rm", str(pair.rm_dir), "--caches", "dynamic,static", "--quick", "--repeats", "1", "--out", str(out)]
    saved = os.environ.get("ARGS_RT_CACHE")
    os.environ["ARGS_RT_CACHE"] = str(tmp_path_factory.mktemp("bench-cache"))  # the probes' processes inherit it
    try:
        exit_status = latency.main(argv)
    finally:
        os.environ.pop("ARGS_RT_CACHE") if saved is None else os.environ.update(ARGS_RT_CACHE=saved)
    assert exit_status == 0
    return out, json.loads((out / "latency.json").read_text())


def test_quick_run_covers_every_contender_and_sweep(quick_run):
    _, doc = quick_run
    records = doc["records"]
    assert {r["kind"] for r in records} == KINDS
    assert {r["sweep"] for r in records} == {"headline", "k", "prompt", "new_tokens"}
    assert sorted({r["k"] for r in records if r["sweep"] == "k"}) == [1, 10]
    assert sorted({r["new_tokens"] for r in records if r["sweep"] == "new_tokens"}) == [8, 24]
    for r in records:
        percentiles = [r[f"p{q}_ms"] for q in (50, 90, 99)]
        assert percentiles == sorted(percentiles), r  # ordered, whatever the speed
        assert r["lm_cache_bytes"] > 0 and (r["rm_cache_bytes"] is None) == (r["kind"] == "greedy"), r
    # On the same models the runtime must choose exactly the reference's tokens, in every case.
    assert all(r["identical_to_reference"] is True for r in records if r["kind"] == "args")
    # The reference's RM holds k copies of the prefix; ours holds one, whatever k is.
    ref_k10 = next(r for r in records if r["sweep"] == "k" and r["k"] == 10 and r["kind"] == "reference")
    ours_k10 = next(r for r in records if r["sweep"] == "k" and r["k"] == 10 and r["kind"] == "args")
    assert ref_k10["rm_cache_bytes"] > 9 * ours_k10["rm_cache_bytes"]
    assert doc["machine"]["cores"] >= 1 and doc["machine"]["label"]
    layouts = {r["engine"].split(", ")[1] for r in records if r["kind"] != "reference"}
    assert layouts == {"dynamic cache", "static cache"} and set(doc["bundles"]) == {"dynamic", "static"}


def test_quick_run_probes_memory_in_separate_processes(quick_run):
    _, doc = quick_run
    headline = [r for r in doc["records"] if r["sweep"] == "headline"]
    assert {r["kind"] for r in headline} == KINDS
    assert all(r["peak_rss_mib"] and r["peak_rss_mib"] > 10 for r in headline)


def test_quick_run_writes_csv_plots_and_targets(quick_run):
    out, doc = quick_run
    with (out / "latency.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(doc["records"]) and rows[0]["contender"]
    for sweep in ("k", "prompt", "new_tokens"):
        assert (out / f"latency_vs_{sweep}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    verdicts = {t["name"].split(" (")[0]: t["met"] for t in doc["targets"] if t["name"].startswith("[static cache] ")}
    verdicts = {name.removeprefix("[static cache] "): met for name, met in verdicts.items()}
    assert set(verdicts) >= {"speed-up over the reference", "ARGS step vs the two-model floor", "flat cost per token", "RM cache bytes at k=10 vs k=1"}
    assert verdicts["RM cache bytes at k=10 vs k=1"] is True


def test_floor_decodes_the_lms_greedy_tokens(tiny_pairs):
    gen = ArgsGenerator.from_bundle(tiny_pairs["qwen2"].bundle)
    prompts = latency.make_prompts(gen.tokenizer, 12, 3)
    assert [len(p) for p in prompts] == [12, 12, 12] and prompts[0] != prompts[1]
    floor = FloorContender(gen, "cpu").run(prompts, 10, 1.0, 6)
    greedy = GreedyContender(gen, "cpu").run(prompts, 10, 1.0, 6)
    assert floor.tokens == greedy.tokens
    decode_steps = floor.step_ms  # one entry per decode step after the first token
    assert len(decode_steps) == 5


def _record(kind: str, ms: float, sweep: str = "headline", **kw) -> Record:
    base = dict(k=10, prompt_tokens=32, new_tokens=128, batch=1, repeats=1, p50_ms=ms, p90_ms=ms, p99_ms=ms, tokens_per_s=1e3 / ms,
                first_token_ms=1.0, lm_cache_bytes=100, rm_cache_bytes=100)
    return Record(sweep=sweep, contender=kind, kind=kind, engine="cpu", ms_per_token=ms, **{**base, **kw})


def test_summary_takes_the_median_of_repeat_means_and_pooled_percentiles():
    runs = [Run([[1]], 5.0, [1.0, 1.0, 1.0, 9.0]), Run([[1]], 7.0, [2.0, 2.0, 2.0, 2.0]), Run([[1]], 6.0, [4.0, 4.0, 4.0, 4.0])]
    contender = GreedyContender.__new__(GreedyContender)
    contender.name, contender.engine = "g", "cpu"
    record = summarise("headline", contender, Case(1, 4, 5, 2), runs)
    assert record.ms_per_token == 3.0  # repeat means 3, 2, 4
    median, first = record.p50_ms, record.first_token_ms  # of the made-up runs above
    assert (median, first) == (2.0, 6.0) and record.tokens_per_s == pytest.approx(2 / 3e-3)
    assert summarise("n", contender, Case(1, 4, 5, 2), runs, steps=3).ms_per_token == 2.0  # first 2 steps only


def test_targets_turn_on_the_measured_ratios():
    ok = [_record("reference", 300.0), _record("args", 90.0, identical_to_reference=True), _record("floor", 80.0)]
    verdicts = {t.name.split(" (")[0]: t.met for t in judge_targets(ok, on_gpu=False, model_label="m")}
    assert verdicts["speed-up over the reference"] is True and verdicts["ARGS step vs the two-model floor"] is True
    slow = [_record("reference", 300.0), _record("args", 101.0, identical_to_reference=True), _record("floor", 80.0)]
    verdicts = {t.name.split(" (")[0]: t.met for t in judge_targets(slow, on_gpu=False, model_label="m")}
    assert verdicts["speed-up over the reference"] is False and verdicts["ARGS step vs the two-model floor"] is False
    wrong = [_record("reference", 300.0), _record("args", 90.0, identical_to_reference=False)]
    assert judge_targets(wrong, on_gpu=False, model_label="m")[0].met is False  # fast but different tokens: not met
    grows = [_record("args", 10.0, "new_tokens", new_tokens=64), _record("args", 13.0, "new_tokens", new_tokens=1024),
             _record("args", 10.0, "k", k=1, rm_cache_bytes=100), _record("args", 10.0, "k", k=40, rm_cache_bytes=4000)]
    verdicts = {t.name.split(" (")[0]: t.met for t in judge_targets(grows, on_gpu=False, model_label="m")}
    assert verdicts["flat cost per token"] is False and verdicts["RM cache bytes at k=40 vs k=1"] is False


def test_random_shape_pair_is_seeded_and_exportable(cache_dir, tmp_path):
    from transformers import AutoConfig

    from args_benchmarks.shapes import random_pair
    from args_export.bundle import ExportOptions, export_bundle

    lm_dir, rm_dir = random_pair("llama-tiny", "fp32", cache_dir, max_positions=256)
    lm_config, rm_config = AutoConfig.from_pretrained(lm_dir), AutoConfig.from_pretrained(rm_dir)
    assert (lm_config.hidden_size, lm_config.num_hidden_layers, lm_config.vocab_size) == (64, 2, 49152)
    assert rm_config.num_labels == 1 and rm_config.max_position_embeddings == 256
    manifest = export_bundle(ExportOptions(lm_dir, rm_dir, tmp_path / "bundle", max_k=12), quiet=True)
    assert manifest.max_context == 256
    with pytest.raises(ExportError, match="unknown shape"):
        random_pair("llama-70b", "fp32", cache_dir)


def test_prefix_agreement_counts_tokens_before_the_first_difference():
    from args_benchmarks.report import prefix_agreement

    reference = [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert prefix_agreement(reference, reference) == 1.0
    assert prefix_agreement([[1, 2, 9, 4], [5, 6, 7, 8]], reference) == pytest.approx((2 / 4 + 1) / 2)  # later matches do not count
    assert prefix_agreement([[9, 2, 3, 4], [5, 6, 7]], reference) == pytest.approx((0 + 3 / 4) / 2)


def test_cuda_graph_contenders_refuse_to_time_a_plain_run(static_bundles):
    """On the CPU nothing is captured: a contender labelled "cuda graph" must stop with the reason, not time plain runs."""
    gen = ArgsGenerator.from_bundle(static_bundles["llama"], cuda_graph=True)
    with pytest.raises(GenerationError, match=r"CUDA graphs are not on \({'lm': 'off', 'rm': 'off'}\)"):
        latency.require_cuda_graphs(gen)


def test_one_bundle_per_layout_is_raced(tiny_pairs, static_bundles):
    """--bundle repeats: bundles exported elsewhere (the GPU run's own exports), one per cache layout."""
    from args_runtime.errors import BundleError

    dynamic, static = tiny_pairs["llama"].bundle, static_bundles["llama"]
    args = latency.race_options(bundle=[dynamic, static])
    assert latency.ensure_bundles(args, None) == {"dynamic": dynamic, "static": static}
    args = latency.race_options(bundle=[dynamic, tiny_pairs["qwen2"].bundle])
    with pytest.raises(BundleError, match="both have the dynamic cache layout"):
        latency.ensure_bundles(args, None)


def test_contenders_on_one_engine_share_one_generator(static_bundles):
    """A 7B pair's weights must be on the device once per engine, not once per contender."""
    args = latency.race_options(bundle=[static_bundles["llama"]], kinds=["args", "greedy", "floor"])
    args.devices, args.loops = ["cpu"], ["python"]  # as main() resolves them
    entries = latency.contender_entries(args, {"static": static_bundles["llama"]})
    contenders = [entry.make() for entry in entries]
    assert [e.kind for e in entries] == ["args", "greedy", "floor"]
    assert len({id(c.gen) for c in contenders}) == 1


def test_args_bench_has_a_subcommand_per_benchmark_each_with_its_help(capsys):
    """`args-bench COMMAND`: argparse subparsers, `--help` for each; no command, or options that do not fit, exit 2."""
    from args_benchmarks import cli

    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    listing = capsys.readouterr().out
    assert done.value.code == 0 and all(name in listing for name in cli.COMMANDS)
    for name, (module, _, _) in cli.COMMANDS.items():
        with pytest.raises(SystemExit) as done:
            cli.main([name, "--help"])
        text = capsys.readouterr().out
        assert done.value.code == 0 and text.startswith(f"usage: args-bench {name}") and module.__doc__.split()[0] in text, name
    for argv in ([], ["step-parts", "--k-scan", "3"], ["latency", "--kinds", "floor"]):
        with pytest.raises(SystemExit) as done:
            cli.main(argv)
        assert done.value.code == 2, argv
    assert "args-bench step-parts: error: --k-scan 3" in capsys.readouterr().err


def test_results_go_beside_the_committed_ones_in_a_checkout_else_where_the_user_runs(tmp_path, monkeypatch):
    """Never inside the installed package (issue 31: `args-bench --quick` wrote into site-packages)."""
    from args_benchmarks.common import results_folder

    monkeypatch.chdir(tmp_path)
    assert results_folder("m") == tmp_path / "args-bench-results" / "m"
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    assert results_folder("m") == tmp_path / "benchmarks" / "results" / "m"
