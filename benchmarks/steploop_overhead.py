"""Host overhead of the decode loop's per-step bookkeeping, Python loop vs the C++ step loop (cpp_ext/),
and end-to-end ms/token for each on SmolLM2-135M (LM and RM) with ONNX Runtime.

Two host figures per loop, in µs per step:
  * books: the host chooser and the books alone (combine, choose, EOS/limit flags, next ids/positions/mask),
    replayed on LM/RM outputs recorded from a real SmolLM2 run;
  * non-backend: a whole generation's time minus the time inside the backends' run calls, per step
    (the chooser and books plus the rest of the per-step Python: feeds, cache views, request bookkeeping).

    python -m args_benchmarks.steploop_overhead [--k 10] [--new-tokens 64] [--batch 1 4] [--repeats 3]

Prints a table and writes benchmarks/results/<machine>/steploop_overhead.json."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from args_runtime import ArgsGenerator
from args_runtime.books import Seat, make_books
from args_runtime.choice import ChoiceConfig, make_chooser
from args_runtime.loops import LOOPS

from .common import machine, module_main, results_folder

PROMPTS = [[{"role": "user", "content": "Give me one tip for a calm morning."}], [{"role": "user", "content": "Name a planet."}],
           [{"role": "user", "content": "Write a haiku about tea, please, with a seasonal word."}], [{"role": "user", "content": "Hi!"}]]


class TimedBackend:
    """Wraps a backend; adds up the seconds spent in run()."""

    def __init__(self, inner) -> None:
        self.inner, self.seconds = inner, 0.0

    def run(self, feeds, into=None):
        start = time.perf_counter()
        out = self.inner.run(feeds, into)
        self.seconds += time.perf_counter() - start
        return out

    def __getattr__(self, name):
        return getattr(self.inner, name)


def record(gen: ArgsGenerator, prompts, k: int, n: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The (logits, candidates, rewards) every step fed to the chooser in a real generation (two graphs or fused)."""
    seen = []
    if gen.bundle.fused:  # the fused pass scores the candidates it is given
        fused = gen.rm.score_and_propose

        def score_and_propose(ids, positions, prefix, top, *a, **kw):
            rewards, proposals = fused(ids, positions, prefix, top, *a, **kw)
            seen.append((top.logits, top.ids, rewards))
            return rewards, proposals

        patches = {gen.rm: {"score_and_propose": score_and_propose}}
    else:
        lm_extend, rm_score = gen.lm.extend, gen.rm.extend_and_score

        def extend(*a, **kw):
            top = lm_extend(*a, **kw)
            seen.append([top.logits, top.ids])
            return top

        patches = {gen.lm: {"extend": extend}, gen.rm: {"extend_and_score": lambda *a, **kw: seen[-1].append(rm_score(*a, **kw)) or seen[-1][2]}}
    for model, methods in patches.items():
        vars(model).update(methods)
    try:
        gen.generate(prompts, k=k, w=1.5, max_new_tokens=n, ignore_eos=True)
    finally:
        for model, methods in patches.items():
            for name in methods:
                delattr(model, name)
    return [tuple(s) for s in seen[:n]]


def timed_backends(gen: ArgsGenerator) -> list[TimedBackend]:
    """Wrap the backends ARGS runs (a fused bundle: its graph and its LM head) so their run time adds up."""
    timed = []
    for model in gen.bundle.models():
        model.backend = TimedBackend(model.backend)
        timed.append(model.backend)
        if gen.bundle.fused:
            model.head = TimedBackend(model.head)
            timed.append(model.head)
    return timed


def books_us(gen, loop: str, prompts, steps, method: str, repeats: int) -> float:
    """µs per step of the host chooser and the books alone, replaying `steps` over rows seated as a left-padded batch."""
    ids = [gen.tokenizer.encode(p) for p in prompts]
    k, rows, longest = steps[0][0].shape[1], range(len(ids)), max(len(i) for i in ids)
    choice = ChoiceConfig(k, 1.5, method == "stochastic", 0.7, 0)
    tops = [(SimpleNamespace(logits=logits, ids=candidates), rewards) for logits, candidates, rewards in steps]
    best = []
    for _ in range(repeats):
        books = make_books(loop, len(ids), gen.bundle.max_context, tuple(gen.manifest.tokenizer.eos_token_ids))
        choose = make_chooser(loop, len(ids))
        for row, prompt in enumerate(ids):
            books.seat(row, Seat(len(prompt), longest - len(prompt), len(steps), True))
            choose.seat(row, choice)
        start = time.perf_counter()
        for top, rewards in tops:
            books.step(choose(top, rewards, rows), rows)
        best.append((time.perf_counter() - start) / len(steps))
    return 1e6 * min(best)


