"""torch.onnx's two export paths side by side: the dynamo exporter (torch.export + torchlib) and the deprecated
TorchScript tracer (`dynamo=False`), on the same models in one run.

For every tiny architecture of the test suite and both KV-cache layouts, then for SmolLM2-135M + the demo's RM: the
export wall time (the whole `export_bundle`, and the tracing of the two graphs alone), interleaved exporter by exporter;
each graph's node count by op type and file sizes; the checks the bundle's users rely on (every op one TensorRT 10
parses, ORT's CUDA provider placing the graph without a Memcpy, a static cache written in place by one ScatterND per
present, before and after ORT's optimizer); SmolLM2's ARGS tokens from both bundles; and, with the args-bench
harness, ORT CPU ms per decode step on both exporters' SmolLM2 bundles in one interleaved run.

    python -m args_benchmarks.exporters                 # everything (about 15 minutes on 2 cores)
    python -m args_benchmarks.exporters --no-latency    # graphs and export times only
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from args_runtime.backend import EngineOptions
from args_runtime.engines.onnxruntime_engine import ort_session_options

from .common import machine, module_main, results_folder

EXPORTERS = ("torchscript", "dynamo")
LAYOUTS = ("dynamic", "static")
TINY_CONTEXT, TINY_MAX_K = 256, 48  # the test suite's static context and max k


@dataclass
class GraphStats:
    """One exported .onnx file as its users see it."""

    nodes: int
    op_counts: dict[str, int]
    onnx_bytes: int
    data_bytes: int
    opset: int
    tensorrt_ok: bool
    cuda_capturable: bool
    cuda_cpu_nodes: int
    in_place: bool | None  # static layout: every present is a ScatterND over its own past (raw and ORT-optimized)
    ort_optimized_nodes: int


@dataclass
class ExportRecord:
    """One bundle exported by one exporter."""

    model: str
    layout: str
    exporter: str
    export_s: float  # the whole export_bundle: load, trace, save, check against PyTorch, manifest
    trace_s: float  # tracing the LM and RM graphs alone (torch.onnx.export and the save)
    trace_cpu_s: float  # the same in CPU seconds of this process (all threads): less swayed by a busy machine
    graphs: dict[str, GraphStats] = field(default_factory=dict)
    error: str | None = None


def _producers(model) -> dict:
    return {out: node for node in model.graph.node for out in node.output}


def presents_in_place(model) -> bool:
    """Every present.* output comes straight out of a ScatterND whose data input is its own past_key_values.*."""
    producers = _producers(model)
    presents = [o.name for o in model.graph.output if o.name.startswith("present.")]
    return bool(presents) and all(
        producers.get(name) is not None and producers[name].op_type == "ScatterND"
        and producers[name].input[0] == name.replace("present.", "past_key_values.") for name in presents
    )


def graph_stats(path: Path, static: bool) -> GraphStats:
    import onnx
    import onnxruntime as ort

    from args_export.gpu.cuda_placement import predict_file
    from args_export.gpu.tensorrt_ops import check_model

    model = onnx.load(str(path), load_external_data=False)
    ops = Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}" for n in model.graph.node)
    placement = predict_file(path)
    with tempfile.TemporaryDirectory() as scratch:
        options = ort_session_options(ort, EngineOptions())  # the process's shared thread pool, if it has one
        options.log_severity_level = 3  # not the warning that an ENABLE_ALL graph is machine-specific: it is only counted
        options.optimized_model_filepath = str(Path(scratch) / "optimized.onnx")
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", "optimized.onnx.data")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(str(Path(scratch) / "optimized.onnx"), load_external_data=False)
    data = path.with_name(path.name + ".data")
    return GraphStats(
        nodes=sum(ops.values()), op_counts=dict(sorted(ops.items())), onnx_bytes=path.stat().st_size,
        data_bytes=data.stat().st_size if data.exists() else 0,
        opset=next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        tensorrt_ok=check_model(model, path).ok, cuda_capturable=placement.capturable, cuda_cpu_nodes=len(placement.cpu_nodes),
        in_place=(presents_in_place(model) and presents_in_place(optimized)) if static else None,
        ort_optimized_nodes=len(optimized.graph.node),
    )


class TraceClock:
    """Adds up the time spent in onnx_export._export (tracing + saving one graph) while installed."""

    def __init__(self) -> None:
        from args_export import onnx_export

        self.module, self.seconds, self.cpu_seconds = onnx_export, 0.0, 0.0
        self.original = onnx_export._export

    def __enter__(self) -> "TraceClock":
        def timed(*args, **kwargs):
            start, cpu = time.perf_counter(), time.process_time()
            try:
                return self.original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
                self.cpu_seconds += time.process_time() - cpu

        self.module._export = timed
        return self

    def __exit__(self, *exc) -> None:
        self.module._export = self.original


def export_with(exporter: str, options, model: str) -> ExportRecord:
    """export_bundle with torch.onnx's `exporter` path; an export that fails is recorded with its first line."""
    from dataclasses import replace

    from args_export.bundle import export_bundle

    options = replace(options, exporter=exporter)
    start = time.perf_counter()
    with TraceClock() as clock:
        try:
            export_bundle(options, quiet=True)
            error = None
        except Exception as e:  # a measurement: record the failure, go on with the other exporter
            error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    record = ExportRecord(model, options.cache, exporter, round(time.perf_counter() - start, 2), round(clock.seconds, 2),
                          round(clock.cpu_seconds, 2), error=error)
    if error is None:
        for name in ("lm.onnx", "rm.onnx"):
            record.graphs[name] = graph_stats(Path(options.out) / name, options.cache == "static")
    print(f"  {model:16s} {options.cache:7s} {exporter:11s} export {record.export_s:6.1f} s (trace {record.trace_s:5.1f} s, "
          f"{record.trace_cpu_s:5.1f} CPU s)"
          + (f"  FAILED: {error}" if error else ""), file=sys.stderr, flush=True)
    return record


