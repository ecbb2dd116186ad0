"""The paper's ARGS in plain transformers, eager PyTorch: the oracle for tests and the baseline for benchmarks.

It mirrors the official implementation's structure (deeplearning-wisc/args, argsearch.py): the LM runs with
its cache; the RM runs k rows, each holding its own copy of the prefix cache; after each choice the
winner's row is copied to all k rows (cache reorder). One deliberate difference: the reward is read at
each candidate's own (last) position from the backbone's hidden states, not through the model's pad-based
pooling, which is wrong when pad == eos and the prompt contains eos.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from args_runtime.selection import StochasticChooser, args_scores, choose_greedy
from args_runtime.chat_ids import REPLY_MARK
from args_runtime.text_reward import RewardPrompt

from .architectures import Family
from .hf_compat import forward_with_cache


def last_position_rewards(rm, family: Family, input_ids: torch.Tensor, past=None):
    """Score head at the last position of each row: (rewards [N], new cache)."""
    out, cache = forward_with_cache(getattr(rm, family.backbone_attr), input_ids, past)
    score = getattr(rm, family.score_attr)
    return score(out.last_hidden_state[:, -1, :]).squeeze(-1).float(), cache


@torch.no_grad()
def hf_rewards(rm, family: Family, sequences: torch.Tensor) -> torch.Tensor:
    """The RM's reward on each full sequence (no cache), read at its last token."""
    return last_position_rewards(rm, family, sequences)[0]


class ReferenceARGS:
    """ARGS-greedy / ARGS-stochastic over HF models, one prompt at a time, as the paper's code runs it."""

    def __init__(self, lm, rm, rm_family: Family) -> None:
        self.lm, self.rm, self.rm_family = lm, rm, rm_family
        self._caches: dict[str, object] = {}  # the latest caches, kept only so cache_bytes() can size them

    def cache_bytes(self) -> dict[str, int]:
        """Bytes held now by the LM's cache and by the RM's k-fold cache (after the last step taken)."""
        return {name: _tensor_bytes(cache) for name, cache in self._caches.items()}

    @torch.no_grad()
    def steps(self, prompt: list[int], k: int, w: float, method: str = "greedy", temperature: float = 0.7, seed: int | None = 0) -> Iterator[tuple[int, float, float]]:
        """Yield (token, chosen LM logit, chosen reward) per step, forever; the caller stops."""
        choose = choose_greedy if method == "greedy" else StochasticChooser(temperature, seed)
        lm_device, rm_device = self.lm.device, self.rm.device  # CPU or a GPU: inputs go where each model lives
        tokens = torch.tensor([prompt], device=rm_device)
        lm_cache = rm_cache = None
        feed = tokens.to(lm_device)
        while True:
            out, lm_cache = forward_with_cache(self.lm, feed, lm_cache)
            top_logits, top_ids = torch.topk(out.logits[:, -1, :].float(), k, dim=-1)  # [1, k]
            candidates = top_ids.T.to(rm_device)
            # RM: k rows, each its own copy of the prefix cache plus one candidate (the prompt too on step 1).
            rm_feed = candidates if rm_cache is not None else torch.cat([tokens.repeat(k, 1), candidates], dim=1)
            rewards, rm_cache = last_position_rewards(self.rm, self.rm_family, rm_feed, rm_cache)
            top_logits, top_ids, rewards = top_logits.cpu(), top_ids.cpu(), rewards.cpu()  # the choice is made on the host
            pick = int(choose(args_scores(top_logits.numpy(), rewards[None].numpy(), w))[0])
            token = int(top_ids[0, pick])
            yield token, float(top_logits[0, pick]), float(rewards[pick])
            rm_cache.reorder_cache(torch.full((k,), pick, device=rm_device))  # the winner's row, candidate included, to all k rows
            self._caches = {"lm": lm_cache, "rm": rm_cache}
            feed = torch.tensor([[token]], device=lm_device)

    def generate(self, prompt: list[int], k: int, w: float, max_new_tokens: int, eos_ids: set[int] = frozenset(), **kw) -> list[int]:
        return take_tokens(self.steps(prompt, k, w, **kw), max_new_tokens, eos_ids)


def take_tokens(steps: Iterator[tuple[int, float, float]], max_new_tokens: int, eos_ids: set[int]) -> list[int]:
    """The tokens of an endless `steps` up to an EOS or max_new_tokens."""
    out: list[int] = []
    for token, _, _ in steps:
        out.append(token)
        if token in eos_ids or len(out) >= max_new_tokens:
            break
    return out


@dataclass
class RewardReading:
    """The text path's rule (docs/reward-models.md), in transformers: how an RM with a tokenizer of its own reads the LM's
    tokens. A raw prompt: the LM's ids decoded; a chat prompt and an RM with a chat template: the RM's own rendering of
    the conversation with the reply's text as the assistant's message. Then the RM's own tokenizer, its special tokens
    unless the text already starts with its BOS, cut from the left to its position limit."""

    lm_tok: object  # transformers tokenizers
    rm_tok: object
    max_positions: int

    def text(self, prompt_ids: list[int], reply: list[int], messages: list[dict] | None = None) -> str:
        if messages is not None and self.rm_tok.chat_template:
            answer = self.lm_tok.decode(reply, skip_special_tokens=True)
            return self.rm_tok.apply_chat_template([*messages, {"role": "assistant", "content": answer}], tokenize=False)
        return self.lm_tok.decode(prompt_ids + reply, skip_special_tokens=True)

    def ids(self, text: str) -> list[int]:
        bos = self.rm_tok.bos_token
        ids = self.rm_tok(text, add_special_tokens=not (bos and text.startswith(bos)))["input_ids"]
        return ids[-self.max_positions :]

    def rm_ids(self, prompt_ids: list[int], reply: list[int], messages: list[dict] | None = None) -> list[int]:
        """The RM's ids of the prompt and this reply (the reply ends with the candidate)."""
        return self.ids(self.text(prompt_ids, reply, messages))


