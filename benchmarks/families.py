"""`args-bench families`: what a model family costs. Seeded random LM + RM pairs of every family at one shape (the
Llama stack's as the baseline), exported the same way (two graphs, the default static layout), raced in one run,
interleaved: ms/token of ARGS-greedy per family and its ratio to Llama's, and the lines of each family's stack module.

    args-bench families                         # hidden 256, 4 layers, 64-token prompt, 64 new tokens, 3 rounds
    args-bench families --families qwen3,gemma2 --rounds 5

Every family's features are on (q/k norms, soft caps, sliding layers, partial rotary, parallel residual), with the
window given by --window (default 32: shorter than prompt + reply, so the window masks do work). Writes families.json
under benchmarks/results/<machine>/ (--out)."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from .common import UsageError, machine, module_main, results_folder

VOCAB = 49152  # SmolLM2's tokenizer, which every pair is saved with
SHAPE = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8)
STACK_MODULES = {"llama": "llama.py", "qwen3": "qwen3.py", "olmo2": "olmo2.py", "phi3": "phi3.py", "gpt_neox": "gpt_neox.py",
                 "gemma2": "gemma.py", "gemma3_text": "gemma.py", "mistral-window": "llama.py"}


def family_configs(shape: dict, window: int) -> dict:
    """One seeded-model config per family at `shape` (hidden_size, intermediate_size, num_hidden_layers,
    num_attention_heads), every distinguishing feature on; the sliding families slide `window` tokens. Shared with
    tests/test_families.py, which uses a tiny shape and a window of 6."""
    from transformers import (Gemma2Config, Gemma3TextConfig, GPTNeoXConfig, LlamaConfig, MistralConfig, Olmo2Config,
                              Phi3Config, Qwen3Config)

    common = dict(vocab_size=VOCAB, pad_token_id=2, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
                  max_position_embeddings=512, initializer_range=0.2, **shape)
    heads = shape["num_attention_heads"]
    kv, head_dim = max(1, heads // 2), shape["hidden_size"] // heads
    partial = lambda factor: {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": factor}  # noqa: E731
    gemma = dict(num_key_value_heads=kv, head_dim=head_dim, sliding_window=window, query_pre_attn_scalar=head_dim + 8,
                 layer_types=[("sliding_attention" if i % 2 == 0 else "full_attention") for i in range(shape["num_hidden_layers"])])
    return {
        "llama": LlamaConfig(num_key_value_heads=kv, **common),
        "qwen3": Qwen3Config(num_key_value_heads=kv, head_dim=head_dim, use_sliding_window=True, sliding_window=window,
                             max_window_layers=1, **common),
        "olmo2": Olmo2Config(num_key_value_heads=kv, **common),
        "phi3": Phi3Config(num_key_value_heads=kv, rope_parameters=partial(0.5), **common),
        "gpt_neox": GPTNeoXConfig(rope_parameters=partial(0.25), use_parallel_residual=True, **common),
        "gemma2": Gemma2Config(attn_logit_softcapping=5.0, final_logit_softcapping=3.0, **gemma, **common),
        "gemma3_text": Gemma3TextConfig(**gemma, **common),
        "mistral-window": MistralConfig(num_key_value_heads=1, sliding_window=window, **common),
    }


def stack_lines(family: str) -> int:
    """Lines of code (not blank, not comments, docstrings included) of the family's stack module."""
    from args_export import stacks

    path = Path(stacks.__file__).with_name(STACK_MODULES[family])
    return sum(1 for line in path.read_text().splitlines() if line.strip() and not line.strip().startswith("#"))


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`args-bench families`' options."""
    p.add_argument("--families", default=None, help=f"comma-separated (default: all of {', '.join(STACK_MODULES)})")
    p.add_argument("--hidden", type=int, default=SHAPE["hidden_size"], help="hidden size (intermediate: 3x; heads: hidden / 32)")
    p.add_argument("--layers", type=int, default=SHAPE["num_hidden_layers"])
    p.add_argument("--window", type=int, default=32, help="sliding window of the sliding families (default 32)")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--w", type=float, default=1.5)
    p.add_argument("--rounds", type=int, default=3, help="rounds; each runs every family once, in turn (default 3)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads per graph")
    p.add_argument("--out", type=Path, help="results folder (default: benchmarks/results/<machine> in a checkout, else ./args-bench-results/<machine>)")


