"""`args-export`: the command line of the exporter."""

from __future__ import annotations

import argparse
import sys

from args_runtime.errors import ArgsError

DESCRIPTION = """\
Export a Hugging Face causal LM and a reward model (a one-label sequence-classification head) into an
args-rt bundle: ONNX graphs with KV-cache inputs and outputs, the tokenizers and chat templates, and a
manifest with checksums. Every graph is checked against PyTorch with ONNX Runtime before the bundle is
written.

How the RM reads the LM's tokens (--rm-input, the export log says which and why): an RM whose vocabulary
holds every LM token at the same id reads the LM's ids as they are (the fast path, as the paper's code);
any other RM (its own tokenizer, an encoder such as BERT/RoBERTa/DeBERTa) reads text: each candidate's
text re-tokenized by the RM's own tokenizer, in its own chat template for chat prompts
(docs/reward-models.md). An RM that reads the LM's ids but was trained on its own chat template (a Llama-3
RM beside an LM whose template differs) reads a chat prompt's reply inside that template with --rm-format chat.

When the RM is a score head on the LM's own backbone (its decoder tensors hash the same), the bundle is fused:
one pass per token scores the k candidates and proposes each one's next top-k, so ARGS costs about one LM
step per token instead of an LM step and an RM step (--no-fuse keeps two graphs).

Supported model types: llama (SmolLM2), mistral, qwen2, qwen3, olmo2, phi3, gemma2, gemma3_text, gpt_neox (Pythia),
opt, gpt2 (docs/model-families.md)."""

