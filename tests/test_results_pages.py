"""The results pages (docs/results/) come from the committed JSON (benchmarks/results/) and are kept up to date; the
benchmarks' plots keep every line distinct, their legend off the data and the machine in their title (issue 31 items 3
and 4). No model runs here: the pages read files, the plots draw small in-memory inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from args_benchmarks import results_pages

ROOT = Path(__file__).resolve().parents[1]
RESULTS, PAGES = ROOT / "benchmarks" / "results", ROOT / "docs" / "results"
COMMITTED = sorted(p.relative_to(RESULTS).as_posix() for p in RESULTS.rglob("*.json"))


def _rows(page: str, header: str) -> list[dict[str, str]]:
    """The rows of the page's first table whose header row has the column `header`, as dicts by column."""
    lines = page.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|") and f"| {header} |" in line)
    columns = [c.strip() for c in lines[start].strip("|").split(" | ")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(columns, (c.strip() for c in line.strip().strip("|").split(" | ")))))
    return rows


def test_the_index_names_every_committed_json_and_links_its_page(tmp_path):
    results_pages.write(RESULTS, tmp_path)
    index = (tmp_path / "index.md").read_text()
    assert len(COMMITTED) > 20
    for name in COMMITTED:
        page = tmp_path / Path(name).with_suffix(".md")
        assert f"[{name}]({Path(name).with_suffix('.md').as_posix()})" in index, name
        assert page.is_file() and f"benchmarks/results/{name}" in page.read_text(), name
    # the plots beside a result are copied beside its page (pages under docs/ link only files inside docs/)
    assert "![latency_vs_k.png](latency_vs_k.png)" in (tmp_path / "amd-epyc-2-core" / "latency.md").read_text()
    copied, committed = tmp_path / "amd-epyc-2-core" / "latency_vs_k.png", RESULTS / "amd-epyc-2-core" / "latency_vs_k.png"
    assert copied.read_bytes() == committed.read_bytes()


def test_a_page_shows_the_json_values(tmp_path):
    """Two benchmarks: serve-mix's ratio, and each family's ratio to Llama's, as on their pages and in the index."""
    results_pages.write(RESULTS, tmp_path)
    mix = json.loads((RESULTS / "amd-epyc-2-core" / "serve_mix.json").read_text())
    page = (tmp_path / "amd-epyc-2-core" / "serve_mix.md").read_text()
    shown = {row["setting"]: row["value"] for row in _rows(page, "setting")}
    assert float(shown["ratio"]) == mix["ratio"]
    assert mix["when"] in page and mix["machine"]["onnxruntime"] in page
    assert [row["met"] for row in _rows(page, "target")] == ["met" if t["met"] else "**not met**" for t in mix["targets"]]
    families = json.loads((RESULTS / "amd-epyc-2-core" / "families.json").read_text())
    rows = {row["family"]: row for row in _rows((tmp_path / "amd-epyc-2-core" / "families.md").read_text(), "vs llama")}
    assert set(rows) == {f["family"] for f in families["families"]}
    for family in families["families"]:
        assert float(rows[family["family"]]["vs llama"]) == pytest.approx(family["vs_llama"], rel=1e-6), family["family"]
        assert float(rows[family["family"]]["ms per token"]) == pytest.approx(family["ms_per_token"], rel=1e-6)


def test_regenerating_is_idempotent(tmp_path):
    def tree(folder: Path) -> dict[str, bytes]:
        return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    first = results_pages.write(RESULTS, tmp_path / "a")
    assert "index.md" in first
    before = tree(tmp_path / "a")
    assert results_pages.write(RESULTS, tmp_path / "a") == [] and results_pages.stale(RESULTS, tmp_path / "a") == []
    assert tree(tmp_path / "a") == before
    results_pages.write(RESULTS, tmp_path / "b")
    assert tree(tmp_path / "b") == before


