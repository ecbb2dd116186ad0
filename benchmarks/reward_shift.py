"""How far a quantized bundle moves the reward of ARGS's replies, on enough prompts to tell a 2 % change from noise:
`args-bench reward-shift`.

`args-bench bundles` times every bundle on 32 held-out prompts and reports the mean reward of their replies under the
fp32 RM; but a bundle that writes another text gets another reward on each prompt, so there the change is ±9 % wide
and "within 2 % of fp32" cannot be told. Here every bundle decodes ARGS-greedy replies to the prompts of
export/data/sentiment_prompts_heldout.jsonl (800: 200 topics that are in neither the RM's training prompts nor the
quality benchmark's, under the same four templates), batched since speed is not what is measured, and the fp32 RM
(PyTorch) scores them. Per bundle: token agreement with the fp32 base, the mean reward, its change in % of the base's
with the paired 95 % interval, and a verdict against --tolerance: "within" when the whole interval lies inside
±tolerance, "outside" when it lies wholly beyond, else "undecided" (more prompts would tell).

    args-bench reward-shift [--schemes fused+int8,int8,int8:rm] [--prompts N] [--batch 16] [--tolerance 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .common import UsageError, machine, module_main, results_folder
from .quantized import Bundle, bundle_options, checked_schemes, open_bundles, paired_ci95
from . import report
from .report import Target, within_tolerance


@dataclass
class ShiftRow:
    """One bundle's replies against the fp32 base's."""

    bundle: str
    prompts: int
    token_agreement: float  # share of positions equal to the fp32 base's token
    exact_replies: float  # share of replies identical to the base's
    mean_reward: float  # under the fp32 RM (PyTorch)
    reward_change_pct: float  # against the base's mean reward, in % of its magnitude
    reward_change_ci95_pct: float  # ± half-width of its 95 % interval, paired over the prompts (normal approximation)
    verdict: str  # within / outside / undecided, against ±tolerance


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`args-bench reward-shift`'s options."""
    bundle_options(p, "reward-shift")
    p.add_argument("--prompts", type=int, default=0, help="decode the first N held-out prompts (default 0: all 800)")
    p.add_argument("--batch", type=int, default=16, help="prompts decoded together (default 16)")
    p.add_argument("--tolerance", type=float, default=2.0, help="the reward change, in %%, a verdict is judged against (default 2)")
    p.add_argument("--quick", action="store_true", help="8 prompts, 8 tokens, batches of 4 (CI smoke)")


def checked(args: argparse.Namespace) -> argparse.Namespace:
    """--quick's values, and the options checked (a UsageError otherwise)."""
    if args.quick:
        args.prompts, args.new_tokens, args.batch = 8, 8, 4
    if args.batch < 1 or args.prompts < 0 or args.tolerance <= 0:
        raise UsageError(f"--batch {args.batch}, --prompts {args.prompts}, --tolerance {args.tolerance}: need a batch >= 1, prompts >= 0 and a tolerance > 0")
    return checked_schemes(args, "reward-shift")


VERDICTS = {True: "within", False: "outside", None: "undecided"}


def verdict(change: float, half_width: float, tolerance: float) -> str:
    """Whether the interval change ± half_width lies inside ±tolerance, wholly beyond it, or across its edge."""
    return VERDICTS[within_tolerance(change, half_width, tolerance)]


def shift_targets(rows: list[ShiftRow], tolerance: float) -> list[Target]:
    """Issue 14's reward target for every int8 bundle (never asserted in tests)."""
    return [Target(f"{r.bundle}: mean reward vs fp32 args-rt", f"within {tolerance:g} %",
                   f"{r.reward_change_pct:+.2f} % ± {r.reward_change_ci95_pct} % ({r.prompts} prompts, paired 95 % CI "
                   f"{r.reward_change_pct - r.reward_change_ci95_pct:+.2f} to {r.reward_change_pct + r.reward_change_ci95_pct:+.2f} %)",
                   {"within": True, "outside": False}.get(r.verdict)) for r in rows if "int8" in r.bundle]


def decode(bundle: Bundle, chats: list, args: argparse.Namespace) -> None:
    """ARGS-greedy replies to every prompt, `args.batch` at a time, into bundle.replies."""
    from tqdm import tqdm

    for start in tqdm(range(0, len(chats), args.batch), desc=bundle.name, unit="batch", file=sys.stderr):
        results = bundle.gen.generate(chats[start : start + args.batch], k=args.k, w=args.w, max_new_tokens=args.new_tokens, ignore_eos=True)
        bundle.replies += [r.token_ids for r in results]


def shift_rows(bundles: list[Bundle], rewards: dict[str, list[float]], tolerance: float) -> list[ShiftRow]:
    base = bundles[0]
    base_reward = statistics.mean(rewards[base.name])
    scale = 100 / max(abs(base_reward), 1e-9)
    rows = []
    for b in bundles:
        same = [a == r for mine, theirs in zip(b.replies, base.replies) for a, r in zip(mine, theirs)]
        change = (statistics.mean(rewards[b.name]) - base_reward) * scale
        half_width = (paired_ci95(rewards[b.name], rewards[base.name]) or 0.0) * scale
        rows.append(ShiftRow(b.name, len(b.replies), round(sum(same) / len(same), 4),
                             round(sum(m == t for m, t in zip(b.replies, base.replies)) / len(base.replies), 4),
                             round(statistics.mean(rewards[b.name]), 4), round(change, 2), round(half_width, 2),
                             verdict(change, half_width, tolerance)))
    return rows


