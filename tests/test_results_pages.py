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


def test_plots_tell_every_line_apart_and_keep_the_legend_off_the_data(tmp_path):
    """Eleven lines (the old latency_vs_k.png's count): eleven different styles, the legend outside the axes, the
    machine named; report.plot writes a PNG per sweep from records."""
    import dataclasses

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from args_benchmarks.report import Record, legend_outside, line_styles, plot

    styles = [tuple(s.values()) for s, _ in zip(line_styles(), range(11))]
    assert len(set(styles)) == 11 and len({s[0] for s in styles}) == 10
    fig, ax = plt.subplots()
    for i, style in zip(range(11), line_styles()):
        ax.plot([1, 2, 4], [i, i + 1, i + 2], label=f"line {i}", **style)
    fig.canvas.draw()
    legend = legend_outside(ax).get_window_extent(fig.canvas.get_renderer())
    assert legend.x0 >= ax.get_window_extent().x1  # beside the data, not over it
    plt.close(fig)
    doc = json.loads((RESULTS / "amd-epyc-2-core" / "latency.json").read_text())
    fields = {f.name for f in dataclasses.fields(Record)}
    records = [Record(**{k: v for k, v in r.items() if k in fields}) for r in doc["records"]]
    assert [p.name for p in plot(tmp_path, "latency", records, "a-machine")] == ["latency_vs_k.png", "latency_vs_prompt.png", "latency_vs_new_tokens.png"]