def test_the_committed_pages_are_up_to_date():
    """Fails when a result is committed (or changed) without regenerating the pages."""
    stale = results_pages.stale(RESULTS, PAGES)
    assert not stale, f"docs/results/ is stale ({stale[:5]}): run python -m args_benchmarks.results_pages"


def test_a_new_result_of_an_unknown_shape_gets_a_page_and_a_removed_one_loses_it(tmp_path):
    """No JSON is skipped: a shape no renderer knows gets the generic page (its scalars and targets); the check names
    it until the pages are regenerated; a result taken away takes its page (and plots) with it."""
    results = tmp_path / "results"
    shutil.copytree(RESULTS, results)
    (results / "new-box").mkdir()
    target = {"name": "answers", "goal": "= 42", "measured": "42", "met": True}
    (results / "new-box" / "novel.json").write_text(json.dumps({"answer": 42, "when": "2027-01-02 03:04 UTC", "targets": [target]}))
    assert results_pages.stale(results, PAGES) == ["index.md", "new-box/novel.md"]
    out = tmp_path / "pages"
    results_pages.write(results, out)
    page = (out / "new-box" / "novel.md").read_text()
    assert "| answer | 42 |" in page and "| answers | = 42 | 42 | met |" in page and "2027-01-02 03:04 UTC" in page
    (results / "amd-epyc-2-core" / "serve.json").unlink()
    (results / "amd-epyc-2-core" / "serve.png").unlink()
    changed = results_pages.write(results, out)
    assert {"amd-epyc-2-core/serve.md", "amd-epyc-2-core/serve.png", "index.md"} <= set(changed)
    assert not (out / "amd-epyc-2-core" / "serve.md").exists() and not (out / "amd-epyc-2-core" / "serve.png").exists()


def test_args_bench_pages_checks_and_writes(tmp_path, capsys):
    from args_benchmarks import cli

    assert cli.main(["pages", "--results", str(RESULTS), "--out", str(PAGES), "--check"]) == 0
    assert cli.main(["pages", "--results", str(RESULTS), "--out", str(tmp_path), "--check"]) == 1
    assert "stale: " in capsys.readouterr().out
    assert cli.main(["pages", "--results", str(RESULTS), "--out", str(tmp_path)]) == 0
    assert results_pages.stale(RESULTS, tmp_path) == []


# ---------------------------------------------------------------------------------------------- plots


def _legend_off_the_data(fig, machine: str) -> None:
    """The figure's one legend overlaps no axes, the machine is in its title, and no two lines of an axes look alike."""
    fig.draw_without_rendering()
    assert len(fig.legends) == 1 and not any(ax.get_legend() for ax in fig.axes)
    box = fig.legends[0].get_window_extent()
    for ax in fig.axes:
        assert not box.overlaps(ax.get_window_extent()), ax.get_title()
        looks = [(str(line.get_color()), line.get_marker(), line.get_linestyle()) for line in ax.get_lines() if line.get_label()[:1] != "_"]
        assert len(looks) == len(set(looks)), looks
    assert machine in fig.get_suptitle()


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


MACHINE = "test-box (Some CPU, 2 cores)"


def test_the_latency_plots(tmp_path):
    from args_benchmarks.report import Record, plot, sweep_figures

    engines = [f"onnxruntime cpu, {layout} cache, {loop} loop" for layout in ("dynamic", "static") for loop in ("cpp", "python")]
    lines = [("args-rt ARGS", e) for e in engines] + [("args-rt plain greedy", e) for e in engines] + [
        ("two-model floor", "onnxruntime cpu, dynamic cache"), ("two-model floor", "onnxruntime cpu, static cache"),
        ("reference ARGS", "transformers eager cpu")]
    records = [Record("k", name, "args", engine, k, 16, 8, 1, 1, 10.0 + i + k, 1.0, 1.0, 1.0, 1.0, 1.0, None, None)
               for i, (name, engine) in enumerate(lines) for k in (1, 5, 10)]
    written = plot(tmp_path, "latency", records, MACHINE)
    assert written == [tmp_path / "latency_vs_k.png"] and _is_png(written[0])
    figure = sweep_figures(records, MACHINE)["_vs_k"]
    _legend_off_the_data(figure, MACHINE)
    assert len(figure.axes[0].get_lines()) == 11


