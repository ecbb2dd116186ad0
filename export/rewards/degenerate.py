"""Hard negatives for the sentiment reward model: degenerate versions of fluent replies, paired as rejected against
the fluent reply itself, so the pair differs in fluency and not in sentiment words.

A head trained only on fluent replies of different moods is never shown text that no fluent reply resembles, and
ARGS finds such text: the first sentiment RM paid most for Latin-like gibberish, loops and language drift. Each
kind here copies one of those failures, seeded:

- ``shuffled``: the reply's own words in random order (same lexicon, no syntax);
- ``repetition``: a short phrase of the reply looped to the reply's length;
- ``gibberish``: the reply's opening, then made-up words built from fragments of real ones ("durecionam");
- ``truncated-loop``: the reply's opening, then its last word repeated (a decoder stuck on one token).

ARGS's own degenerate output (see `adversarial`) joins these as the ``args`` kind.
"""

from __future__ import annotations

import random
import re

KINDS = ("shuffled", "repetition", "gibberish", "truncated-loop")
WORD = re.compile(r"[A-Za-z]+")


def shuffled(text: str, rng: random.Random) -> str:
    words = text.split()
    for _ in range(5):  # a short reply can shuffle into itself; try again a few times
        rng.shuffle(words)
        if " ".join(words) != text:
            break
    return " ".join(words)


def repetition(text: str, rng: random.Random) -> str:
    words = text.split()
    size = min(len(words), rng.randint(2, 5))
    at = rng.randrange(0, max(1, len(words) - size + 1))
    phrase = words[at : at + size]
    looped = (phrase * (len(words) // max(1, size) + 1))[: max(len(words), 2 * size)]
    return " ".join(looped)


def fragments(corpus: list[str]) -> list[str]:
    """2–4-letter pieces of the corpus's words: the building blocks of plausible-looking non-words."""
    pieces = set()
    for text in corpus:
        for word in WORD.findall(text.lower()):
            pieces.update(word[i : i + n] for n in (2, 3, 4) for i in range(0, len(word) - n + 1, n))
    return sorted(pieces)


def gibberish(text: str, rng: random.Random, pieces: list[str]) -> str:
    words = text.split()
    keep = rng.randint(0, max(0, len(words) // 2))
    made_up = ["".join(rng.choice(pieces) for _ in range(rng.randint(2, 4))) for _ in range(max(4, len(words) - keep))]
    if keep == 0 and made_up:
        made_up[0] = made_up[0].capitalize()
    return " ".join(words[:keep] + made_up)


def truncated_loop(text: str, rng: random.Random) -> str:
    words = text.split()
    keep = rng.randint(1, max(1, len(words) // 2))
    return " ".join(words[:keep] + [words[keep - 1]] * max(4, len(words) - keep))


def degrade(text: str, kind: str, rng: random.Random, pieces: list[str]) -> str:
    """One degenerate version of `text` of the given kind."""
    if kind == "shuffled":
        return shuffled(text, rng)
    if kind == "repetition":
        return repetition(text, rng)
    if kind == "gibberish":
        return gibberish(text, rng, pieces)
    if kind == "truncated-loop":
        return truncated_loop(text, rng)
    raise KeyError(kind)


def negative_pairs(replies: list[dict], min_vader: float, per_prompt: int, seed: int) -> list[dict]:
    """For each prompt, up to `per_prompt` of its most positive fluent replies (VADER ≥ min_vader), each paired
    with one degenerate version of itself per kind; kind recorded as "negative:<kind>"."""
    rng = random.Random(seed)
    pieces = fragments([r["response"] for r in replies])
    by_prompt: dict[str, list[dict]] = {}
    for r in replies:
        if r["vader"] >= min_vader and len(r["response"].split()) >= 4:
            by_prompt.setdefault(r["prompt"], []).append(r)
    pairs = []
    for prompt, rows in by_prompt.items():
        for r in sorted(rows, key=lambda r: -r["vader"])[:per_prompt]:
            for kind in KINDS:
                bad = degrade(r["response"], kind, rng, pieces)
                if bad != r["response"]:
                    pairs.append({"prompt": prompt, "chosen": r["response"], "rejected": bad, "kind": f"negative:{kind}"})
    return pairs

