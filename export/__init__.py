"""args-export: Hugging Face LM + reward model → ONNX bundle for the args-rt runtime (needs torch)."""

from args_runtime import __version__

__all__ = ["__version__"]