def test_line_styles_keep_a_contender_s_colour_across_plots():
    from args_benchmarks.report import line_styles

    few = line_styles([("args-rt ARGS", "cpp loop"), ("reference ARGS", "eager")])
    many = line_styles([(name, f"v{i}") for name in ("args-rt ARGS", "reference ARGS", "x", "y") for i in range(3)])
    assert len({tuple(sorted(s.items())) for s in many.values()}) == 12
    assert few[("reference ARGS", "eager")]["color"] == line_styles([("reference ARGS", "other")])[("reference ARGS", "other")]["color"]


def test_the_batching_plot(tmp_path):
    from args_benchmarks import batching

    requests = [batching.Request(i, 0.5 * i, [1, 2], 4) for i in range(4)]
    outcomes = [batching.Outcome(name, r, 3.0, 5.0 + j, 1.0, 2.0, 1.5, [1.0, 2.0, 1.5, 1.2], [])
                for j, name in enumerate(batching.CONTENDERS) for r in range(2)]
    path = batching.plot(tmp_path / "batching.png", outcomes, requests, "a tiny stream", MACHINE)
    assert path == tmp_path / "batching.png" and _is_png(path)
    _legend_off_the_data(batching.draw(outcomes, [r.arrival_s for r in requests], "a tiny stream", MACHINE), MACHINE)


def test_the_bundles_plot(tmp_path):
    from args_benchmarks import quantized

    rows = [quantized.Row(name, 10.0, 20.0 - i, 2.0, 1.1, 3.0, 1.0 - 0.1 * i, 1.0, 0.5, 1.0 + 0.01 * i, 0.5 * i, 1.0)
            for i, name in enumerate(("fp32", "fused fp32", "int8 (lm+rm)"))]
    meta = {"machine": {"label": "test-box", "cpu": "Some CPU", "cores": 2}, "lm": "/x/lm", "rm": "/x/rm", "k": 10, "w": 1.5, "prompts": 4}
    quantized.plot(rows, tmp_path / "bundles.png", meta)
    assert _is_png(tmp_path / "bundles.png")
    _legend_off_the_data(quantized.draw(rows, MACHINE, quantized.plot_title(meta)), MACHINE)


def test_the_reward_shift_plot(tmp_path):
    from args_benchmarks import reward_shift

    rows = [reward_shift.ShiftRow(name, 8, 0.9, 0.5, 1.0, change, 1.0, "within")
            for name, change in (("fp32", 0.0), ("int8 (rm)", 0.4), ("int4 (lm)", -3.0))]
    reward_shift.plot(rows, 2.0, tmp_path / "reward_shift.png", MACHINE)
    assert _is_png(tmp_path / "reward_shift.png")
    _legend_off_the_data(reward_shift.draw(rows, 2.0, MACHINE), MACHINE)


def test_the_serve_plot(tmp_path):
    from args_benchmarks import serve

    rows = [serve.Measured("one at a time (in-process)", 1, False, 4, 10.0, 0.4, 4.0, 400.0, 500.0, 2000.0, 2500.0, 4, 1.0)]
    rows += [serve.Measured(f"{'streamed' if s else 'plain'}, {c} clients", c, s, 4, 5.0, 0.8, 6.0 * c, 300.0, 400.0, 1500.0 * c,
                            2000.0 * c, 4, float(c)) for s in (False, True) for c in (1, 4)]
    serve.plot(rows, tmp_path / "serve.png", "args-serve, tiny", MACHINE)
    assert _is_png(tmp_path / "serve.png")
    _legend_off_the_data(serve.draw(rows, "args-serve, tiny", MACHINE), MACHINE)
