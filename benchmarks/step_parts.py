"""Where a token's time goes: ARGS (two graphs, and fused) against the two-model floor and plain greedy, split into the
time inside each graph's decode runs and the host time around them. `python -m args_benchmarks.step_parts`

One run, contenders interleaved per repeat, on the demo pair (SmolLM2-135M + the sentiment RM on its backbone) exported
twice (two graphs with --no-fuse, and fused). A decode run is one whose `input_ids` has one column; its time is taken
around `Backend.run`. Per contender: mean ms/token (from the results' step times), mean ms per decode run of each
graph, and host = ms/token minus the runs (means, so that the parts add up). The floor is benchmarks/contenders.py's: one 1-token LM step (top-1) and
one 1-token RM extension scoring no candidate.

With --k-scan 1,2,5,10 it also decodes the fused bundle at each k (interleaved with plain greedy, same repeats) and
fits the fused pass's ms against k (the slope: what a candidate row costs on average, the intercept: the pass without
any), and reads off the largest k whose fused token costs at most 1.3x greedy.

    python -m args_benchmarks.step_parts [--k 10] [--new-tokens 64] [--repeats 3] [--threads 1] [--k-scan 1,2,5,10] [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

from .common import UsageError, machine, module_main, results_folder
from .contenders import FloorContender


class RunTimer:
    """Times one backend's decode runs (1-column input_ids; every run of a fused bundle's propose graph, which has
    none), wrapping its `run` in place."""

    def __init__(self, backend) -> None:
        self.backend, self.inner, self.ms = backend, backend.run, []
        backend.run = self.run

    def run(self, feeds, into=None):
        start = time.perf_counter()
        out = self.inner(feeds, into)
        ids = feeds.get("input_ids")
        if ids is None or ids.shape[1] == 1:
            self.ms.append((time.perf_counter() - start) * 1e3)
        return out

    def take(self) -> list[float]:
        ms, self.ms = self.ms, []
        return ms


def bundles(args) -> dict[str, Path]:
    from args_export.bundle import ExportOptions, export_bundle
    from args_export.demo.models import sentiment_reward_model
    from args_export.demo.prepare import cache_dir, demo_paths, smollm2_folder
    from args_runtime.manifest import FORMAT_VERSION

    cache = cache_dir()
    lm = Path(args.lm) if args.lm else smollm2_folder(cache)
    rm = Path(args.rm) if args.rm else sentiment_reward_model(lm, demo_paths(cache)[1])
    tag = hashlib.sha1(json.dumps([str(lm.resolve()), str(rm.resolve())]).encode()).hexdigest()[:10]
    out = {}
    for name, fuse in (("two graphs", False), ("fused", True)):
        path = cache / f"bench-step-parts-{tag}-{'fused' if fuse else 'two'}-v{FORMAT_VERSION}-k{args.k}"
        if not (path / "manifest.json").is_file():
            print(f"exporting the {name} bundle to {path}", file=sys.stderr)
            export_bundle(ExportOptions(lm, rm, path, max_context=512, max_k=args.k, force=True, fuse=fuse), quiet=True)
        out[name] = path
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m args_benchmarks.step_parts`: the same as `args-bench step-parts`."""
    return module_main(sys.modules[__name__], "args-bench step-parts", argv)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`args-bench step-parts`'s options."""
    p.add_argument("--lm", help="LM folder (default: the demo's SmolLM2-135M-Instruct)")
    p.add_argument("--rm", help="RM folder, a score head on the LM's own backbone (default: the demo's sentiment RM)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--w", type=float, default=1.5)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: ORT's)")
    p.add_argument("--shared-threads", action=argparse.BooleanOptionalAction, default=False,
                   help="every session on one shared thread pool (the CLIs' default; off here, as its earlier figures)")
    p.add_argument("--k-scan", default="", help="comma-separated k values to decode the fused bundle at, fitting its pass's cost per "
                   "candidate row (default: none)")
    p.add_argument("--name", default="step_parts", help="file stem of the JSON (default step_parts)")
    p.add_argument("--out", type=Path, help="results folder (default: benchmarks/results/<machine> in a checkout, else ./args-bench-results/<machine>)")


