"""Export an LM + RM pair into a bundle folder, straight down in stages: check the options → read the pair (configs,
tokenizer) → load the weights → trace both graphs → write the tokenizer → check the graphs against PyTorch → write
the manifest. Every stage reads the one ModelPair and the one GraphPlan.

The bundle is written into a temporary sibling folder and renamed into place only after the parity check passed and
the manifest is written, so an interrupted or failed export leaves nothing that looks valid.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from args_runtime import __version__
from args_runtime.backend import Device
from args_runtime.dtypes import SHORT_NAMES, element_type
from args_runtime.errors import ExportError
from args_runtime.files import atomic_folder
from args_runtime.manifest import MANIFEST_FILE, GraphSpec, Manifest, RewardInput, TokenizerSpec, sha256_file

from .choice_graph import CHOICE_FILE, write_choice_graph
from .loading import ModelPair, PairSpec
from .fusion import Fusion, check_fusion
from .onnx_export import export_fused, export_lm, export_rm
from .plan import CACHE_LAYOUTS, EXPORTERS, GraphPlan
from .quantize import Quantization, quantization, quantize_graph
from .text_path import check_text_rm, export_rm_graph, write_rm_tokenizer
from .validate import ValidationReport, validate_choice_graph, validate_graphs

TOKENIZER_FILE = "tokenizer.json"
PROPOSE_FILE = "propose.onnx"  # a fused bundle's LM head over the chosen candidate
CHAT_TEMPLATE_FILE = "chat_template.jinja"


@dataclass
class ExportOptions:
    lm: str | Path
    rm: str | Path
    out: str | Path
    dtype: str = "fp32"
    max_context: int | None = None
    max_k: int = 64
    force: bool = False
    cache: str = "static"  # fixed in-place KV-cache buffers (continuous batching, CUDA graphs, TensorRT); "dynamic": grown by concatenation
    exporter: str = "torchscript"  # or "dynamo": torch.onnx's torch.export-based path
    quantize: str | None = None  # "int8" | "int4": weight-only, with ONNX Runtime's MatMulNBits quantizer
    quantize_models: tuple[str, ...] = ("lm", "rm")  # which graphs --quantize applies to
    fuse: bool = True  # a fused bundle when the RM is a head on the LM's backbone (--no-fuse: two graphs regardless)
    rm_input: str = "auto"  # how the RM reads the LM's tokens: "ids", "text" (its own tokenizer) or "auto" (ids when it can)
    rm_format: str = "raw"  # the id path's reading of a chat prompt: "raw" (the LM's ids) or "chat" (inside the RM's template)


class StageLog:
    """A staged log on stderr: '[3/7] exporting the LM graph … done in 4.2 s'."""

    def __init__(self, total: int, quiet: bool = False) -> None:
        self.total, self.index, self.quiet = total, 0, quiet

    @contextmanager
    def stage(self, what: str) -> Iterator[None]:
        self.index += 1
        start = time.perf_counter()
        self.say(f"[{self.index}/{self.total}] {what} …")
        yield
        self.say(f"[{self.index}/{self.total}] {what}: done in {time.perf_counter() - start:.1f} s")

    def say(self, line: str) -> None:
        if not self.quiet:
            print(line, file=sys.stderr, flush=True)


def export_bundle(opts: ExportOptions, quiet: bool = False) -> Manifest:
    """Run the whole export; return the manifest of the bundle now at opts.out."""
    scheme = quantization(opts.quantize)
    log = StageLog(9 if scheme else 7, quiet)
    out = Path(opts.out).expanduser()
    check_device = _check_options(opts, out)
    with log.stage("reading configs and tokenizers"):
        spec = PairSpec.read(opts.lm, opts.rm, opts.rm_input, opts.rm_format)
        max_context = _max_context(opts.max_context, spec)
        log.say(f"    {spec.rm_input}")
    with log.stage(f"loading the LM and the RM ({opts.dtype})"):
        pair = ModelPair.load(spec, opts.dtype)
        if not 1 <= opts.max_k <= pair.vocab:
            raise ExportError(f"--max-k {opts.max_k} is out of range: it must be between 1 and the vocabulary size {pair.vocab}")
        fusion = _fusion(pair, opts.fuse)
        log.say(f"    {'fused bundle' if fusion.fused else 'two graphs'}: {fusion.reason}")
    plan = GraphPlan(element_type(opts.dtype), opts.cache, max_context, opts.max_k, pair.vocab, opts.exporter)
    with atomic_folder(out, replace=opts.force) as work:
        specs = _trace(pair, plan, fusion, work, log)
        with log.stage("writing the tokenizer" + ("s (the LM's and the RM's)" if pair.own_rm_tokens else "")):
            tokenizer, reads = _write_tokenizer(pair, work), write_rm_tokenizer(pair, work)
        with log.stage(f"checking the graphs against PyTorch (ONNX Runtime, {check_device})"):
            report = _check(pair, plan, specs, work, check_device, log)
        if scheme:  # the traced graphs passed the exporter's own limits: what follows is the quantization's error
            specs = _quantize(specs, scheme, opts.quantize_models, work, log)
            with log.stage(f"checking the {scheme.scheme} graphs against the unquantized PyTorch models (quantization limits)"):
                report = _check_quantized(pair, plan, specs, work, check_device, report, log)
        with log.stage("writing the manifest"):
            manifest = _write_manifest(work, specs, (tokenizer, reads), plan, report, check_device, fusion)
    log.say(f"bundle written to {out}")
    return manifest


def _check_options(opts: ExportOptions, out: Path) -> Device:
    """Options that need no model, checked before any work; returns where the graphs can be checked."""
    if opts.dtype not in SHORT_NAMES:
        raise ExportError(f"--dtype {opts.dtype!r} is not one of {sorted(SHORT_NAMES)}")
    if opts.cache not in CACHE_LAYOUTS:
        raise ExportError(f"--cache {opts.cache!r} is not one of {list(CACHE_LAYOUTS)}")
    if opts.exporter not in EXPORTERS:
        raise ExportError(f"--exporter {opts.exporter!r} is not one of {list(EXPORTERS)}")
    if not isinstance(opts.max_k, int) or isinstance(opts.max_k, bool) or opts.max_k < 1:
        raise ExportError(f"--max-k {opts.max_k!r} is out of range: it must be an integer >= 1 (and at most the vocabulary size)")
    if opts.max_context is not None and (not isinstance(opts.max_context, int) or isinstance(opts.max_context, bool) or opts.max_context < 2):
        raise ExportError(f"--max-context {opts.max_context!r} is out of range: it must be an integer >= 2 (and at most the models' position limit)")
    if opts.quantize not in (None, "none") and opts.dtype == "bf16":
        raise ExportError(f"--quantize {opts.quantize} applies to fp32 or fp16 graphs, not --dtype bf16: export with --dtype fp32 or fp16")
    unknown = sorted(set(opts.quantize_models) - {"lm", "rm"})
    if unknown or not opts.quantize_models:
        raise ExportError(f"--quantize-only {','.join(unknown) or '(none)'}: name the graphs to quantize, 'lm' and/or 'rm'")
    if out.exists() and not opts.force:
        raise ExportError(f"{out} already exists: pass --force to replace it, or choose another --out")
    _check_writable(out)
    return _check_device(opts.dtype)


def _check_writable(out: Path) -> None:
    """--out must be creatable: its nearest existing ancestor is a folder we may write in."""
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        why = "is a file" if not parent.is_dir() else "is not writable"
        raise ExportError(f"cannot write --out {out}: {parent} {why}; choose an --out inside a folder you can write to")


def _check_device(dtype: str) -> Device:
    """Where the exported graphs can be checked: ORT CPU runs fp32 and fp16, only ORT CUDA runs bf16."""
    import onnxruntime as ort

    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if dtype == "bf16" and not has_cuda:
        raise ExportError(
            "--dtype bf16 graphs can only be checked on ONNX Runtime CUDA (ORT CPU has no bf16 kernels), and this machine has "
            "no CUDAExecutionProvider: export with --dtype fp16, or export on a GPU machine with `pip install 'args-rt[gpu]'`"
        )
    return Device("cuda" if has_cuda and dtype != "fp32" else "cpu")


def _fusion(pair: ModelPair, fuse: bool) -> Fusion:
    if pair.reads_text:
        return Fusion(False, "the RM reads text, with a tokenizer of its own")
    if pair.own_rm_tokens:
        return Fusion(False, "--rm-format chat: the RM reads its own template around the LM's ids, with a cache of its own")
    return check_fusion(pair) if fuse else Fusion(False, "--no-fuse")


def _max_context(requested: int | None, spec: PairSpec) -> int:
    # An RM that reads ids of its own making is fed its last max_positions tokens: its limit does not bound the LM's context.
    configs = (spec.lm.config,) if spec.own_rm_tokens else (spec.lm.config, spec.rm.config)
    limits = [getattr(c, "max_position_embeddings", None) or getattr(c, "n_positions", None) for c in configs]
    model_limit = min(x for x in limits if x)
    if requested is None:
        return model_limit
    if not 2 <= requested <= model_limit:
        raise ExportError(f"--max-context {requested} is out of range: these models support 2 … {model_limit} tokens")
    return requested


Specs = tuple[GraphSpec, GraphSpec, GraphSpec | None]  # the LM's, the RM's (or fused step's), a fused bundle's propose graph's


def _trace(pair: ModelPair, plan: GraphPlan, fusion: Fusion, work: Path, log: StageLog) -> Specs:
    layout = f"{plan.cache} KV cache" + (f", {plan.max_context} slots" if plan.static else "")
    with log.stage(f"exporting the LM step graph (prefill + decode, in-graph top-k, {layout})"):
        lm = export_lm(pair.lm, plan, work / "lm.onnx")
    if fusion.fused:
        with log.stage(f"exporting the fused step graph (rewards and candidate states in one pass, {layout}) and its LM head"):
            return (lm, *export_fused(pair.lm, pair.rm, plan, work / "rm.onnx", work / PROPOSE_FILE))
    if pair.own_rm_tokens:
        what = "k whole texts per pass, no cache" if pair.rm.spec.encoder else "its own cache, k candidates' tails per pass, dynamic KV cache"
        with log.stage(f"exporting the RM's own-cache graph ({what})"):
            return lm, export_rm_graph(pair, plan, work / "rm.onnx"), None
    with log.stage(f"exporting the RM candidate graph (one cache, k candidates per pass, {layout})"):
        return lm, export_rm(pair.rm, plan, work / "rm.onnx"), None


def _quantize(specs: Specs, scheme: Quantization, which: tuple[str, ...], work: Path, log: StageLog) -> Specs:
    """Rewrite the chosen graphs with weight-only quantized MatMuls; their specs record the scheme. A fused bundle's
    propose graph (the LM head ARGS runs) goes with the fused step graph, which is the RM's."""
    names = " and ".join(n.upper() for n in ("lm", "rm") if n in which)
    with log.stage(f"quantizing the {names} weights to {scheme.scheme} (ONNX Runtime MatMulNBits, blocks of {scheme.block_size})"):
        out = []
        for name, spec in zip(("lm", "rm", "rm"), specs):
            if spec is not None and name in which:
                quantize_graph(work / spec.file, scheme)
                spec = replace(spec, quantization=scheme.as_dict())
            out.append(spec)
    return out[0], out[1], out[2]