def draw(rows, tolerance: float, machine_label: str):
    """The figure: each bundle's reward change with its 95 % interval, against the ±tolerance band."""
    fig, (ax,) = report.figure(f"mean reward change of each bundle against fp32 (±{tolerance:g} % band)", machine_label,
                               size=(8.0, 0.6 * len(rows) + 2.6))
    styles = report.line_styles((r.bundle, "") for r in rows)
    ax.axvspan(-tolerance, tolerance, color="#2ca02c", alpha=0.15, label=f"within ±{tolerance:g} %")
    ax.axvline(0, color="grey", lw=0.8)
    for i, r in enumerate(rows):
        style = styles[(r.bundle, "")]
        ax.errorbar(r.reward_change_pct, i, xerr=r.reward_change_ci95_pct, fmt=style["marker"], color=style["color"], capsize=4,
                    label=f"{r.bundle} ({r.verdict})")
    ax.set_yticks(range(len(rows)), [f"{r.bundle} ({r.verdict})" for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel(f"mean reward change vs fp32, % of its magnitude (95 % CI, {rows[0].prompts} prompts paired)")
    ax.grid(alpha=0.3, axis="x")
    return report.finish(fig)


def plot(rows: list[ShiftRow], tolerance: float, path: Path, machine_label: str) -> None:
    """draw()'s figure as a PNG at `path`."""
    if report.have_matplotlib():
        draw(rows, tolerance, machine_label).savefig(path, dpi=110)


def replot(doc: dict) -> dict[str, object]:
    """The figure of a committed reward-shift result, from its JSON rows."""
    rows = [ShiftRow(**r) for r in doc["rows"]]
    return {"": draw(rows, doc["meta"]["tolerance_pct"], report.machine_name(doc["meta"]["machine"]))}


def main(argv: list[str] | None = None) -> int:
    """`python -m args_benchmarks.reward_shift`: the same as `args-bench reward-shift`."""
    return module_main(sys.modules[__name__], "args-bench reward-shift", argv)


def run(args: argparse.Namespace) -> int:
    args = checked(args)
    from args_export.data import SENTIMENT_HELDOUT
    from args_export.quality.metrics import RewardScorer
    from args_export.rewards.sentiment_data import load_prompts
    from args_runtime.errors import ArgsError

    try:
        bundles = open_bundles(args)
    except ArgsError as e:
        print(f"args-bench reward-shift: error: {e}", file=sys.stderr)
        return 2
    started = time.time()
    prompts = load_prompts("heldout", SENTIMENT_HELDOUT)
    chats = [[{"role": "user", "content": p}] for p in prompts[: args.prompts or None]]
    for b in bundles:
        decode(b, chats, args)
    scorer = RewardScorer(Path(args.rm), set(bundles[0].gen.manifest.tokenizer.eos_token_ids))
    prompt_ids = [bundles[0].gen.tokenizer.encode(c) for c in chats]
    rewards = {b.name: scorer.rewards(prompt_ids, b.replies) for b in bundles}
    rows = shift_rows(bundles, rewards, args.tolerance)
    targets = shift_targets(rows, args.tolerance)
    info = machine()
    meta = {"machine": info, "lm": args.lm, "rm": args.rm, "k": args.k, "w": args.w, "prompts": len(chats), "new_tokens": args.new_tokens,
            "batch": args.batch, "tolerance_pct": args.tolerance, "prompt_file": SENTIMENT_HELDOUT.name, "refused": args.refused,
            "wall_s": round(time.time() - started, 1), "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(f"{'bundle':<22} {'prompts':>7} {'agree':>6} {'exact':>6} {'reward':>8} {'Δ% (95 % CI)':>16} verdict (±{args.tolerance:g} %)")
    for r in rows:
        print(f"{r.bundle:<22} {r.prompts:>7} {r.token_agreement:>6} {r.exact_replies:>6} {r.mean_reward:>8} "
              f"{r.reward_change_pct:>7} ± {r.reward_change_ci95_pct:<6} {r.verdict}")
    for label, why in args.refused.items():
        print(f"{label}: refused by the export's check against PyTorch: {why.splitlines()[0]}")
    for t in targets:
        print(t.line())
    out = args.out or results_folder(info["label"])
    out.mkdir(parents=True, exist_ok=True)
    doc = {"meta": meta, "rows": [asdict(r) for r in rows], "targets": [asdict(t) for t in targets]}
    (out / "reward_shift.json").write_text(json.dumps(doc, indent=1) + "\n")
    with open(out / "reward_shift.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    plot(rows, args.tolerance, out / "reward_shift.png", report.machine_name(info))
    print(f"written {out / 'reward_shift.json'}, reward_shift.csv, reward_shift.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
