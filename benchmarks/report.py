"""Turn timed runs into records (medians, percentiles, tokens/s), judge the issue's targets, and write the
results for machines (JSON, CSV) and for people (a printed table, PNG plots)."""

from __future__ import annotations

import csv
import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .contenders import Run


@dataclass(frozen=True)
class Case:
    """One measured setting: k candidates, prompt length, new tokens, batch size."""

    k: int
    prompt_tokens: int
    new_tokens: int
    batch: int


@dataclass
class Record:
    """One contender on one case, summarised over its repeats."""

    sweep: str
    contender: str
    kind: str
    engine: str
    k: int
    prompt_tokens: int
    new_tokens: int
    batch: int
    repeats: int
    ms_per_token: float  # median over repeats of the mean decode-step time (steps after the first token)
    p50_ms: float  # percentiles over all decode steps of all repeats
    p90_ms: float
    p99_ms: float
    tokens_per_s: float  # batch / ms_per_token
    first_token_ms: float  # median time to first token (prefill and first choice)
    lm_cache_bytes: int | None
    rm_cache_bytes: int | None
    identical_to_reference: bool | None = None
    # Share of the reference's tokens chosen before the first difference, averaged over rows (1.0 = identical):
    # the fp16 figure, where engines and the reference may part ways at a near tie.
    agreement_with_reference: float | None = None
    peak_rss_mib: float | None = None
    device_mib: float | None = None
    notes: list[str] = field(default_factory=list)


def prefix_agreement(ours: list[list[int]], reference: list[list[int]]) -> float:
    """Mean over rows of (tokens equal to the reference's before the first difference) / (reference length)."""
    shares = []
    for mine, theirs in zip(ours, reference):
        same = next((i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b), min(len(mine), len(theirs)))
        shares.append(same / max(1, len(theirs)))
    return float(np.mean(shares)) if shares else 0.0


def summarise(sweep: str, contender, case: Case, runs: list[Run], steps: int | None = None) -> Record:
    """Summarise repeats of one contender; `steps` keeps only the first N-1 decode steps (an N-token generation)."""
    keep = (case.new_tokens if steps is None else steps) - 1
    per_run = [r.step_ms[:keep] for r in runs]
    pooled = np.concatenate([np.asarray(s, float) for s in per_run]) if keep > 0 else np.zeros(1)
    ms = statistics.median(float(np.mean(s)) if s else 0.0 for s in per_run)
    p50, p90, p99 = (float(v) for v in np.percentile(pooled, [50, 90, 99]))
    last = runs[-1].cache_bytes
    return Record(
        sweep, contender.name, contender.kind, contender.engine, case.k, case.prompt_tokens, steps or case.new_tokens, case.batch,
        len(runs), ms, p50, p90, p99, case.batch * 1e3 / ms if ms else 0.0, statistics.median(r.first_ms for r in runs),
        last.get("lm"), last.get("rm"),
    )


# ---------------------------------------------------------------------------------------------- targets


@dataclass
class Target:
    name: str
    goal: str
    measured: str
    met: bool | None  # None: could not be measured in this run

    def line(self) -> str:
        verdict = {True: "met", False: "NOT met", None: "not measured"}[self.met]
        return f"[{verdict:>12}] {self.name}: {self.goal}; measured {self.measured}"


