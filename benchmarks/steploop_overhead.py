"""Host overhead of the decode loop's per-step bookkeeping, Python loop vs the C++ step loop (cpp_ext/),
and end-to-end ms/token for each on SmolLM2-135M (LM and RM) with ONNX Runtime.

Two host figures per loop, in µs per step:
  * stepper: the host chooser and the stepper alone (combine, choose, EOS/limit flags, next ids/positions/mask),
    replayed on LM/RM outputs recorded from a real SmolLM2 run;
  * non-backend: a whole generation's time minus the time inside the backends' run calls, per step
    (the stepper plus the rest of the per-step Python: feeds, cache swap, row bookkeeping).

    python -m args_benchmarks.steploop_overhead [--k 10] [--new-tokens 64] [--batch 1 4] [--repeats 3]

Prints a table and writes benchmarks/results/<machine>/steploop_overhead.json."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from args_export.demo.prepare import cache_dir, prepare_bundle
from args_runtime import ArgsGenerator
from args_runtime.choice import ChoiceConfig, make_chooser
from args_runtime.loops import LOOPS
from args_runtime.stepper import StopConfig, make_stepper

from .common import RESULTS, machine

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
    """The (logits, candidates, rewards) every step fed to the stepper in a real generation."""
    seen, lm_extend, rm_score = [], gen.lm.extend, gen.rm.extend_and_score
    def extend(*a):
        top = lm_extend(*a)
        seen.append([top.logits, top.ids])
        return top

    gen.lm.extend = extend
    gen.rm.extend_and_score = lambda *a: seen[-1].append(rm_score(*a)) or seen[-1][2]
    try:
        gen.generate(prompts, k=k, w=1.5, max_new_tokens=n, ignore_eos=True)
    finally:
        del gen.lm.extend, gen.rm.extend_and_score
    return [tuple(s) for s in seen[:n]]


def stepper_us(gen, loop: str, prompts, steps, method: str, repeats: int) -> float:
    ids = [gen.tokenizer.encode(p) for p in prompts]
    k = steps[0][0].shape[1]
    stop = StopConfig(tuple(gen.manifest.tokenizer.eos_token_ids), True, (len(steps),) * len(ids))
    choice = ChoiceConfig(len(ids), k, 1.5, method == "stochastic", 0.7, 0)
    tops = [(SimpleNamespace(logits=logits, ids=candidates), rewards) for logits, candidates, rewards in steps]
    best = []
    for _ in range(repeats):
        stepper = make_stepper(loop, ids, gen.manifest.tokenizer.pad_token_id, stop)
        choose = make_chooser(choice, loop)
        start = time.perf_counter()
        for top, rewards in tops:
            stepper.step(choose(top, rewards))
        best.append((time.perf_counter() - start) / len(steps))
    return 1e6 * min(best)


def end_to_end(gen, prompts, k: int, n: int, method: str) -> tuple[float, float, list]:
    """(ms/token over the decode steps, non-backend µs/step over the whole generation, tokens)."""
    gen.lm.backend.seconds = gen.rm.backend.seconds = 0.0
    start = time.perf_counter()
    res = gen.generate(prompts, k=k, w=1.5, max_new_tokens=n, method=method, seed=0, ignore_eos=True)
    total = time.perf_counter() - start
    backend = gen.lm.backend.seconds + gen.rm.backend.seconds
    return res[0].timings["decode_ms_per_token"], 1e6 * (total - backend) / n, [r.token_ids for r in res]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results/<machine>)")
    args = p.parse_args()

    bundle = prepare_bundle(cache_dir())
    gens = {loop: ArgsGenerator.from_bundle(bundle, loop=loop) for loop in LOOPS}
    for gen in gens.values():
        gen.lm.backend, gen.rm.backend = TimedBackend(gen.lm.backend), TimedBackend(gen.rm.backend)
    rows = []
    for batch in args.batch:
        prompts = PROMPTS[:batch]
        steps = record(gens["python"], prompts, args.k, args.new_tokens)
        for method in ("greedy", "stochastic"):
            row = {"batch": batch, "method": method}
            for loop, gen in gens.items():
                row[f"stepper_us_{loop}"] = stepper_us(gen, loop, prompts, steps, method, args.repeats * 5)
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
    print(f"{'batch':>5} {'method':>10} | {'stepper µs/step':>21} | {'non-backend µs/step':>21} | {'ms/token':>15} | same")
    print(f"{'':>5} {'':>10} | {'python':>10} {'cpp':>10} | {'python':>10} {'cpp':>10} | {'python':>7} {'cpp':>7} |")
    for r in rows:
        print(f"{r['batch']:>5} {r['method']:>10} | {r['stepper_us_python']:10.1f} {r['stepper_us_cpp']:10.1f} | "
              f"{r['non_backend_us_per_step_python']:10.1f} {r['non_backend_us_per_step_cpp']:10.1f} | "
              f"{r['ms_per_token_python']:7.2f} {r['ms_per_token_cpp']:7.2f} | {r['identical_tokens']}")
    result = {"machine": machine(), "k": args.k, "new_tokens": args.new_tokens, "repeats": args.repeats, "rows": rows}
    out = args.out or RESULTS / result["machine"]["label"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "steploop_overhead.json").write_text(json.dumps(result, indent=2))
    print(f"written {out / 'steploop_overhead.json'}")


if __name__ == "__main__":
    main()
