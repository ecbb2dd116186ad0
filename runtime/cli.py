"""`args-generate`: ARGS decoding from the command line over an exported bundle."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from .engines import ENGINES
from .errors import ArgsError
from .options import SHARED_THREADS_HELP
from .settings import PAPER_W

DESCRIPTION = """\
Generate text with ARGS (reward-guided search): at each step the LM proposes its top-k tokens, the reward
model scores each continuation, and the decoder picks argmax (or samples) of logit + w * reward.
Runs on ONNX Runtime; no PyTorch needed."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="args-generate", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", help="bundle folder written by args-export")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="raw text prompt (no chat template)")
    src.add_argument("--chat", help="a user message; the bundle's chat template is applied")
    p.add_argument("--k", type=int, default=10, help="candidates per step (the LM's top-k), default 10")
    p.add_argument("--w", type=float, default=PAPER_W, help=f"reward weight w in logit + w*reward, default {PAPER_W:g} (the paper's; 0 = plain greedy)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="most new tokens to generate, default 128 (fewer on EOS, a stop string or the context's end)")
    p.add_argument("--method", choices=["greedy", "stochastic"], default="greedy",
                   help="greedy: the argmax of logit + w*reward (deterministic); stochastic: a sample of softmax(score / temperature)")
    p.add_argument("--temperature", type=float, default=0.7, help="for --method stochastic")
    p.add_argument("--seed", type=int, default=0, help="for --method stochastic")
    p.add_argument("--ignore-eos", action="store_true", help="keep generating past end-of-sequence tokens")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, help="ONNX Runtime's intra-op threads per model (default: the engine's choice)")
    p.add_argument("--shared-threads", action=argparse.BooleanOptionalAction, default=True, help=SHARED_THREADS_HELP)
    p.add_argument("--backend", default="onnxruntime", choices=list(ENGINES),
                   help="onnxruntime (CPU or CUDA by --device), onnxruntime-trt (ORT's TensorRT provider) or tensorrt (the bundle's engines)")
    p.add_argument("--cuda-graph", action="store_true", help="capture decode steps as CUDA graphs (ONNX Runtime CUDA, static-cache bundles)")
    p.add_argument("--choice", default="auto", choices=["auto", "host", "device"],
                   help="where logit + w*reward is combined and chosen: the host (numpy or C++), the device (choose.onnx), or auto "
                   "(the device when both models are on one CUDA device)")
    p.add_argument("--stream", action="store_true", help="print tokens as they are chosen")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.add_argument("--return-rewards", action="store_true",
                   help="after the text, a table of each chosen token: its text, the LM logit and the reward the RM gave it")
    p.add_argument("--verbose", action="store_true", help="print which loop and backend run, and timings, on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .generator import ArgsGenerator

    kwargs = dict(
        k=args.k, w=args.w, max_new_tokens=args.max_new_tokens, method=args.method, temperature=args.temperature,
        seed=args.seed, ignore_eos=args.ignore_eos, stop=args.stop or None,
    )
    prompt = [{"role": "user", "content": args.chat}] if args.chat is not None else args.prompt
    try:
        gen = ArgsGenerator.from_bundle(args.bundle, device=args.device, backend=args.backend, cuda_graph=args.cuda_graph, choice=args.choice,
                                        threads=args.threads, shared_threads=args.shared_threads)
        if args.verbose:
            print(f"args-generate: loop={gen.loop} choice={gen.choice} cache={gen.manifest.lm.cache} "
                  f"lm={gen.lm.backend.describe()} rm={gen.rm.backend.describe()}", file=sys.stderr)
        if args.stream and not args.json:
            result = None
            for event in gen.stream(prompt, **kwargs):
                print(event.text, end="", flush=True)
                result = event.result
            print()
        else:
            result = gen.generate(prompt, **kwargs)
            print(json.dumps(asdict(result), indent=2) if args.json else result.text)
    except ArgsError as e:
        print(f"args-generate: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nargs-generate: interrupted", file=sys.stderr)
        return 130
    if args.return_rewards and result is not None and not args.json:
        print(rewards_table(gen, result))
    if args.verbose and result is not None:
        t = result.timings
        print(f"{len(result.token_ids)} tokens ({result.finish_reason}); first token {t['time_to_first_token_ms']:.0f} ms; "
              f"{t['decode_ms_per_token']:.1f} ms/token", file=sys.stderr)
    return 0


def rewards_table(gen, result) -> str:
    """One line per chosen token: step, id, its text, the LM logit and the RM's reward (what ARGS weighed)."""
    lines = [f"{'step':>4}  {'id':>6}  {'token':<16} {'logit':>9} {'reward':>9}"]
    for step, (token, logit, reward) in enumerate(zip(result.token_ids, result.chosen_logits, result.rewards)):
        text = repr(gen.tokenizer.decode([token]))[1:-1][:16]
        lines.append(f"{step:>4}  {token:>6}  {text:<16} {logit:>9.3f} {reward:>9.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
