"""The paper's quality comparison on our engines: greedy, ARGS-greedy over w, ARGS-stochastic and best-of-n,
on the held-out ("eval") prompts of export/data/sentiment_prompts.jsonl, with the demo bundle (SmolLM2-135M-
Instruct + the positive-sentiment RM). Per method: average RM reward, diversity, coherence, VADER sentiment,
ms/token. Writes a table (stdout), JSON, CSV and a PNG (w against reward, diversity, coherence).

    python benchmarks/quality/run.py [--quick] [--out DIR] [--prompts N] [--new-tokens N]

Decoding runs with ignore_eos and the replies are cut after their first EOS, as the paper's code does, so
every row of a batch decodes the same number of steps and ms/token (res.timings' decode_ms_per_token, one
batched step of --batch prompts) is the same kind of figure for every method; for best-of-n it is the n LM-only
sampling runs' figures (`gen.sample`, no RM) plus the one RM pass over the n finished candidates, spread over the
new tokens. Metrics are defined in args_export.quality.metrics.

The issue's targets are judged at the end (met / not met, with numbers): at the demo's w, ARGS-greedy k=10
against greedy raises VADER sentiment by ≥ 0.15 and loses at most 0.05 of coherence and of diversity; at the
paper's w=1.5 coherence stays within 0.10 of greedy's. `--head` evaluates another score head (args-train-rm
--head-out) instead of the shipped one; `--prompt-file` other prompts (JSONL {"prompt"} or one per line).

`--rm minilm` measures the encoder RM of `args-demo --rm minilm` (all-MiniLM-L6-v2 + a head trained on the same
pairs) the same way, on the same prompts, into quality_minilm.{json,csv,png}: its average reward is its own (the
text it reads, scored whole), and each row also has `demo_rm_reward`, the demo RM's reward of the same replies, so
both RMs' replies are judged by one RM beside VADER, coherence and diversity."""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from args_export.demo.cli import DEFAULT_W
from args_export.demo.prepare import RMS, cache_dir, prepare_bundle, rm_folder, smollm2_folder
from args_export.quality.metrics import RewardScorer, SentenceEmbedder, TextRewardScorer, cut_at_eos, diversity
from args_export.rewards.sentiment_data import load_prompts, vader
from args_runtime import ArgsGenerator

PAPER_W = 1.5
WS = tuple(sorted({0.5, 1.0, PAPER_W, 2.0, 4.0, DEFAULT_W}))


RM_TITLES = {"sentiment": "sentiment RM on its backbone", "minilm": "MiniLM encoder sentiment RM"}


def scorer_for(rm: str, rm_dir: Path, eos_ids: set[int]):
    """The RM's own reward of a reply: the demo RM at the reply's tokens, an encoder RM on the whole text."""
    return TextRewardScorer(rm_dir, smollm2_folder(cache_dir())) if rm == "minilm" else RewardScorer(rm_dir, eos_ids)


def read_prompts(path: Path) -> list[str]:
    """Prompts from a file: JSONL rows with a "prompt" field, or one plain prompt per line."""
    lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    return [json.loads(line)["prompt"] if line.lstrip().startswith("{") else line.strip() for line in lines]


def methods(k: int, n_best: int) -> list[dict]:
    """name, how to decode, and the w it is plotted at (None: not on the w axis)."""
    rows = [{"name": "greedy", "kind": "greedy", "w": 0.0}]
    rows += [{"name": f"ARGS-greedy w={w:g}", "kind": "args", "k": k, "w": w, "method": "greedy"} for w in WS]
    rows.append({"name": "ARGS-stochastic w=2 T=0.7", "kind": "args", "k": k, "w": 2.0, "method": "stochastic", "temperature": 0.7})
    rows.append({"name": f"best-of-{n_best} (LM top-{k} T=0.7)", "kind": "best", "k": k, "n": n_best, "w": None})
    return rows


def decode(gen: ArgsGenerator, m: dict, chats: list, new_tokens: int, seed: int):
    """Results for a batch of chats, and the ms/token of one decoding pass."""
    if m["kind"] == "greedy":
        res = gen.greedy(chats, max_new_tokens=new_tokens, ignore_eos=True)
    else:
        res = gen.generate(chats, k=m["k"], w=m["w"], method=m["method"], temperature=m.get("temperature", 0.7),
                           seed=seed, max_new_tokens=new_tokens, ignore_eos=True)
    return res, statistics.mean(r.timings["decode_ms_per_token"] for r in res)


