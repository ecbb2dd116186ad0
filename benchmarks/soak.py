"""Soak: many generations of mixed settings on the demo bundle (SmolLM2-135M + its sentiment RM), to show that a long
run neither grows in memory nor slows down. Reports resident memory (RSS) and ms/token over a window of generations
after warm-up and over the last window.

    python -m args_benchmarks.soak [--n 1000] [--minutes M] [--threads 1] [--max-new-tokens 16]

--minutes stops early when the time is up (the JSON records how many generations ran). Writes
benchmarks/results/<machine>/soak.json. Targets (issue 17): RSS growth < 2 % after warm-up, ms/token drift within noise."""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass

from args_runtime import ArgsGenerator

from .common import machine, module_main, results_folder

CHATS = [[{"role": "user", "content": "Give me one tip for a calm morning."}],
         [{"role": "user", "content": "Name a planet and say one thing about it."}],
         [{"role": "system", "content": "You are brief."}, {"role": "user", "content": "Write a haiku about tea."}]]
TEXTS = ["The weather today is", "Once upon a time, in a small village,"]
# Mixed settings, cycled: greedy and stochastic, several k and w, stop strings, ignore_eos, plain greedy.
SETTINGS = [dict(k=10, w=1.0), dict(k=5, w=2.0, ignore_eos=True), dict(k=10, w=1.0, method="stochastic", temperature=0.7),
            dict(k=20, w=0.5, stop=["."]), dict(k=1, w=0.0), dict(k=8, w=1.5, method="stochastic", temperature=1.0)]
FORMS = ("generate", "stream", "stream broken off", "batch", "greedy")


@dataclass
class Sample:
    """One generation: when it ended, its tokens, its seconds, and the process's RSS after it."""

    index: int
    form: str
    tokens: int
    seconds: float
    rss_mib: float


def rss_mib() -> float:
    """This process's resident set size, MiB (Linux /proc; psutil elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import psutil

        return psutil.Process().memory_info().rss / 2**20


def one(gen: ArgsGenerator, i: int, max_new_tokens: int) -> tuple[str, int]:
    """The i-th generation of the mix: (its form, the tokens it produced)."""
    settings = dict(SETTINGS[i % len(SETTINGS)], max_new_tokens=max_new_tokens)
    if settings.get("method") == "stochastic":
        settings["seed"] = i
    prompt = CHATS[i % len(CHATS)] if i % 4 else TEXTS[i % len(TEXTS)]
    form = FORMS[(i // len(SETTINGS)) % len(FORMS)]
    if form == "generate":
        return form, len(gen.generate(prompt, **settings).token_ids)
    if form == "stream":
        return form, len(list(gen.stream(prompt, **settings))[-1].result.token_ids)
    if form == "stream broken off":  # the consumer stops after a few tokens; the stream is closed
        with gen.stream(prompt, **settings) as events:
            return form, sum(1 for _ in itertools.islice(events, 3))
    if form == "batch":
        return form, sum(len(r.token_ids) for r in gen.generate([prompt, TEXTS[0]], **settings))
    return form, len(gen.greedy(prompt, max_new_tokens=max_new_tokens).token_ids)


def window(samples: list[Sample]) -> dict:
    """ms/token (total seconds over total tokens, and the median of per-generation figures) and RSS over a window."""
    per = [1000 * s.seconds / s.tokens for s in samples if s.tokens]
    return {"generations": len(samples), "from": samples[0].index, "to": samples[-1].index,
            "ms_per_token": round(1000 * sum(s.seconds for s in samples) / max(1, sum(s.tokens for s in samples)), 3),
            "ms_per_token_median": round(statistics.median(per), 3), "rss_mib_end": round(samples[-1].rss_mib, 1),
            "rss_mib_max": round(max(s.rss_mib for s in samples), 1)}


def soak(args: argparse.Namespace) -> dict:
    from args_export.demo.prepare import cache_dir, prepare_bundle

    gen = ArgsGenerator.from_bundle(prepare_bundle(cache_dir()), threads=args.threads)
    deadline = time.monotonic() + 60 * args.minutes if args.minutes else None
    samples: list[Sample] = []
    rss_at_load = rss_mib()
    for i in range(args.n):
        start = time.perf_counter()
        form, tokens = one(gen, i, args.max_new_tokens)
        samples.append(Sample(i, form, tokens, time.perf_counter() - start, rss_mib()))
        if args.progress and (i + 1) % args.progress == 0:
            print(f"{i + 1} generations: {samples[-1].rss_mib:.1f} MiB, last {1000 * samples[-1].seconds:.0f} ms", flush=True)
        if deadline and time.monotonic() > deadline:
            break
    gc.collect()
    n = len(samples)
    warmup = min(args.warmup, n // 4)  # a short run (--minutes, small --n) shrinks the windows to fit
    size = max(1, min(args.window, (n - warmup) // 2))
    start, end = window(samples[warmup:warmup + size]), window(samples[-size:])
    growth = 100 * (end["rss_mib_end"] - start["rss_mib_end"]) / start["rss_mib_end"]
    drift = 100 * (end["ms_per_token"] - start["ms_per_token"]) / start["ms_per_token"]
    return {"machine": machine(), "bundle": "SmolLM2-135M-Instruct + sentiment RM (demo bundle)", "generations": n,
            "requested": args.n, "threads": args.threads, "max_new_tokens": args.max_new_tokens, "warmup": warmup,
            "window": size, "tokens": sum(s.tokens for s in samples), "seconds": round(sum(s.seconds for s in samples), 1),
            "rss_mib_at_load": round(rss_at_load, 1), "rss_mib_after_gc": round(rss_mib(), 1), "start": start, "end": end,
            "rss_growth_pct": round(growth, 2), "ms_per_token_drift_pct": round(drift, 1),
            "forms": sorted({s.form for s in samples}), "settings": SETTINGS}


def main(argv: list[str] | None = None) -> int:
    """`python -m args_benchmarks.soak`: the same as `args-bench soak`."""
    return module_main(sys.modules[__name__], "args-bench soak", argv)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`args-bench soak`'s options."""
    p.add_argument("--n", type=int, default=1000, help="generations to run (default 1000)")
    p.add_argument("--minutes", type=float, help="stop after this many minutes even if --n is not reached")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per model (default 1)")
    p.add_argument("--max-new-tokens", type=int, default=16, help="new tokens per generation (default 16)")
    p.add_argument("--warmup", type=int, default=50, help="generations before the start window (default 50)")
    p.add_argument("--window", type=int, default=50, help="generations in the start and end windows (default 50)")
    p.add_argument("--progress", type=int, default=100, help="print a line every this many generations (0: never)")
    p.add_argument("--out", help="JSON path (default benchmarks/results/<machine>/soak.json)")


def run(args: argparse.Namespace) -> int:
    report = soak(args)
    out = args.out or results_folder(report["machine"]["label"]) / "soak.json"
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(report, f, indent=1)
    s, e = report["start"], report["end"]
    print(f"{report['generations']} generations ({report['tokens']} tokens, {report['seconds']} s) on {report['machine']['cpu']}:\n"
          f"  after warm-up (#{s['from']}-{s['to']}): {s['rss_mib_end']} MiB, {s['ms_per_token']} ms/token\n"
          f"  at the end    (#{e['from']}-{e['to']}): {e['rss_mib_end']} MiB, {e['ms_per_token']} ms/token\n"
          f"  RSS growth {report['rss_growth_pct']:+.2f} %, ms/token drift {report['ms_per_token_drift_pct']:+.1f} %  → {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
