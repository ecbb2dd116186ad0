"""The GPU acceptance run: one command that installs onnxruntime-gpu and args-rt on a fresh GPU box with no network,
runs the `gpu` tests, measures SmolLM2-135M and a LLaMA-7B-shaped pair in fp16, and judges the issue's targets.

    bash benchmarks/gpu/run.sh --wheels /tmp/gw --out /tmp/args-gpu/out --return "$OUT"   # on the GPU box
    python -m args_benchmarks.gpu.run --dry-run --quick --out /tmp/dry                    # the same, on a CPU, tiny models

Stages, most valuable first, each with its own time budget inside the run's (--budget, default 560 s: the box's
command limit is 600 s); a stage that fails or runs out of time is reported and the next one runs:

    install     onnxruntime-gpu (+ the rest of --wheels) and args-rt into a folder first on PYTHONPATH; versions, GPU,
                one op on ORT's CUDA provider
    gpu-tests   pytest -m gpu (tests/test_gpu.py), log and JUnit XML kept
    smollm2     SmolLM2-135M + the demo RM, fp16, dynamic and static bundles exported (timed, checked); args-bench:
                reference vs args-rt dynamic, static, static + CUDA graphs; k=10, 128 new tokens, batch 1 and 4
    batching    continuous batching through ArgsEngine on smollm2's static bundle, 8 and 32 requests, tokens compared
    bundles     smollm2's static bundle (fused) against the same pair as two graphs and with int8 weights (exported in
                the background after smollm2's): ms/token, plain greedy's, tokens against the two-graph bundle's
    random-7b   a seeded LLaMA-7B-shaped LM + RM, fp16, static bundle exported on the box (its CPU-bound export starts
                in the background right after the install); args-bench: reference vs args-rt with CUDA graphs

--out gets every file (per-stage folders, summary.md, summary.json, run.log) after every stage; --return gets the
few files a GPU session brings back: summary.md, summary.json, run.log and results.tar.gz (all of --out).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import install, stages, summary
from .stage import Context, Stage, StageResult, run_stages

REPO = Path(__file__).resolve().parents[2]
STAGES = {
    "install": (120, install.run),
    "gpu-tests": (150, stages.gpu_tests),
    "smollm2": (200, stages.smollm2_figures),
    "batching": (60, stages.batching_figures),
    "bundles": (90, stages.bundle_variants),
    "random-7b": (10_000, stages.random_figures),  # whatever is left
}
BENCH_RESERVE_S = {"gpu": 150, "dry": 120}  # kept after the background export for the 7B bench (sessions, reference, runs)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmarks/gpu/run.sh", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wheels", type=Path, help="folder made by benchmarks/gpu/wheels.sh (parts + SHA256SUMS + packs.json), or loose wheels")
    p.add_argument("--out", type=Path, required=True, help="results folder (created; written stage by stage)")
    p.add_argument("--return", dest="return_to", type=Path, help="folder for the files to bring back (a GPU session's $OUT)")
    p.add_argument("--work", type=Path, help="folder for installed packages, models and bundles (default: /tmp/args-gpu-work); "
                   "the 7B stage needs ~45 GB free there")
    p.add_argument("--dry-run", action="store_true", help="on the CPU with tiny models and the installed onnxruntime: finds script bugs before the GPU does")
    p.add_argument("--quick", action="store_true", help="16 new tokens, batch 1 and 2, 1 repeat (for CI)")
    p.add_argument("--budget", type=float, help="seconds for the whole run (default 560; dry run 1800)")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated stages to run (install always runs): {','.join(STAGES)}")
    p.add_argument("--stage-budget", action="append", default=[], metavar="STAGE=SECONDS", help="override one stage's budget")
    p.add_argument("--no-overlap", action="store_true", help="export the 7B pair in its own stage, not in the background beside the others")
    args = p.parse_args(argv)
    args.stages = ["install", *[s for s in args.stages.split(",") if s and s != "install"]]
    unknown = [s for s in args.stages if s not in STAGES]
    overrides = dict(item.split("=", 1) for item in args.stage_budget if "=" in item)
    if unknown or any(name not in STAGES for name in overrides) or len(overrides) != len(args.stage_budget):
        p.error(f"unknown stage in --stages/--stage-budget ({', '.join(unknown or overrides)}): choose among {', '.join(STAGES)}")
    try:
        args.overrides = {name: float(value) for name, value in overrides.items()}
    except ValueError:
        p.error(f"--stage-budget wants STAGE=SECONDS, got {args.stage_budget}")
    args.budget = args.budget or (1800.0 if args.dry_run else 560.0)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path("/tmp/args-gpu-work")
    work.mkdir(parents=True, exist_ok=True)
    ctx = Context(REPO, args.out.resolve(), work.resolve(), args.wheels.resolve() if args.wheels else None, args.dry_run, args.quick,
                  deadline=time.monotonic() + args.budget)
    kept = {"random-7b": BENCH_RESERVE_S["dry" if args.dry_run else "gpu"]}  # the stages before it leave the 7B bench its time
    plan = [Stage(name, args.overrides.get(name, STAGES[name][0]), STAGES[name][1], kept_s=kept.get(name, 0.0)) for name in args.stages]
    ctx.facts["stages"] = args.stages
    ctx.say(f"GPU acceptance run{' (dry run)' if args.dry_run else ''}: stages {', '.join(args.stages)}; budget {args.budget:.0f} s; "
            f"out {ctx.out}; work {ctx.work}")

    def after_each(results: list[StageResult]) -> None:
        if results[-1].name == "install" and "random-7b" in args.stages and not args.no_overlap:
            _start_background_export(ctx, args)
        summary.write(ctx, results, args.return_to)

    results = run_stages(ctx, plan, after_each)
    summary.write(ctx, results, args.return_to)
    print((ctx.out / "summary.md").read_text())
    return 0 if all(r.status in ("passed", "skipped") for r in results) else 1


def _start_background_export(ctx: Context, args: argparse.Namespace) -> None:
    if not (ctx.dry_run or ctx.facts.get("cuda_ok")):
        return
    budget = ctx.left() - BENCH_RESERVE_S["dry" if ctx.dry_run else "gpu"]
    if budget < 30:
        return
    if stages.start_random_export(ctx, "random-7b", budget) is None:
        return
    if set(args.stages) - {"install", "random-7b"}:
        ctx.facts["overlap_note"] = ("The 7B-shaped pair was built and exported in the background (4 CPU threads) while the stages "
                                     "before random-7b ran: their timings shared the machine with that export.")
    ctx.say(f"random-7b: building and exporting the 7B-shaped pair in the background (budget {budget:.0f} s)")


if __name__ == "__main__":
    sys.exit(main())
