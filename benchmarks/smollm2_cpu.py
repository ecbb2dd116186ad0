"""Side-by-side ms/token on one machine, interleaved: the transformers reference ARGS (the paper's code
structure), args-rt ARGS on ONNX Runtime, and args-rt plain greedy, on SmolLM2-135M as LM and RM.
Checks that reference and args-rt choose identical tokens. Prints a table and writes JSON.

    python benchmarks/smollm2_cpu.py [--k 10] [--new-tokens 128] [--repeats 3] [--out benchmarks/results]

The full harness (sweeps, percentiles, GPU, plots) is separate work; this is the headline figure."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from args_export.demo import cache_dir, demo_paths, prepare_bundle
from args_export.architectures import family_of
from args_export.reference import ReferenceARGS
from args_runtime import ArgsGenerator

PROMPT = [{"role": "user", "content": "Give me one tip for a calm morning."}]


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch_threads": torch.get_num_threads()}


def timed(fn) -> tuple[float, list[int]]:
    start = time.perf_counter()
    tokens = fn()
    return time.perf_counter() - start, tokens


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--w", type=float, default=1.5)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args()

    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    bundle = prepare_bundle(cache_dir())
    lm_dir, rm_dir, _ = demo_paths(cache_dir())
    gen = ArgsGenerator.from_bundle(bundle)
    lm = AutoModelForCausalLM.from_pretrained(lm_dir).eval()
    rm = AutoModelForSequenceClassification.from_pretrained(rm_dir).eval()
    reference = ReferenceARGS(lm, rm, family_of(rm.config))
    ids = gen.tokenizer.encode(PROMPT)
    n, k, w = args.new_tokens, args.k, args.w

    runners = {
        "reference ARGS (transformers eager)": lambda: reference.generate(ids, k, w, n),
        "args-rt ARGS (ORT CPU)": lambda: gen.generate(ids, k=k, w=w, max_new_tokens=n, ignore_eos=True).token_ids,
        "args-rt plain greedy (ORT CPU)": lambda: gen.greedy(ids, max_new_tokens=n, ignore_eos=True).token_ids,
    }
    for run in runners.values():  # warm-up, excluded
        timed(run)
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    tokens: dict[str, list[int]] = {}
    for _ in range(args.repeats):  # interleaved: each repeat runs every contender once
        for name, run in runners.items():
            s, tokens[name] = timed(run)
            seconds[name].append(s)
    ms_per_token = {name: 1e3 * statistics.median(s) / n for name, s in seconds.items()}
    ref_name, ours_name = list(runners)[:2]
    identical = tokens[ref_name] == tokens[ours_name]
    result = {
        "machine": machine(), "k": k, "w": w, "new_tokens": n, "prompt_tokens": len(ids), "repeats": args.repeats,
        "ms_per_token_median": ms_per_token, "speedup_vs_reference": ms_per_token[ref_name] / ms_per_token[ours_name],
        "identical_tokens": identical,
    }
    for name, ms in ms_per_token.items():
        print(f"{name:40s} {ms:8.1f} ms/token")
    print(f"speed-up over the reference: {result['speedup_vs_reference']:.2f}x; identical tokens: {identical}")
    out = args.out / platform.node().split(".")[0]
    out.mkdir(parents=True, exist_ok=True)
    (out / "smollm2_cpu.json").write_text(json.dumps(result, indent=2))
    print(f"written {out / 'smollm2_cpu.json'}")


if __name__ == "__main__":
    main()
