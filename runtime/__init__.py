"""args-rt runtime: ARGS (reward-guided search) decoding over exported ONNX bundles, without torch."""

from .errors import ArgsError, BundleError, ExportError, GenerationError, TokenizerMismatchError, UnsupportedModelError
from .generator import LOOP_IMPL, ArgsGenerator, GenerationResult, TokenEvent

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
