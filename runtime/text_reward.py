"""The text path: a reward model with a tokenizer of its own reads what the LM writes as text (docs/reward-models.md
states the rule; `args_export.reference.TextReferenceARGS` is its oracle). Per candidate v of a row's top-k:

    text  = the LM's prompt ids + reply + [v], decoded              (a raw prompt)
          | the RM's chat template over messages + the reply's text  (a chat prompt, an RM with a template)
    ids   = the RM's tokenizer on text (its special tokens unless text starts with its BOS), cut from the left
    reward = the RM's score head where its transformers class reads it (the last token that is not its pad).

A decoder RM keeps a KV cache per request over the RM tokens all candidates share; each step scores the k candidates'
tails (what each candidate's ids add beyond the cache, of different lengths) in one pass (export/graphs.py TailScorer).
Re-tokenizing can change tokens already cached (BPE merges across the end of a text): every step compares each
candidate's ids with the cached ones and drops the cache back to where they agree, so the rewards are always those of
the whole text. An encoder RM has no cache: the k whole texts of every row in one pass.

A rule (`texts`) is any object with `candidates(prompt: RewardPrompt, reply: list[int], candidates: np.ndarray) ->
list[list[int]]`, each candidate's RM ids cut to the RM's position limit: RewardTexts below, or runtime/chat_ids.py's
RewardChatIds (the LM's ids inside the RM's template). CachedTextRM and EncoderTextRM call nothing else of it; the
scoring endpoints (runtime/scoring.py) also read its `ids(text)`, `decode(ids)` and `rm_tok`.

Where a step's time goes (issue 29; SmolLM2 and the demo RM, k = 10, 2 CPU cores): the RM pass, about 70 % of it. Its
tails are each the candidate and what the RM's template puts after the reply (SmolLM2's "<|im_end|>", "\n": the
reward is read after them), so 3k + 1 tokens against the id path's k + 1, and a pass's cost grows with its tokens. The
host's share (k decodes, renders and encodes; the encodes go to the tokenizer in one batch) is 1-2 % at 64 new tokens and
about 4 % at 512 (each text is encoded whole: exact for every tokenizer, O(length) per candidate)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .backend import Backend
from .dtypes import HOST_TYPES, ITEMSIZE
from .manifest import GraphSpec
from .models import TopK
from .tokenizer import Tokenizer


@dataclass
class RewardPrompt:
    """What the RM reads of a request's prompt: the LM's prompt ids and, for a chat prompt, its messages."""

    ids: list[int]
    messages: list[dict[str, Any]] | None = None


class RewardTexts:
    """The rule above: LM ids → the RM's text → the RM's ids."""

    def __init__(self, lm_tok: Tokenizer, rm_tok: Tokenizer, max_positions: int, lm_clean_up_spaces: bool = False) -> None:
        self.lm_tok, self.rm_tok, self.max_positions, self.clean_up = lm_tok, rm_tok, max_positions, lm_clean_up_spaces
        self.bos = rm_tok.spec.bos_token

    def decode(self, ids: list[int]) -> str:
        """The LM's ids as transformers' `decode(ids, skip_special_tokens=True)` gives them."""
        text = self.lm_tok.decode(ids)
        return clean_up_tokenization(text) if self.clean_up else text

    def text(self, prompt: RewardPrompt, reply: list[int]) -> str:
        if prompt.messages is not None and self.rm_tok.chat_template is not None:
            answer = {"role": "assistant", "content": self.decode(reply)}
            return self.rm_tok.render_chat([*prompt.messages, answer], add_generation_prompt=False)
        return self.decode(prompt.ids + reply)

    def special(self, text: str) -> bool:
        """Whether the RM's tokenizer adds its special tokens to this text (not when it starts with its BOS)."""
        return not (self.bos and text.startswith(self.bos))

    def ids(self, text: str) -> list[int]:
        return self.rm_tok.backend.encode(text, add_special_tokens=self.special(text)).ids[-self.max_positions :]

    def candidates(self, prompt: RewardPrompt, reply: list[int], candidates: np.ndarray) -> list[list[int]]:
        """Each candidate's RM ids: the texts encoded in one batch (the same ids as `ids` of each, without a Python
        Encoding per text), a text two candidates share (their tokens decode alike) once."""
        texts = [self.text(prompt, reply + [int(v)]) for v in candidates]
        unique = list(dict.fromkeys(texts))
        encoded: dict[str, list[int]] = {}
        for special in (True, False):
            group = [t for t in unique if self.special(t) == special]
            if group:
                encodings = _encode_batch(self.rm_tok.backend)(group, add_special_tokens=special)
                encoded.update((t, e.ids[-self.max_positions :]) for t, e in zip(group, encodings))
        return [encoded[t] for t in texts]


