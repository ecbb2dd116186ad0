"""The acceptance run's verdicts: the issue's targets judged from the stages' results, a one-screen summary.md, the
same as summary.json, and the small set of files a GPU session's $OUT can bring back (at most 8: the summary, the
run log and one tarball of the whole results folder). Rewritten after every stage."""

from __future__ import annotations

import io
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path

from .stage import Context, StageResult, as_dicts, write_json

GPU_MS_PER_TOKEN = 12.0  # 7B-shaped fp16, k=10, batch 1, on an H100
GPU_SPEEDUP = 5.0  # over the reference ARGS on the same GPU


@dataclass
class Verdict:
    target: str
    measured: str
    met: bool | None  # None: not measured in this run (or reported only)


def judge(ctx: Context, results: list[StageResult]) -> list[Verdict]:
    by_name = {r.name: r for r in results}
    dry = ctx.dry_run
    out = [_cuda_runs(ctx, by_name.get("install")), *_tests(by_name.get("gpu-tests"), dry)]
    big = by_name.get("random-7b")
    out += _latency(big, dry, ctx.facts.get("gpu") or "")
    for name in ("smollm2", "random-7b"):
        out.append(_agreement(by_name.get(name), name))
    out.append(_batching(by_name.get("batching")))
    out.append(_variants(by_name.get("bundles")))
    return out


def _variants(stage: StageResult | None) -> Verdict:
    """SmolLM2's bundle variants on the device, reported: each one's ARGS ms/token, its cost over plain greedy, and how
    many of its tokens equal the two-graph bundle's (fp16 kernels differ between the layouts, so no threshold)."""
    rows = (stage.data.get("compare") or {}).get("rows", []) if stage else []
    measured = "; ".join(f"{r['bundle']} {r['ms_per_token']:.2f} ms/token ({r['cost_vs_greedy']:.2f}× greedy)"
                         + ("" if i == 0 else f", tokens {r['token_agreement']:.2f}") for i, r in enumerate(rows))
    return Verdict("SmolLM2 fp16 bundles: fused and int8 against two graphs, tokens and ms/token (reported, no threshold)",
                   measured or "not measured", None)


def _batching(stage: StageResult | None) -> Verdict:
    """Continuous batching's throughput on the device, reported (the 1.5x target is the CPU benchmark's)."""
    runs = stage.data.get("runs", {}) if stage else {}
    measured = "; ".join(f"{n} requests: {r['summary']['continuous']['tokens_per_s']:.1f} tokens/s continuous vs "
                         f"{r['summary']['fixed batches']['tokens_per_s']:.1f} fixed, same tokens {r['identical_tokens']}"
                         for n, r in runs.items() if r.get("summary"))
    return Verdict("continuous batching through ArgsEngine at 8 and 32 requests (reported, no threshold)", measured or "not measured", None)


def _cuda_runs(ctx: Context, install: StageResult | None) -> Verdict:
    smoke = (install.data.get("versions", {}) if install else {}).get("cuda_smoke", {})
    measured = "not measured" if not smoke else ("ran on " + ", ".join(smoke.get("session_providers", [])) if smoke.get("ok") else smoke.get("error", "no"))
    return Verdict("ONNX Runtime's CUDA provider loads and runs (onnxruntime-gpu from the wheel folder)", measured,
                   None if ctx.dry_run or not smoke else bool(smoke.get("ok")))


def _tests(stage: StageResult | None, dry: bool) -> list[Verdict]:
    cases = stage.data.get("cases", {}) if stage else {}

    def verdict(target: str, marker: str) -> Verdict:
        mine = {name: outcome for name, outcome in cases.items() if marker in name}
        if not mine or dry:
            return Verdict(target, f"{len(mine)} test(s), dry run: skipped without a GPU" if mine and dry else "not run", None)
        ok = all(outcome == "passed" for outcome in mine.values())
        return Verdict(target, ", ".join(f"{n.split('::')[-1]}: {o}" for n, o in sorted(mine.items())), ok)

    total = len(cases)
    passed = sum(1 for outcome in cases.values() if outcome == "passed")
    every = Verdict("every `gpu` test passes (tests/test_gpu.py)", f"{passed} of {total} passed" if total else "not run",
                    None if dry or not total else passed == total)
    return [every, verdict("CUDA graphs engage for LM and RM with no token changed", "test_cuda_graphs_engage"),
            verdict("fp32 CUDA tokens equal the CPU's (both layouts)", "test_fp32_cuda_tokens_equal_cpu_tokens")]


