"""args-export: Hugging Face LM + reward model → ONNX bundle for the args-rt runtime (needs torch)."""

__version__ = "0.1.0"
