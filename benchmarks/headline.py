"""The README's headline figures, made from the committed results (benchmarks/results/<machine>/*.json) so none is
typed by hand: `python -m args_benchmarks.headline [--check]` rewrites the table between the README's markers (or,
with --check, exits 1 when it is stale); tests/test_docs.py fails when the README's table is not this one."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

START, END = "<!-- headline:start (python -m args_benchmarks.headline) -->", "<!-- headline:end -->"


@dataclass(frozen=True)
class Headline:
    """One figure: a target of a committed result (by its name's start), on one machine."""

    machine: str
    file: str
    target: str


HEADLINES = [
    Headline("amd-epyc-2-core", "bundles.json", "fused bundle vs the reference ARGS"),
    Headline("amd-epyc-2-core", "bundles.json", "fused int8 (lm+rm) vs the reference ARGS"),
    Headline("amd-epyc-2-core", "serve_mix.json", "8 mixed requests at once"),
    Headline("amd-epyc-2-core", "batching.json", "continuous vs fixed batches"),
    Headline("amd-epyc-2-core", "batching.json", "p99 latency, continuous vs fixed"),
]


def _row(results: Path, h: Headline) -> str:
    doc = json.loads((results / h.machine / h.file).read_text())
    target = next(t for t in doc["targets"] if t["name"].startswith(h.target))
    verdict = {True: "met", False: "not met", None: "not judged"}[target["met"]]
    when = doc.get("when") or doc.get("meta", {}).get("when") or "date not recorded"
    return (f"| {target['name']} | {target['measured']} | {target['goal']} ({verdict}) | {h.machine}, {when} | "
            f"[`{h.file}`](benchmarks/results/{h.machine}/{h.file}) |")


def _families_row(results: Path, machine: str = "amd-epyc-2-core") -> str:
    doc = json.loads((results / machine / "families.json").read_text())
    ratios = [r["vs_llama"] for r in doc["families"] if r["family"] != "llama"]
    return (f"| every family's stack vs Llama's, ms/token on equal shapes | {min(ratios):.2f}–{max(ratios):.2f}× | "
            f"no slower than Llama's | {machine}, {doc['when']} | [`families.json`](benchmarks/results/{machine}/families.json) |")


def table(results: Path) -> str:
    """The headline table in Markdown, from the committed JSON under `results`."""
    lines = ["| figure | measured | target | machine, when | from |", "| --- | --- | --- | --- | --- |"]
    lines += [_row(results, h) for h in HEADLINES] + [_families_row(results)]
    return "\n".join(lines)


def render(readme_text: str, results: Path) -> str:
    """The README with its headline block replaced by table(results)."""
    head, start, rest = readme_text.partition(START)
    _, end, tail = rest.partition(END)
    if not start or not end:
        raise ValueError(f"the README has no {START} … {END} block")
    return f"{head}{START}\n{table(results)}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m args_benchmarks.headline", description=__doc__)
    p.add_argument("--readme", type=Path, default=Path("README.md"))
    p.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--check", action="store_true", help="exit 1 if the README's table is not the committed results' table")
    args = p.parse_args(argv)
    text = args.readme.read_text()
    new = render(text, args.results)
    if args.check:
        print("README headline table is current" if new == text else "README headline table is stale: run python -m args_benchmarks.headline")
        return 0 if new == text else 1
    args.readme.write_text(new)
    print(f"written {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
