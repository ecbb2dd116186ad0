"""Bundles of one LM + RM side by side in one run: `args-bench bundles` (fused, fp32, int8, int4) and
`args-bench quantized` (fp32, int8, int4).

The same pair exported as a two-graph fp32 bundle (the base), as a fused bundle (when the RM is a head on the LM's
backbone: one pass per token) and with weight-only int8 / int4 (`args-export --quantize`); ARGS-greedy on the held-out
sentiment prompts, plain greedy on the base bundle, the reference ARGS (transformers eager, fp32) on the first prompts.
Per bundle: ms/token, the speed-up over the reference and the cost against plain greedy, weight bytes on disk, the KV
cache it held, token agreement with the base bundle's tokens (which equal the reference's), and the mean reward of the
replies under the fp32 RM — so a speed-up that buys worse text shows.

    args-bench bundles [--quick] [--schemes fused,int8,int4,int8:rm,fused+int8] [--prompts N] [--new-tokens N] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from args_runtime.options import SHARED_THREADS_HELP

from .common import UsageError, machine, module_main, results_folder
from . import report
from .report import Target, prefix_agreement, within_tolerance


@dataclass
class Bundle:
    """One contender: a bundle (fp32 or quantized), its generator, what it produced and how fast."""

    name: str
    path: Path
    gen: object = None
    replies: list[list[int]] = field(default_factory=list)
    step_ms: list[float] = field(default_factory=list)
    cache_bytes: int = 0  # the KV cache both models held after the last reply


@dataclass
class Row:
    """One line of the table."""

    bundle: str
    weights_mib: float
    ms_per_token: float
    speedup_vs_reference: float | None
    cost_vs_greedy: float  # ms/token against plain greedy on the base bundle's LM graph, same engine
    kv_cache_mib: float  # after one reply: both models' caches (one for a fused bundle)
    token_agreement: float  # share of positions equal to the fp32 bundle's token
    prefix_agreement: float  # mean share of each reply before its first difference from fp32's
    exact_replies: float  # share of replies identical to fp32's
    mean_reward: float  # under the fp32 RM (PyTorch)
    reward_change_pct: float  # against the fp32 bundle's mean reward, in % of its magnitude
    reward_change_ci95_pct: float | None  # ± half-width of its 95 % interval, paired over the prompts (normal approximation)


DEFAULT_SCHEMES = {"bundles": "fused,int8,int4,int8:rm", "quantized": "int8,int4", "reward-shift": "fused+int8,int8,int8:rm"}


def bundle_options(p: argparse.ArgumentParser, name: str) -> None:
    """The options of every race of one pair's bundles (this module's and benchmarks/reward_shift.py's)."""
    p.add_argument("--lm", help="LM folder (default: the demo's SmolLM2-135M-Instruct)")
    p.add_argument("--rm", help="RM folder (default: the demo's sentiment RM)")
    p.add_argument("--schemes", default=DEFAULT_SCHEMES[name], help="comma-separated bundles to race against the two-graph fp32 base: "
                   "'fused' (the fused bundle, when the RM is a head on the LM's backbone), or a weight-only scheme SCHEME or "
                   "SCHEME:lm / SCHEME:rm (one graph only), two-graph or, prefixed 'fused+', fused (default "
                   f"{DEFAULT_SCHEMES[name]}). A bundle whose export check refuses the scheme is reported as refused, with the check's numbers")
    p.add_argument("--new-tokens", type=int, default=64, help="tokens per reply, EOS ignored (default 64)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--w", type=float, default=0.5, help="reward weight (default 0.5; the demo decodes with 1.5)")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads per session (0: ONNX Runtime's default)")
    p.add_argument("--shared-threads", action=argparse.BooleanOptionalAction, default=True, help=SHARED_THREADS_HELP)
    p.add_argument("--out", type=Path, help="results folder (default: benchmarks/results/<machine> in a checkout, else ./args-bench-results/<machine>)")


def checked_schemes(args: argparse.Namespace, name: str) -> argparse.Namespace:
    """`args` with its --schemes checked (a UsageError otherwise) and the bookkeeping both races share."""
    args.refused = {}
    for entry in args.schemes.split(","):
        scheme, _, only = entry.removeprefix("fused+").partition(":")
        if entry != "fused" and (scheme not in ("int8", "int4") or only not in ("", "lm", "rm")):
            raise UsageError(f"--schemes: {entry!r} is not 'fused', SCHEME or SCHEME:lm / SCHEME:rm (SCHEME int8 or int4), or one of those after 'fused+'")
    args.name = name
    return args


def add_arguments(p: argparse.ArgumentParser, name: str = "quantized") -> None:
    """`args-bench quantized`'s options, or (`name` "bundles") the same race with the fused bundle among the defaults."""
    bundle_options(p, name)
    p.add_argument("--prompts", type=int, default=16, help="held-out sentiment prompts to decode (default 16)")
    p.add_argument("--reference-prompts", type=int, default=2, help="of which the reference ARGS decodes the first N (default 2; 0: skip)")
    p.add_argument("--quick", action="store_true", help="2 prompts, 16 tokens, reference on 1 (CI smoke)")
    p.set_defaults(name=name)


def add_bundles_arguments(p: argparse.ArgumentParser) -> None:
    """`args-bench bundles`: the README's "Choosing a bundle" race (fused, int8, int4, int8 RM only)."""
    add_arguments(p, "bundles")


def export_bundles(args: argparse.Namespace, cache: Path) -> list[Bundle]:
    """The two-graph fp32 base and one bundle per entry, each exported once and cached by what it was made from."""
    from args_export.bundle import ExportOptions, export_bundle
    from args_export.quantize import quantization
    from args_runtime.manifest import FORMAT_VERSION

    from args_runtime.errors import ExportError

    max_context = 256 + args.new_tokens
    out = []
    for entry in [None, *args.schemes]:
        fuse = (entry or "").startswith("fused")
        scheme, _, only = (entry or "").removeprefix("fused").removeprefix("+").partition(":")
        which = (only,) if only else ("lm", "rm")
        recipe = quantization(scheme).as_dict() if scheme else None
        what = [str(Path(args.lm).resolve()), str(Path(args.rm).resolve()), recipe, which, max_context, args.k, FORMAT_VERSION, fuse]
        path = cache / f"bench-quantized-{hashlib.sha1(json.dumps(what).encode()).hexdigest()[:12]}"
        label = ("fused " if fuse else "") + (f"{scheme} ({'+'.join(which)})" if scheme else "fp32")
        if not (path / "manifest.json").is_file():
            print(f"exporting the {label} bundle to {path}", file=sys.stderr)
            try:
                export_bundle(ExportOptions(args.lm, args.rm, path, max_context=max_context, max_k=args.k, force=True, quantize=scheme or None,
                                            quantize_models=which, fuse=fuse))
            except ExportError as e:
                if not scheme:
                    raise
                args.refused[label] = str(e)
                print(f"{label}: refused by the export's check; reported, not raced", file=sys.stderr)
                continue
        out.append(Bundle(label, path))
    return out


def open_bundles(args: argparse.Namespace) -> list[Bundle]:
    """The race's bundles, exported (once, cached) and each opened with its generator; the demo's pair (SmolLM2 and
    the sentiment RM on its backbone) unless --lm/--rm name one. An ArgsError says what went wrong."""
    from args_export.demo.models import sentiment_reward_model
    from args_export.demo.prepare import cache_dir, demo_paths, smollm2_folder
    from args_runtime import ArgsGenerator

    args.schemes = [s for s in args.schemes.split(",") if s]
    cache = cache_dir()
    if not args.lm:
        args.lm = str(smollm2_folder(cache))
        args.rm = str(sentiment_reward_model(Path(args.lm), demo_paths(cache)[1]))
    bundles = export_bundles(args, cache)
    for b in bundles:
        b.gen = ArgsGenerator.from_bundle(b.path, threads=args.threads or None, shared_threads=args.shared_threads)
    return bundles


def decode_all(bundles: list[Bundle], chats: list, args: argparse.Namespace, reference=None) -> tuple[list[float], list[float], list[list[int]]]:
    """Every prompt on every bundle, plain greedy on the base bundle and (on the first --reference-prompts prompts) the
    reference ARGS, alternating per prompt so that machine noise falls on all alike. Returns greedy's and the
    reference's step times and the reference's tokens."""
    greedy_ms: list[float] = []
    ref_ms: list[float] = []
    ref_tokens: list[list[int]] = []
    for i, chat in enumerate(chats):
        for b in bundles:
            res = b.gen.generate(chat, k=args.k, w=args.w, max_new_tokens=args.new_tokens, ignore_eos=True)
            b.replies.append(res.token_ids)
            b.step_ms += list(res.timings["step_ms"])
            b.cache_bytes = sum(res.timings["kv_cache_bytes"].values())
        greedy_ms += list(bundles[0].gen.greedy(chat, max_new_tokens=args.new_tokens, ignore_eos=True).timings["step_ms"])
        if reference is not None and i < args.reference_prompts:
            ms, tokens = reference_run(reference, bundles[0].gen.tokenizer.encode(chat), args)
            ref_ms += ms
            ref_tokens.append(tokens)
    return greedy_ms, ref_ms, ref_tokens


def load_reference(args: argparse.Namespace):
    """The reference ARGS (fp32 transformers eager), or None when --reference-prompts is 0."""
    if not args.reference_prompts:
        return None
    import torch

    from args_export.loading import ModelSpec, load_lm, load_rm
    from args_export.reference import ReferenceARGS

    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_lm(ModelSpec.read(args.lm, "LM"), "fp32").model
    rm = load_rm(ModelSpec.read(args.rm, "RM"), "fp32")
    return ReferenceARGS(lm, rm.model, rm.family)


def reference_run(reference, ids: list[int], args: argparse.Namespace) -> tuple[list[float], list[int]]:
    """One reply of the reference ARGS: its step times (ms) and tokens."""
    clock, out = [], []
    start = time.perf_counter()
    for token, _, _ in reference.steps(ids, args.k, args.w):
        clock.append(time.perf_counter() - start)
        out.append(token)
        if len(out) == args.new_tokens:
            break
    return [(b - a) * 1e3 for a, b in zip(clock, clock[1:])], out


def table(bundles: list[Bundle], rewards: dict[str, list[float]], ref_ms: float | None, greedy_ms: float) -> list[Row]:
    base = bundles[0]
    rows = []
    for b in bundles:
        same = [a == r for mine, theirs in zip(b.replies, base.replies) for a, r in zip(mine, theirs)]
        ms = statistics.median(b.step_ms)
        mean_reward, base_reward = statistics.mean(rewards[b.name]), statistics.mean(rewards[base.name])
        scale = 100 / max(abs(base_reward), 1e-9)
        rows.append(Row(
            b.name, round(weight_bytes(b.path) / 2**20, 1), round(ms, 2), round(ref_ms / ms, 2) if ref_ms else None,
            round(ms / greedy_ms, 2), round(b.cache_bytes / 2**20, 4),
            round(sum(same) / len(same), 4), round(prefix_agreement(b.replies, base.replies), 4),
            round(sum(m == t for m, t in zip(b.replies, base.replies)) / len(base.replies), 4),
            round(mean_reward, 4), round((mean_reward - base_reward) * scale, 2),
            None if (ci := paired_ci95(rewards[b.name], rewards[base.name])) is None else round(ci * scale, 2),
        ))
    return rows


def bundle_targets(rows: list[Row], fp32_equals_reference: bool) -> list[Target]:
    """Issue 14's targets for the bundles of one pair, from this run (never asserted in tests): the fused bundle against
    the reference and plain greedy; every int8 bundle's speed-up and its reward change (within 2 % of fp32 when the
    whole 95 % interval is; at a few dozen prompts it rarely can be: `args-bench reward-shift` measures it on 800)."""
    targets = []
    by = {r.bundle: r for r in rows}
    fused = by.get("fused fp32")
    if fused and fused.speedup_vs_reference:
        exact = fused.token_agreement == 1.0 and fp32_equals_reference
        targets.append(Target("fused bundle vs the reference ARGS", "≥ 3.5× fewer ms/token, identical tokens",
                              f"{fused.speedup_vs_reference:.2f}×, identical tokens: {exact}", fused.speedup_vs_reference >= 3.5 and exact))
    if fused:
        targets.append(Target("fused bundle vs plain greedy (same engine)", "≤ 1.3× the ms/token", f"{fused.cost_vs_greedy:.2f}×",
                              fused.cost_vs_greedy <= 1.3))
    for r in rows:
        if "int8" not in r.bundle:
            continue
        if r.speedup_vs_reference:
            targets.append(Target(f"{r.bundle} vs the reference ARGS (fp32)", "≥ 4× fewer ms/token", f"{r.speedup_vs_reference:.2f}×",
                                  r.speedup_vs_reference >= 4.0))
        if r.reward_change_ci95_pct is not None:
            targets.append(Target(f"{r.bundle}: mean reward vs fp32 args-rt", "within 2 %",
                                  f"{r.reward_change_pct:+.2f} % ± {r.reward_change_ci95_pct} % (paired 95 % CI)",
                                  within_tolerance(r.reward_change_pct, r.reward_change_ci95_pct, 2.0)))
    return targets


def paired_ci95(mine: list[float], base: list[float]) -> float | None:
    """Half-width of the 95 % interval of the mean per-prompt difference (1.96 standard errors): a bundle that writes
    another text gets another reward on each prompt, and with a few prompts a mean difference of several % is noise."""
    diffs = [a - b for a, b in zip(mine, base)]
    return 1.96 * statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else None


def weight_bytes(bundle: Path) -> int:
    """Bytes of the model graphs (LM, RM or fused step, a fused bundle's propose head) and their external weights."""
    return sum(f.stat().st_size for f in bundle.iterdir() if f.name.startswith(("lm.onnx", "rm.onnx", "propose.onnx")))


def draw(rows, machine_label: str, title: str):
    """The figure: each bundle's ms/token, token agreement with the fp32 base, and mean reward with the 95 % interval of
    its change; a bundle keeps its colour in every plot (report.KEYED)."""
    fig, axes = report.figure(title, machine_label, panels=3, size=(13.0, 4.8))
    names = [r.bundle for r in rows]
    styles = report.line_styles((name, "") for name in names)
    for ax, attr, label in zip(axes, ("ms_per_token", "token_agreement", "mean_reward"),
                               ("ms per token (ARGS-greedy)", "token agreement with fp32 (share of positions)",
                                "mean reward (fp32 RM, bar: 95 % CI of the change)")):
        errors = None
        if attr == "mean_reward":  # the paired interval of each change, in reward units, around the bundle's mean
            base = abs(rows[0].mean_reward) / 100
            errors = [(getattr(r, "reward_change_ci95_pct", None) or 0.0) * base for r in rows]
        for i, r in enumerate(rows):
            ax.bar(i, getattr(r, attr), yerr=None if errors is None else errors[i], capsize=3, color=styles[(r.bundle, "")]["color"],
                   label=r.bundle)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    return report.finish(fig)


def plot_title(meta: dict) -> str:
    """A bundles plot's title, from the result's meta: the pair and the settings."""
    pair = f"{Path(str(meta['lm'])).name} + {Path(str(meta['rm'])).name}"
    return f"bundles of {pair}: k={meta['k']}, w={meta['w']}, {meta['prompts']} prompts"


def plot(rows: list[Row], path: Path, meta: dict) -> None:
    """draw()'s figure as a PNG at `path`, titled from the result's `meta` (its machine included)."""
    if report.have_matplotlib():
        draw(rows, report.machine_name(meta["machine"]), plot_title(meta)).savefig(path, dpi=110)


def replot(doc: dict) -> dict[str, object]:
    """The figure of a committed bundles / quantized result, from its JSON rows."""
    from types import SimpleNamespace

    meta = doc["meta"]
    return {"": draw([SimpleNamespace(**r) for r in doc["rows"]], report.machine_name(meta["machine"]), plot_title(meta))}


def main(argv: list[str] | None = None) -> int:
    """`python -m args_benchmarks.quantized`: the same as `args-bench quantized`."""
    return module_main(sys.modules[__name__], "args-bench quantized", argv)


def run(args: argparse.Namespace) -> int:
    if args.quick:
        args.prompts, args.new_tokens, args.reference_prompts = 2, 16, 1
    args = checked_schemes(args, args.name)
    name = args.name
    from args_export.quality.metrics import RewardScorer
    from args_export.rewards.sentiment_pairs import load_prompts
    from args_runtime.errors import ArgsError

    try:
        bundles = open_bundles(args)
    except ArgsError as e:
        print(f"args-bench {name}: error: {e}", file=sys.stderr)
        return 2
    started = time.time()
    chats = [[{"role": "user", "content": p}] for p in load_prompts("eval")[: args.prompts]]
    prompt_ids = [bundles[0].gen.tokenizer.encode(c) for c in chats]
    bundles[0].gen.generate(chats[0], k=args.k, w=args.w, max_new_tokens=4)  # warm-up, each
    for b in bundles[1:]:
        b.gen.generate(chats[0], k=args.k, w=args.w, max_new_tokens=4)
    greedy_steps, ref_steps, ref_tokens = decode_all(bundles, chats, args, load_reference(args))
    greedy_ms, ref_ms = statistics.median(greedy_steps), statistics.median(ref_steps) if ref_steps else None
    scorer = RewardScorer(Path(args.rm), set(bundles[0].gen.manifest.tokenizer.eos_token_ids))
    rewards = {b.name: scorer.rewards(prompt_ids, b.replies) for b in bundles}
    rows = table(bundles, rewards, ref_ms, greedy_ms)
    info = machine()
    meta = {"machine": info, "lm": args.lm, "rm": args.rm, "k": args.k, "w": args.w, "prompts": len(chats), "new_tokens": args.new_tokens,
            "reference_ms_per_token": round(ref_ms, 2) if ref_ms else None, "reference_prompts": len(ref_tokens),
            "greedy_ms_per_token": round(greedy_ms, 2), "threads": args.threads or "onnxruntime default", "shared_threads": args.shared_threads,
            "fp32_equals_reference": [b == r for b, r in zip(bundles[0].replies, ref_tokens)], "refused": args.refused,
            "wall_s": round(time.time() - started, 1), "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(f"{'bundle':<22} {'weights MiB':>11} {'KV MiB':>7} {'ms/token':>9} {'vs ref':>7} {'/greedy':>7} {'agree':>6} {'prefix':>6} "
          f"{'exact':>6} {'reward':>8} {'Δ% (95 % CI)':>15}")
    for r in rows:
        vs = f"{r.speedup_vs_reference:.2f}x" if r.speedup_vs_reference else "-"
        print(f"{r.bundle:<22} {r.weights_mib:>11} {r.kv_cache_mib:>7} {r.ms_per_token:>9} {vs:>7} {r.cost_vs_greedy:>6}x {r.token_agreement:>6} "
              f"{r.prefix_agreement:>6} {r.exact_replies:>6} {r.mean_reward:>8} {r.reward_change_pct:>7} ± {r.reward_change_ci95_pct if r.reward_change_ci95_pct is not None else '-':<5}")
    print(f"plain greedy (the base bundle's LM graph): {greedy_ms:.1f} ms/token")
    for label, why in args.refused.items():
        print(f"{label}: refused by the export's check against PyTorch: {why.splitlines()[0]}")
    if ref_ms:
        print(f"reference ARGS (transformers eager fp32): {ref_ms:.1f} ms/token on {len(ref_tokens)} prompt(s); "
              f"fp32 bundle's tokens equal it: {meta['fp32_equals_reference']}")
    targets = bundle_targets(rows, bool(ref_tokens) and all(meta["fp32_equals_reference"]))
    for t in targets:
        print(t.line())
    out = args.out or results_folder(info["label"])
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows], "targets": [asdict(t) for t in targets]}, indent=1))
    with open(out / f"{name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    plot(rows, out / f"{name}.png", meta)
    print(f"written {out / f'{name}.json'}, {name}.csv, {name}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