def _write_tokenizer(pair: ModelPair, work: Path) -> TokenizerSpec:
    """tokenizer.json, the chat template, and the special ids generation needs."""
    tok = pair.tokenizer
    tok.backend_tokenizer.save(str(work / TOKENIZER_FILE))
    template = tok.chat_template if isinstance(tok.chat_template, str) else None
    if template:
        (work / CHAT_TEMPLATE_FILE).write_text(template)
    eos = getattr(pair.lm.model.generation_config, "eos_token_id", None)
    eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tok.eos_token_id is not None:
        eos_ids.add(tok.eos_token_id)
    pad = tok.pad_token_id if tok.pad_token_id is not None else min(eos_ids, default=0)
    return TokenizerSpec(TOKENIZER_FILE, CHAT_TEMPLATE_FILE if template else None, sorted(eos_ids), int(pad), tok.bos_token, tok.eos_token)


def _check(pair: ModelPair, plan: GraphPlan, specs: Specs, work: Path, device: Device, log: StageLog) -> ValidationReport:
    """Both graphs against PyTorch, choose.onnx against the host choosers; raises ExportError on any failure."""
    report = _validate(work, specs, pair, plan, device)
    validate_choice_graph(write_choice_graph(work), report)
    for line in report.lines():
        log.say("    " + line)
    report.raise_if_failed()
    return report


