"""What a bundle's graphs are built for, decided once and read by every export stage (tracing, the manifest's graph
specs, the check against PyTorch)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .loading import torch_dtype

CACHE_LAYOUTS = ("dynamic", "static")
# torch.onnx's paths: "torchscript" (dynamo=False; torch deprecates it, but it exports 7-10x faster here, see README)
# and "dynamo" (torch.export, lowered by onnxscript's torchlib): the same graph interface, checks and tokens.
EXPORTERS = ("torchscript", "dynamo")


@dataclass(frozen=True)
class GraphPlan:
    """Element type, KV-cache layout, context and k limits, and the vocabulary the graphs index."""

    dtype: str  # "float32" | "float16" | "bfloat16" (weights and KV caches)
    cache: str  # "dynamic": caches grow by concatenation; "static": fixed [B, Hkv, max_context, D] buffers written in place
    max_context: int  # longest prompt + generation
    max_k: int  # largest number of ARGS candidates per step (the LM graph's top-K)
    vocab: int
    exporter: str = "torchscript"  # which torch.onnx path traces the graphs (EXPORTERS)

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch_dtype(self.dtype)

    @property
    def static(self) -> bool:
        return self.cache == "static"