def judge_targets(records: list[Record], on_gpu: bool, model_label: str, primary: str | None = None, label: str = "") -> list[Target]:
    """The issue's targets, as met / not met, from this run's records (never asserted in tests). `primary`:
    the engine whose args-rt records are judged (e.g. "onnxruntime cpu, static cache, cpp loop"; default: the first
    seen); `label` prefixes each target's name (the engine's cache layout, when several are judged)."""

    def find(kind: str, sweep: str = "headline", **match: Any) -> Record | None:
        for r in records:
            on_engine = primary is None or kind == "reference" or primary.startswith(r.engine)
            if r.kind == kind and r.sweep == sweep and on_engine and all(getattr(r, key) == v for key, v in match.items()):
                return r
        return None

    targets: list[Target] = []
    ref, ours = find("reference"), find("args")
    if ref and ours:
        ratio = ref.ms_per_token / ours.ms_per_token
        same = bool(ours.identical_to_reference)
        goal = "≥ 3× fewer ms/token than the reference ARGS, identical tokens" if not on_gpu else "≥ 5× fewer ms/token than the reference ARGS"
        targets.append(Target(
            f"speed-up over the reference ({model_label}, k={ours.k}, {ours.new_tokens} tokens)", goal,
            f"{ref.ms_per_token:.1f} → {ours.ms_per_token:.1f} ms/token = {ratio:.2f}×, identical tokens: {same}"
            + ("" if same or ours.agreement_with_reference is None else f" (agreement {ours.agreement_with_reference:.2f})"),
            ratio >= (5.0 if on_gpu else 3.0) and (same or on_gpu),
        ))
    floor = find("floor")
    if ours and floor:
        targets.append(_at_most("ARGS step vs the two-model floor (same engine)", 1.15, ours.ms_per_token, floor.ms_per_token, "ms/token"))
    lengths = sorted({r.new_tokens for r in records if r.kind == "args" and r.sweep == "new_tokens"})
    if len(lengths) >= 2:
        short, long = find("args", "new_tokens", new_tokens=lengths[0]), find("args", "new_tokens", new_tokens=lengths[-1])
        targets.append(_at_most(f"flat cost per token ({lengths[-1]} vs {lengths[0]} new tokens)", 1.2,
                                long.ms_per_token, short.ms_per_token, "ms/token"))
    ks = sorted({r.k for r in records if r.kind == "args" and r.sweep == "k"})
    if len(ks) >= 2:
        low, high = find("args", "k", k=ks[0]), find("args", "k", k=ks[-1])
        targets.append(_at_most(f"RM cache bytes at k={ks[-1]} vs k={ks[0]}", 1.05, high.rm_cache_bytes, low.rm_cache_bytes, "bytes"))
    if on_gpu and ours:
        targets.append(Target(f"GPU latency ({model_label}, k={ours.k})", "≤ 12 ms/token on an H100 (7B-shaped LM + RM, fp16)",
                              f"{ours.ms_per_token:.1f} ms/token", ours.ms_per_token <= 12.0 if "7b" in model_label.lower() else None))
    else:
        targets.append(Target("GPU latency (7B-shaped LM + RM, fp16, k=10)", "≤ 12 ms/token on an H100 and ≥ 5× the reference",
                              "no GPU in this run", None))
    for t in targets if label else []:
        t.name = f"[{label}] {t.name}"
    return targets


def within_tolerance(change: float, half_width: float, tolerance: float) -> bool | None:
    """Whether an interval change ± half_width lies inside ±tolerance (True), wholly beyond it (False), or across its
    edge (None: more samples would tell)."""
    low, high = change - half_width, change + half_width
    if -tolerance <= low and high <= tolerance:
        return True
    if high < -tolerance or low > tolerance:
        return False
    return None


def _at_most(name: str, limit: float, measured: float, baseline: float, unit: str) -> Target:
    """A target of the form measured / baseline ≤ limit."""
    ratio = measured / baseline
    return Target(name, f"≤ {limit}×", f"{measured:,.1f} vs {baseline:,.1f} {unit} = {ratio:.2f}×", ratio <= limit)


# ---------------------------------------------------------------------------------------------- output


