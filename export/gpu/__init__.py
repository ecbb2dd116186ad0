"""Preparing bundles for NVIDIA GPUs: TensorRT engine builds, TensorRT's op coverage, and a CPU-runnable prediction of
where ONNX Runtime's CUDA provider places each node (so CUDA graphs can capture the decode step)."""
