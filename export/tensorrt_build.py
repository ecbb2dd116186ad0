"""TensorRT engine building: the pure parts (profiles, the missing-TensorRT error). `tensorrt` is imported lazily.

The engine build itself (trt.Builder / OnnxParser / build_serialized_network) is not written yet: TensorRT
cannot be installed here and there is no GPU."""

from __future__ import annotations

from args_runtime.errors import ExportError

INSTALL_HINT = "pip install 'args-rt[trt]' on a machine with an NVIDIA GPU and NVIDIA's package index (https://pypi.nvidia.com)"

Shape = tuple[int, ...]


def require_tensorrt():
    """Import tensorrt or raise one clear ExportError naming the fix (before anything is written)."""
    try:
        import tensorrt as trt  # noqa: PLC0415
        trt.Builder  # the PyPI stubs import but lack the bindings
    except (ImportError, AttributeError) as e:
        raise ExportError(f"TensorRT is not usable here ({e}); {INSTALL_HINT}") from e
    return trt


def lm_profiles(max_batch: int, max_context: int) -> dict[str, dict[str, tuple[int, int, int]]]:
    """[min, opt, max] per dynamic axis for the LM: prefill (S in [1, max_context], past in [0, max_context-1])
    and 1-token decode (S = 1). attention_mask covers past + S, so its range is [1, max_context] in both."""
    batch = (1, max(1, max_batch // 2), max_batch)
    prefill = {"batch": batch, "sequence": (1, min(128, max_context), max_context), "past": (0, 0, max_context - 1),
               "total": (1, min(128, max_context), max_context)}
    decode = {"batch": batch, "sequence": (1, 1, 1), "past": (0, max_context // 2, max_context - 1),
              "total": (1, max_context // 2 + 1, max_context)}
    return {"prefill": prefill, "decode": decode}


def rm_profile(max_batch: int, max_context: int, max_k: int) -> dict[str, tuple[int, int, int]]:
    """The RM extend-and-score graph: K candidates in [0, max_k] on top of the LM's ranges."""
    return {**lm_profiles(max_batch, max_context)["prefill"], "candidates": (0, max_k, max_k)}
