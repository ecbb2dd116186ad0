"""The results pages of the docs site, made from the committed JSON (benchmarks/results/<machine>/…/*.json) so that no
figure on them is typed by hand: docs/results/index.md (every result: benchmark, machine, date, headline, link) and a
page per result (its date, machine and versions, the command that made it, its targets, its tables, its plots).

    python -m args_benchmarks.results_pages [--results benchmarks/results] [--out docs/results] [--check] [--replot]

The output is sorted and stable: regenerating with no new results changes nothing; --check exits 1 when the pages are
not those the results make (tests/test_results_pages.py does the same); --replot first redraws the committed PNGs
from their JSON with the benchmarks' own plot code."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from args_runtime.files import write_atomic

from . import batching, quantized, report, reward_shift, serve
from .common import module_main

MARKER = "<!-- made by python -m args_benchmarks.results_pages from benchmarks/results: do not edit -->"
RESULTS, OUT = Path("benchmarks/results"), Path("docs/results")
DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


# ---------------------------------------------------------------------------------------------- Markdown


def cell(value: Any) -> str:
    """A value as a table cell: numbers as the JSON has them (floats to 6 significant digits), booleans as yes / no,
    text on one line with its pipes escaped and control characters dropped."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 1e6 else f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(cell(v) for v in value) if all(not isinstance(v, (dict, list)) for v in value) else f"{len(value)} items"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {cell(v)}" for k, v in value.items() if not isinstance(v, (dict, list)))
    text = re.sub(r"\x1b\[[0-9;]*m|[\x00-\x1f]", " ", str(value))
    text = re.sub(r"\s+", " ", text).strip()
    return (text[:400] + " …" if len(text) > 400 else text).replace("|", "\\|")