def _check_quantized(pair: ModelPair, plan: GraphPlan, specs: Specs, work: Path, device: Device,
                     report: ValidationReport, log: StageLog) -> ValidationReport:
    """The quantized graphs against PyTorch, held to their scheme's limits; their checks join the report, named so."""
    quantized = _validate(work, specs, pair, plan, device)
    for check in quantized.checks:
        check.name = f"after quantization: {check.name}"
        log.say("    " + quantized.line(check))
    report.checks += quantized.checks
    report.raise_if_failed()
    return report


def _validate(work: Path, specs: Specs, pair: ModelPair, plan: GraphPlan, device: Device) -> ValidationReport:
    """Every graph against PyTorch: the LM's (and an RM reading its ids) step by step; an RM reading text on its texts."""
    if not pair.own_rm_tokens:
        return validate_graphs(work, specs, pair, plan, device)
    report = validate_graphs(work, (specs[0], None, None), pair, plan, device)
    check_text_rm(work, specs[1], pair, device, report)
    return report


def _write_manifest(work: Path, specs: Specs, tokenizers: tuple[TokenizerSpec, RewardInput], plan: GraphPlan,
                    report: ValidationReport, device: Device, fusion: Fusion) -> Manifest:
    tokenizer, reads = tokenizers
    for f in work.iterdir():
        os.chmod(f, 0o644)
    manifest = Manifest(
        lm=specs[0], rm=specs[1], propose=specs[2], tokenizer=tokenizer, max_context=plan.max_context, max_k=plan.max_k, fused=fusion.fused,
        files={f.name: sha256_file(f) for f in sorted(work.iterdir())}, choice_file=CHOICE_FILE,
        validation={"device": f"onnxruntime-{device}", "checks": report.as_dict()},
        created_by=f"args-export {__version__} ({_versions()})", reward_input=reads,
    )
    (work / MANIFEST_FILE).write_text(manifest.to_json())
    return manifest


def _versions() -> str:
    import onnx
    import torch
    import transformers

    return f"torch {torch.__version__}, transformers {transformers.__version__}, onnx {onnx.__version__}"