def _encode_batch(backend):
    """tokenizers' batch encoder that skips character offsets (the ids are the same), where this tokenizers has it."""
    return getattr(backend, "encode_batch_fast", backend.encode_batch)


def clean_up_tokenization(text: str) -> str:
    """transformers' clean_up_tokenization (what its decode does when a tokenizer asks for it)."""
    for old, new in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
                     (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(old, new)
    return text


@dataclass
class TextRow:
    """One request's RM state: its prompt, the reply so far (the LM's ids), and (a decoder RM) the RM tokens its cache
    holds and that cache."""

    prompt: RewardPrompt
    reply: list[int] = field(default_factory=list)
    started: bool = False
    cached: list[int] = field(default_factory=list)
    past: dict[str, Any] = field(default_factory=dict)

    def advance(self, fed: np.ndarray) -> None:
        """The LM ids this step fed: the prompt at the first step (already known), then the token chosen last."""
        if self.started:
            self.reply.append(int(fed[-1]))
        self.started = True


@dataclass
class TextRows:
    """The RM's side of a run: the rows' requests' states (None: a free row, scored 0)."""

    rows: list[TextRow | None]


def read_index(ids: list[int], pad_id: int | None) -> int:
    """Where a sequence classifier of transformers reads its score: the last token that is not its pad (index 0 when
    all are), or the last token when it has no pad."""
    if pad_id is None:
        return len(ids) - 1
    for i in range(len(ids) - 1, -1, -1):
        if ids[i] != pad_id:
            return i
    return 0


def _common(a: list[int], b: list[int]) -> int:
    """The length of the longest common prefix of a and b (slices compared in C: a step compares whole texts' ids)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


class TextRewardModel:
    """The RM of a text-path bundle, behind RewardModel's `extend_and_score`: the step hands it the rows' LM ids and
    candidates, and their TextRows as its prefix."""

    def __init__(self, backend: Backend, spec: GraphSpec, texts: RewardTexts, pad_id: int | None) -> None:
        self.backend, self.spec, self.texts, self.pad_id = backend, spec, texts, pad_id
        self.past_names = [t.name for t in spec.inputs if t.name.startswith("past_key_values.")]
        self.present_names = [t.name for t in spec.outputs if t.name.startswith("present.")]

    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        """One pass of the RM's graph: the one door its work goes through (args-serve times it, as the id path's)."""
        return self.backend.run(feeds)

    def reset(self, batch: int) -> None:
        """Nothing to reset: each request's state is its own TextRow."""

    def row(self, prompt: RewardPrompt) -> TextRow:
        return TextRow(prompt)

    def extend_and_score(self, ids: np.ndarray, positions: np.ndarray, prefix: TextRows, candidates: TopK | np.ndarray,
                         on_host: bool = True) -> np.ndarray:
        """The k rewards of each row's candidates (on the host: the text was made there)."""
        cands = candidates.ids if isinstance(candidates, TopK) else np.asarray(candidates)
        rewards = np.zeros(cands.shape, np.float32)
        live = []
        for i, row in enumerate(prefix.rows):
            if row is not None:
                row.advance(ids[i])
                live.append((i, row, self.texts.candidates(row.prompt, row.reply, cands[i])))
        for i, values in self._score(live):
            rewards[i] = values
        return rewards

    def _score(self, live: list[tuple[int, TextRow, list[list[int]]]]):
        raise NotImplementedError

    def score_ids(self, sequences: list[list[int]]) -> np.ndarray:
        """Rewards of whole RM id sequences (a scoring endpoint's), each on its own: no request's state is touched."""
        return np.asarray([values for _, values in self._score([(0, TextRow(RewardPrompt([])), [ids]) for ids in sequences])],
                          np.float32).reshape(len(sequences))

    def cache_bytes(self, rows: list[TextRow | None]) -> int:
        return 0


