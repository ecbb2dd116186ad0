"""Encoder reward models (BERT, RoBERTa, DeBERTa-v2, DistilBERT, XLM-RoBERTa, ELECTRA classifiers) as one ONNX graph.

An encoder has no KV cache: ARGS scores its k candidates as k full texts per pass. The graph takes right-padded rows
(`input_ids`, `attention_mask`, [batch_size, sequence_length] int64) and returns each row's scalar reward (`rewards`,
[batch_size] float32), what transformers' `model(input_ids, attention_mask=..., token_type_ids=zeros).logits[:, 0]`
gives. Traced from transformers' own modules (eager attention): the masks they build keep a row's reward independent
of its batch and of its right padding, which `check_encoder` checks with the graph against PyTorch."""

from __future__ import annotations

import inspect
import shutil
from pathlib import Path

import numpy as np
import onnx
import torch

from args_runtime.engines.onnxruntime_engine import OrtBackend
from args_runtime.errors import ExportError
from args_runtime.manifest import GraphSpec, TensorSpec

from .hf_compat import quiet_exporter
from .loading import require_one_label
from .onnx_export import DYNAMO_OPSET, OPSET
from .plan import EXPORTERS
from .validate import TOLERANCES

CHECK_LIMITS = {dtype: TOLERANCES[dtype] for dtype in ("float32", "float16", "bfloat16")}  # (atol, rtol of max |ref|)

INPUTS = [
    TensorSpec("input_ids", ["batch_size", "sequence_length"], "int64"),
    TensorSpec("attention_mask", ["batch_size", "sequence_length"], "int64"),
]
OUTPUTS = [TensorSpec("rewards", ["batch_size"], "float32")]
CHECK_LENGTHS = (1, 20, 7, 13, 2, 16)  # the check's right-padded rows (tokens each); its batch-1 row is the longest
PADDING_LIMIT = 1e-5  # a row's reward alone vs in the padded batch (plus this much of max |reward|)