def main(argv: list[str] | None = None) -> int:
    """`python -m args_benchmarks.families`: the same as `args-bench families`."""
    return module_main(sys.modules[__name__], "args-bench families", argv)


def _export_pairs(names: list[str], configs: dict, folder: Path, k: int) -> dict[str, Path]:
    """Each family's seeded pair saved with SmolLM2's tokenizer and exported (two graphs, default layout)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from args_export.bundle import ExportOptions, export_bundle
    from args_export.demo.prepare import cache_dir, smollm2_folder

    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder(cache_dir()))
    bundles = {}
    for name in names:
        config = configs[name]
        torch.manual_seed(0)
        lm = AutoModelForCausalLM.from_config(config)
        torch.manual_seed(1)
        rm = AutoModelForSequenceClassification.from_config(config.__class__.from_dict({**config.to_dict(), "num_labels": 1}))
        for role, model in (("lm", lm), ("rm", rm)):
            model.save_pretrained(folder / f"{name}-{role}")
            tokenizer.save_pretrained(folder / f"{name}-{role}")
        bundles[name] = folder / f"{name}-bundle"
        export_bundle(ExportOptions(folder / f"{name}-lm", folder / f"{name}-rm", bundles[name], max_k=max(16, k), fuse=False,
                                    max_context=256), quiet=True)
        print(f"exported {name}", file=sys.stderr, flush=True)
    return bundles


def run(args: argparse.Namespace) -> int:
    from args_runtime import ArgsGenerator

    configs = family_configs(dict(hidden_size=args.hidden, intermediate_size=3 * args.hidden, num_hidden_layers=args.layers,
                                  num_attention_heads=max(1, args.hidden // 32)), args.window)
    names = ["llama"] + [n for n in (args.families.split(",") if args.families else configs) if n != "llama"]
    unknown = [n for n in names if n not in configs]
    if unknown:
        raise UsageError(f"--families {','.join(unknown)}: not among {', '.join(configs)}")
    if args.prompt_tokens + args.new_tokens > 256:
        raise UsageError("--prompt-tokens + --new-tokens must fit the bundles' 256-token context")
    prompt = [100 + (7 * i) % 5000 for i in range(args.prompt_tokens)]
    with tempfile.TemporaryDirectory(prefix="args-bench-families-") as tmp:
        bundles = _export_pairs(names, configs, Path(tmp), args.k)
        gens = {n: ArgsGenerator.from_bundle(bundles[n], threads=args.threads) for n in names}
        for gen in gens.values():  # warm-up
            gen.generate(prompt, k=args.k, w=args.w, max_new_tokens=4, ignore_eos=True)
        times: dict[str, list[float]] = {n: [] for n in names}
        for round_ in range(args.rounds):
            for name in names[round_ % len(names):] + names[: round_ % len(names)]:  # each round starts one later
                result = gens[name].generate(prompt, k=args.k, w=args.w, max_new_tokens=args.new_tokens, ignore_eos=True)
                times[name].append(result.timings["decode_ms_per_token"])
    base = statistics.median(times["llama"])
    rows = [{"family": n, "stack_module": STACK_MODULES[n], "stack_lines": stack_lines(n),
             "ms_per_token": round(statistics.median(times[n]), 3), "vs_llama": round(statistics.median(times[n]) / base, 3),
             "all_ms_per_token": [round(t, 3) for t in times[n]]} for n in names]
    info = machine()
    doc = {"machine": info, "shape": {"hidden": args.hidden, "layers": args.layers, "heads": max(1, args.hidden // 32), "vocab": VOCAB},
           "window": args.window, "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "k": args.k, "w": args.w,
           "rounds": args.rounds, "bundle": "two graphs, static layout, fp32", "families": rows,
           "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    out = args.out or results_folder(info["label"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "families.json").write_text(json.dumps(doc, indent=2))
    print(f"{'family':16} {'stack module':14} {'lines':>5} {'ms/token':>9} {'vs llama':>8}")
    for r in rows:
        print(f"{r['family']:16} {r['stack_module']:14} {r['stack_lines']:5d} {r['ms_per_token']:9.2f} {r['vs_llama']:7.2f}x")
    print(f"written {out / 'families.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