class CachedTextRM(TextRewardModel):
    """A decoder RM on the text path: per request, a KV cache of the RM tokens every candidate shares; per step and row,
    one pass that extends it and scores the k tails. `dropped` counts the cached tokens re-tokenizing changed."""

    dropped = 0

    def _score(self, live):
        for i, row, each in live:
            yield i, self._score_row(row, each)

    def _score_row(self, row: TextRow, each: list[list[int]]) -> np.ndarray:
        reads = [read_index(ids, self.pad_id) for ids in each]
        # The cache holds what every candidate still agrees with, and never a token a reward is read at.
        keep = min([_common(row.cached, ids) for ids in each] + reads)
        if keep < len(row.cached):
            self.dropped += len(row.cached) - keep
            self._truncate(row, keep)
        shared = min([_common(each[0], ids) for ids in each[1:]] + [len(each[0]), *reads])
        shared = max(shared, keep)
        new = each[0][keep:shared]
        tails = [ids[shared:] for ids in each]
        width = max(len(t) for t in tails)
        tail_ids = np.zeros((1, len(each), width), np.int64)
        for c, tail in enumerate(tails):
            tail_ids[0, c, : len(tail)] = tail
        feeds = {
            "input_ids": np.asarray([new], np.int64).reshape(1, len(new)),
            "position_ids": np.arange(keep, shared, dtype=np.int64).reshape(1, -1),
            "attention_mask": np.ones((1, shared), np.int64),
            "tail_ids": tail_ids,
            "tail_read": np.asarray([[r - shared for r in reads]], np.int64),
            **self._past(row),
        }
        out = self.run(feeds)
        row.past = {past: out[present] for past, present in zip(self.past_names, self.present_names)}
        row.cached = list(each[0][:shared])
        return self.backend.to_host(out["rewards"])[0]

    def _past(self, row: TextRow) -> dict[str, Any]:
        if not row.past:
            empty = np.zeros((1, self.spec.num_kv_heads, 0, self.spec.head_dim), HOST_TYPES[self.spec.dtype])
            return {name: empty for name in self.past_names}
        return row.past

    def _truncate(self, row: TextRow, keep: int) -> None:
        """Drop the cache back to its first `keep` tokens (re-tokenizing changed the ones after)."""
        row.past = {n: np.ascontiguousarray(self.backend.to_host(v)[:, :, :keep]) for n, v in row.past.items()} if keep else {}
        row.cached = row.cached[:keep]

    def cache_bytes(self, rows: list[TextRow | None]) -> int:
        total = 0
        for row in rows:
            for value in (row.past.values() if row is not None else ()):
                shape = value.shape if isinstance(value, np.ndarray) else value.shape()
                total += int(np.prod(shape)) * ITEMSIZE[self.spec.dtype]
        return total


class EncoderTextRM(TextRewardModel):
    """An encoder RM (BERT, RoBERTa, DeBERTa …): no cache; every live row's k whole texts, right-padded, in one pass."""

    def _score(self, live):
        if not live:
            return
        texts = [ids for _, _, each in live for ids in each]
        width = max(len(ids) for ids in texts)
        input_ids = np.full((len(texts), width), self.pad_id or 0, np.int64)
        mask = np.zeros((len(texts), width), np.int64)
        for r, ids in enumerate(texts):
            input_ids[r, : len(ids)], mask[r, : len(ids)] = ids, 1
        rewards = self.backend.to_host(self.run({"input_ids": input_ids, "attention_mask": mask})["rewards"])
        start = 0
        for i, _, each in live:
            yield i, rewards[start : start + len(each)]
            start += len(each)


def open_text_rm(backend: Backend, spec: GraphSpec, texts: RewardTexts, kind: str, pad_id: int | None) -> TextRewardModel:
    """The text path's RM for a graph of this kind ("decoder": TailScorer, "encoder": whole texts)."""
    return (CachedTextRM if kind == "decoder" else EncoderTextRM)(backend, spec, texts, pad_id)
