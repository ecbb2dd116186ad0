"""The results pages (docs/results/) are made from the committed JSON by `args-bench pages`: every result file has its
section and its row in the index, a page's figures are the JSON's, and the committed pages are current."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

from args_benchmarks.cli import main

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _generate(out: Path) -> Path:
    assert main(["pages", "--results", str(RESULTS), "--out", str(out)]) == 0
    return out


def test_every_result_file_has_a_row_and_a_section(tmp_path):
    out = _generate(tmp_path / "results")
    index = (out / "index.md").read_text()
    for path in RESULTS.rglob("*.json"):
        rel = path.relative_to(RESULTS).as_posix()
        machine = rel.split("/")[0]
        assert f"`{rel}`" in index and f"## {rel}\n" in (out / f"{machine}.md").read_text(), rel


def test_a_pages_figures_are_the_jsons(tmp_path):
    out = _generate(tmp_path / "results")
    page = (out / "amd-epyc-2-core.md").read_text()
    serve_mix = json.loads((RESULTS / "amd-epyc-2-core" / "serve_mix.json").read_text())
    assert f"| {serve_mix['targets'][0]['measured']} | {'met' if serve_mix['targets'][0]['met'] else 'NOT met'} |" in page
    families = json.loads((RESULTS / "amd-epyc-2-core" / "families.json").read_text())
    qwen3 = next(r for r in families["families"] if r["family"] == "qwen3")
    assert f"| qwen3 | qwen3.py | {qwen3['stack_lines']} | {qwen3['ms_per_token']:.4g} | {qwen3['vs_llama']:.4g} |" in page
    assert (out / "amd-epyc-2-core" / "batching.png").is_file() and "![batching](amd-epyc-2-core/batching.png)" in page


def test_the_committed_pages_are_current(tmp_path):
    """Fails when a result is committed without `args-bench pages` (or the pages are edited by hand)."""
    out = _generate(tmp_path / "results")
    committed = ROOT / "docs" / "results"

    def tree(folder: Path) -> set[str]:
        return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}

    assert tree(out) == tree(committed)
    differ = [name for name in sorted(tree(out)) if not filecmp.cmp(out / name, committed / name, shallow=False)]
    assert differ == [], f"stale: {differ}; run args-bench pages"