def run_method(gen, scorer, m: dict, prompts: list[str], args) -> tuple[list[list[int]], float]:
    """Token ids of one reply per prompt, and ms/token."""
    eos = set(gen.manifest.tokenizer.eos_token_ids)
    replies, ms = [], []
    for i in range(0, len(prompts), args.batch):
        chats = [[{"role": "user", "content": p}] for p in prompts[i : i + args.batch]]
        ids = [gen.tokenizer.encode(c) for c in chats]
        if m["kind"] != "best":
            res, t = decode(gen, m, chats, args.new_tokens, args.seed + i)
            replies += [cut_at_eos(r.token_ids, eos) for r in res]
            ms.append(t)
            continue
        cands, t_total = [], 0.0
        for j in range(m["n"]):
            res = gen.sample(chats, k=m["k"], temperature=0.7, seed=args.seed + 1000 * (j + 1) + i,
                             max_new_tokens=args.new_tokens, ignore_eos=True)
            cands.append([cut_at_eos(r.token_ids, eos) for r in res])
            t_total += statistics.mean(r.timings["decode_ms_per_token"] for r in res)
        start = time.perf_counter()
        scores = [scorer.rewards(ids, c) for c in cands]  # the RM once per finished candidate
        t_total += 1000 * (time.perf_counter() - start) / args.new_tokens
        replies += [cands[max(range(m["n"]), key=lambda j: scores[j][row])][row] for row in range(len(chats))]
        ms.append(t_total)
    return replies, statistics.mean(ms)


def evaluate(gen, scorer, embedder, analyzer, prompts, replies_ids, judge=None) -> dict:
    texts = [gen.tokenizer.decode(r).strip() for r in replies_ids]
    prompt_ids = [gen.tokenizer.encode([{"role": "user", "content": p}]) for p in prompts]
    rewards = scorer.rewards(prompt_ids, replies_ids)
    judged = {"demo_rm_reward": statistics.mean(judge.rewards(prompt_ids, replies_ids))} if judge is not None else {}
    return {
        "reward": statistics.mean(rewards),
        **judged,
        "diversity": statistics.mean(diversity(t) for t in texts),
        "coherence": statistics.mean(embedder.coherence(prompts, texts)),
        "sentiment": statistics.mean(analyzer.polarity_scores(t)["compound"] for t in texts),
        "samples": [{"prompt": p, "reply": t} for p, t in zip(prompts[:3], texts[:3])],
    }


def row_named(rows: list[dict], name: str) -> dict | None:
    return next((r for r in rows if r["method"] == name), None)


def judge_targets(rows: list[dict]) -> list[dict]:
    """The issue's targets against greedy, each with its numbers and met / not met. "Within" is one-sided:
    only a loss counts (ARGS more coherent or more diverse than greedy meets the target)."""
    greedy = row_named(rows, "greedy")
    demo, paper = row_named(rows, f"ARGS-greedy w={DEFAULT_W:g}"), row_named(rows, f"ARGS-greedy w={PAPER_W:g}")
    out = []

    def target(name: str, value: float, bound: float, higher_is_met: bool) -> None:
        met = value >= bound if higher_is_met else value <= bound
        out.append({"target": name, "value": round(value, 4), "bound": bound, "met": bool(met)})

    if greedy and demo:
        target(f"demo w={DEFAULT_W:g}: VADER − greedy's ≥ +0.15", demo["sentiment"] - greedy["sentiment"], 0.15, True)
        target(f"demo w={DEFAULT_W:g}: coherence − greedy's ≥ −0.05", demo["coherence"] - greedy["coherence"], -0.05, True)
        target(f"demo w={DEFAULT_W:g}: diversity − greedy's ≥ −0.05", demo["diversity"] - greedy["diversity"], -0.05, True)
    if greedy and paper:
        target(f"paper w={PAPER_W:g}: coherence − greedy's ≥ −0.10 (no collapse)", paper["coherence"] - greedy["coherence"], -0.10, True)
    return out