@dataclass
class ChatIdsReading(RewardReading):
    """The id path's chat format (--rm-format chat), in transformers: a chat prompt's reply ids go inside the RM's own
    template, rendered with the reply's place marked: the RM's ids of the text before the mark, the reply, those of the
    text after it (no special tokens); a text or token-id prompt: its ids and the reply's. Cut from the left."""

    def rm_ids(self, prompt_ids: list[int], reply: list[int], messages: list[dict] | None = None) -> list[int]:
        if messages is None:
            return (prompt_ids + reply)[-self.max_positions :]
        mark = {"role": "assistant", "content": REPLY_MARK}
        before, after = self.rm_tok.apply_chat_template([*messages, mark], tokenize=False).split(REPLY_MARK)
        bos = self.rm_tok.bos_token
        head = self.rm_tok(before, add_special_tokens=not (bos and before.startswith(bos)))["input_ids"]
        tail = self.rm_tok(after, add_special_tokens=False)["input_ids"]
        return (head + reply + tail)[-self.max_positions :]


class TextReferenceARGS:
    """ARGS with an RM that reads text (the text path's oracle): the LM runs with its cache as in ReferenceARGS; for
    every candidate, every step, the whole text is made again, re-tokenized with the RM's tokenizer and scored by the
    RM's own transformers class with no cache. Slow on purpose: nothing is reused, so nothing can be stale."""

    def __init__(self, lm, rm, reading: RewardReading) -> None:
        self.lm, self.rm, self.reading = lm, rm, reading

    def reward(self, text: str) -> float:
        return self.reward_of(self.reading.ids(text))

    @torch.no_grad()
    def reward_of(self, rm_ids: list[int]) -> float:
        ids = torch.tensor([rm_ids], device=self.rm.device)
        return float(self.rm(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, 0].float())

    @torch.no_grad()
    def steps(self, prompt: list[int] | RewardPrompt, k: int, w: float, method: str = "greedy", temperature: float = 0.7,
              seed: int | None = 0) -> Iterator[tuple[int, float, float]]:
        """Yield (token, chosen LM logit, chosen reward) per step, forever; the caller stops. `prompt`: the LM's prompt
        ids, or a RewardPrompt (the ids and, for a chat prompt, its messages)."""
        prompt = prompt if isinstance(prompt, RewardPrompt) else RewardPrompt(list(prompt))
        messages = prompt.messages
        choose = choose_greedy if method == "greedy" else StochasticChooser(temperature, seed)
        reply: list[int] = []
        feed, lm_cache = torch.tensor([prompt.ids], device=self.lm.device), None
        while True:
            out, lm_cache = forward_with_cache(self.lm, feed, lm_cache)
            top_logits, top_ids = (t.cpu() for t in torch.topk(out.logits[:, -1, :].float(), k, dim=-1))
            rewards = torch.tensor([[self.reward_of(self.reading.rm_ids(prompt.ids, reply + [int(v)], messages)) for v in top_ids[0]]])
            pick = int(choose(args_scores(top_logits.numpy(), rewards.numpy(), w))[0])
            token = int(top_ids[0, pick])
            reply.append(token)
            yield token, float(top_logits[0, pick]), float(rewards[0, pick])
            feed = torch.tensor([[token]], device=self.lm.device)

    def generate(self, prompt: list[int] | RewardPrompt, k: int, w: float, max_new_tokens: int, eos_ids: set[int] = frozenset(),
                 **kw) -> list[int]:
        return take_tokens(self.steps(prompt, k, w, **kw), max_new_tokens, eos_ids)


@torch.no_grad()
def hf_greedy(lm, prompt: list[int], max_new_tokens: int, eos_ids: set[int] = frozenset()) -> list[int]:
    """Plain greedy decoding with transformers' own generate()."""
    ids = torch.tensor([prompt], device=lm.device)
    out = lm.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
        eos_token_id=sorted(eos_ids) or None, pad_token_id=0,
    )
    return out[0, len(prompt) :].cpu().tolist()


def _tensor_bytes(obj) -> int:
    """Bytes of every tensor inside a cache object (a transformers Cache, or nested tuples/lists of tensors)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (tuple, list)):
        return sum(_tensor_bytes(o) for o in obj)
    layers = getattr(obj, "layers", None)  # transformers >= 4.56: DynamicCache.layers[i].keys / .values
    if layers is not None:
        return sum(_tensor_bytes([getattr(layer, "keys", None), getattr(layer, "values", None)]) for layer in layers)
    return 0 if obj is None else sum(_tensor_bytes(v) for v in vars(obj).values() if isinstance(v, (torch.Tensor, list, tuple)))
