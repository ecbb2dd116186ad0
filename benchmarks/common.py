"""What every benchmark shares: where results go, and the machine they were measured on, named."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


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
