"""The front door and the docs site: the README stays short and its headline figures come from the committed results;
the site builds with `mkdocs build --strict` (a broken link or a missing page fails); every example in the README and
the getting-started page runs as written, on the tiny llama pair, the server and the openai client included."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from .serve_utils import free_port, wait_health

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_PAGES = [ROOT / "README.md", ROOT / "docs" / "getting-started.md"]


def test_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    for heading in ("## Two commands", "## Your own pair, in Python", "## Serve it", "## Commands", "## Supported models", "## Headline figures"):
        assert heading in text
    assert text.count("```bash") >= 2 and "args-demo" in text and "&& pytest" in text


def test_readme_headline_figures_are_the_committed_results():
    from args_benchmarks.headline import render

    text = (ROOT / "README.md").read_text()
    assert render(text, ROOT / "benchmarks" / "results") == text, "stale: run python -m args_benchmarks.headline"


def test_the_site_builds_strictly(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    api = (tmp_path / "site" / "runtime" / "index.html").read_text()
    assert "from_bundle" in api and "submit" in api  # the API reference, made from the docstrings


def test_every_docs_page_is_in_the_site_navigation():
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("", lambda loader, suffix, node: None)  # mkdocs.yml's !!python/name tags, if any
    nav = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=Loader)["nav"]
    listed = {page for entry in nav for value in entry.values() for page in ([value] if isinstance(value, str) else value)}
    pages = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").glob("*.md")} | {"results/index.md"}  # the index links the rest
    assert pages == listed


def examples(page: Path) -> list[tuple[str, str]]:
    """The page's (language, code) blocks, in order."""
    return re.findall(r"```(python|bash)\n(.*?)```", page.read_text(), re.S)


@pytest.mark.parametrize("page", EXAMPLE_PAGES, ids=lambda p: p.name)
def test_every_example_runs_as_written(page, tiny_pairs, tmp_path, monkeypatch):
    """`./my-lm` and `./my-rm` are the tiny llama pair; the bash blocks' args-export and args-serve lines run as commands
    (the server on a free port instead of 8000), every Python block runs in one namespace, in order."""
    pair = tiny_pairs["llama"]
    (tmp_path / "my-lm").symlink_to(pair.lm_dir)
    (tmp_path / "my-rm").symlink_to(pair.rm_dir)
    monkeypatch.chdir(tmp_path)
    port, servers, namespace, ran = free_port(), [], {}, []
    bin_dir = Path(sys.executable).parent
    try:
        for language, code in examples(page):
            if language == "python":
                exec(compile(code.replace("127.0.0.1:8000", f"127.0.0.1:{port}"), f"{page.name} example", "exec"), namespace)
                ran.append("python")
                continue
            for line in code.splitlines():
                words = shlex.split(line.split("#", 1)[0]) if line.strip() else []
                if words[:1] == ["args-export"]:
                    subprocess.run([str(bin_dir / "args-export"), *words[1:]], check=True, capture_output=True, timeout=600)
                    ran.append("args-export")
                elif words[:1] == ["args-serve"]:
                    words = [str(port) if w == "8000" else w for w in words]
                    servers.append(subprocess.Popen([str(bin_dir / "args-serve"), *words[1:]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                    wait_health(f"http://127.0.0.1:{port}")
                    ran.append("args-serve")
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=60)
    assert ran.count("python") == 3 and ran.count("args-serve") == 1 and "args-export" in ran
    assert namespace["res"].text and namespace["r"].choices[0].message.content  # the generation and the served answer
