"""The acceptance run's stages after the install: the `gpu` tests, the SmolLM2 figures, continuous batching, SmolLM2's
bundle variants, the 7B-shaped figures. Each runs its work in child processes (benchmarks/gpu/prepare.py,
compare.py, args-bench, pytest) with logs under its own folder in --out."""

from __future__ import annotations

import json
import shutil
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from .stage import FAILED, PASSED, SKIPPED, TIMED_OUT, Child, Context, Stage, StageResult, run_child


@dataclass(frozen=True)
class Workload:
    """What a figures stage measures: which models, the bundles' layouts, and args-bench's options."""

    models: str  # "smollm2" or a shape of benchmarks/shapes.py
    layouts: str
    bench_flags: tuple[str, ...]
    new_tokens: int
    batches: str
    repeats: int
    split: bool = False  # export the LM and RM graphs side by side (prepare.py split_export): a 7B graph takes minutes
    variants: str = "default"  # prepare.py's --variants: args-export's defaults, two-graph, int8
    models_of: str = ""  # the stage whose model folders (in --work) it reuses; "": its own


# Peak disk of a pair's build and split export in --work: the HF folders (the RM links the LM's backbone), both graphs'
# weights, and the tracer's spill of each while it streams into them. A full disk would break every later stage too.
DISK_NEEDED = {"llama-7b": 45e9}


def _disk_problem(ctx: Context, work: "Workload") -> str | None:
    need, free = DISK_NEEDED.get(work.models, 0), shutil.disk_usage(ctx.work).free
    if free >= need:
        return None
    return f"needs ~{need / 1e9:.0f} GB free in --work {ctx.work}, which has {free / 1e9:.0f} GB: rerun with --work on a bigger disk"


def _device(ctx: Context) -> str:
    return "cpu" if ctx.dry_run else "cuda"


def _cuda_missing(ctx: Context) -> StageResult | None:
    if ctx.dry_run or ctx.facts.get("cuda_ok"):
        return None
    return StageResult("", SKIPPED, "ONNX Runtime's CUDA provider does not run here (see the install stage)")


# ---------------------------------------------------------------------------------------------- the gpu tests


def gpu_tests(ctx: Context, stage: Stage) -> StageResult:
    """pytest -m gpu on tests/test_gpu.py, its log and JUnit XML kept; on the box every test must pass, none skip."""
    if (missing := _cuda_missing(ctx)) is not None:
        return missing
    folder = ctx.out / stage.name
    junit = folder / "junit.xml"
    argv = [ctx.python, "-m", "pytest", "tests/test_gpu.py", "-m", "gpu", "-p", "no:cacheprovider", "-q", "-rA", f"--junitxml={junit}"]
    status, seconds = run_child(ctx, argv, folder / "pytest.log", stage.budget_s)
    cases = parse_junit(junit)
    counts = {outcome: sum(1 for c in cases.values() if c == outcome) for outcome in ("passed", "failed", "skipped")}
    data = {"cases": cases, "counts": counts, "exit_status": status}
    said = ", ".join(f"{n} {outcome}" for outcome, n in counts.items() if n)
    if status is None:
        return StageResult(stage.name, TIMED_OUT, f"pytest killed at its budget after {seconds:.0f} s ({said or 'no result yet'})", data=data)
    if status != 0 or counts["failed"] or not cases:
        return StageResult(stage.name, FAILED, f"pytest exit {status}: {said or 'no test ran'} (see {stage.name}/pytest.log)", data=data)
    if counts["skipped"] and not ctx.dry_run:
        return StageResult(stage.name, FAILED, f"{said}: a gpu test skipped on the GPU box (see {stage.name}/pytest.log)", data=data)
    return StageResult(stage.name, PASSED, said + (" (dry run: no GPU here, so they skip)" if ctx.dry_run else ""), data=data)


