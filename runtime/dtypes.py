"""Element types, named once. The manifest, the graphs and the engines use ONNX's names ("float32", "float16",
"bfloat16", "int64", ...); the command lines take the short names "fp32", "fp16", "bf16". numpy has no bfloat16, so
on the host a bf16 value is its raw 16 bits (uint16)."""

from __future__ import annotations

import numpy as np

SHORT_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}  # the CLIs' --dtype values
FLOAT_TYPES = tuple(SHORT_NAMES.values())

HOST_TYPES: dict[str, type] = {  # element type → numpy type of the host array holding it
    "float32": np.float32, "float16": np.float16, "bfloat16": np.uint16, "float64": np.float64,
    "int64": np.int64, "int32": np.int32, "int8": np.int8, "uint8": np.uint8, "bool": np.bool_,
}
ITEMSIZE = {name: np.dtype(t).itemsize for name, t in HOST_TYPES.items()}
ORT_TYPES = {  # ONNX Runtime's type strings (NodeArg.type) → element type
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(bfloat16)": "bfloat16", "tensor(double)": "float64",
    "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(bool)": "bool",
}
ONNX_ELEMENT_TYPES = {"float32": 1, "uint8": 2, "int8": 3, "int32": 6, "int64": 7, "bool": 9, "float16": 10, "float64": 11, "bfloat16": 16}


def element_type(name: str) -> str:
    """'fp16' or 'float16' → 'float16'; anything else is a KeyError naming the accepted names."""
    name = SHORT_NAMES.get(name, name)
    if name not in HOST_TYPES:
        raise KeyError(f"{name!r} is not an element type; use one of {sorted(SHORT_NAMES)} or {sorted(HOST_TYPES)}")
    return name


def short_name(name: str) -> str:
    """'float16' → 'fp16' (the name the CLIs take)."""
    return next((short for short, full in SHORT_NAMES.items() if full == name), name)