def table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """A Markdown table of `rows` (dicts): the given columns, else every key whose values are not lists of numbers."""
    if not rows:
        return "(no rows)"
    if columns is None:
        columns = list(dict.fromkeys(k for row in rows for k, v in row.items() if _fits(v)))
    lines = ["| " + " | ".join(c.replace("_", " ") for c in columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _fits(value: Any) -> bool:
    """A value one cell shows whole: a scalar, a short list of scalars, a dict of a few scalars."""
    if isinstance(value, list):
        return len(value) <= 8 and all(not isinstance(v, (dict, list)) for v in value)
    return _small(value) if isinstance(value, dict) else True


def _small(value: Any) -> bool:
    """A dict of a few scalars fits one cell."""
    return isinstance(value, dict) and len(value) <= 6 and all(not isinstance(v, (dict, list)) for v in value.values())


def pairs(doc: dict[str, Any], skip: tuple[str, ...] = ()) -> str:
    """A two-column table of a dict's scalar (and short list) entries: the run's settings."""
    rows = [{"setting": k, "value": v} for k, v in doc.items() if k not in skip and _fits(v)]
    return table(rows, ["setting", "value"]) if rows else ""


# ---------------------------------------------------------------------------------------------- one result


@dataclass
class Result:
    """One committed JSON file: where it lies (relative to the results folder) and what it holds."""

    path: PurePosixPath  # e.g. amd-epyc-2-core/latency.json
    doc: dict[str, Any]

    @property
    def machine(self) -> str:
        return self.path.parts[0]

    @property
    def meta(self) -> dict[str, Any]:
        return self.doc.get("meta") if isinstance(self.doc.get("meta"), dict) else {}

    def when(self) -> str:
        """The run's date as the file records it ("when", "created"), else a date in its folder's name."""
        for source in (self.doc, self.meta):
            for key in ("when", "created"):
                if source.get(key):
                    return str(source[key])
        dates = [m.group() for m in map(DATE.search, self.path.parts[:-1]) if m]
        return f"{dates[-1]} (from the folder's name)" if dates else "not recorded"

    def versions(self) -> dict[str, Any]:
        """The machine block (cpu, cores, gpu, python, onnxruntime, …), or what a GPU run's version report holds."""
        block = self.doc.get("machine") or self.meta.get("machine")
        if isinstance(block, dict):
            return {k: v for k, v in block.items() if k != "label"}
        report = self.doc.get("versions") if isinstance(self.doc.get("versions"), dict) else self.doc
        if isinstance(report.get("gpu"), dict) or isinstance(report.get("onnxruntime"), dict):
            pick = {"cpu": ("cpu", "model"), "cores": ("cpu", "cores"), "gpu": ("gpu", "name"), "driver": ("gpu", "driver_version"),
                    "python": ("python",), "onnxruntime": ("onnxruntime", "version"), "torch": ("torch", "version"),
                    "transformers": ("transformers", "version")}
            return {name: _dig(report, keys) for name, keys in pick.items() if _dig(report, keys) is not None}
        return {}

    def command(self) -> str | None:
        for source in (self.doc, self.meta):
            for key in ("command", "argv", "cmd"):
                if source.get(key):
                    value = source[key]
                    return " ".join(map(str, value)) if isinstance(value, list) else str(value)
        return None

    def targets(self) -> list[dict[str, Any]]:
        """The targets as name / goal / measured / met, whichever shape the benchmark wrote them in."""
        out = []
        for t in self.doc.get("targets") or []:
            goal = t.get("goal") if "goal" in t else (f"bound {cell(t['bound'])}" if "bound" in t else None)
            measured = t.get("measured") if "measured" in t else t.get("value")
            out.append({"target": t.get("name") or t.get("target"), "goal": goal, "measured": measured,
                        "met": {True: "met", False: "**not met**", None: "not judged"}[t.get("met")]})
        return out


def _dig(doc: Any, keys: tuple[str, ...]) -> Any:
    for key in keys:
        doc = doc.get(key) if isinstance(doc, dict) else None
    return doc


# ---------------------------------------------------------------------------------------------- renderers


@dataclass(frozen=True)
class Kind:
    """A benchmark's JSON shape: how to tell it, the command that makes it, its headline and its sections."""

    name: str
    made_by: str
    matches: Callable[[Result], bool]
    headline: Callable[[Result], str]
    sections: Callable[[Result], list[str]]
    replot: Callable[[dict[str, Any]], dict[str, Any]] | None = None  # the benchmark's figures, drawn from its JSON


def _first_target(r: Result) -> str:
    t = r.targets()
    return f"{t[0]['target']}: {cell(t[0]['measured'])} ({t[0]['met']})" if t else "no targets"


def _latency_sections(r: Result) -> list[str]:
    records = r.doc["records"]
    columns = ["contender", "engine", "k", "prompt_tokens", "new_tokens", "batch", "ms_per_token", "p50_ms", "p99_ms",
               "tokens_per_s", "first_token_ms", "identical_to_reference"]
    columns = [c for c in columns if any(c in rec for rec in records)]
    out = ["### Settings\n\n" + pairs({k: v for k, v in r.doc.items() if k not in ("machine", "targets", "records")})]
    for sweep in dict.fromkeys(rec["sweep"] for rec in records):
        out.append(f"### Sweep: {sweep}\n\n" + table([rec for rec in records if rec["sweep"] == sweep], columns))
    return out


def _batching_sections(r: Result) -> list[str]:
    summary = [{"contender": name, **figures} for name, figures in r.doc["summary"].items()]
    out = ["### Medians over rounds\n\n" + table(summary)]
    out.append("### Each round\n\n" + table(r.doc["outcomes"], ["contender", "round", "wall_s", "tokens_per_s", "p50_latency_s",
                                                               "p99_latency_s", "mean_latency_s"]))
    settings = {**r.doc.get("settings", {}), **{k: v for k, v in r.doc.items() if not isinstance(v, (dict, list))}}
    out.append("### Settings\n\n" + pairs(settings) + "\n\n" + pairs(r.doc.get("workload", {}), skip=("arrivals_s",)))
    return out


def _rows_sections(r: Result) -> list[str]:
    """Rows of a table and the meta of the run (bundles, quantized, reward shift, step parts, quality, steploop)."""
    rows = [{k: v for k, v in row.items() if k != "samples"} for row in r.doc["rows"]]
    out = ["### Results\n\n" + table(rows)]
    if isinstance(r.doc.get("gap"), dict):
        out.append("### Where the gap goes\n\n" + pairs(r.doc["gap"]))
    if isinstance(r.doc.get("k_scan"), dict):
        scan = r.doc["k_scan"]
        out.append("### Scan over k\n\n" + table(scan.get("rows", [])) + "\n\n" + pairs(scan, skip=("rows",)))
    settings = r.meta or {k: v for k, v in r.doc.items() if k not in ("machine", "rows", "targets", "gap", "k_scan")}
    out.append("### Settings\n\n" + pairs(settings, skip=("machine",)))
    return out


def _bundles_headline(r: Result) -> str:
    if r.doc.get("targets"):
        return _first_target(r)
    fastest = min(r.doc["rows"], key=lambda row: row["ms_per_token"])
    return f"fastest: {fastest['bundle']}, {cell(fastest['ms_per_token'])} ms/token"


def _serve_headline(r: Result) -> str:
    best = max(r.doc["rows"], key=lambda row: row["tokens_per_s"])
    return f"{best['name']}: {cell(best['tokens_per_s'])} tokens/s (one at a time: {cell(r.doc['rows'][0]['tokens_per_s'])})"


def _families_headline(r: Result) -> str:
    ratios = [f["vs_llama"] for f in r.doc["families"] if f["family"] != "llama"]
    return f"every family's stack vs Llama's: {cell(min(ratios))}–{cell(max(ratios))}× ms/token"


def _families_sections(r: Result) -> list[str]:
    return ["### Families\n\n" + table(r.doc["families"], ["family", "stack_module", "stack_lines", "ms_per_token", "vs_llama"]),
            "### Settings\n\n" + pairs({k: v for k, v in r.doc.items() if k not in ("machine", "families")})]


def _soak_headline(r: Result) -> str:
    s, e = r.doc["start"], r.doc["end"]
    return (f"ms/token {cell(s['ms_per_token'])} → {cell(e['ms_per_token'])}, RSS {cell(r.doc['rss_mib_at_load'])} → "
            f"{cell(r.doc['rss_mib_after_gc'])} MiB over {r.doc['generations']} generations")


def _soak_sections(r: Result) -> list[str]:
    return ["### Start and end of the soak\n\n" + table([{"window": "start", **r.doc["start"]}, {"window": "end", **r.doc["end"]}]),
            "### Settings\n\n" + pairs(r.doc, skip=("machine",))]


def _exporters_headline(r: Result) -> str:
    ok = sum(e.get("error") is None for e in r.doc["exports"])
    same = all(t.get("identical_tokens") for t in r.doc.get("tokens", []))
    return f"{ok} of {len(r.doc['exports'])} exports succeeded; identical tokens across exporters: {cell(same)}"


def _exporters_sections(r: Result) -> list[str]:
    exports = [{**{k: v for k, v in e.items() if k != "graphs"},
                **{f"{g} nodes": info.get("nodes") for g, info in sorted((e.get("graphs") or {}).items())}} for e in r.doc["exports"]]
    return ["### Exports\n\n" + table(exports), "### Tokens\n\n" + table(r.doc.get("tokens", [])),
            "### Settings\n\n" + pairs(r.doc, skip=("machine",))]


def _head_cv_headline(r: Result) -> str:
    best = max(r.doc["results"].items(), key=lambda kv: kv[1].get("sentiment", 0))
    return f"best head: {best[0]}, sentiment pairs {cell(best[1].get('sentiment'))}"


def _head_cv_sections(r: Result) -> list[str]:
    return ["### Cross-validation\n\n" + table([{"head": name, **figures} for name, figures in r.doc["results"].items()]),
            "### Settings\n\n" + pairs(r.doc, skip=("machine",))]


def _steploop_headline(r: Result) -> str:
    row = r.doc["rows"][0]
    return (f"batch {row['batch']}, {row['method']}: host µs/step {cell(row['non_backend_us_per_step_python'])} (Python) vs "
            f"{cell(row['non_backend_us_per_step_cpp'])} (C++)")


def _gpu_headline(r: Result) -> str:
    t = r.targets()
    return f"{sum(x['met'] == 'met' for x in t)} of {len(t)} targets met; stages: " + ", ".join(
        f"{s['name']} {s['status']}" for s in r.doc["stages"])


def _gpu_sections(r: Result) -> list[str]:
    return ["### Stages\n\n" + table(r.doc["stages"], ["name", "status", "seconds", "budget_s", "detail"]),
            "### Settings\n\n" + pairs(r.doc, skip=("versions", "targets", "stages"))]


def _serve_mix_headline(r: Result) -> str:
    return f"{r.doc['requests']} requests at once vs one at a time: {cell(r.doc['ratio'])}× sooner"


def _generic_headline(r: Result) -> str:
    if r.doc.get("targets"):
        return _first_target(r)
    scalars = [(k, v) for k, v in r.doc.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return f"{scalars[0][0]}: {cell(scalars[0][1])}" if scalars else "see the page"


def _generic_sections(r: Result) -> list[str]:
    """Top-level scalars, then each list of dicts as a table and each dict of scalars as a two-column table."""
    out = ["### Values\n\n" + (pairs(r.doc, skip=("machine", "targets", "versions")) or "(no scalar values)")]
    for key, value in r.doc.items():
        if key in ("machine", "targets", "versions", "meta"):
            continue
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            out.append(f"### {key}\n\n" + table(value))
        elif isinstance(value, dict) and value and not _small(value):
            out.append(f"### {key}\n\n" + (pairs(value) or "(nested values only)"))
    return out


def _has(*keys: str) -> Callable[[Result], bool]:
    return lambda r: all(k in r.doc for k in keys)


def _rows_with(key: str) -> Callable[[Result], bool]:
    return lambda r: bool(r.doc.get("rows")) and isinstance(r.doc["rows"][0], dict) and key in r.doc["rows"][0]


KINDS = [
    Kind("latency", "args-bench latency", lambda r: bool(r.doc.get("records")) and "sweep" in r.doc["records"][0], _first_target,
         _latency_sections, report.replot),
    Kind("batching", "args-bench batching", _has("outcomes", "summary"), _first_target, _batching_sections,
         batching.replot),
    Kind("reward-shift", "args-bench reward-shift", _rows_with("verdict"), _first_target, _rows_sections,
         reward_shift.replot),
    Kind("bundles", "args-bench bundles", _rows_with("weights_mib"), _bundles_headline,
         _rows_sections, quantized.replot),
    Kind("serve", "args-bench serve", _rows_with("clients"), _serve_headline, _rows_sections, serve.replot),
    Kind("serve-mix", "args-bench serve-mix", _has("ratio", "median_s"), _serve_mix_headline, _generic_sections),
    Kind("families", "args-bench families", _has("families"), _families_headline, _families_sections),
    Kind("step-parts", "args-bench step-parts", _has("gap", "rows"), lambda r: f"ARGS over the two-model floor: "
         f"{cell(r.doc['gap']['args_over_floor'])}×", _rows_sections),
    Kind("soak", "args-bench soak", _has("start", "end", "generations"), _soak_headline, _soak_sections),
    Kind("exporters", "args-bench exporters", _has("exports"), _exporters_headline, _exporters_sections),
    Kind("steploop", "args-bench steploop", _rows_with("stepper_us_python"), _steploop_headline, _rows_sections),
    Kind("quality", "python benchmarks/quality/run.py", _rows_with("diversity"), _first_target, _rows_sections),
    Kind("head-cv", "python benchmarks/quality/head_cv.py", _has("folds", "results"), _head_cv_headline, _head_cv_sections),
    Kind("gpu-run", "benchmarks/gpu/run.sh", _has("stages", "targets"), _gpu_headline, _gpu_sections),
    Kind("other", "", lambda r: True, _generic_headline, _generic_sections),
]


# a file whose name starts so is made by another command than its shape's kind's
MADE_BY_NAME = {"quantized": "args-bench quantized", "exporters_": "args-bench exporters"}


def made_by(r: Result) -> str:
    """The command that made a result, as the file records it, else the one that makes its kind (in words)."""
    if r.command():
        return f"`{r.command()}`"
    known = next((c for start, c in MADE_BY_NAME.items() if r.path.name.startswith(start)), None) or kind_of(r).made_by
    return f"not recorded (made by `{known}`)" if known else "not recorded"


def kind_of(r: Result) -> Kind:
    """The first kind whose shape the result has (the generic one last, so no file is skipped)."""
    return next(k for k in KINDS if k.matches(r))


def pngs(results: Path, r: Result) -> list[str]:
    """The plots made with a result: `<stem>.png` and `<stem>_vs_*.png` beside it, sorted."""
    folder, stem = results / r.path.parent, r.path.stem
    return sorted(p.name for p in folder.glob("*.png") if p.stem == stem or p.stem.startswith(f"{stem}_vs_"))


def page(results: Path, r: Result) -> str:
    """One result's page."""
    kind = kind_of(r)
    versions = r.versions()
    lines = [MARKER, "", f"# {r.path.stem} ({r.machine})", "", f"From `benchmarks/results/{r.path}` ({kind.name}).", "",
             table([{"when": r.when(), "machine": r.machine, **versions,
                     "command": made_by(r)}]), ""]
    if r.targets():
        lines += ["## Targets", "", table(r.targets(), ["target", "goal", "measured", "met"]), ""]
    plots = pngs(results, r)
    if plots:
        lines += ["## Plots", ""] + [f"![{name}]({name})\n" for name in plots]
    lines += ["## Figures", ""] + [section + "\n" for section in kind.sections(r)]
    return "\n".join(lines).rstrip() + "\n"


def load(results: Path) -> list[Result]:
    """Every JSON file under the results folder, sorted by path."""
    return [Result(PurePosixPath(p.relative_to(results).as_posix()), json.loads(p.read_text()))
            for p in sorted(results.rglob("*.json"))]


def index(found: list[Result]) -> str:
    lines = [MARKER, "", "# Results", "",
             "Every committed result (`benchmarks/results/<machine>/`), each on a page of its own made from its JSON by "
             "`python -m args_benchmarks.results_pages` (`args-bench pages`): no figure here is typed by hand. A result "
             "committed without regenerating these pages fails tests/test_results_pages.py.", ""]
    rows = []
    for r in found:
        t = r.targets()
        met = f"{sum(x['met'] == 'met' for x in t)} of {len(t)} met" if t else "–"
        rows.append({"benchmark": kind_of(r).name, "machine": r.machine, "when": r.when(), "headline": kind_of(r).headline(r),
                     "targets": met, "page": f"[{r.path}]({r.path.with_suffix('.md')})"})
    return "\n".join(lines + [table(rows, ["benchmark", "machine", "when", "headline", "targets", "page"])]) + "\n"


def pages(results: Path) -> dict[str, str | Path]:
    """Every file of the pages: relative path -> Markdown text, or the PNG to copy."""
    found = load(results)
    files: dict[str, str | Path] = {"index.md": index(found)}
    for r in found:
        files[str(r.path.with_suffix(".md"))] = page(results, r)
        for name in pngs(results, r):
            files[str(r.path.parent / name)] = results / r.path.parent / name
    return dict(sorted(files.items()))


def _content(value: str | Path) -> bytes:
    return value.read_bytes() if isinstance(value, Path) else value.encode()


def stale(results: Path, out: Path) -> list[str]:
    """The files of `out` that differ from what the results make, missing or left over (relative paths)."""
    wanted = {name: _content(v) for name, v in pages(results).items()}
    have = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} if out.is_dir() else set()
    return sorted({n for n in wanted if n not in have or (out / n).read_bytes() != wanted[n]} | (have - set(wanted)))


def write(results: Path, out: Path) -> list[str]:
    """Writes the pages into `out` (each file atomically, only when it changed) and removes the files a generated
    `out` holds that the results no longer make; returns what changed."""
    files = pages(results)
    changed = stale(results, out)
    generated = (out / "index.md").is_file() and (out / "index.md").read_text().startswith(MARKER)
    for name in changed:
        if name in files:
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            write_atomic(out / name, _content(files[name]))
        elif generated:
            (out / name).unlink()
    for folder in sorted((p for p in out.rglob("*") if p.is_dir()), reverse=True) if generated else []:
        if not any(folder.iterdir()):
            folder.rmdir()
    return changed


def replot(results: Path) -> list[Path]:
    """Redraws the committed PNGs that a benchmark's plot code can draw from its JSON (only those already there)."""
    written = []
    for r in load(results):
        draw = kind_of(r).replot
        for tail, fig in (draw(r.doc) if draw else {}).items():
            path = results / r.path.parent / f"{r.path.stem}{tail}.png"
            if path.is_file():
                fig.savefig(path, dpi=110)
                written.append(path)
    return written


# ---------------------------------------------------------------------------------------------- command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`args-bench pages`' options."""
    p.add_argument("--results", type=Path, default=RESULTS, help="the committed results (default: benchmarks/results)")
    p.add_argument("--out", type=Path, default=OUT, help="where the pages go (default: docs/results)")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 when the pages are not those the results make")
    p.add_argument("--replot", action="store_true", help="first redraw the committed PNGs from their JSON")


def run(args: argparse.Namespace) -> int:
    if args.replot and not args.check:
        for path in replot(args.results):
            print(f"redrawn {path}")
    if args.check:
        behind = stale(args.results, args.out)
        for name in behind:
            print(f"stale: {args.out / name}")
        return 1 if behind else 0
    changed = write(args.results, args.out)
    print(f"{len(changed)} file(s) of {args.out} changed" + "".join(f"\n  {name}" for name in changed))
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m args_benchmarks.results_pages`: the same as `args-bench pages`."""
    import sys

    return module_main(sys.modules[__name__], "args-bench pages", argv)


if __name__ == "__main__":
    raise SystemExit(main())
