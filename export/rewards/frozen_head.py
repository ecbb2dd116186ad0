"""A linear Bradley–Terry score head on a frozen backbone's hidden states (the fast path: LM and RM share a backbone).

For a linear head the pair loss −log σ(w·h_w − w·h_l) only sees the difference of the two hidden states, so the
trainer keeps one difference row per compared pair of positions, standardized by the features' spread (the
scaling is folded back into the weight). With `prefixes`, each pair also compares its two replies position by
position (the first j tokens of each), because ARGS scores every partial reply: a head trained on whole replies
alone is free to pay for any first token, and the decoder finds the ones it over-rewards. Those rows share one
unit of weight per pair (`prefix_weight`), so long replies do not outweigh short ones.

With `pooling="mean"` the head is a token-level reward: a reply's reward is the mean of its tokens' rewards
(w·h_j at each reply position j), so a pair compares the two replies' mean hidden states (and, with `prefixes`,
the means of their first j tokens). A linear head on the last token alone must read the whole reply's mood off one
hidden state; the mean lets every token count (5-fold CV on the sentiment pairs, benchmarks/quality/head_cv.py:
0.81 against 0.69 for the last token, 0.73 with prefixes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .features import Encoded, FeatureStore


@dataclass
class HeadOptions:
    epochs: int = 30
    lr: float = 1e-2
    weight_decay: float = 1e-3
    batch_size: int = 32
    seed: int = 0
    prefixes: bool = False
    prefix_weight: float = 1.0
    pooling: str = "last"          # "last": the reward is the last token's; "mean": the mean of the reply's tokens'


POOLINGS = ("last", "mean")


def bt_loss(margin: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Bradley–Terry: −log σ(r_w − r_l), averaged (weighted when row weights are given)."""
    loss = -nn.functional.logsigmoid(margin)
    return loss.mean() if weight is None else (loss * weight).sum() / weight.sum()


def shared_prefix(a: Encoded, b: Encoded) -> int:
    """How many leading reply tokens two sides share (their hidden states there are equal: no signal)."""
    n = 0
    for x, y in zip(a.ids[a.start :], b.ids[b.start :]):
        if x != y:
            break
        n += 1
    return n


def difference_rows(store: FeatureStore, pairs: list[tuple[Encoded, Encoded]], opts: HeadOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """h(chosen) − h(rejected) for every compared pair of positions, and each row's weight."""
    rows, weights = [], []
    pooled = opts.pooling == "mean"
    for c, r in pairs:
        rows.append(store.mean(c) - store.mean(r) if pooled else store.last(c) - store.last(r))
        weights.append(1.0)
        if not opts.prefixes:
            continue
        first = shared_prefix(c, r)
        positions = range(first, min(c.reply_length, r.reply_length) - 1)
        for j in positions:
            rows.append(store.mean(c, j + 1) - store.mean(r, j + 1) if pooled else store.at(c, j) - store.at(r, j))
            weights.append(opts.prefix_weight / len(positions))
    return torch.stack(rows), torch.tensor(weights)


def feature_spread(store: FeatureStore, seqs: list[Encoded]) -> torch.Tensor:
    """Per-dimension standard deviation of the hidden states at every reply position of the distinct sequences."""
    table = torch.cat([store.table[s.ids].float() for s in {s.ids: s for s in seqs}.values()])
    return table.std(0) + 1e-6


def fit_head(store: FeatureStore, pairs: list[tuple[Encoded, Encoded]], opts: HeadOptions) -> torch.Tensor:
    """The head's weight vector in the backbone's feature space (no bias: a constant cancels in every pair)."""
    from tqdm import tqdm

    spread = feature_spread(store, [s for p in pairs for s in p])
    diffs, weights = difference_rows(store, pairs, opts)
    z = diffs / spread
    w = torch.zeros(z.shape[1], requires_grad=True)
    optim = torch.optim.AdamW([w], lr=opts.lr, weight_decay=opts.weight_decay)
    gen = torch.Generator().manual_seed(opts.seed)
    # One optimizer step per `batch_size` pairs' worth of rows, whatever the number of prefix rows.
    rows_per_step = max(1, round(opts.batch_size * len(z) / len(pairs)))
    for _ in tqdm(range(opts.epochs), desc="training head", unit="epoch"):
        for idx in torch.randperm(len(z), generator=gen).split(rows_per_step):
            optim.zero_grad()
            bt_loss(z[idx] @ w, weights[idx]).backward()
            optim.step()
    return (w / spread).detach()