def end_to_end(gen, prompts, k: int, n: int, method: str) -> tuple[float, float, list]:
    """(ms/token over the decode steps, non-backend µs/step over the whole generation, tokens)."""
    for timed in gen.timed:
        timed.seconds = 0.0
    start = time.perf_counter()
    res = gen.generate(prompts, k=k, w=1.5, max_new_tokens=n, method=method, seed=0, ignore_eos=True)
    total = time.perf_counter() - start
    backend = sum(timed.seconds for timed in gen.timed)
    return res[0].timings["decode_ms_per_token"], 1e6 * (total - backend) / n, [r.token_ids for r in res]


def main(argv: list[str] | None = None) -> int:
    """`python -m args_benchmarks.steploop_overhead`: the same as `args-bench steploop`."""
    return module_main(sys.modules[__name__], "args-bench steploop", argv)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`args-bench steploop`'s options."""
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=None, help="results folder (default: benchmarks/results/<machine> in a checkout, else ./args-bench-results/<machine>)")


def run(args: argparse.Namespace) -> int:

    from args_export.demo.prepare import cache_dir, prepare_bundle

    bundle = prepare_bundle(cache_dir())
    gens = {loop: ArgsGenerator.from_bundle(bundle, loop=loop) for loop in LOOPS}
    for gen in gens.values():
        gen.timed = timed_backends(gen)
    rows = []
    for batch in args.batch:
        prompts = PROMPTS[:batch]
        steps = record(gens["python"], prompts, args.k, args.new_tokens)
        for method in ("greedy", "stochastic"):
            row = {"batch": batch, "method": method}
            for loop, gen in gens.items():
                row[f"books_us_{loop}"] = books_us(gen, loop, prompts, steps, method, args.repeats * 5)
            runs = {loop: [] for loop in LOOPS}
            for _ in range(args.repeats):  # interleaved: each repeat runs both loops once
                for loop, gen in gens.items():
                    runs[loop].append(end_to_end(gen, prompts, args.k, args.new_tokens, method))
            for loop in LOOPS:
                row[f"ms_per_token_{loop}"] = statistics.median(r[0] for r in runs[loop])
                row[f"non_backend_us_per_step_{loop}"] = statistics.median(r[1] for r in runs[loop])
            row["identical_tokens"] = runs["python"][0][2] == runs["cpp"][0][2]
            rows.append(row)

    print(f"SmolLM2-135M LM + RM, ORT CPU, k={args.k}, {args.new_tokens} new tokens, median of {args.repeats}")
    print(f"{'batch':>5} {'method':>10} | {'books µs/step':>21} | {'non-backend µs/step':>21} | {'ms/token':>15} | same")
    print(f"{'':>5} {'':>10} | {'python':>10} {'cpp':>10} | {'python':>10} {'cpp':>10} | {'python':>7} {'cpp':>7} |")
    for r in rows:
        print(f"{r['batch']:>5} {r['method']:>10} | {r['books_us_python']:10.1f} {r['books_us_cpp']:10.1f} | "
              f"{r['non_backend_us_per_step_python']:10.1f} {r['non_backend_us_per_step_cpp']:10.1f} | "
              f"{r['ms_per_token_python']:7.2f} {r['ms_per_token_cpp']:7.2f} | {r['identical_tokens']}")
    result = {"machine": machine(), "k": args.k, "new_tokens": args.new_tokens, "repeats": args.repeats, "rows": rows}
    out = args.out or results_folder(result["machine"]["label"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "steploop_overhead.json").write_text(json.dumps(result, indent=2))
    print(f"written {out / 'steploop_overhead.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