def print_table(records: list[Record]) -> None:
    head = f"{'sweep':10s} {'contender':22s} {'engine':44s} {'k':>3s} {'prompt':>6s} {'new':>5s} {'B':>3s} " \
           f"{'ms/tok':>8s} {'p50':>7s} {'p90':>7s} {'p99':>7s} {'tok/s':>7s} {'TTFT ms':>8s} {'same':>5s}"
    print(head)
    print("-" * len(head))
    for r in records:
        same = "" if r.identical_to_reference is None else ("yes" if r.identical_to_reference else f"{r.agreement_with_reference:.2f}")
        print(f"{r.sweep:10s} {r.contender:22s} {r.engine[:44]:44s} {r.k:3d} {r.prompt_tokens:6d} {r.new_tokens:5d} {r.batch:3d} "
              f"{r.ms_per_token:8.2f} {r.p50_ms:7.2f} {r.p90_ms:7.2f} {r.p99_ms:7.2f} {r.tokens_per_s:7.1f} {r.first_token_ms:8.1f} {same:>5s}")


def write_results(out: Path, stem: str, meta: dict[str, Any], records: list[Record], targets: list[Target]) -> list[Path]:
    """JSON (everything), CSV (one row per record) and PNG plots; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [asdict(r) for r in records]
    doc = {**meta, "targets": [asdict(t) for t in targets], "records": rows}
    written = [out / f"{stem}.json", out / f"{stem}.csv"]
    written[0].write_text(json.dumps(doc, indent=2))
    with written[1].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[k for k in rows[0] if k != "notes"] + ["notes"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "notes": "; ".join(row["notes"])})
    written += plot(out, stem, records, machine_name(meta.get("machine", {})))
    return written


# ---------------------------------------------------------------------------------------------- plots

# One style for every plot of the benchmarks: a contender (or bundle, or workload) keeps its colour in every plot;
# the variants of one contender (engines, loops, cache layouts) get shades of it and their own marker and line style;
# the legend sits outside the axes; the title names the machine.
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*", "h")
LINESTYLES = ("-", "--", ":", "-.")
KEYED = {
    "args-rt ARGS": 0, "args-rt plain greedy": 2, "reference ARGS": 3, "two-model floor": 7,  # latency, step parts
    "continuous": 0, "fixed batches": 1, "one at a time": 7,  # batching
    "fp32": 7, "fused fp32": 0, "int8 (lm+rm)": 1, "int4 (lm)": 2, "fused int8 (lm+rm)": 9, "int8 (rm)": 4, "int4 (lm+rm)": 5,
    "plain (batched)": 0, "streamed": 1,  # serve
}


def _shade(colour: str, t: float) -> tuple[float, float, float]:
    """`colour` mixed towards black (t < 0) or white (t > 0) by |t|."""
    rgb = [int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    target = 1.0 if t > 0 else 0.0
    return tuple(round(c + (target - c) * abs(t), 4) for c in rgb)


def line_styles(lines) -> dict[tuple[str, str], dict[str, Any]]:
    """(key, variant) -> plot keywords (color, marker, linestyle), every line of `lines` distinct: a known key keeps its
    colour of KEYED in every plot, others take the first colours no key of this plot holds; a key's variants (sorted)
    are shades of its colour, each with its own marker and line style."""
    lines = sorted(set(lines))
    keys = sorted({key for key, _ in lines}, key=lambda k: (k not in KEYED, k))
    hue: dict[str, int] = {}
    for key in keys:
        wanted = KEYED.get(key)
        free = [i for i in range(len(COLOURS)) if i not in hue.values()] or list(range(len(COLOURS)))
        hue[key] = wanted if wanted is not None and wanted not in hue.values() else free[0]
    styles = {}
    for key in keys:
        variants = [v for k, v in lines if k == key]
        shades = np.linspace(-0.35, 0.45, len(variants)) if len(variants) > 1 else [0.0]
        for i, (variant, t) in enumerate(zip(variants, shades)):
            styles[(key, variant)] = {"color": _shade(COLOURS[hue[key] % len(COLOURS)], float(t)),
                                      "marker": MARKERS[(hue[key] + 3 * i) % len(MARKERS)], "linestyle": LINESTYLES[i % len(LINESTYLES)]}
    return styles


def machine_name(info: dict[str, Any]) -> str:
    """The machine a result was measured on, for a plot's title: its label, CPU and cores, GPU if any."""
    parts = [str(info.get("cpu") or "cpu not recorded"), f"{info.get('cores', '?')} cores"]
    parts += [str(info["gpu"])] if info.get("gpu") else []
    return f"{info.get('label') or 'machine'} ({', '.join(parts)})"