def best_args(records: list[dict], batch: int) -> dict | None:
    """The fastest args-rt ARGS record of the headline settings at this batch size."""
    mine = [r for r in records if r["kind"] == "args" and r["batch"] == batch and r["sweep"] in ("headline", "batch")]
    return min(mine, key=lambda r: r["ms_per_token"], default=None)


def reference(records: list[dict]) -> dict | None:
    return next((r for r in records if r["kind"] == "reference" and r["sweep"] == "headline"), None)


def _latency(stage: StageResult | None, dry: bool, gpu: str) -> list[Verdict]:
    records = stage.data.get("bench", {}).get("records", []) if stage else []
    ours, ref = best_args(records, 1), reference(records)
    on_h100 = "h100" in gpu.lower()
    target = f"7B-shaped fp16, k=10, batch 1: ARGS ≤ {GPU_MS_PER_TOKEN:g} ms/token on an H100"
    if not ours:
        latency = Verdict(target, "not measured", None)
    else:
        where = "dry run on the CPU (llama-tiny)" if dry else gpu or "?"
        latency = Verdict(target, f"{ours['ms_per_token']:.2f} ms/token ({ours['engine']}; {where})",
                          None if dry or not on_h100 else ours["ms_per_token"] <= GPU_MS_PER_TOKEN)
    speed = f"7B-shaped: ≥ {GPU_SPEEDUP:g}× faster than the reference ARGS on the same GPU"
    if not (ours and ref):
        speedup = Verdict(speed, "not measured", None)
    else:
        ratio = ref["ms_per_token"] / ours["ms_per_token"]
        speedup = Verdict(speed, f"{ref['ms_per_token']:.1f} → {ours['ms_per_token']:.2f} ms/token = {ratio:.1f}×", None if dry else ratio >= GPU_SPEEDUP)
    return [latency, speedup]


def _agreement(stage: StageResult | None, name: str) -> Verdict:
    records = stage.data.get("bench", {}).get("records", []) if stage else []
    rates = {r["engine"]: r["agreement_with_reference"] for r in records
             if r["kind"] == "args" and r["sweep"] == "headline" and r.get("agreement_with_reference") is not None}
    label = {"smollm2": "SmolLM2-135M", "random-7b": "7B-shaped random"}[name]
    measured = "; ".join(f"{rate:.2f} ({engine.split(', ', 1)[1] if ', ' in engine else engine})" for engine, rate in rates.items())
    return Verdict(f"fp16 token agreement with the fp16 reference, {label} (reported, no threshold)", measured or "not measured", None)


# ---------------------------------------------------------------------------------------------- writing


def write(ctx: Context, results: list[StageResult], return_to: Path | None) -> None:
    """summary.json + summary.md in --out; then the files to bring back in `return_to` (at most 8)."""
    verdicts = judge(ctx, results)
    doc = {"dry_run": ctx.dry_run, "quick": ctx.quick, "gpu": ctx.facts.get("gpu"), "versions": ctx.facts.get("versions", {}),
           "targets": [asdict(v) for v in verdicts], "stages": as_dicts(results)}
    write_json(ctx.out / "summary.json", doc)
    text = render(ctx, results, verdicts)
    (ctx.out / "summary.md").write_text(text)
    if return_to is not None:
        return_to.mkdir(parents=True, exist_ok=True)
        (return_to / "summary.md").write_text(text)
        write_json(return_to / "summary.json", doc)
        if (ctx.out / "run.log").is_file():
            (return_to / "run.log").write_bytes((ctx.out / "run.log").read_bytes())
        _tarball(ctx.out, return_to / "results.tar.gz")


