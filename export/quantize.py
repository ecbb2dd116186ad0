"""Weight-only quantization of an exported graph with ONNX Runtime's own quantizer: every MatMul with a constant
weight becomes a MatMulNBits node (block-wise symmetric int8 or int4 weights, fp activations), so a step reads 4x or
8x fewer weight bytes. The graph's inputs, outputs and caches are unchanged: the runtime drives it as before."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from args_runtime.errors import ExportError


@dataclass(frozen=True)
class Quantization:
    """One weight-only scheme as ONNX Runtime's MatMulNBitsQuantizer takes it, recorded in the manifest."""

    scheme: str  # "int8" | "int4"
    bits: int
    block_size: int
    # 4: activations quantized to int8 inside the kernel (ORT CPU's fast int8 path; without it int8 MatMulNBits
    # dequantizes to fp32 and ran 3x slower than fp32 here); None: fp32 compute (int4 with it: README, "Quantized bundles").
    accuracy_level: int | None
    tool: str = "onnxruntime MatMulNBitsQuantizer (MatMuls with constant weights; the RM's score head, embeddings and norms stay in the graph's dtype)"

    def as_dict(self) -> dict:
        return asdict(self)


QUANTIZATIONS = {
    "int8": Quantization("int8", bits=8, block_size=32, accuracy_level=4),
    "int4": Quantization("int4", bits=4, block_size=32, accuracy_level=None),
}


def quantization(scheme: str | None) -> Quantization | None:
    """The named scheme (None for none), or an ExportError naming the choices."""
    if scheme in (None, "none"):
        return None
    if scheme not in QUANTIZATIONS:
        raise ExportError(f"--quantize {scheme!r} is not one of {sorted(QUANTIZATIONS)}")
    return QUANTIZATIONS[scheme]


def quantize_graph(path: Path, scheme: Quantization) -> None:
    """Rewrite the graph at `path` (and its `.data` file) in place with quantized weights. Runs inside the export's
    work folder, so a failure leaves nothing that looks like a bundle."""
    import onnx

    nbits = _quantizer_module()
    model = onnx.load(str(path))  # external weights are read into memory: the files can then be replaced
    config = nbits.DefaultWeightOnlyQuantConfig(block_size=scheme.block_size, is_symmetric=True, bits=scheme.bits,
                                                accuracy_level=scheme.accuracy_level)
    quantizer = nbits.MatMulNBitsQuantizer(model, algo_config=config, nodes_to_exclude=_one_column_matmuls(model))
    quantizer.process()
    if not any(node.op_type == "MatMulNBits" for node in quantizer.model.model.graph.node):
        raise ExportError(
            f"{path.name}: ONNX Runtime's MatMulNBits quantizer found no MatMul with a constant weight to quantize to {scheme.scheme} "
            "(GPT-2's Conv1D layers export as Gemm, which it does not take): quantize the other graph only (--quantize-only), "
            "or export without --quantize"
        )
    data = path.with_name(path.name + ".data")
    path.unlink()
    data.unlink(missing_ok=True)
    quantizer.model.save_model_to_file(str(path), use_external_data_format=True)


def _one_column_matmuls(model) -> list[str]:
    """MatMuls whose constant weight has one output column: a reward model's score head. Its bytes are nothing (576
    floats for SmolLM2), but a reward is a small difference read from large hidden states, and quantizing the head
    (with int8 activations) moved the demo RM's rewards by 17 % of their range where the rest of the RM moves them 1 %."""
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and shapes.get(n.input[1], [0, 0])[-1:] == [1]]


def _quantizer_module():
    """ORT's quantizer module, imported without its side effects: it calls logging.basicConfig(level=INFO) on import
    (the user's root logger) and logs a line per graph node (thousands for one model)."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    from onnxruntime.quantization import matmul_nbits_quantizer

    root.setLevel(level)
    root.handlers[:] = handlers
    matmul_nbits_quantizer.logger.setLevel(logging.WARNING)
    return matmul_nbits_quantizer