class EncoderScorer(torch.nn.Module):
    """forward(input_ids, attention_mask) → rewards [batch]: the classifier's one logit per row, as float32."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.token_types = "token_type_ids" in inspect.signature(model.forward).parameters  # DistilBERT has none

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        extra = {"token_type_ids": torch.zeros_like(input_ids)} if self.token_types else {}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits[:, 0].float()


def export_encoder(model: torch.nn.Module, path: Path, exporter: str = "torchscript") -> GraphSpec:
    """The encoder RM as one graph at `path` (weights in `path.name + ".data"`); its spec for the manifest."""
    if exporter not in EXPORTERS:
        raise ExportError(f"exporter {exporter!r} is not one of {', '.join(EXPORTERS)}")
    config = model.config
    require_one_label(config, config.name_or_path or config.model_type)
    path = Path(path)
    ids, mask = _padded_rows((5, 3), config.vocab_size, pad_id=_pad_id(config), seed=0)  # 2 rows, one padded
    _trace(EncoderScorer(model).eval(), (ids, mask), path, exporter)
    return GraphSpec(
        file=path.name,
        source=Path(config.name_or_path).name if config.name_or_path else config.model_type,
        architecture=config.model_type,
        dtype=_weights_dtype(model),
        num_layers=config.num_hidden_layers,
        num_kv_heads=0,
        head_dim=0,
        vocab_size=config.vocab_size,
        inputs=list(INPUTS),
        outputs=list(OUTPUTS),
        cache="none",
        hf_config=config.to_diff_dict(),
    )


def _trace(scorer: EncoderScorer, args: tuple, path: Path, exporter: str) -> None:
    """torch.onnx (TorchScript or dynamo) to `path`, the weights in one file beside it, `path.name + ".data"`. The
    tracer writes into a scratch folder beside `path` (a model over 2 GB spills one file per tensor there)."""
    axes = {t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)} for t in INPUTS + OUTPUTS}
    names = dict(input_names=[t.name for t in INPUTS], output_names=[t.name for t in OUTPUTS], dynamic_axes=axes)
    scratch = path.parent / f".trace-{path.stem}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        with torch.no_grad(), quiet_exporter():
            try:
                program = torch.onnx.export(scorer, args, None if exporter == "dynamo" else str(scratch / path.name),
                                            opset_version=(DYNAMO_OPSET if exporter == "dynamo" else OPSET), dynamo=exporter == "dynamo", **names)
            except Exception as e:  # both paths wrap the cause in a long report: its first line, the rest chained
                cause = e.__cause__ or e
                first = next((line for line in str(cause).splitlines() if line.strip()), "")
                raise ExportError(f"exporting the {scorer.model.config.model_type} RM to {path.name} ({exporter}) failed: "
                                  f"{type(cause).__name__}: {first}") from e
        if program is not None:
            program.save(str(path), external_data=True)  # path.name + ".data"
        else:
            model = onnx.load(str(scratch / path.name))
            onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=path.name + ".data", size_threshold=1024)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def check_encoder(model: torch.nn.Module, path: Path, pad_id: int) -> list[tuple[str, float, float]]:
    """The graph at `path` (ONNX Runtime, CPU) against PyTorch's logits: a right-padded batch of rows of different
    lengths, the longest row alone (batch 1), and each row's reward alone vs in the batch (padding independence).
    Returns (check, max |difference|, limit) per check; raises ExportError naming each failed one."""
    graph = OrtBackend(path, "cpu")
    ids, mask = _padded_rows(CHECK_LENGTHS, model.config.vocab_size, pad_id, seed=1)
    atol, rtol = CHECK_LIMITS[_weights_dtype(model)]
    batch = _rewards(graph, ids, mask)
    longest = int(np.argmax(CHECK_LENGTHS))
    single = ids[longest:longest + 1, :CHECK_LENGTHS[longest]], mask[longest:longest + 1, :CHECK_LENGTHS[longest]]
    alone = np.array([_rewards(graph, ids[i:i + 1, :n], mask[i:i + 1, :n])[0] for i, n in enumerate(CHECK_LENGTHS)])
    checks = []
    for name, ours, ref, (a, r) in (
        (f"padded batch of {len(CHECK_LENGTHS)} rows ({min(CHECK_LENGTHS)}-{max(CHECK_LENGTHS)} tokens)", batch, _logits(model, ids, mask), (atol, rtol)),
        (f"batch 1 ({CHECK_LENGTHS[longest]} tokens)", _rewards(graph, *single), _logits(model, *single), (atol, rtol)),
        ("each row alone vs in the padded batch", alone, batch, (PADDING_LIMIT, PADDING_LIMIT)),
    ):
        checks.append((name, float(np.max(np.abs(ours.astype(np.float64) - ref))), a + r * float(np.max(np.abs(ref)))))
    failed = [f"{name}: max |difference| {diff:.3g} > limit {limit:.3g}" for name, diff, limit in checks if not diff <= limit]
    if failed:
        raise ExportError(f"the encoder graph {path} disagrees with PyTorch ({model.config.model_type}): " + "; ".join(failed))
    return checks


def _rewards(graph: OrtBackend, ids: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    out = graph.run({"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    return np.asarray(graph.to_host(out["rewards"]), dtype=np.float64)


def _logits(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """The reference: transformers' classifier on the same rows, token types all 0 where the model has them."""
    extra = {"token_type_ids": torch.zeros_like(ids)} if "token_type_ids" in inspect.signature(model.forward).parameters else {}
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, **extra).logits[:, 0].double().numpy()


def _padded_rows(lengths: tuple[int, ...], vocab: int, pad_id: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of random non-pad tokens, `lengths[i]` long, right-padded with `pad_id` (mask 0) to the longest."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((len(lengths), max(lengths)), pad_id, dtype=torch.int64)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        tokens = torch.randint(0, vocab - 1, (n,), generator=g)
        ids[i, :n] = tokens + (tokens >= pad_id).long()  # skip the pad id: a text's tokens never are the pad
        mask[i, :n] = 1
    return ids, mask


def _pad_id(config) -> int:
    pad = getattr(config, "pad_token_id", None)
    return pad if pad is not None else 0


def _weights_dtype(model: torch.nn.Module) -> str:
    return str(next(model.parameters()).dtype).removeprefix("torch.")  # "float32", the manifest's element type name