def figure(title: str, machine: str, panels: int = 1, size: tuple[float, float] = (8.0, 4.2)):
    """A figure of `panels` axes side by side (constrained layout, so a legend outside them gets its room), titled with
    the machine; returns (figure, axes). A matplotlib Figure of its own (no pyplot state): nothing to close."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    axes = list(fig.subplots(1, panels, squeeze=False)[0])
    fig.suptitle(f"{title}\nmeasured on {machine}", fontsize=9)
    return fig, axes


def finish(fig, path: Path | None = None):
    """One legend for the figure, each label once, below every axes (off the data, and clear of the title); writes the
    PNG at `path` when given. Returns the figure."""
    seen: dict[str, Any] = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    if seen:
        columns = min(len(seen), 2 if max(map(len, seen)) > 36 else 4)
        fig.legend(list(seen.values()), list(seen), fontsize=7, loc="outside lower center", ncols=columns)
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def have_matplotlib() -> bool:
    """Whether plots can be drawn; says how to get them when not."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("matplotlib is not installed: no plots (pip install 'args-rt[bench]')")
        return False
    return True


PLOTS = {"k": ("k", "candidates k (count)"), "prompt": ("prompt_tokens", "prompt length (tokens)"),
         "new_tokens": ("new_tokens", "new tokens per reply (tokens)"), "batch": ("batch", "batch size (prompts)")}


def sweep_figures(records, machine: str) -> dict[str, Any]:
    """A figure per sweep with at least two swept values, keyed by its file name's tail (`_vs_k`): ms/token against
    the swept value, a line per contender and engine (styled over all sweeps, so a line looks the same in each)."""
    styles = line_styles((r.contender, r.engine) for r in records if r.sweep in PLOTS)
    figures = {}
    for sweep, (attr, label) in PLOTS.items():
        mine = [r for r in records if r.sweep == sweep]
        if len({getattr(r, attr) for r in mine}) < 2:
            continue
        fig, (ax,) = figure(f"ms per token against {label.split(' (')[0]}", machine, size=(8.0, 5.6))
        for line in sorted({(r.contender, r.engine) for r in mine}):
            points = sorted((getattr(r, attr), r.ms_per_token) for r in mine if (r.contender, r.engine) == line)
            ax.plot(*zip(*points), label=f"{line[0]} ({line[1]})", markersize=5, **styles[line])
        ax.set_xscale("log", base=2)
        ticks = sorted({getattr(r, attr) for r in mine})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        values = [r.ms_per_token for r in mine if r.ms_per_token > 0]
        spread = bool(values) and max(values) > 8 * min(values)  # the reference far above the rest: a log axis keeps both legible
        if spread:
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)
        ax.set_xlabel(label)
        ax.set_ylabel("ms per token (median over repeats" + (", log scale)" if spread else ")"))
        ax.grid(alpha=0.3)
        figures[f"_vs_{sweep}"] = finish(fig)
    return figures


def plot(out: Path, stem: str, records: list[Record], machine: str) -> list[Path]:
    """One PNG per sweep (`<stem>_vs_<sweep>.png`): ms/token against the swept value, a line per contender and engine."""
    if not have_matplotlib():
        return []
    written = []
    for tail, fig in sweep_figures(records, machine).items():
        fig.savefig(out / f"{stem}{tail}.png", dpi=110)
        written.append(out / f"{stem}{tail}.png")
    return written


def replot(doc: dict[str, Any]) -> dict[str, Any]:
    """The figures of a committed latency result (its JSON's records), keyed by file name tail."""
    from types import SimpleNamespace

    return sweep_figures([SimpleNamespace(**r) for r in doc.get("records", [])], machine_name(doc.get("machine", {})))
