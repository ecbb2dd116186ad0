"""Backbone hidden states of encoded replies, computed once and cached: what a frozen-backbone reward head trains on.

ARGS reads the reward of every partial reply (prompt + the tokens so far + one candidate), so the store keeps the
last hidden state at *every* reply position, not only the last one: one forward pass per distinct sequence gives
them all. Each sequence is computed once (pairs share replies), batched in length order (little padding), without
gradients, and kept in float16. Replies to the same prompt share its forward pass: the prompt runs once and its KV
cache is repeated over a batch of its replies, which then run alone (about half the work for chat prompts). With a
cache file, a rerun of the recipe only computes sequences it has not seen.

An encoder backbone (`EncoderFeatureStore`) has one feature per whole text instead: what its classifier's last linear
layer reads (BertForSequenceClassification: the pooler output of [CLS]), since an encoder RM scores a whole text.
"""

from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


@dataclass(frozen=True)
class Encoded:
    """One side of a pair as token ids: the rendered prompt followed by the reply; `start` indexes the reply's first token."""

    ids: tuple[int, ...]
    start: int

    @property
    def reply_length(self) -> int:
        return len(self.ids) - self.start


def padded_batch(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask (right padding: a row's real tokens never see padding)."""
    ids = torch.full((len(rows), max(len(r) for r in rows)), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


def backbone_digest(folder: Path) -> str:
    """Names a backbone's cached features: its config and the size and head of each weight file."""
    h = hashlib.sha256()
    for f in sorted(Path(folder).glob("*.safetensors")) + [Path(folder) / "config.json"]:
        h.update(f.name.encode())
        h.update(str(f.stat().st_size).encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


class FeatureStore:
    """Hidden states [reply_length, hidden] (float16) of every reply position, per distinct encoded sequence."""

    def __init__(self, backbone: nn.Module, pad_id: int, batch_size: int = 32, cache_file: Path | None = None) -> None:
        self.backbone, self.pad_id, self.batch_size, self.cache_file = backbone, pad_id, batch_size, cache_file
        self.table: dict[tuple[int, ...], torch.Tensor] = {}
        if cache_file is not None and Path(cache_file).is_file():
            self.table = torch.load(cache_file)

    @torch.no_grad()
    def compute(self, seqs: list[Encoded]) -> None:
        """Run the backbone over the sequences not yet in the store, prompt by prompt, then save the cache."""
        from tqdm import tqdm

        by_prompt: dict[tuple[int, ...], list[Encoded]] = {}
        for s in sorted({s for s in seqs if s.ids not in self.table}, key=lambda s: len(s.ids)):
            by_prompt.setdefault(s.ids[: s.start], []).append(s)
        if not by_prompt:
            return
        batches = [(prompt, group[i : i + self.batch_size]) for prompt, group in by_prompt.items()
                   for i in range(0, len(group), self.batch_size)]
        for prompt, batch in tqdm(batches, desc="backbone features", unit="batch"):
            for s, hidden in zip(batch, self.reply_states(prompt, batch)):
                self.table[s.ids] = hidden.to(torch.float16).clone()
        self.save()

    def save(self) -> None:
        """Write the table to the cache file (atomically), when there is one."""
        if self.cache_file is not None:
            Path(self.cache_file).parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(self.cache_file).with_suffix(".partial")
            torch.save(self.table, tmp)
            tmp.replace(self.cache_file)

    def reply_states(self, prompt: tuple[int, ...], batch: list[Encoded]) -> list[torch.Tensor]:
        """Hidden states at the reply positions of sequences sharing `prompt`: the prompt once, its cache repeated."""
        replies = [list(s.ids[s.start :]) for s in batch]
        ids, mask = padded_batch(replies, self.pad_id)
        extra = {}
        if prompt:
            out = self.backbone(input_ids=torch.tensor([prompt]), use_cache=True)
            past = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
            past.batch_repeat_interleave(len(batch))
            mask = torch.cat([torch.ones(len(batch), len(prompt), dtype=mask.dtype), mask], dim=1)
            extra = {cache_argument(self.backbone): past, "use_cache": True}
        hidden = self.backbone(input_ids=ids, attention_mask=mask, **extra).last_hidden_state
        return [row[: len(r)] for row, r in zip(hidden, replies)]

    def last(self, s: Encoded) -> torch.Tensor:
        """The hidden state at the reply's last token (what the RM scores for the whole reply)."""
        return self.table[s.ids][-1].float()

    def mean(self, s: Encoded, length: int | None = None) -> torch.Tensor:
        """The mean hidden state over the reply's first `length` tokens (all of them by default): what a
        mean-pooled head scores (its reward of a reply is the mean of its tokens' rewards)."""
        return self.table[s.ids][:length].float().mean(0)

    def at(self, s: Encoded, position: int) -> torch.Tensor:
        """The hidden state after `position + 1` reply tokens."""
        return self.table[s.ids][position].float()


def cache_argument(backbone: nn.Module) -> str:
    """The forward argument that takes a KV cache: `cache` in newer transformers 5 releases, `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(backbone.forward).parameters else "past_key_values"


class EncoderFeatureStore(FeatureStore):
    """An encoder classifier's features, one row [1, hidden] per whole text: the input of its last linear layer
    (`score_layer`), as the classifier computes it in eval mode (BERT: the pooler output of [CLS], dropout off).
    Texts are batched in length order, right-padded, token types all 0, as the exported encoder graph reads them."""

    def __init__(self, model: nn.Module, score_layer: nn.Module, pad_id: int, batch_size: int = 32,
                 cache_file: Path | None = None) -> None:
        super().__init__(model, pad_id, batch_size, cache_file)
        self.score_layer = score_layer
        self.token_types = "token_type_ids" in inspect.signature(model.forward).parameters  # DistilBERT has none

    @torch.no_grad()
    def compute(self, seqs: list[Encoded]) -> None:
        from tqdm import tqdm

        todo = sorted({s.ids for s in seqs if s.ids not in self.table}, key=len)
        if not todo:
            return
        captured: list[torch.Tensor] = []
        hook = self.score_layer.register_forward_pre_hook(lambda _module, args: captured.append(args[0].detach()))
        try:
            for i in tqdm(range(0, len(todo), self.batch_size), desc="encoder features", unit="batch"):
                batch = todo[i : i + self.batch_size]
                ids, mask = padded_batch([list(t) for t in batch], self.pad_id)
                captured.clear()
                extra = {"token_type_ids": torch.zeros_like(ids)} if self.token_types else {}
                self.backbone(input_ids=ids, attention_mask=mask, **extra)
                for t, feature in zip(batch, captured[0]):
                    self.table[t] = feature.reshape(1, -1).to(torch.float16).clone()
        finally:
            hook.remove()
        self.save()
