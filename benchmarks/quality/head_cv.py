"""How the sentiment head should read the backbone, chosen by 5-fold cross-validation over the RM's *training*
prompts (the held-out prompts, whose pair accuracy the README reports, are never used to choose).

    python benchmarks/quality/head_cv.py [--work <args-rt cache>/sentiment-recipe] [--lm DIR] [--out DIR]

Reads the recipe's cached replies and backbone features (run `args-build-sentiment-pairs` first), rebuilds its
round-0 pairs (sentiment pairs + synthetic negatives), and for each head configuration trains on four folds of
the training prompts and scores the fifth: sentiment-pair and negative-pair accuracy, each reply judged the way
that head judges it (last token, or mean of the reply's token rewards). Writes head_cv.json next to quality.json.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

CONFIGS = {"last token, prefixes (the previous head)": dict(prefixes=True, pooling="last"),
           "last token, whole replies": dict(prefixes=False, pooling="last"),
           "mean of token rewards (shipped)": dict(prefixes=False, pooling="mean"),
           "mean of token rewards, prefixes": dict(prefixes=True, pooling="mean")}


def main(argv: list[str] | None = None) -> int:
    import torch
    from transformers import AutoModel, AutoTokenizer

    from args_export.demo.prepare import cache_dir, smollm2_folder
    from args_export.rewards.degenerate import negative_pairs
    from args_export.rewards.features import FeatureStore, backbone_digest
    from args_export.rewards.frozen_head import HeadOptions, fit_head
    from args_export.rewards.recipe import RecipeOptions
    from args_export.rewards.sentiment_data import make_pairs
    from args_export.rewards.train import encode_side, split_by_prompt

    from args_benchmarks.common import machine, results_folder

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, help="the recipe's work folder (default: <args-rt cache>/sentiment-recipe)")
    p.add_argument("--lm", type=Path, help="the recipe's LM folder (default: the packaged SmolLM2, converted into the cache)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--out", type=Path, help="results folder (default benchmarks/results/<machine>/quality)")
    args = p.parse_args(argv)
    if args.folds < 2:
        p.error(f"--folds must be at least 2; got {args.folds}")
    work, lm = args.work or cache_dir() / "sentiment-recipe", args.lm or smollm2_folder(cache_dir())
    d = RecipeOptions(Path("unused"), work, lm)
    replies = [json.loads(line) for f in sorted(work.glob("replies-*.jsonl")) for line in f.read_text().splitlines()]
    if not replies:
        p.error(f"no sampled replies in {work}: run args-build-sentiment-pairs first")
    sentiment = [{**x, "kind": "sentiment"} for x in make_pairs(replies, d.margin, d.max_pairs_per_prompt, d.seed)]
    train, _ = split_by_prompt(sentiment + negative_pairs(replies, d.min_vader, d.negatives_per_prompt, d.seed), 0.2, d.seed)

    tokenizer = AutoTokenizer.from_pretrained(lm)
    sides = {}
    for pair in train:
        for k in ("chosen", "rejected"):
            sides.setdefault((pair["prompt"], pair[k]), encode_side(tokenizer, pair["prompt"], pair[k], True))
    store = FeatureStore(AutoModel.from_pretrained(lm, dtype=torch.float32).eval(), tokenizer.pad_token_id or 0, 32,
                         work / "features" / f"features-{backbone_digest(lm)}.pt")
    store.compute(list(sides.values()))
    encoded = lambda pair: (sides[pair["prompt"], pair["chosen"]], sides[pair["prompt"], pair["rejected"]])  # noqa: E731

    prompts = sorted({pair["prompt"] for pair in train})
    random.Random(d.seed).shuffle(prompts)
    folds = [set(prompts[i :: args.folds]) for i in range(args.folds)]
    results = {}
    for name, config in CONFIGS.items():
        opts = HeadOptions(**config)
        judge = store.mean if opts.pooling == "mean" else store.last
        right = {"sentiment": [0, 0], "negative": [0, 0]}
        for fold in folds:
            w = fit_head(store, [encoded(x) for x in train if x["prompt"] not in fold], opts)
            for x in (x for x in train if x["prompt"] in fold):
                chosen, rejected = encoded(x)
                tally = right["sentiment" if x["kind"] == "sentiment" else "negative"]
                tally[0] += float(judge(chosen) @ w) > float(judge(rejected) @ w)
                tally[1] += 1
        results[name] = {k: round(a / n, 4) for k, (a, n) in right.items()} | {"validation_pairs": sum(n for _, n in right.values())}
        print(f"{name:<44} sentiment {results[name]['sentiment']:.3f}  negatives {results[name]['negative']:.3f}", flush=True)
    host = machine()
    out = (args.out or results_folder(host["label"]) / "quality") / "head_cv.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": host, "folds": args.folds, "training_prompts": len(prompts), "results": results}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