def _tarball(folder: Path, path: Path) -> None:
    """Every small file of the results folder in one tarball, written atomically (logs are cut to their last MiB)."""
    tmp = path.with_name(path.name + ".tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        for file in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".tmp")):
            data = file.read_bytes()
            if len(data) > 1 << 20:
                data = b"[... cut to the last MiB ...]\n" + data[-(1 << 20):]
            info = tarfile.TarInfo(f"{folder.name}/{file.relative_to(folder).as_posix()}")
            info.size, info.mtime = len(data), int(file.stat().st_mtime)
            tar.addfile(info, io.BytesIO(data))
    tmp.replace(path)


def _pins_line(pins: dict) -> str:
    """The found versions against box_versions.txt (what the CI lane runs): all equal, or each one that differs."""
    if not pins:
        return "pinned versions (box_versions.txt): not recorded"
    differ = [f"{name} {p['found']} (pinned {p['expected']})" for name, p in sorted(pins.items()) if not p["match"]]
    return ("pinned versions (box_versions.txt): all " + str(len(pins)) + " as pinned" if not differ
            else "pinned versions (box_versions.txt) differ: " + ", ".join(differ) + " — update the file or the box")


def render(ctx: Context, results: list[StageResult], verdicts: list[Verdict]) -> str:
    v = ctx.facts.get("versions", {})

    def ver(name: str) -> str:
        return str(v.get(name, {}).get("version"))

    gpu = v.get("gpu", {})
    lines = [f"# args-rt GPU acceptance run{' (DRY RUN: CPU, tiny models)' if ctx.dry_run else ''}", "",
             f"GPU: {gpu.get('name', 'none')} (driver {gpu.get('driver_version', '-')}, {gpu.get('memory.total', '-')}); "
             f"CPU: {v.get('cpu', {}).get('model', '?')} × {v.get('cpu', {}).get('cores', '?')}",
             f"python {v.get('python', '?')}, torch {ver('torch')} (CUDA {v.get('torch', {}).get('cuda')}), transformers {ver('transformers')}, "
             f"onnx {ver('onnx')}, onnxruntime {ver('onnxruntime')} (built for CUDA {v.get('onnxruntime', {}).get('built_for_cuda')}), "
             f"args-rt step loop: {v.get('args_runtime', {}).get('loop', '?')}", _pins_line(v.get("pins", {})), "",
             "| stage | result | s / budget | detail |", "|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.name} | {r.status} | {r.seconds:.0f} / {r.budget_s:.0f} | {_short(r.detail, 150)} |")
    lines += ["", "| target | verdict | measured |", "|---|---|---|"]
    for t in verdicts:
        verdict = {True: "PASS", False: "FAIL", None: "-"}[t.met]
        lines.append(f"| {t.target} | {verdict} | {_short(t.measured, 110)} |")
    figures = [(r.name, rec) for r in results for rec in r.data.get("bench", {}).get("records", [])
               if rec["kind"] in ("reference", "args") and rec["sweep"] in ("headline", "batch")]
    if figures:
        lines += ["", "| models | contender | engine | batch | ms/token | tokens/s | agreement |", "|---|---|---|---|---|---|---|"]
        seen = set()
        for name, r in figures:
            key = (name, r["kind"], r["engine"], r["batch"])
            if key in seen:
                continue
            seen.add(key)
            agree = "" if r.get("agreement_with_reference") is None else f"{r['agreement_with_reference']:.2f}"
            lines.append(f"| {name} | {r['contender']} | {r['engine']} | {r['batch']} | {r['ms_per_token']:.2f} | {r['tokens_per_s']:.0f} | {agree} |")
    rows = next((r.data.get("compare", {}).get("rows", []) for r in results if r.name == "bundles"), [])
    if rows:
        lines += ["", "| SmolLM2 bundle | ARGS ms/token | greedy ms/token | × greedy | tokens as two-graph's | exact replies |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['bundle']} | {r['ms_per_token']:.2f} | {r['greedy_ms_per_token']:.2f} | {r['cost_vs_greedy']:.2f} | "
                  f"{r['token_agreement']:.2f} | {r['exact_replies']:.2f} |" for r in rows]
    if ctx.facts.get("overlap_note"):
        lines += ["", ctx.facts["overlap_note"]]
    return "\n".join(lines) + "\n"


def _short(text: str, width: int) -> str:
    text = " ".join(str(text).split()).replace("|", "/")
    return text if len(text) <= width else text[: width - 1] + "…"
