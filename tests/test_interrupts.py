"""Interrupted for real (issue 17): args-export and args-train-rm run in a subprocess that is sent SIGINT (Ctrl-C) at a
chosen stage. Each must exit 130 with one line on stderr, and leave nothing half-written: no new --out, an --out being
replaced with --force exactly as it was, and no temporary folder or file beside it. (Streams interrupted inside a
generation are tested in test_concurrency.py.)"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from args_runtime.manifest import sha256_file

WAIT_S = 600  # for the marker, on a loaded 2-core machine


def sigint_default() -> None:
    """In the child: SIGINT back to its default, so that Python turns it into KeyboardInterrupt even when the test run
    itself ignores it (a suite started in the background of a non-interactive shell inherits SIG_IGN)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt_at(argv_code: str, marker: str, delay_s: float = 0.0) -> tuple[int, str]:
    """Run `python -c argv_code`, send SIGINT once `marker` shows on its stderr (+ delay_s); its exit code and stderr."""
    proc = subprocess.Popen([sys.executable, "-c", argv_code], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, preexec_fn=sigint_default,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seen, err = threading.Event(), bytearray()

    def read() -> None:  # tqdm redraws with \r: read bytes, not lines
        while chunk := os.read(proc.stderr.fileno(), 4096):
            err.extend(chunk)
            if marker.encode() in err:
                seen.set()
        seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert seen.wait(WAIT_S), f"never reached {marker!r}"
    assert proc.poll() is None, f"ended before it could be interrupted: {err.decode(errors='replace')[-2000:]}"
    time.sleep(delay_s)
    proc.send_signal(signal.SIGINT)
    code = proc.wait(WAIT_S)
    reader.join(10)
    return code, err.decode(errors="replace")


def leftovers(folder: Path) -> list[str]:
    """Temporary siblings that atomic_folder / write_atomic would leave after a failed write."""
    return sorted(p.name for p in folder.iterdir() if ".partial" in p.name or ".old-" in p.name)


def snapshot(folder: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file()}


def run_main(module: str, argv: list[str]) -> str:
    return f"import sys; from {module} import main; sys.exit(main({argv!r}))"


@pytest.mark.parametrize("marker, replace", [
    ("[3/7] exporting the LM step graph", False),  # while tracing, into a new --out
    ("[6/7] checking the graphs", True),  # while checking, replacing an existing bundle with --force
])
def test_an_interrupted_export_leaves_nothing_half_written(tiny_pairs, tmp_path, marker, replace):
    pair, out = tiny_pairs["llama"], tmp_path / "bundle"
    if replace:
        shutil.copytree(pair.bundle, out)
        before = snapshot(out)
    argv = ["--lm", str(pair.lm_dir), "--rm", str(pair.rm_dir), "--out", str(out), "--max-k", "8", *(["--force"] if replace else [])]
    code, err = interrupt_at(run_main("args_export.cli", argv), marker)
    assert code == 130, err[-3000:]
    assert "args-export: interrupted; nothing was written" in err and "Traceback" not in err, err[-3000:]
    assert leftovers(tmp_path) == []
    if replace:
        assert snapshot(out) == before  # the old bundle, untouched
    else:
        assert not out.exists()


def test_interrupted_rm_training_leaves_nothing_half_written(tiny_pairs, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps({"prompt": f"prompt {i}", "chosen": "good", "rejected": "bad"}) for i in range(8)) + "\n")
    out, head = tmp_path / "rm", tmp_path / "head.json"
    out.mkdir()
    (out / "keep.txt").write_text("the previous model")
    argv = ["--backbone", str(tiny_pairs["llama"].lm_dir), "--pairs", str(pairs), "--out", str(out), "--force",
            "--head-out", str(head), "--epochs", "100000", "--batch-size", "4"]
    code, err = interrupt_at(run_main("args_export.rewards.train", argv), "training head", delay_s=1.0)
    assert code == 130, err[-3000:]
    assert "args-train-rm: interrupted; nothing was written" in err and "Traceback" not in err, err[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"] and not head.exists()
    assert leftovers(tmp_path) == []
