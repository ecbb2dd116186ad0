"""`args-bench pages`: the docs' results pages, made from the committed JSON under benchmarks/results/ so that no figure
in the docs is typed by hand. One page per machine (docs/results/<machine>.md: every result file, with its date, the
machine and versions it ran on, its targets, its tables, and its plot beside it) and an index (docs/results/index.md).

    args-bench pages                                   # benchmarks/results → docs/results (run from the checkout)
    args-bench pages --results DIR --out DIR

Every JSON file gets a section, whatever its benchmark: `targets` become a table of goal / measured / met, lists of
records (`rows`, `records`: a latency run's headline records) and tables of contenders (`summary`) become tables,
other scalars a list. The output is sorted and deterministic: regenerating with no new results changes nothing
(tests/test_results_pages.py fails when the committed pages are stale)."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from .common import module_main

MAX_COLUMNS = 9


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`args-bench pages`' options."""
    p.add_argument("--results", type=Path, default=Path("benchmarks/results"), help="committed results (default benchmarks/results)")
    p.add_argument("--out", type=Path, default=Path("docs/results"), help="pages folder (default docs/results, replaced)")


def main(argv: list[str] | None = None) -> int:
    """`python -m args_benchmarks.results_pages`: the same as `args-bench pages`."""
    return module_main(sys.modules[__name__], "args-bench pages", argv)


def _cell(value) -> str:
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, (dict, list)):
        text = json.dumps(value, sort_keys=True)
        text = text if len(text) <= 60 else text[:57] + "…"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(rows: list[dict]) -> list[str]:
    """A Markdown table of dicts: the columns holding scalars, first seen first, at most MAX_COLUMNS."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k, v in row.items() if k not in columns and not isinstance(v, (dict, list))]
    columns = columns[:MAX_COLUMNS]
    if not columns:
        return []
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return lines + [""]


def _machine_line(doc: dict) -> str:
    m = doc.get("machine") or doc.get("meta", {}).get("machine") or {}
    if not isinstance(m, dict) or not m:
        return ""
    parts = [f"{k} {m[k]}" for k in ("cpu", "cores", "gpu", "python", "onnxruntime") if m.get(k) is not None]
    return "Machine: " + ", ".join(parts)


def section(path: Path, root: Path, images: dict[str, str]) -> list[str]:
    """One result file's section: date, machine, command, targets, tables, scalars, plot."""
    doc = json.loads(path.read_text())
    rel = path.relative_to(root).as_posix()
    lines = [f"## {rel}", ""]
    if not isinstance(doc, dict):
        return lines + [f"A list of {len(doc)} entries.", ""]
    meta = doc.get("meta", {}) if isinstance(doc.get("meta"), dict) else {}
    when = doc.get("when") or meta.get("when") or doc.get("created")
    lines += [f"When: {when or 'not recorded'}. " + _machine_line(doc), ""]
    if doc.get("command") or meta.get("command"):
        lines += [f"Command: `{doc.get('command') or meta.get('command')}`", ""]
    if isinstance(doc.get("targets"), list) and doc["targets"]:
        rows = [{"target": t.get("name") or t.get("target"), "goal": t.get("goal", ""), "measured": t.get("measured"),
                 "met": {True: "met", False: "NOT met", None: "not judged"}.get(t.get("met"), t.get("met"))} for t in doc["targets"]]
        lines += ["Targets:", ""] + _table(rows)
    if isinstance(doc.get("summary"), dict) and all(isinstance(v, dict) for v in doc["summary"].values()):
        lines += _table([{"contender": name, **values} for name, values in doc["summary"].items()])
    for key in ("rows", "families", "records", "results", "stages", "exports"):
        rows = doc.get(key)
        if isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows):
            if key == "records":
                rows = [r for r in rows if r.get("sweep") in ("headline", None)] or rows
            lines += [f"{key.capitalize()}:", ""] + _table(rows)
    scalars = {k: v for k, v in doc.items() if isinstance(v, (int, float, str, bool)) and k not in ("when", "command")}
    if scalars:
        lines += [f"- {k}: {_cell(v)}" for k, v in scalars.items()] + [""]
    if path.with_suffix(".png").name in images:
        lines += [f"![{path.stem}]({images[path.with_suffix('.png').name]})", ""]
    return lines


def run(args: argparse.Namespace) -> int:
    root, out = args.results, args.out
    if not root.is_dir():
        print(f"args-bench pages: {root} is not a results folder", file=sys.stderr)
        return 2
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    index = ["# Results", "", "Every committed result under `benchmarks/results/`, made into pages by `args-bench pages` (no figure is",
             "typed by hand). Each row links the machine's page; the headline is the file's first target.", "",
             "| machine | result | when | first target | measured |", "| --- | --- | --- | --- | --- |"]
    for machine in sorted(p for p in root.iterdir() if p.is_dir()):
        images = {}
        for png in sorted(machine.rglob("*.png")):
            target = out / machine.name / png.relative_to(machine)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(png, target)
            images[png.name] = f"{machine.name}/{png.relative_to(machine).as_posix()}"
        page = [f"# {machine.name}", ""]
        for path in sorted(machine.rglob("*.json")):
            page += section(path, root, images)
            doc = json.loads(path.read_text())
            first = (doc.get("targets") or [{}])[0] if isinstance(doc, dict) and isinstance(doc.get("targets"), list) else {}
            when = (doc.get("when") or doc.get("meta", {}).get("when") or "") if isinstance(doc, dict) and isinstance(doc.get("meta", {}), dict) else ""
            anchor = path.relative_to(root).as_posix()
            index.append(f"| [{machine.name}]({machine.name}.md) | `{anchor}` | {when} | {_cell(first.get('name') or first.get('target') or '—')} | "
                         f"{_cell(first.get('measured', '—'))} |")
        (out / f"{machine.name}.md").write_text("\n".join(page).rstrip() + "\n")
    (out / "index.md").write_text("\n".join(index) + "\n")
    print(f"written {out}/index.md and {len([p for p in root.iterdir() if p.is_dir()])} machine pages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
