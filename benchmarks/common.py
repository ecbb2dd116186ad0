"""What every benchmark shares: where results go, the machine they were measured on, named, and how a benchmark module
runs as a command of its own."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path

def results_folder(label: str) -> Path:
    """Where a run's results go unless --out says: benchmarks/results/<label> when run from a checkout (beside the
    committed ones), else ./args-bench-results/<label> where the user runs it (never inside the installed package)."""
    checkout = Path.cwd() / "benchmarks" / "results"
    return (checkout if checkout.is_dir() else Path.cwd() / "args-bench-results") / label


def machine() -> dict:
    """The machine, named: CPU model and cores, GPU if any, and a short label for the results folder."""
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
    gpu = None
    try:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=10).stdout.strip().splitlines()[0] or None
    except (OSError, subprocess.SubprocessError, IndexError):
        pass
    import onnxruntime

    cores = os.cpu_count()
    label = re.sub(r"[^a-z0-9]+", "-", (gpu or f"{cpu} {cores}-core").lower()).strip("-")
    return {"label": label, "cpu": cpu, "cores": cores, "gpu": gpu, "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "ort_providers": onnxruntime.get_available_providers()}


class UsageError(Exception):
    """Options that do not fit together: the command line's parser reports it as its own error (usage, exit status 2)."""


def module_main(module, prog: str, argv: list[str] | None) -> int:
    """`python -m args_benchmarks.X`: the benchmark module's options on a parser of its own (the same as `args-bench X`),
    then its run. A module gives add_arguments(parser) and run(args)."""
    import argparse
    import sys

    p = argparse.ArgumentParser(prog=prog, description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(p)
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return module.run(args)
    except UsageError as e:
        p.error(str(e))