EPILOG = """\
examples:
  args-export --lm ./llama-7b-sft --rm ./llama-7b-rm --out bundles/llama7b
  args-export --lm SmolLM2.gguf --rm ./smol-rm --out bundles/smol --max-context 2048 --force
  args-export --lm ./smol --rm ./smol-rm --out bundles/smol --dtype fp16 --tensorrt     # ONNX + TensorRT engines
  args-export --lm ./smol --rm ./llama-rm --out bundles/int8 --quantize int8 --quantize-only rm   # int8 RM weights
  args-export --lm ./smol --rm ./deberta-rm --out bundles/deberta     # an encoder RM: it reads text
  args-export --lm ./llama3-sft --rm ./llama3-rm --out bundles/l3 --rm-format chat   # the RM's own template around the LM's ids
  args-export --tensorrt-only bundles/smol --trt-precision fp16 --trt-max-batch 4       # engines for an existing bundle

TensorRT engines (lm.engine, rm.engine) are specific to the GPU architecture and TensorRT version that built them;
the manifest records both, and the runtime refuses a foreign engine with the command to rebuild it here.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="args-export", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lm", metavar="PATH", help="language model: a local HF folder (config.json + weights) or a .gguf file")
    p.add_argument("--rm", metavar="PATH", help="reward model: a local HF folder of a *ForSequenceClassification with num_labels=1 (or a .gguf)")
    p.add_argument("--out", metavar="DIR", help="bundle folder to write (refused if it exists, unless --force)")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32", help="weights and KV-cache precision: fp32 for CPU (default), fp16/bf16 for GPU")
    p.add_argument("--max-context", type=int, metavar="N", help="longest prompt + generated text the runtime will accept (default: the models' position limit)")
    p.add_argument("--max-k", type=int, default=64, metavar="K", help="largest number of ARGS candidates per step; the LM graph outputs its top-K (default 64)")
    p.add_argument("--cache", choices=["dynamic", "static"], default="static",
                   help="KV-cache layout: 'static' (default) keeps fixed [slots, heads, context, head_dim] buffers written in place: "
                   "args-serve batches requests continuously over them (each joins and leaves between two steps), and they suit "
                   "CUDA graphs and TensorRT; 'dynamic' grows the cache by concatenation, the same speed for one stream on a CPU, "
                   "but a server can only run fixed batches over it (a batch runs to its end)")
    p.add_argument("--exporter", choices=["torchscript", "dynamo"], default="torchscript",
                   help="torch.onnx path that traces the graphs: torchscript (default; torch deprecates it, but it exports 7-10x "
                   "faster on CPU) or dynamo (torch.export; same graph interface, checks and tokens, smaller graphs)")
    p.add_argument("--quantize", choices=["int8", "int4"], help="weight-only quantization with ONNX Runtime's MatMulNBits quantizer "
                   "(block-wise symmetric weights, blocks of 32; activations stay fp): fewer weight bytes per step, for a reward model "
                   "with its own backbone above all. The check against PyTorch then uses quantization limits and says so")
    p.add_argument("--quantize-only", choices=["lm", "rm"], help="apply --quantize to this graph only (default: both)")
    p.add_argument("--rm-input", choices=["auto", "ids", "text"], default="auto",
                   help="how the RM reads the LM's tokens: 'ids' (as they are; the RM's vocabulary must hold every LM token at "
                   "the same id), 'text' (decoded and re-tokenized by the RM's own tokenizer), 'auto' (default: ids when the RM "
                   "can read them, else text)")
    p.add_argument("--rm-format", choices=["raw", "chat"], default="raw",
                   help="what an RM reading the LM's ids reads of a chat prompt: 'raw' (default, the paper's code: the LM's ids "
                   "as they are, in the LM's template) or 'chat' (the RM's own chat template rendered around the reply's LM ids: "
                   "ids before + reply + [candidate] + ids after, the reward read at the template's end). The text path always "
                   "uses the RM's template")
    p.add_argument("--no-fuse", action="store_true", help="keep two graphs even when the RM is a score head on the LM's own backbone "
                   "(by default export then writes a fused bundle: one pass per token scores the candidates and proposes the next ones)")
    p.add_argument("--force", action="store_true", help="replace DIR if it exists (the old bundle is removed only after the new one is complete)")
    trt = p.add_argument_group("TensorRT engines (need TensorRT 10, cuda-python and an NVIDIA GPU: pip install 'args-rt[trt]')")
    trt.add_argument("--tensorrt", action="store_true", help="after the ONNX export, build lm.engine and rm.engine into the bundle "
                     "(checked before anything is written: fails at once when TensorRT is missing)")
    trt.add_argument("--tensorrt-only", metavar="BUNDLE", help="only build the engines for an existing bundle (no --lm/--rm/--out); "
                     "the bundle is left unchanged if the build fails")
    trt.add_argument("--trt-precision", choices=["fp16", "bf16", "fp32"], default="fp16", help="precision TensorRT may use inside the engines (default fp16)")
    trt.add_argument("--trt-max-batch", type=int, default=8, metavar="N", help="largest batch the engines accept (default 8); "
                     "sequence limits come from the bundle's max_context and max_k")
    trt.add_argument("--trt-timing-cache", metavar="PATH", help="TensorRT timing cache: read if it exists, written after the build (faster rebuilds)")
    trt.add_argument("--trt-workspace-gib", type=float, default=4.0, metavar="GIB", help="builder workspace memory limit (default 4 GiB)")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON on stdout when done")
    p.add_argument("--quiet", action="store_true", help="no progress log on stderr")
    return p


def _check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--tensorrt-only works on an existing bundle; otherwise --lm, --rm and --out are required (exit 2 via p.error)."""
    given = [f"--{n}" for n in ("lm", "rm", "out") if getattr(args, n)]
    if args.tensorrt_only:
        if given or args.tensorrt:
            p.error(f"--tensorrt-only BUNDLE builds engines for an existing bundle; drop {', '.join(given) or '--tensorrt'}")
    elif len(given) < 3:
        p.error(f"the following arguments are required: {', '.join(f'--{n}' for n in ('lm', 'rm', 'out') if not getattr(args, n))} "
                "(or --tensorrt-only BUNDLE)")
    if args.quantize_only and not args.quantize:
        p.error("--quantize-only needs --quantize int8|int4")
    if args.trt_max_batch < 1:
        p.error(f"--trt-max-batch {args.trt_max_batch}: must be at least 1")
    if not args.trt_workspace_gib > 0 or args.trt_workspace_gib == float("inf"):
        p.error(f"--trt-workspace-gib {args.trt_workspace_gib}: must be a number of GiB > 0")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    try:
        manifest = None
        if args.tensorrt or args.tensorrt_only:
            from .gpu.tensorrt_build import require_build_stack

            require_build_stack()  # TensorRT, cuda-python, a GPU: before any file is written
        if not args.tensorrt_only:
            from .bundle import ExportOptions, export_bundle

            manifest = export_bundle(
                ExportOptions(args.lm, args.rm, args.out, args.dtype, args.max_context, args.max_k, args.force, args.cache, args.exporter,
                              args.quantize, (args.quantize_only,) if args.quantize_only else ("lm", "rm"), fuse=not args.no_fuse,
                              rm_input=args.rm_input, rm_format=args.rm_format),
                quiet=args.quiet
            )
        if args.tensorrt or args.tensorrt_only:
            manifest = _build_engines(args.tensorrt_only or args.out, args)
    except ArgsError as e:
        print(f"args-export: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the bundle is written into a temporary folder and renamed only when complete
        print(f"\nargs-export: interrupted; nothing was written ({args.out or args.tensorrt_only} is as it was)", file=sys.stderr)
        return 130
    if args.json and manifest is not None:
        print(manifest.to_json())
    return 0


def _build_engines(bundle: str, args: argparse.Namespace):
    from args_runtime.manifest import load_manifest

    from .gpu.tensorrt_build import build_engines

    try:
        build_engines(bundle, args.trt_precision, args.trt_max_batch, args.trt_timing_cache, args.trt_workspace_gib, args.quiet)
    except ArgsError as e:
        if args.tensorrt:  # the ONNX bundle itself is complete and usable
            raise type(e)(f"{e}\n(the ONNX bundle {bundle} was written; retry the engines with: args-export --tensorrt-only {bundle})") from e
        raise
    return load_manifest(bundle, verify_checksums=False)


if __name__ == "__main__":
    sys.exit(main())
