"""Export an LM + RM pair into a bundle folder: graphs, tokenizer, manifest with checksums and the parity report.

The bundle is written into a temporary sibling folder and renamed into place only after the parity check
passed and the manifest is written, so an interrupted or failed export leaves nothing that looks valid.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from args_runtime.errors import ExportError
from args_runtime.manifest import MANIFEST_FILE, Manifest, TokenizerSpec, sha256_file

from . import __version__
from .architectures import context_limit
from .loading import DTYPES, backbone_of, check_same_tokenizer, load_config, load_lm, load_rm, load_tokenizer, resolve_source
from .graphs import CACHE_LAYOUTS
from .onnx_export import export_lm, export_rm, graph_spec
from .choice_graph import CHOICE_FILE, write_choice_graph
from .validate import validate_choice_graph, validate_graphs

TOKENIZER_FILE = "tokenizer.json"
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
    cache: str = "dynamic"  # "static": fixed in-place KV-cache buffers (CUDA graphs, TensorRT, flat cost per token)


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


def _max_context(requested: int | None, lm_config, rm_config) -> int:
    limits = [getattr(c, "max_position_embeddings", None) or getattr(c, "n_positions", None) for c in (lm_config, rm_config)]
    limits += [context_limit(c) for c in (lm_config, rm_config)]
    model_limit = min(x for x in limits if x)
    if requested is None:
        return model_limit
    if not 2 <= requested <= model_limit:
        raise ExportError(f"--max-context {requested} is out of range: these models support 2 … {model_limit} tokens")
    return requested


def _check_device(dtype: str) -> str:
    """Where the exported graphs can be checked: ORT CPU runs fp32 and fp16, only ORT CUDA runs bf16."""
    import onnxruntime as ort

    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if dtype == "bf16" and not has_cuda:
        raise ExportError(
            "--dtype bf16 graphs can only be checked on ONNX Runtime CUDA (ORT CPU has no bf16 kernels), and this machine has "
            "no CUDAExecutionProvider: export with --dtype fp16, or export on a GPU machine with `pip install 'args-rt[gpu]'`"
        )
    return "cuda" if has_cuda and dtype != "fp32" else "cpu"


def _special_ids(tokenizer, lm) -> tuple[list[int], int]:
    eos = getattr(lm.generation_config, "eos_token_id", None)
    eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        eos_ids.add(tokenizer.eos_token_id)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids, default=0)
    return sorted(eos_ids), int(pad)


def export_bundle(opts: ExportOptions, quiet: bool = False) -> Manifest:
    """Run the whole export; return the manifest of the bundle now at opts.out."""
    log = StageLog(7, quiet)
    out = Path(opts.out).expanduser()
    if opts.dtype not in DTYPES:
        raise ExportError(f"--dtype {opts.dtype!r} is not one of {sorted(DTYPES)}")
    if opts.cache not in CACHE_LAYOUTS:
        raise ExportError(f"--cache {opts.cache!r} is not one of {list(CACHE_LAYOUTS)}")
    check_device = _check_device(opts.dtype)
    if out.exists() and not opts.force:
        raise ExportError(f"{out} already exists: pass --force to replace it, or choose another --out")
    with log.stage("reading configs and tokenizers"):
        lm_src, rm_src = resolve_source(opts.lm, "LM"), resolve_source(opts.rm, "RM")
        lm_config, rm_config = load_config(lm_src), load_config(rm_src)
        lm_tok = load_tokenizer(lm_src)
        check_same_tokenizer(lm_tok, load_tokenizer(rm_src), lm_src.name, rm_src.name)
        max_context = _max_context(opts.max_context, lm_config, rm_config)
    with log.stage(f"loading the LM and the RM ({opts.dtype})"):
        lm, lm_family = load_lm(lm_src, opts.dtype)
        rm, rm_family = load_rm(rm_src, opts.dtype)
        vocab = lm.get_output_embeddings().weight.shape[0]
        if not 1 <= opts.max_k <= vocab:
            raise ExportError(f"--max-k {opts.max_k} is out of range: it must be between 1 and the vocabulary size {vocab}")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        dtype = DTYPES[opts.dtype]
        lm_stack, rm_stack = lm_family.stack(backbone_of(lm, lm_family), lm.config), rm_family.stack(backbone_of(rm, rm_family), rm.config)
        layout = f"{opts.cache} KV cache" + (f", {max_context} slots" if opts.cache == "static" else "")
        with log.stage(f"exporting the LM step graph (prefill + decode, in-graph top-k, {layout})"):
            lm_io = export_lm(lm_stack, getattr(lm, lm_family.lm_head_attr), dtype, opts.max_k, vocab, work / "lm.onnx", opts.cache, max_context)
        with log.stage(f"exporting the RM candidate graph (one cache, k candidates per pass, {layout})"):
            rm_io = export_rm(rm_stack, getattr(rm, rm_family.score_attr), dtype, vocab, work / "rm.onnx", opts.cache, max_context)
        lm_spec = graph_spec("lm.onnx", lm_src.name, lm.config, lm_stack, dtype, vocab, lm_io, opts.cache)
        rm_spec = graph_spec("rm.onnx", rm_src.name, rm.config, rm_stack, dtype, vocab, rm_io, opts.cache)
        with log.stage("writing the tokenizer"):
            lm_tok.backend_tokenizer.save(str(work / TOKENIZER_FILE))
            template = lm_tok.chat_template if isinstance(lm_tok.chat_template, str) else None
            if template:
                (work / CHAT_TEMPLATE_FILE).write_text(template)
            eos_ids, pad_id = _special_ids(lm_tok, lm)
            tok_spec = TokenizerSpec(TOKENIZER_FILE, CHAT_TEMPLATE_FILE if template else None, eos_ids, pad_id, lm_tok.bos_token, lm_tok.eos_token)
        with log.stage(f"checking the graphs against PyTorch (ONNX Runtime, {check_device})"):
            report = validate_graphs(work, lm_spec, rm_spec, lm, rm, rm_family, k=min(4, opts.max_k), max_context=max_context, device=check_device)
            validate_choice_graph(write_choice_graph(work), report)
            for line in report.lines():
                log.say("    " + line)
            report.raise_if_failed()
        with log.stage("writing the manifest"):
            for f in work.iterdir():
                os.chmod(f, 0o644)
            manifest = Manifest(
                lm=lm_spec, rm=rm_spec, tokenizer=tok_spec, max_context=max_context, max_k=opts.max_k,
                files={f.name: sha256_file(f) for f in sorted(work.iterdir())}, choice_file=CHOICE_FILE,
                validation={"device": f"onnxruntime-{check_device}", "checks": report.as_dict()},
                created_by=f"args-export {__version__} (torch {torch.__version__}, {_versions()})",
            )
            (work / MANIFEST_FILE).write_text(manifest.to_json())
        _replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log.say(f"bundle written to {out}")
    return manifest


def _replace(work: Path, out: Path) -> None:
    """Move the finished bundle into place; an old one (with --force) is removed only after the new one lands."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
    work.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _versions() -> str:
    import onnx
    import transformers

    return f"transformers {transformers.__version__}, onnx {onnx.__version__}"
