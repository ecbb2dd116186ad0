"""Is every op in a bundle's ONNX graphs one TensorRT can parse? A check that runs without TensorRT.

The supported set is transcribed from onnx/onnx-tensorrt ``docs/operators.md`` for TensorRT 10.0
("supports operators in the inclusive range of opset 9 to opset 20"; data types include FLOAT16,
BFLOAT16, INT32, INT64 and BOOL, so our INT64 ids/positions are accepted natively since 10.0).
Ops marked N there (e.g. Bernoulli, BitShift, Multinomial, Unique) are left out. This is a list kept in
the code, not a parser run: it says the graphs are not the obstacle, not that an engine builds.

    python -m args_export.gpu.tensorrt_ops BUNDLE_OR_ONNX...
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

SOURCE = "onnx/onnx-tensorrt docs/operators.md, TensorRT 10.0"
OPSET_RANGE = (9, 20)  # inclusive, default ("" / "ai.onnx") domain

TENSORRT_OPS: frozenset[str] = frozenset("""
Abs Acos Acosh Add AffineGrid And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
BlackmanWindow Cast CastLike Ceil Celu Clip Concat ConcatFromSequence Constant ConstantOfShape Conv
ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout DynamicQuantizeLinear
Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm
GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization GRU
HammingWindow HannWindow HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization
IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LpNormalization LpPool
LRN LSTM MatMul MatMulInteger Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg
NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu QLinearConv QLinearMatMul
QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1
ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round ScaledTanh Scan Scatter
ScatterElements ScatterND Selu SequenceAt SequenceConstruct SequenceEmpty SequenceErase SequenceInsert
SequenceLength Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax SoftmaxCrossEntropyLoss Softplus
Softsign SpaceToDepth Split SplitToSequence Sqrt Squeeze STFT Sub Sum Tan Tanh ThresholdedRelu Tile
TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())


@dataclass
class OpReport:
    """What one graph uses that TensorRT 10 would refuse; ``ok`` when nothing."""

    path: Path
    opsets: dict[str, int]
    op_counts: Counter = field(default_factory=Counter)
    unsupported: list[tuple[str, int, str]] = field(default_factory=list)  # (op_type, count, example node)
    opset_problem: str | None = None

    @property
    def ok(self) -> bool:
        return not self.unsupported and self.opset_problem is None

    def describe(self) -> str:
        if self.ok:
            return f"{self.path.name}: ok ({sum(self.op_counts.values())} nodes, {len(self.op_counts)} op types, opset {self.opsets.get('', '?')})"
        lines = [f"{self.path.name}: NOT supported by TensorRT 10 ({SOURCE})"]
        lines += [f"  {op}: {n} node(s), e.g. {name!r}" for op, n, name in self.unsupported]
        if self.opset_problem:
            lines.append(f"  {self.opset_problem}")
        return "\n".join(lines)


def _walk(graph):
    for node in graph.node:
        yield node
        for attr in node.attribute:  # If/Loop/Scan bodies
            if attr.g is not None and len(attr.g.node):
                yield from _walk(attr.g)
            for g in attr.graphs:
                yield from _walk(g)


def check_model(model, path: Path | str = "<model>", supported: frozenset[str] = TENSORRT_OPS) -> OpReport:
    """Walk every node (subgraphs included); an op outside ``supported`` or a custom domain is reported."""
    opsets = {imp.domain if imp.domain != "ai.onnx" else "": imp.version for imp in model.opset_import}
    report = OpReport(Path(path), opsets)
    examples: dict[str, str] = {}
    for node in _walk(model.graph):
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        report.op_counts[key] += 1
        examples.setdefault(key, node.name)
    report.unsupported = [(op, n, examples[op]) for op, n in sorted(report.op_counts.items()) if op not in supported]
    lo, hi = OPSET_RANGE
    version = opsets.get("")
    if version is None or not lo <= version <= hi:
        report.opset_problem = f"default-domain opset {version} is outside TensorRT 10's range {lo}-{hi}"
    return report


def graph_files(target: Path) -> list[Path]:
    """A bundle's model graphs (not choose.onnx: it computes in float64 and always runs on ONNX Runtime), or the file."""
    from ..choice_graph import CHOICE_FILE

    target = Path(target)
    return sorted(f for f in target.glob("*.onnx") if f.name != CHOICE_FILE) if target.is_dir() else [target]


def check_paths(targets: list[Path]) -> list[OpReport]:
    import onnx

    reports = []
    for target in targets:
        files = graph_files(target)
        if not files:
            raise FileNotFoundError(f"no .onnx graphs in {target}")
        for f in files:
            reports.append(check_model(onnx.load(str(f), load_external_data=False), f))
    return reports


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m args_export.gpu.tensorrt_ops",
        description="Check, without TensorRT, that every op (subgraphs included) in a bundle's ONNX graphs is one "
        f"TensorRT 10 parses and that the opset is within {OPSET_RANGE[0]}-{OPSET_RANGE[1]} (list from {SOURCE}). "
        "Exit 0 when all graphs pass, 1 otherwise. Does not build an engine.",
    )
    p.add_argument("targets", nargs="+", type=Path, metavar="BUNDLE_OR_ONNX", help="bundle folder(s) or .onnx file(s)")
    args = p.parse_args(argv)
    reports = check_paths(args.targets)
    for r in reports:
        print(r.describe())
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