def parse_junit(path: Path) -> dict[str, str]:
    """test id → "passed" | "failed" | "skipped", from pytest's JUnit XML (empty when there is none)."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return {}
    cases = {}
    for case in root.iter("testcase"):
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
            elif child.tag == "skipped":
                outcome = "skipped"
        cases[f"{case.get('classname', '')}::{case.get('name', '')}"] = outcome
    return cases


# ---------------------------------------------------------------------------------------------- figures


def smollm2_workload(ctx: Context) -> Workload:
    flags = ("--cuda-graph",)
    return Workload("llama-tiny" if ctx.dry_run else "smollm2", "dynamic,static", flags, 16 if ctx.quick else 128,
                    "1,2" if ctx.quick else "1,4", 1 if ctx.quick else 3)


def random_workload(ctx: Context) -> Workload:
    # One engine on the device besides the reference: a 7B fp16 pair is ~27 GB per copy and an H100 has ~80 GB.
    flags = ("--cuda-graph", "--graphs-only", "--kinds", "reference,args", "--skip-checksums")
    return Workload("llama-tiny" if ctx.dry_run else "llama-7b", "static", flags, 16 if ctx.quick else 128,
                    "1,2" if ctx.quick else "1,4", 1 if ctx.quick else 2, split=True)


def smollm2_figures(ctx: Context, stage: Stage) -> StageResult:
    """SmolLM2-135M + the demo's RM, fp16, both layouts: exports timed and checked, then reference vs args-rt
    (dynamic, static, static + CUDA graphs). Needs the SmolLM2 GGUF (the optional pack); the dry run uses a tiny pair."""
    if (missing := _cuda_missing(ctx)) is not None:
        return missing
    if not ctx.dry_run and not ctx.facts.get("smollm2_gguf"):
        return StageResult(stage.name, SKIPPED, "SmolLM2's GGUF is not here (the smollm2 pack was not brought): no SmolLM2 figures")
    work = smollm2_workload(ctx)
    deadline = time.monotonic() + stage.budget_s
    child = start_bundle(ctx, stage.name, work, deadline)
    return finish_figures(ctx, stage, work, child, deadline, lambda: start_variant_export(ctx, stage.name))


def batching_figures(ctx: Context, stage: Stage) -> StageResult:
    """Continuous batching through ArgsEngine on the device (its raw-address row binding had never run on CUDA): the
    smollm2 stage's static bundle, a Poisson stream of 8 requests in 8 slots, then 32 in 32 (not with --quick), each
    served continuously, in fixed batches and one at a time (args-bench batching --quick's sizes), tokens compared."""
    if (missing := _cuda_missing(ctx)) is not None:
        return missing
    bundle = _read_json(ctx.out / "smollm2" / "export.json").get("bundles", {}).get("static")
    if not bundle:
        return StageResult(stage.name, SKIPPED, "no static bundle: the smollm2 stage did not export one")
    folder, deadline, runs = ctx.out / stage.name, time.monotonic() + stage.budget_s, {}
    folder.mkdir(parents=True, exist_ok=True)
    for n in (8,) if ctx.quick else (8, 32):
        argv = [ctx.python, "-m", "args_benchmarks.batching", "--bundle", bundle, "--device", _device(ctx), "--quick",
                "--requests", str(n), "--slots", str(n), "--out", str(folder), "--name", f"batching-{n}"]
        status, seconds = run_child(ctx, argv, folder / f"batching-{n}.log", max(1.0, deadline - time.monotonic()))
        doc = _read_json(folder / f"batching-{n}.json")
        runs[str(n)] = {"exit_status": status, "seconds": round(seconds, 1), "summary": doc.get("summary"),
                        "identical_tokens": doc.get("identical_tokens"), "continuous": doc.get("continuous"), "targets": doc.get("targets")}
        if status is None:
            return StageResult(stage.name, TIMED_OUT, f"{n} requests: killed at the budget after {seconds:.0f} s", data={"runs": runs})
        if status != 0 or not doc.get("identical_tokens"):
            return StageResult(stage.name, FAILED, f"{n} requests: exit {status}, same tokens {doc.get('identical_tokens')} "
                               f"(see {stage.name}/batching-{n}.log)", data={"runs": runs})
    detail = "; ".join(f"{n} requests: continuous {r['summary']['continuous']['tokens_per_s']:.1f} tokens/s, fixed "
                       f"{r['summary']['fixed batches']['tokens_per_s']:.1f}, same tokens" for n, r in runs.items())
    return StageResult(stage.name, PASSED, detail, data={"runs": runs})


VARIANTS_STAGE = "bundles"
VARIANT_EXPORT_S = 300  # the background export of the two variants stops here at the latest (SmolLM2: ~1 min each on the box)


def variants_workload(ctx: Context) -> Workload:
    """SmolLM2's static bundle again, as two graphs (--no-fuse) and with int8 weights; the smollm2 stage's model folders."""
    base = smollm2_workload(ctx)
    return Workload(base.models, "static", (), 16 if ctx.quick else 64, "1", 1, variants="two-graph,int8", models_of="smollm2")


def start_variant_export(ctx: Context, after: str) -> None:
    """The bundles stage's two exports, started in the background (4 CPU threads) once the `after` stage has its own
    bundles: the CPU exports while the smollm2 and batching stages measure on the GPU."""
    if VARIANTS_STAGE in ctx.facts.get("stages", ()) and VARIANTS_STAGE not in ctx.background:
        deadline = time.monotonic() + min(VARIANT_EXPORT_S, max(1.0, ctx.left()))
        ctx.background[VARIANTS_STAGE] = start_bundle(ctx, VARIANTS_STAGE, variants_workload(ctx), deadline, threads=4)
        ctx.facts["overlap_note"] = " ".join(filter(None, [ctx.facts.get("overlap_note"), f"SmolLM2's two-graph and int8 bundles were "
                                             f"exported in the background (4 CPU threads) from the end of {after}'s export on."]))
        ctx.say(f"{VARIANTS_STAGE}: exporting SmolLM2's two-graph and int8 bundles in the background, after {after}'s")


def bundle_variants(ctx: Context, stage: Stage) -> StageResult:
    """SmolLM2 fp16's static bundle as args-export writes it (fused: the RM is a head on the LM's backbone) against the
    same pair as two graphs and with int8 weights, on the device: ARGS-greedy ms/token, plain greedy's, and each
    bundle's tokens against the two-graph one's (compare.py). The two exports started in the background after smollm2's."""
    if (missing := _cuda_missing(ctx)) is not None:
        return missing
    fused = _read_json(ctx.out / "smollm2" / "export.json").get("bundles", {}).get("static")
    if not fused:
        return StageResult(stage.name, SKIPPED, "no static bundle: the smollm2 stage did not export one")
    work, folder, deadline = variants_workload(ctx), ctx.out / stage.name, time.monotonic() + stage.budget_s
    child = ctx.background.pop(stage.name, None) or start_bundle(ctx, stage.name, work, deadline)
    status = child.wait(until=deadline)
    report = _read_json(folder / "export.json")
    data = {"export": report}
    exports = ", ".join(f"{name} {s:.0f} s" for name, s in report.get("exports_s", {}).items()) or "none done"
    if status is None:
        return StageResult(stage.name, TIMED_OUT, f"exports not done after {child.seconds:.0f} s ({exports}; see {stage.name}/export.log)", data=data)
    bundles = report.get("bundles", {})
    if status != 0 or not {"static two-graph", "static int8"} <= set(bundles):
        return StageResult(stage.name, FAILED, f"export failed (exit {status}; {exports}): {child.tail(3)}", data=data)
    argv = [ctx.python, "-m", "args_benchmarks.gpu.compare", "--bundle", bundles["static two-graph"], "--bundle", fused,
            "--bundle", bundles["static int8"], "--device", _device(ctx), "--prompts", "2" if ctx.quick else "4",
            "--new-tokens", str(work.new_tokens), "--out", str(folder / "compare.json")]
    status, seconds = run_child(ctx, argv, folder / "compare.log", max(1.0, deadline - time.monotonic()))
    data["compare"] = _read_json(folder / "compare.json")
    if status is None:
        return StageResult(stage.name, TIMED_OUT, f"exports done ({exports}); compare killed at the budget after {seconds:.0f} s", data=data)
    if status != 0 or not data["compare"]:
        return StageResult(stage.name, FAILED, f"exports done ({exports}); compare exit {status}: see {stage.name}/compare.log", data=data)
    rows = "; ".join(f"{r['bundle']} {r['ms_per_token']:.2f} ms/token, tokens {r['token_agreement']:.2f}" for r in data["compare"]["rows"])
    return StageResult(stage.name, PASSED, f"exports {exports}; {rows} (agreement with the two-graph bundle's)", data=data)


def start_random_export(ctx: Context, stage_name: str, budget_s: float) -> Child | None:
    """The 7B-shaped pair's build and export, started in the background right after the install: exporting 13 GB
    graphs is CPU work that takes minutes, so it runs while the GPU stages before it measure."""
    work = random_workload(ctx)
    if _disk_problem(ctx, work):
        return None  # random_figures reports it
    child = start_bundle(ctx, stage_name, work, time.monotonic() + budget_s, threads=4)
    ctx.background[stage_name] = child
    return child


def random_figures(ctx: Context, stage: Stage) -> StageResult:
    """A seeded LLaMA-7B-shaped LM + RM, fp16, static layout: exported on the box (checked on ORT CUDA against
    PyTorch on the GPU), then reference vs args-rt with CUDA graphs. The export may already run in the background."""
    if (missing := _cuda_missing(ctx)) is not None:
        return missing
    work = random_workload(ctx)
    if (problem := _disk_problem(ctx, work)) is not None:
        return StageResult(stage.name, FAILED, problem)
    deadline = time.monotonic() + stage.budget_s
    child = ctx.background.pop(stage.name, None) or start_bundle(ctx, stage.name, work, deadline)
    return finish_figures(ctx, stage, work, child, deadline)


def start_bundle(ctx: Context, name: str, work: Workload, deadline: float, threads: int | None = None) -> Child:
    """The stage's models and bundles, in folders of its own: in the dry run two stages export the same tiny pair, and the
    background export of one raced the other's into one folder."""
    folder = ctx.out / name
    argv = [ctx.python, "-m", "args_benchmarks.gpu.prepare", "bundle", work.models, "--dtype", "fp16", "--layouts", work.layouts,
            "--max-context", "256", "--max-k", "16", "--cache", str(ctx.work / "models" / (work.models_of or name)),
            "--out", str(ctx.work / "bundles" / name), "--report", str(folder / "export.json"), "--variants", work.variants,
            *(["--split"] if work.split else [])]
    env = dict(ctx.env)
    if threads:  # beside the GPU stages, leave most cores to them
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return Child(argv, folder / "export.log", deadline).start(env, ctx.repo)


def finish_figures(ctx: Context, stage: Stage, work: Workload, child: Child, deadline: float, exported=None) -> StageResult:
    """Wait for the bundles, then (after `exported()`, when given) race them with args-bench; the stage's data holds the
    export report and the bench's JSON (records and targets)."""
    folder = ctx.out / stage.name
    status = child.wait(until=deadline)
    report = _read_json(folder / "export.json")
    data = {"export": report}
    if status is None:
        done = ", ".join(f"{k} in {v:.0f} s" for k, v in report.get("exports_s", {}).items()) or "no bundle yet"
        return StageResult(stage.name, TIMED_OUT, f"models and export not done after {child.seconds:.0f} s ({done}; "
                           f"models {report.get('models_s', '?')} s; see {stage.name}/export.log)", data=data)
    if status != 0 or len(report.get("bundles", {})) < len(work.layouts.split(",")):
        return StageResult(stage.name, FAILED, f"export failed (exit {status}): {child.tail(3)}", data=data)
    if exported is not None:
        exported()
    loop = ctx.facts.get("versions", {}).get("args_runtime", {}).get("loop") or "python"
    argv = [ctx.python, "-m", "args_benchmarks.latency", *[a for b in report["bundles"].values() for a in ("--bundle", b)],
            "--devices", _device(ctx), "--dtype", "fp16", "--k", "10", "--headline-new-tokens", str(work.new_tokens),
            "--sweep-new-tokens", str(work.new_tokens), "--batches", work.batches, "--k-values", "", "--prompt-lengths", "",
            "--new-tokens", "", "--loops", loop, "--repeats", str(work.repeats), "--no-memory", "--out", str(folder), "--name", "latency",
            *work.bench_flags]
    status, seconds = run_child(ctx, argv, folder / "bench.log", max(1.0, deadline - time.monotonic()))
    bench = _read_json(folder / "latency.json")
    data["bench"] = {"targets": bench.get("targets", []), "records": bench.get("records", []), "machine": bench.get("machine", {}),
                     "exit_status": status}
    exports = ", ".join(f"{layout} {s:.0f} s" for layout, s in report["exports_s"].items())
    if status is None:
        return StageResult(stage.name, TIMED_OUT, f"exports done ({exports}); args-bench killed at the budget after {seconds:.0f} s", data=data)
    if status != 0 or not bench:
        return StageResult(stage.name, FAILED, f"exports done ({exports}); args-bench exit {status}: see {stage.name}/bench.log", data=data)
    return StageResult(stage.name, PASSED, f"models {report['models_s']:.0f} s, exports {exports}, bench {seconds:.0f} s", data=data)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