def tiny_pairs(folder: Path, tokenizer, wanted: list[str] | None = None) -> dict[str, tuple[Path, Path]]:
    """The test suite's tiny seeded LM + RM of every architecture (tests/conftest.py), or of those `wanted`, saved
    under `folder`."""
    repo = Path(__file__).resolve().parent.parent
    if not (repo / "tests" / "conftest.py").is_file():
        raise SystemExit("the tiny architectures come from tests/conftest.py: run this from a checkout of args-rt")
    sys.path.insert(0, str(repo))
    from tests.conftest import save_tiny_pair, tiny_configs

    configs = tiny_configs()
    unknown = sorted(set(wanted or []) - set(configs))
    if unknown:
        raise SystemExit(f"--tiny {','.join(unknown)}: not among the test suite's architectures {sorted(configs)}")
    return {name: save_tiny_pair(name, config, tokenizer, folder) for name, config in configs.items() if wanted is None or name in wanted}


def export_all(work: Path, pairs: dict[str, tuple[Path, Path, int, int]]) -> tuple[list[ExportRecord], dict]:
    """Every pair × layout × exporter; the exporters alternate case by case (and swap who goes first) so a busy
    machine slows both alike. Returns the records and the bundles, by (model, layout, exporter)."""
    from args_export.bundle import ExportOptions

    records, bundles = [], {}
    for index, (model, (lm, rm, context, max_k)) in enumerate(pairs.items()):
        for layout in LAYOUTS:
            order = EXPORTERS if index % 2 == 0 else EXPORTERS[::-1]
            for exporter in order:
                out = work / f"{model}-{layout}-{exporter}"
                opts = ExportOptions(lm, rm, out, max_k=max_k, max_context=context, cache=layout, force=True)
                records.append(export_with(exporter, opts, model))
                bundles[model, layout, exporter] = out
    return records, bundles


def compare_tokens(bundles: dict, model: str) -> list[dict]:
    """ARGS-greedy and -stochastic from both exporters' bundles: the same tokens, logits and rewards within 1e-4."""
    import numpy as np

    from args_runtime import ArgsGenerator

    prompts = [[{"role": "user", "content": "Give me one tip for a calm morning."}], "Once upon a time, in a land far away,"]
    rows = []
    for layout in LAYOUTS:
        gens = [ArgsGenerator.from_bundle(bundles[model, layout, e]) for e in EXPORTERS]
        for method in ("greedy", "stochastic"):
            kw = dict(k=10, w=1.5, max_new_tokens=48, ignore_eos=True, method=method, seed=3)
            a, b = (g.generate(prompts, **kw) for g in gens)
            rows.append({
                "model": model, "layout": layout, "method": method,
                "identical_tokens": all(x.token_ids == y.token_ids for x, y in zip(a, b)),
                "max_logit_diff": max(float(np.max(np.abs(np.subtract(x.chosen_logits, y.chosen_logits)))) for x, y in zip(a, b)),
                "max_reward_diff": max(float(np.max(np.abs(np.subtract(x.rewards, y.rewards)))) for x, y in zip(a, b)),
            })
    return rows


def latency(bundles: dict, model: str, out: Path) -> int:
    """The args-bench harness (--quick --no-memory --no-reference) on both exporters' bundles of both layouts, in one
    interleaved run: each 'cache layout' it races is a layout from one exporter."""
    from args_runtime.loops import available_loops

    from . import latency as bench

    args = bench.race_options(quick=True, no_memory=True, no_reference=True, out=out, name="exporters_latency")
    args.devices, args.loops = ["cpu"], available_loops()[::-1][:1]  # the default step loop
    plan = bench.Plan(args.k, args.prompt_tokens, args.headline_new_tokens, args.sweep_new_tokens, args.k_values,
                      args.prompt_lengths, args.new_tokens, [1])
    raced = {f"{layout} ({exporter} export)": bundles[model, layout, exporter] for layout in LAYOUTS for exporter in EXPORTERS}
    return bench.run_all(args, plan, raced, on_gpu=False)