def run(args: argparse.Namespace) -> int:
    scan_ks = args.k_scan.split(",") if args.k_scan else []
    if not all(k.isdigit() and 1 <= int(k) <= args.k for k in scan_ks) or len(set(scan_ks)) == 1:
        raise UsageError(f"--k-scan {args.k_scan}: give two or more k values, each 1 <= k <= --k ({args.k}, the bundles' largest)")
    from args_runtime import ArgsGenerator

    from args_runtime.errors import ArgsError

    try:
        paths = bundles(args)
        two, fused = (ArgsGenerator.from_bundle(paths[name], threads=args.threads, shared_threads=args.shared_threads) for name in ("two graphs", "fused"))
        if not fused.manifest.fused:
            raise ArgsError(f"the RM {args.rm or 'given'} is not a score head on the LM's own backbone, so there is no fused bundle to measure")
    except ArgsError as e:
        print(f"step_parts: error: {e}", file=sys.stderr)
        return 2
    timers = {("two", "lm"): RunTimer(two.lm.backend), ("two", "rm"): RunTimer(two.rm.backend), ("fused", "rm"): RunTimer(fused.rm.backend),
              ("fused", "propose"): RunTimer(fused.rm.head)}
    chat = [{"role": "user", "content": "Give me one tip for a calm morning."}]
    prompt = two.tokenizer.encode(chat)
    floor = FloorContender(two, "onnxruntime cpu")
    contenders = {
        "plain greedy": lambda: two.greedy(prompt, max_new_tokens=args.new_tokens, ignore_eos=True).timings["step_ms"],
        "two-model floor": lambda: floor.run([prompt], args.k, args.w, args.new_tokens).step_ms,
        "ARGS, two graphs": lambda: two.generate(prompt, k=args.k, w=args.w, max_new_tokens=args.new_tokens, ignore_eos=True).timings["step_ms"],
        "ARGS, fused": lambda: fused.generate(prompt, k=args.k, w=args.w, max_new_tokens=args.new_tokens, ignore_eos=True).timings["step_ms"],
    }
    graphs = {"plain greedy": ("two", "lm"), "two-model floor": ("two", "lm", "rm"), "ARGS, two graphs": ("two", "lm", "rm"),
              "ARGS, fused": ("fused", "rm", "propose")}
    steps, runs = defaultdict(list), defaultdict(lambda: defaultdict(list))
    for timer in timers.values():
        timer.take()
    for repeat in range(args.repeats + 1):  # the first round warms up
        order = list(contenders)[repeat % len(contenders):] + list(contenders)[: repeat % len(contenders)]
        for name in order:
            ms = contenders[name]()
            which = graphs[name]
            taken = {role: timers[(which[0], role)].take() for role in which[1:]}
            for timer in timers.values():
                timer.take()
            if repeat:
                steps[name] += list(ms)
                for role, values in taken.items():
                    runs[name][role] += values
    rows = []
    for name in contenders:
        per_token = statistics.fmean(steps[name])
        parts = {role: statistics.fmean(values) for role, values in runs[name].items()}
        rows.append({"contender": name, "ms_per_token": round(per_token, 2), "lm_run_ms": round(parts.get("lm", 0.0), 2),
                     "rm_run_ms": round(parts.get("rm", 0.0), 2), "propose_run_ms": round(parts.get("propose", 0.0), 2), "host_ms": round(per_token - sum(parts.values()), 2)})
    by = {r["contender"]: r for r in rows}
    floor_ms, two_ms = by["two-model floor"]["ms_per_token"], by["ARGS, two graphs"]["ms_per_token"]
    gap = {"args_over_floor": round(two_ms / floor_ms, 3),
           "rm_candidate_rows_ms": round(by["ARGS, two graphs"]["rm_run_ms"] - by["two-model floor"]["rm_run_ms"], 2),
           "lm_top_k_ms": round(by["ARGS, two graphs"]["lm_run_ms"] - by["two-model floor"]["lm_run_ms"], 2),
           "host_ms": round(by["ARGS, two graphs"]["host_ms"] - by["two-model floor"]["host_ms"], 2),
           "fused_over_greedy": round(by["ARGS, fused"]["ms_per_token"] / by["plain greedy"]["ms_per_token"], 3)}
    scan = k_scan(fused, timers, contenders["plain greedy"], prompt, args) if args.k_scan else None
    info = machine()
    print(f"{'contender':<18} {'ms/token':>9} {'LM run':>8} {'RM run':>8} {'propose':>8} {'host':>7}")
    for r in rows:
        print(f"{r['contender']:<18} {r['ms_per_token']:>9} {r['lm_run_ms']:>8} {r['rm_run_ms']:>8} {r['propose_run_ms']:>8} {r['host_ms']:>7}")
    print(f"ARGS (two graphs) / floor = {gap['args_over_floor']}: the RM's k candidate rows {gap['rm_candidate_rows_ms']} ms, the LM's "
          f"top-{args.k} instead of top-1 {gap['lm_top_k_ms']} ms, host {gap['host_ms']} ms per token; fused / greedy = {gap['fused_over_greedy']}")
    if scan:
        for r in scan["rows"]:
            print(f"fused k={r['k']:<3} {r['ms_per_token']:>8} ms/token: pass {r['pass_ms']}, propose {r['propose_ms']}")
        print(f"fused pass ~ {scan['pass_without_candidates_ms']} + {scan['ms_per_candidate_row']} ms per candidate row (least squares); plain "
              f"greedy {scan['greedy_ms_per_token']} ms/token; the largest k whose fused token is <= 1.3x greedy: {scan['largest_k_within_1_3x_greedy']}")
    out = args.out or results_folder(info["label"])
    out.mkdir(parents=True, exist_ok=True)
    meta = {"machine": info, "k": args.k, "w": args.w, "new_tokens": args.new_tokens, "repeats": args.repeats,
            "threads": args.threads or "onnxruntime default", "shared_threads": args.shared_threads, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    (out / f"{args.name}.json").write_text(json.dumps({"meta": meta, "rows": rows, "gap": gap, "k_scan": scan}, indent=1) + "\n")
    print(f"written {out / (args.name + '.json')}")
    return 0


def k_scan(fused, timers: dict, greedy, prompt: list[int], args) -> dict:
    """The fused bundle at each k of --k-scan, interleaved with plain greedy: per k, ms/token and the mean fused pass
    and propose run; a least-squares line of pass ms against k (each candidate is one more row of the pass)."""
    ks = sorted({int(k) for k in args.k_scan.split(",")})
    token, passes, proposes, greedy_ms = defaultdict(list), defaultdict(list), defaultdict(list), []
    for repeat in range(args.repeats + 1):  # the first round warms up
        for k in ks[repeat % len(ks):] + ks[: repeat % len(ks)]:
            ms = fused.generate(prompt, k=k, w=args.w, max_new_tokens=args.new_tokens, ignore_eos=True).timings["step_ms"]
            pass_ms, propose_ms = timers[("fused", "rm")].take(), timers[("fused", "propose")].take()
            if repeat:
                token[k] += list(ms)
                passes[k] += pass_ms
                proposes[k] += propose_ms
        ms = greedy()
        for timer in timers.values():
            timer.take()
        if repeat:
            greedy_ms += list(ms)
    rows = [{"k": k, "ms_per_token": round(statistics.fmean(token[k]), 2), "pass_ms": round(statistics.fmean(passes[k]), 2),
             "propose_ms": round(statistics.fmean(proposes[k]), 2)} for k in ks]
    slope, intercept = statistics.linear_regression([r["k"] for r in rows], [r["pass_ms"] for r in rows])
    greedy_token = statistics.fmean(greedy_ms)
    within = [r["k"] for r in rows if r["ms_per_token"] <= 1.3 * greedy_token]
    # the line is a summary: MLAS's small-M kernels make the cost a staircase (rows come in blocks), so the k that
    # fit in 1.3x greedy are read from the measured tokens, not from the line
    return {"rows": rows, "ms_per_candidate_row": round(slope, 3), "pass_without_candidates_ms": round(intercept, 2),
            "greedy_ms_per_token": round(greedy_token, 2), "largest_k_within_1_3x_greedy": max(within, default=None)}


if __name__ == "__main__":
    sys.exit(main())
