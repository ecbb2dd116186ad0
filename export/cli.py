"""`args-export`: the command line of the exporter."""

from __future__ import annotations

import argparse
import json
import sys

from args_runtime.errors import ArgsError

DESCRIPTION = """\
Export a Hugging Face causal LM and a reward model (a one-label sequence-classification head on a
decoder that shares the LM's tokenizer) into an args-rt bundle: ONNX graphs with KV-cache inputs and
outputs, the tokenizer and chat template, and a manifest with checksums. Every graph is checked
against PyTorch with ONNX Runtime before the bundle is written.

Supported architectures: Llama, Mistral, Qwen2 (SmolLM2 is Llama), OPT, GPT-2."""

EPILOG = """\
examples:
  args-export --lm ./llama-7b-sft --rm ./llama-7b-rm --out bundles/llama7b
  args-export --lm SmolLM2.gguf --rm ./smol-rm --out bundles/smol --max-context 2048 --force
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="args-export", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lm", required=True, metavar="PATH", help="language model: a local HF folder (config.json + weights) or a .gguf file")
    p.add_argument("--rm", required=True, metavar="PATH", help="reward model: a local HF folder of a *ForSequenceClassification with num_labels=1 (or a .gguf)")
    p.add_argument("--out", required=True, metavar="DIR", help="bundle folder to write (refused if it exists, unless --force)")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32", help="weights and KV-cache precision: fp32 for CPU (default), fp16/bf16 for GPU")
    p.add_argument("--max-context", type=int, metavar="N", help="longest prompt + generated text the runtime will accept (default: the models' position limit)")
    p.add_argument("--max-k", type=int, default=64, metavar="K", help="largest number of ARGS candidates per step; the LM graph outputs its top-K (default 64)")
    p.add_argument("--cache", choices=["dynamic", "static"], default="dynamic",
                   help="KV-cache layout: 'dynamic' grows the cache by concatenation (fastest for short texts on CPU); 'static' keeps "
                   "fixed [batch, heads, max-context, head_dim] buffers written in place (fixed shapes and addresses: CUDA graphs, "
                   "TensorRT, and a cost per token that stays flat as the text grows; attention always spans --max-context)")
    p.add_argument("--force", action="store_true", help="replace DIR if it exists (the old bundle is removed only after the new one is complete)")
    p.add_argument("--tensorrt", action="store_true", help="also build TensorRT engines (needs TensorRT and an NVIDIA GPU; "
                   "fails before writing anything when TensorRT is missing: pip install 'args-rt[trt]'). Engine build not implemented yet")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON on stdout when done")
    p.add_argument("--quiet", action="store_true", help="no progress log on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .bundle import ExportOptions, export_bundle

    try:
        if args.tensorrt:
            from .tensorrt_build import require_tensorrt

            require_tensorrt()  # before any file is written
            raise ArgsError("--tensorrt: the engine build is not implemented yet (see README, TensorRT)")
        manifest = export_bundle(
            ExportOptions(args.lm, args.rm, args.out, args.dtype, args.max_context, args.max_k, args.force, args.cache), quiet=args.quiet
        )
    except ArgsError as e:
        print(f"args-export: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(manifest.to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
