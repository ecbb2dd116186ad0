"""The sentiment recipe's data: the committed prompts and their splits, the steering system prompts, replies
sampled from the LM alone, VADER labels and the sentiment pairs. Shared by `args-build-sentiment-pairs`, the
recipe's stages and the quality benchmark."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

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


def sample_replies(gen, prompts: list[str], samples: int, max_new_tokens: int, seed: int, batch_size: int = 32) -> list[dict]:
    """`samples` replies per prompt and steering condition, sampled by the runtime from the LM alone (top-50,
    temperature 1: the spread of replies the LM itself writes), batched, seeded per batch."""
    from tqdm import tqdm

    jobs = []
    for prompt, (cond, system) in itertools.product(prompts, STEERING.items()):
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        jobs += [(prompt, cond, messages)] * samples
    out = []
    for i in tqdm(range(0, len(jobs), batch_size), desc="sampling replies", unit="batch"):
        batch = jobs[i : i + batch_size]
        results = gen.sample([m for _, _, m in batch], k=50, temperature=1.0, seed=seed + i, max_new_tokens=max_new_tokens)
        for (prompt, cond, _), res in zip(batch, results):
            reply = res.text.strip()
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
