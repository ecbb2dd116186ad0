"""`args-build-sentiment-pairs`: preference pairs for the demo's sentiment reward model, built offline.

Recipe: for each training prompt of the committed `data/sentiment_prompts.jsonl`, sample several replies
from SmolLM2-135M-Instruct (temperature sampling, seeded), some of them under a system prompt asking for a
cheerful or a gloomy answer (that only widens the spread of sentiment; the pairs record the user prompt
alone), score every reply with VADER's compound score, and pair replies of the same prompt whose scores
differ by at least a margin: chosen = the more positive one. The labels come from VADER only.

    args-build-sentiment-pairs --out pairs.jsonl [--samples 2] [--max-new-tokens 40] [--seed 0]
    args-train-rm --backbone <SmolLM2 folder> --pairs pairs.jsonl --out sentiment-rm

or in one go (what produced the shipped head, export/data/sentiment_head.json):

    args-build-sentiment-pairs --out pairs.jsonl --rm-out sentiment-rm --head-out export/data/sentiment_head.json
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import random
import sys
from pathlib import Path

from args_runtime.files import write_atomic

from ..data import SENTIMENT_PROMPTS as PROMPTS_FILE
STEERING = {
    "plain": None,
    "cheerful": "You are a cheerful assistant. Answer in a happy, warm and positive tone.",
    "gloomy": "You are a gloomy assistant. Answer in a sad, bleak and negative tone.",
}


def load_prompts(split: str, path: Path = PROMPTS_FILE) -> list[str]:
    """The committed neutral prompts of one split ("train" for RM data, "eval" for the quality benchmark)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r["prompt"] for r in rows if r["split"] == split]


def vader():
    """VADER's sentiment analyzer (the labels of the sentiment pairs)."""
    from args_runtime.optional import require

    return require("vaderSentiment.vaderSentiment", "VADER sentiment labels", "vaderSentiment").SentimentIntensityAnalyzer()


def sample_replies(lm_dir: Path, prompts: list[str], samples: int, max_new_tokens: int, seed: int, batch_size: int = 48) -> list[dict]:
    """`samples` sampled replies per prompt and steering condition, batched with left padding."""
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(lm_dir, padding_side="left")
    lm = AutoModelForCausalLM.from_pretrained(lm_dir, dtype=torch.float32).eval()
    jobs = []
    for prompt, (cond, system) in itertools.product(prompts, STEERING.items()):
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        jobs += [(prompt, cond, text)] * samples
    torch.manual_seed(seed)
    out = []
    for i in tqdm(range(0, len(jobs), batch_size), desc="sampling", unit="batch"):
        batch = jobs[i : i + batch_size]
        enc = tok([t for _, _, t in batch], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            gen = lm.generate(**enc, do_sample=True, temperature=1.0, top_k=50, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id)
        for (prompt, cond, _), row in zip(batch, gen[:, enc["input_ids"].shape[1] :]):
            reply = tok.decode(row, skip_special_tokens=True).strip()
            if reply:
                out.append({"prompt": prompt, "condition": cond, "response": reply})
    return out


def make_pairs(scored: list[dict], margin: float, max_pairs_per_prompt: int, seed: int) -> list[dict]:
    """Pairs of replies to the same prompt whose VADER compound scores differ by ≥ margin (chosen = higher)."""
    rng = random.Random(seed)
    by_prompt: dict[str, list[dict]] = {}
    for r in scored:
        by_prompt.setdefault(r["prompt"], []).append(r)
    pairs = []
    for prompt, replies in by_prompt.items():
        candidates = [(a, b) if a["vader"] >= b["vader"] else (b, a) for a, b in itertools.combinations(replies, 2)]
        candidates = [(hi, lo) for hi, lo in candidates if hi["vader"] - lo["vader"] >= margin]
        rng.shuffle(candidates)
        for hi, lo in candidates[:max_pairs_per_prompt]:
            pairs.append({"prompt": prompt, "chosen": hi["response"], "rejected": lo["response"],
                          "chosen_vader": hi["vader"], "rejected_vader": lo["vader"]})
    return pairs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="args-build-sentiment-pairs", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="JSONL file of {prompt, chosen, rejected} pairs to write")
    p.add_argument("--lm", type=Path, help="LM folder to sample from (default: the packaged SmolLM2, converted into the cache)")
    p.add_argument("--samples", type=int, default=2, help="replies per prompt and steering condition (plain, cheerful, gloomy)")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--margin", type=float, default=0.3, help="least VADER compound difference between chosen and rejected")
    p.add_argument("--max-pairs-per-prompt", type=int, default=8)
    p.add_argument("--limit", type=int, help="use only the first N training prompts (for quick checks)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rm-out", type=Path, help="then train the reward model on the pairs (frozen backbone) into this folder")
    p.add_argument("--head-out", type=Path, help="with --rm-out: also write the trained head as JSON (what the package ships)")
    args = p.parse_args(argv)

    if args.lm is None:
        from ..demo.prepare import cache_dir, smollm2_folder

        args.lm = smollm2_folder(cache_dir())
    prompts = load_prompts("train")[: args.limit]
    analyzer = vader()
    replies = sample_replies(args.lm, prompts, args.samples, args.max_new_tokens, args.seed)
    for r in replies:
        r["vader"] = analyzer.polarity_scores(r["response"])["compound"]
    pairs = make_pairs(replies, args.margin, args.max_pairs_per_prompt, args.seed)
    if not pairs:
        print("args-build-sentiment-pairs: error: no pair reached the margin; lower --margin or raise --samples", file=sys.stderr)
        return 2
    text = "".join(json.dumps(pr) + "\n" for pr in pairs)
    write_atomic(args.out, text)
    by_cond = {c: [r["vader"] for r in replies if r["condition"] == c] for c in STEERING}
    print(f"{len(replies)} replies from {len(prompts)} prompts; mean VADER by condition: "
          + ", ".join(f"{c} {sum(v) / max(len(v), 1):+.2f}" for c, v in by_cond.items()))
    print(f"wrote {len(pairs)} pairs to {args.out} (sha256 {hashlib.sha256(text.encode()).hexdigest()[:16]})")
    if args.rm_out is None:
        return 0
    from .train import main as train_main

    train_args = ["--backbone", str(args.lm), "--pairs", str(args.out), "--out", str(args.rm_out), "--seed", str(args.seed), "--force"]
    return train_main(train_args + (["--head-out", str(args.head_out)] if args.head_out else []))


if __name__ == "__main__":
    sys.exit(main())
