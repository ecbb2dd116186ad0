"""The continuous-batching benchmark runs end to end on a tiny pair (its smoke run) and writes well-formed results:
three contenders over one stream, the same tokens from each, the targets judged. No speed is asserted here."""

from __future__ import annotations

import json
import os

from args_benchmarks import batching


def test_quick_run_serves_one_stream_three_ways(tiny_pairs, tmp_path, monkeypatch):
    pair = tiny_pairs["llama"]
    monkeypatch.setenv("ARGS_RT_CACHE", str(tmp_path / "cache"))  # the static bundle it exports goes here
    out = tmp_path / "results"
    assert batching.main(["--lm", str(pair.lm_dir), "--rm", str(pair.rm_dir), "--quick", "--rounds", "2", "--out", str(out)]) == 0
    doc = json.loads((out / "batching.json").read_text())
    assert (out / "batching.png").stat().st_size > 0
    assert doc["identical_tokens"] is True  # every contender gave every request the same tokens
    workload = doc["workload"]
    assert workload["requests"] == 6 and workload["arrivals_s"] == sorted(workload["arrivals_s"]) and workload["arrivals_s"][0] == 0
    assert all(8 <= n <= 64 for n in workload["prompt_tokens_each"]) and all(4 <= n <= 24 for n in workload["new_tokens_each"])
    outcomes = doc["outcomes"]
    assert [(o["round"], o["contender"]) for o in outcomes] == [
        (0, "one at a time"), (0, "fixed batches"), (0, "continuous"), (1, "fixed batches"), (1, "continuous"), (1, "one at a time")]
    for o in outcomes:
        assert len(o["latencies_s"]) == 6 and min(o["latencies_s"]) > 0 and o["p50_latency_s"] <= o["p99_latency_s"]
        assert abs(o["tokens_per_s"] * o["wall_s"] - workload["total_new_tokens"]) < 0.5
    assert set(doc["summary"]) == set(batching.CONTENDERS)
    assert [t["met"] in (True, False) for t in doc["targets"]] == [True, True, True]
    assert doc["machine"]["label"] and doc["device"] == "cpu" and doc["settings"]["slots"] == 3
    assert doc["continuous"]["context_width"] == "narrow" and doc["continuous"]["width_step"] == 64  # over the slots in use
    assert os.path.basename(doc["bundle"]).startswith("batching-bundle-")
