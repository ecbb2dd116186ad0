"""ARGS's own degenerate output as hard negatives: decode training prompts with ARGS under a first reward model at
large w, keep the replies the LM itself finds implausible, and pair each, as rejected, against the most positive
fluent reply to the same prompt. A second reward model trained with these pairs stops paying for the text the
first one was gamed with (one round of adversarial training).

"Implausible" is judged by the LM alone: a reply whose mean negative log-likelihood per token (prompt given) is
above the given quantile of the sampled fluent replies' is kept. ARGS only ever picks among the LM's top-k, so
its gibberish is made of individually likely tokens; the mean over the reply still separates it from the LM's
own replies. ARGS also finds loops ("a sight to behold, a sight to behold, …"), which the LM finds likely: a reply less
diverse (distinct n-grams, the quality benchmark's measure) than nearly all of the LM's own sampled replies is kept
too, as kind "negative:args-repetitive".
"""

from __future__ import annotations

from pathlib import Path

import torch


def args_replies(gen, prompts: list[str], ws: list[float], k: int, max_new_tokens: int, batch_size: int = 16) -> list[dict]:
    """ARGS-greedy replies of the bundle's LM and RM, each prompt decoded at one w (the prompts dealt over `ws`)."""
    from tqdm import tqdm

    jobs = [(p, ws[i % len(ws)]) for i, p in enumerate(prompts)]
    out = []
    for w in ws:
        mine = [p for p, pw in jobs if pw == w]
        for i in tqdm(range(0, len(mine), batch_size), desc=f"ARGS replies w={w:g}", unit="batch"):
            batch = mine[i : i + batch_size]
            results = gen.generate([[{"role": "user", "content": p}] for p in batch], k=k, w=w, max_new_tokens=max_new_tokens)
            out += [{"prompt": p, "response": r.text.strip(), "w": w} for p, r in zip(batch, results) if r.text.strip()]
    return out


@torch.no_grad()
def mean_nll(lm, tokenizer, rows: list[dict], batch_size: int = 16) -> list[float]:
    """The LM's mean negative log-likelihood per reply token, the prompt (chat template) given."""
    from tqdm import tqdm

    from .features import padded_batch
    from .train import encode_side

    sides = [encode_side(tokenizer, r["prompt"], r["response"], chat=True) for r in rows]
    out = []
    for i in tqdm(range(0, len(sides), batch_size), desc="LM likelihood", unit="batch"):
        batch = sides[i : i + batch_size]
        ids, mask = padded_batch([list(s.ids) for s in batch], tokenizer.pad_token_id or 0)
        logprobs = torch.log_softmax(lm(input_ids=ids, attention_mask=mask).logits.float(), -1)
        for row, s in zip(range(len(batch)), batch):
            targets = torch.tensor(s.ids[s.start :])
            picked = logprobs[row, s.start - 1 : len(s.ids) - 1].gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            out.append(float(-picked.mean()))
    return out


def load_lm(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(folder)


def quantile(values: list[float], q: float) -> float:
    return float(torch.quantile(torch.tensor(values), q))


def adversarial_pairs(outputs: list[dict], replies: list[dict], threshold: float, min_vader: float,
                      min_diversity: float | None = None) -> list[dict]:
    """Each ARGS reply whose NLL is above `threshold` (kind "negative:args") or, given `min_diversity`, whose diversity is
    below it (kind "negative:args-repetitive"), rejected against the most positive fluent reply to its prompt (VADER ≥
    min_vader)."""
    from ..quality.metrics import diversity

    best: dict[str, dict] = {}
    for r in replies:
        if r["vader"] >= min_vader and r["vader"] > best.get(r["prompt"], {"vader": -2.0})["vader"]:
            best[r["prompt"]] = r
    pairs = []
    for o in outputs:
        spread = diversity(o["response"])
        implausible, repetitive = o["nll"] > threshold, min_diversity is not None and spread < min_diversity
        if (implausible or repetitive) and o["prompt"] in best:
            pairs.append({"prompt": o["prompt"], "chosen": best[o["prompt"]]["response"], "rejected": o["response"],
                          "kind": "negative:args" if implausible else "negative:args-repetitive",
                          "rejected_nll": round(o["nll"], 4), "rejected_diversity": round(spread, 4), "w": o["w"]})
    return pairs