def plot(rows: list[dict], path: Path, rm_title: str = RM_TITLES["sentiment"]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    on_axis = [r for r in rows if r["w"] is not None and r["method"] != "ARGS-stochastic w=2 T=0.7"]
    panels = (("reward", "average reward (RM)"), ("sentiment", "VADER sentiment"), ("coherence", "coherence"), ("diversity", "diversity"))
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
    for ax, (key, label) in zip(axes, panels):
        ax.plot([r["w"] for r in on_axis], [r[key] for r in on_axis], "o-", label="ARGS-greedy (w=0: greedy)")
        for r, marker in zip([r for r in rows if r not in on_axis], ("s", "^")):
            ax.axhline(r[key], ls="--", lw=1, color="C1" if marker == "s" else "C2", label=r["method"])
        ax.axvline(DEFAULT_W, ls=":", lw=1, color="grey", label=f"demo's w={DEFAULT_W:g}")
        ax.set_xlabel("w")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"SmolLM2-135M-Instruct + {rm_title} (standardized rewards), k=10: quality against the reward weight w", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="4 prompts × 16 tokens, best-of-2 (a smoke test for CI)")
    p.add_argument("--prompts", type=int, help="number of held-out prompts (default 32 of the 48; quick: 4)")
    p.add_argument("--new-tokens", type=int, help="tokens per reply (default 40; quick: 16)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--best-of", type=int, help="n of best-of-n (default 4; quick: 2)")
    p.add_argument("--batch", type=int, default=8, help="prompts decoded together")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: ORT's)")
    p.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results/<machine>/quality)")
    p.add_argument("--rm", choices=list(RMS), default="sentiment",
                   help="the RM that steers: the demo's (default) or 'minilm', the encoder RM of args-demo --rm minilm (writes quality_minilm.*)")
    p.add_argument("--head", type=Path, help="score head JSON to evaluate (default: the shipped one of --rm)")
    p.add_argument("--bundle", type=Path, help="decode with this bundle of the demo's pair instead of the demo bundle (e.g. one made with "
                   "`args-export --quantize int8` or `--no-fuse`); the replies are still scored by the demo's RM in PyTorch fp32")
    p.add_argument("--prompt-file", type=Path, help="prompts to use instead of the held-out split (JSONL {\"prompt\"} or one per line)")
    args = p.parse_args()
    args.new_tokens = args.new_tokens or (16 if args.quick else 40)
    n_prompts = args.prompts or (4 if args.quick else 32)
    n_best = args.best_of or (2 if args.quick else 4)

    torch.set_num_threads(1)
    start = time.perf_counter()
    args.head = args.head or RMS[args.rm][0]
    bundle = prepare_bundle(cache_dir(), head_file=args.head, rm=args.rm)  # also builds the scoring RM
    bundle = args.bundle or bundle
    rm_dir = rm_folder(cache_dir(), args.head, args.rm)  # the scoring RM (PyTorch fp32), whichever bundle decodes
    gen = ArgsGenerator.from_bundle(bundle, threads=args.threads)
    eos = set(gen.manifest.tokenizer.eos_token_ids)
    scorer = scorer_for(args.rm, rm_dir, eos)
    judge = RewardScorer(rm_folder(cache_dir()), eos) if args.rm != "sentiment" else None  # the demo RM, judging the same replies
    embedder, analyzer = SentenceEmbedder(), vader()
    prompts = (read_prompts(args.prompt_file) if args.prompt_file else load_prompts("eval"))[:n_prompts]
    gen.generate([[{"role": "user", "content": prompts[0]}]], k=args.k, w=1.0, max_new_tokens=2)  # warm-up

    rows = []
    for m in methods(args.k, n_best):
        replies, ms = run_method(gen, scorer, m, prompts, args)
        row = {"method": m["name"], "w": m["w"], **evaluate(gen, scorer, embedder, analyzer, prompts, replies, judge), "ms_per_token": ms}
        rows.append(row)
        print(f"{row['method']:<32} reward {row['reward']:+.3f}  diversity {row['diversity']:.3f}  coherence {row['coherence']:.3f}  "
              f"sentiment {row['sentiment']:+.3f}  {ms:.1f} ms/token", file=sys.stderr)

    from args_benchmarks.common import machine, results_folder

    info = machine()
    args.out = args.out or results_folder(info["label"]) / "quality"
    args.out.mkdir(parents=True, exist_ok=True)
    targets = judge_targets(rows)
    weights = {"lm": gen.manifest.lm.weights, "rm": gen.manifest.rm.weights, "fused": gen.manifest.fused}
    meta = {"machine": info, "rm": args.rm, "bundle": str(bundle), "bundle_weights": weights, "head": str(args.head), "prompts": len(prompts),
            "new_tokens": args.new_tokens, "k": args.k, "best_of": n_best, "batch": args.batch, "seed": args.seed,
            "quick": args.quick, "wall_s": round(time.perf_counter() - start, 1)}
    stem = "quality" if args.rm == "sentiment" else f"quality_{args.rm}"
    (args.out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows, "targets": targets}, indent=1) + "\n")
    keys = ["method", "w", "reward", *(["demo_rm_reward"] if judge else []), "diversity", "coherence", "sentiment", "ms_per_token"]
    with open(args.out / f"{stem}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, args.out / f"{stem}.png", RM_TITLES[args.rm])

    judged = " demo RM's reward |" if judge else ""
    print(f"| method | average reward |{judged} diversity | coherence | VADER sentiment | ms/token |\n|---|---|{'---|' if judge else ''}---|---|---|---|")
    for r in rows:
        cell = f" {r['demo_rm_reward']:+.3f} |" if judge else ""
        print(f"| {r['method']} | {r['reward']:+.3f} |{cell} {r['diversity']:.3f} | {r['coherence']:.3f} | {r['sentiment']:+.3f} | {r['ms_per_token']:.1f} |")
    print("\nTargets (issue 18), against greedy:")
    for t in targets:
        print(f"  {t['target']}: {t['value']:+.3f} → {'met' if t['met'] else 'NOT MET'}")
    print(f"\n{len(prompts)} held-out prompts × {args.new_tokens} tokens, batch {args.batch}, {info['cpu']} ({info['cores']} cores), "
          f"{meta['wall_s']:.0f} s; wrote {args.out}/{stem}.{{json,csv,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
