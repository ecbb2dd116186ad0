"""The GPU box's package versions (box_versions.txt), read by the run and by the CI lane: `pins()` for this Python,
`against(found)` for the summary, and `make_lane(folder)`, a venv with exactly those versions over this interpreter's
other packages (torch, args-rt), in which tests/test_gpu_run.py runs the dry run.

    python -m benchmarks.gpu.box lane DIR      # build the lane venv; prints its python
"""

from __future__ import annotations

import platform
import subprocess
import sys
import sysconfig
from pathlib import Path

PINS_FILE = Path(__file__).with_name("box_versions.txt")


def _applies(marker: str) -> bool:
    """The one kind of environment marker the file uses: python_version <op> "X.Y"."""
    if not marker:
        return True
    name, op, value = marker.split(maxsplit=2)
    if name != "python_version" or op not in (">=", "<", "=="):
        raise ValueError(f"{PINS_FILE.name}: marker {marker!r} is not `python_version <op> \"X.Y\"`")
    here = tuple(int(p) for p in platform.python_version_tuple()[:2])
    want = tuple(int(p) for p in value.strip("\"'").split("."))
    return {">=": here >= want, "<": here < want, "==": here == want}[op]


def pins() -> dict[str, str]:
    """Package → version the box has, for this Python (box_versions.txt's lines whose marker applies)."""
    found = {}
    for line in PINS_FILE.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement, _, marker = (part.strip() for part in line.partition(";"))
        name, _, version = requirement.partition("==")
        if _applies(marker):
            found[name.strip()] = version.strip()
    return found


def against(versions: dict) -> dict[str, dict]:
    """Each pinned package: the version expected and the one found (`versions`: prepare.versions()'s document)."""
    return {name: {"expected": want, "found": (versions.get(name) or {}).get("version"),
                   "match": (versions.get(name) or {}).get("version") == want} for name, want in pins().items()}


class LaneError(RuntimeError):
    """The lane could not be built; the message carries pip's own words (an unreachable index, a missing version)."""


def make_lane(folder: Path, timeout: float = 600, env: dict[str, str] | None = None) -> Path:
    """A venv in `folder` with box_versions.txt's versions, seeing this interpreter's other packages after its own (a
    .pth file; `--system-site-packages` would see the base Python's, not a venv's). Returns its python. `env`: pip's
    environment (default this one's)."""
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, timeout=timeout)
    python = folder / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True,
                          capture_output=True, text=True, timeout=timeout).stdout.strip()
    parent = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site) / "zz_outer_packages.pth").write_text("".join(f"{p}\n" for p in sorted(parent)))
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", str(PINS_FILE)],
                          capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode != 0:
        said = "\n".join((done.stderr + done.stdout).strip().splitlines()[-15:])
        raise LaneError(f"pip could not install {PINS_FILE.name}'s versions into {folder} (exit {done.returncode}; CI needs the package "
                        f"index):\n{said}")
    return python


if __name__ == "__main__":
    if sys.argv[1:2] != ["lane"] or len(sys.argv) != 3:
        sys.exit("usage: python -m benchmarks.gpu.box lane DIR")
    print(make_lane(Path(sys.argv[2])))
