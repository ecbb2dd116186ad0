"""args-rt runtime: ARGS (reward-guided search) decoding over exported ONNX bundles, without torch."""

from .errors import ArgsError, BundleError, ExportError, GenerationError, TokenizerMismatchError, UnsupportedModelError
from .generator import ArgsGenerator, GenerationResult, TokenEvent
from .stepper import LOOP_IMPL

__all__ = [
    "ArgsError",
    "ArgsGenerator",
    "BundleError",
    "ExportError",
    "GenerationError",
    "GenerationResult",
    "LOOP_IMPL",
    "TokenEvent",
    "TokenizerMismatchError",
    "UnsupportedModelError",
]
__version__ = "0.1.0"