def bench_plan_limits() -> tuple[int, int]:
    """The context and max k `args-bench --quick` exports its bundles with, so the SmolLM2 bundles are the ones it races."""
    from . import latency as bench

    args = bench.race_options(quick=True)
    plan = bench.Plan(args.k, args.prompt_tokens, args.headline_new_tokens, args.sweep_new_tokens, args.k_values,
                      args.prompt_lengths, args.new_tokens, [1])
    return plan.max_context(), max([plan.k, *plan.ks])


def summary_lines(records: list[ExportRecord]) -> list[str]:
    """A markdown table: per model and layout, both exporters' times, node counts and checks."""
    lines = ["| model | layout | exporter | export s | trace s (CPU s) | LM nodes (ORT-opt) | RM nodes (ORT-opt) | LM+RM .onnx KiB | .data MiB | TensorRT ops | CUDA placement | in place |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in records:
        if r.error:
            lines.append(f"| {r.model} | {r.layout} | {r.exporter} | failed: {r.error} |")
            continue
        if not r.graphs:  # timed, graphs not kept
            lines.append(f"| {r.model} | {r.layout} | {r.exporter} | {r.export_s:.1f} | {r.trace_s:.1f} ({r.trace_cpu_s:.1f}) | | | | | | | |")
            continue
        lm, rm = r.graphs["lm.onnx"], r.graphs["rm.onnx"]
        ok = lambda a, b: "ok" if a and b else "FAIL"  # noqa: E731
        in_place = "-" if lm.in_place is None else ok(lm.in_place, rm.in_place)
        lines.append(f"| {r.model} | {r.layout} | {r.exporter} | {r.export_s:.1f} | {r.trace_s:.1f} ({r.trace_cpu_s:.1f}) | {lm.nodes} ({lm.ort_optimized_nodes}) | "
                     f"{rm.nodes} ({rm.ort_optimized_nodes}) | {(lm.onnx_bytes + rm.onnx_bytes) / 1024:.0f} | "
                     f"{(lm.data_bytes + rm.data_bytes) / 2**20:.1f} | {ok(lm.tensorrt_ok, rm.tensorrt_ok)} | "
                     f"{ok(lm.cuda_capturable, rm.cuda_capturable)} | {in_place} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    """`python -m args_benchmarks.exporters`: the same as `args-bench exporters`."""
    return module_main(sys.modules[__name__], "args-bench exporters", argv)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`args-bench exporters`'s options."""
    p.add_argument("--tiny", default=None, help="comma-separated tiny architectures (default: all of tests/conftest.py; '' for none)")
    p.add_argument("--no-smollm2", action="store_true", help="skip SmolLM2-135M (its exports, tokens and latency)")
    p.add_argument("--no-latency", action="store_true", help="skip the args-bench race of the SmolLM2 bundles")
    p.add_argument("--out", type=Path, default=None, help="results folder (default: benchmarks/results/<machine> in a checkout, else ./args-bench-results/<machine>)")


def run(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from args_export.demo.models import sentiment_reward_model
    from args_export.demo.prepare import cache_dir, demo_paths, smollm2_folder

    info = machine()
    out = args.out or results_folder(info["label"])
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="args-exporters-") as scratch:
        work = Path(scratch)
        smol = smollm2_folder(cache_dir())
        pairs = {}
        if args.tiny != "":
            tokenizer = AutoTokenizer.from_pretrained(smol)
            wanted = args.tiny.split(",") if args.tiny else None
            made = tiny_pairs(work / "models", tokenizer, wanted)
            pairs.update({name: (lm, rm, TINY_CONTEXT, TINY_MAX_K) for name, (lm, rm) in made.items()})
        if not args.no_smollm2:
            context, max_k = bench_plan_limits()
            pairs["smollm2-135m"] = (smol, sentiment_reward_model(smol, demo_paths(cache_dir())[1]), context, max_k)
        print(f"exporting {len(pairs)} pairs × {len(LAYOUTS)} layouts × {len(EXPORTERS)} exporters", file=sys.stderr)
        records, bundles = export_all(work / "bundles", pairs)
        tokens = []
        if not args.no_smollm2 and not any(r.error for r in records if r.model == "smollm2-135m"):
            tokens = compare_tokens(bundles, "smollm2-135m")
            if not args.no_latency:
                latency(bundles, "smollm2-135m", out)
    import torch

    doc = {"machine": info, "torch": torch.__version__, "onnxscript": _version("onnxscript"), "wall_s": round(time.time() - started, 1),
           "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "exports": [asdict(r) for r in records], "tokens": tokens}
    out.mkdir(parents=True, exist_ok=True)
    (out / "exporters.json").write_text(json.dumps(doc, indent=2))
    table = summary_lines(records)
    (out / "exporters.md").write_text(f"Measured on {info['cpu']} ({info['cores']} cores), {doc['when']}, torch {doc['torch']}.\n\n"
                                      + "\n".join(table) + "\n")
    print("\n".join(table))
    for row in tokens:
        print(f"tokens {row['model']} {row['layout']} {row['method']}: identical {row['identical_tokens']}, "
              f"max |Δ logit| {row['max_logit_diff']:.2g}, max |Δ reward| {row['max_reward_diff']:.2g}")
    print(f"written {out / 'exporters.json'} and {out / 'exporters.md'}")
    return 0


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
