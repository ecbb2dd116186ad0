"""One pair's bundles side by side on one device (the acceptance run's `bundles` stage): ARGS-greedy tokens and ms/token
of each, token agreement with the first bundle's tokens (the two-graph one), and plain greedy on each (what fused ARGS
costs over the LM alone). Prompts and bundles alternate, so machine noise falls on all alike.

    python -m args_benchmarks.gpu.compare --bundle TWO_GRAPH --bundle FUSED --bundle INT8 --device cuda --out compare.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def label(manifest) -> str:
    """'fused float16', 'two-graph int8': how the bundle runs a step and what its LM weights are stored as."""
    return f"{'fused' if manifest.fused else 'two-graph'} {manifest.lm.weights}"


def compare(args: argparse.Namespace) -> dict:
    from args_runtime import ArgsGenerator

    from ..latency import make_prompts
    from ..report import prefix_agreement

    gens = [ArgsGenerator.from_bundle(path, args.device, verify_checksums=False) for path in args.bundle]
    prompts = make_prompts(gens[0].tokenizer, args.prompt_tokens, args.prompts)
    settings = dict(k=args.k, w=args.w, max_new_tokens=args.new_tokens, ignore_eos=True)
    for gen in gens:  # first runs allocate arenas and load kernels
        gen.generate(prompts[0], **{**settings, "max_new_tokens": 4})
    tokens, args_ms, greedy_ms = ([[] for _ in gens] for _ in range(3))
    started = time.perf_counter()
    for prompt in prompts:
        for i, gen in enumerate(gens):
            result = gen.generate(prompt, **settings)
            tokens[i].append(result.token_ids)
            args_ms[i] += result.timings["step_ms"]
            greedy_ms[i] += gen.greedy(prompt, max_new_tokens=args.new_tokens, ignore_eos=True).timings["step_ms"]
    rows = []
    for i, (gen, path) in enumerate(zip(gens, args.bundle)):
        same = [a == b for mine, base in zip(tokens[i], tokens[0]) for a, b in zip(mine, base)]
        ms, greedy = statistics.median(args_ms[i]), statistics.median(greedy_ms[i])
        rows.append({"bundle": label(gen.manifest), "path": str(path), "fused": gen.manifest.fused, "lm_weights": gen.manifest.lm.weights,
                     "rm_weights": gen.manifest.rm.weights, "ms_per_token": round(ms, 3), "greedy_ms_per_token": round(greedy, 3),
                     "cost_vs_greedy": round(ms / greedy, 3), "token_agreement": round(sum(same) / max(1, len(same)), 4),
                     "prefix_agreement": round(prefix_agreement(tokens[i], tokens[0]), 4),
                     "exact_replies": sum(m == b for m, b in zip(tokens[i], tokens[0])) / len(prompts)})
    return {"device": args.device, "base": rows[0]["bundle"], "rows": rows, "wall_s": round(time.perf_counter() - started, 1),
            "settings": {"k": args.k, "w": args.w, "prompts": args.prompts, "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
                         "method": "greedy", "ignore_eos": True, "cuda_graph": False}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m args_benchmarks.gpu.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, action="append", required=True, help="a bundle (repeat; the first is the base)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--w", type=float, default=1.5)
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = p.parse_args(argv)
    from args_runtime.errors import ArgsError

    try:
        doc = compare(args)
    except ArgsError as e:
        print(f"compare: error: {e}", file=sys.stderr)
        return 2
    args.out.write_text(json.dumps(doc, indent=1))
    for r in doc["rows"]:
        print(f"{r['bundle']:<20} {r['ms_per_token']:8.2f} ms/token ({r['cost_vs_greedy']:.2f}x greedy), "
              f"tokens as {doc['base']}'s: {r['token_agreement']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
