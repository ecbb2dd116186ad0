"""args-rt runtime: ARGS (reward-guided search) decoding over exported ONNX bundles, without torch."""

__version__ = "0.1.0"  # the one place the version is written (pyproject.toml reads it from here)

from .backend import Device
from .errors import (ArgsError, BundleError, ContextLengthError, ExportError, GenerationError, MissingDependencyError, RequestCancelled,
                     SettingError, TokenizerMismatchError, TrainingError, UnsupportedModelError)
from .engine import ArgsEngine
from .requests import RequestHandle
from .generator import ArgsGenerator
from .loops import LOOP_IMPL
from .options import RuntimeOptions
from .results import GenerationResult, TokenEvent

__all__ = [
    "ArgsEngine",
    "ArgsError",
    "ArgsGenerator",
    "BundleError",
    "ContextLengthError",
    "Device",
    "ExportError",
    "GenerationError",
    "GenerationResult",
    "LOOP_IMPL",
    "MissingDependencyError",
    "RequestCancelled",
    "RequestHandle",
    "RuntimeOptions",
    "SettingError",
    "TokenEvent",
    "TokenizerMismatchError",
    "TrainingError",
    "UnsupportedModelError",
]
