"""Scoring with the reward model (args-serve's /pooling and /classify, `ArgsEngine.score`): what a scoring input becomes
for the RM, and the reward of that whole sequence.

What the RM reads (`rm_ids`), by the bundle's `reward_input.path`:

    text      id path: the LM tokenizer's ids of the text       text path: the RM's own ids of it (RewardTexts.ids)
    ids       id path: the LM's ids (the RM's too), as given      text path: the RM's own ids, as given (cut from the left)
    messages  id path: the LM's chat template, no generation     text path: the RM's chat template when it has one,
              prompt (a whole conversation)                      else the LM's rendering decoded as text

The reward (`rewards`) is the RM's score at the sequence's last token, as its transformers class reads it. The id path
runs the RM graph's backend directly over buffers of its own (an empty past, or zero static buffers), so the caches of
a running batch are never touched; the text path scores with `TextRewardModel.score_ids`, which touches no request's
state either. Models are not thread-safe: ArgsEngine runs `rewards` on its own thread, between two steps."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import GenerationError
from .tokenizer import check_text, is_chat, kind_of

if TYPE_CHECKING:
    from .bundle import Bundle
    from .models import RewardModel

ScoreInput = str | list[int] | list[dict[str, Any]]  # a text, the RM's token ids, or a whole conversation (chat messages)


def is_token_ids(item: Any) -> bool:
    """Whether a scoring input is one sequence of token ids (a non-empty list of ints)."""
    return isinstance(item, list) and bool(item) and all(isinstance(t, int) and not isinstance(t, bool) for t in item)


def rm_ids(bundle: "Bundle", item: Any, where: str = "input") -> list[int]:
    """The RM's token ids of one scoring input (a text or chat messages); `where` names it in errors (GenerationError:
    an empty or unreadable input, a sequence the RM cannot score)."""
    if isinstance(item, str):
        if not item:
            raise GenerationError(f"{where} is an empty string: give the text to score")
        check_text(item, where)
        ids = bundle.rm.texts.ids(item) if bundle.reads_text else bundle.tokenizer.encode(item, where)
    elif is_chat(item):
        ids = _chat_ids(bundle, item, where)
    elif is_token_ids(item):
        ids = _token_ids(bundle, item, where)
    else:
        raise GenerationError(f"{where} is {kind_of(item)}: a scoring input is a text, a list of the RM's token ids, or a "
                              "list of chat messages ({'role': ..., 'content': ...} dicts) ending with the reply to score")
    return _check_length(bundle, ids, where)


def _token_ids(bundle: "Bundle", ids: list[int], where: str) -> list[int]:
    """Token ids as the RM reads them: the LM's on the id path (they are the RM's too), the RM's own on the text path
    (cut from the left to its position limit, as its texts are)."""
    if not bundle.reads_text:
        return bundle.tokenizer.check_ids(ids, where)
    texts = bundle.rm.texts
    return texts.rm_tok.check_ids(ids, where)[-texts.max_positions :]


def _chat_ids(bundle: "Bundle", messages: list[dict[str, Any]], where: str) -> list[int]:
    lm_tok = bundle.tokenizer
    if not bundle.reads_text:
        return lm_tok.backend.encode(lm_tok.render_chat(messages, add_generation_prompt=False, where=where),
                                     add_special_tokens=False).ids
    texts = bundle.rm.texts
    if texts.rm_tok.chat_template is not None:
        return texts.ids(texts.rm_tok.render_chat(messages, add_generation_prompt=False, where=where))
    rendered = lm_tok.backend.encode(lm_tok.render_chat(messages, add_generation_prompt=False, where=where), add_special_tokens=False)
    return texts.ids(texts.decode(rendered.ids))


def _check_length(bundle: "Bundle", ids: list[int], where: str) -> list[int]:
    """The id path's RM graph scores a sequence's last token after extending an empty cache by the ones before it: at
    least 2 tokens, at most the bundle's context. The text path's RM cuts its texts from the left (its own rule)."""
    if bundle.reads_text:
        if not ids:
            raise GenerationError(f"{where} gives the reward model no tokens: give some text to score")
        return ids
    limit = bundle.max_context
    if len(ids) < 2:
        raise GenerationError(f"{where} is {len(ids)} token long: this bundle's reward model (reading the LM's ids) scores "
                              "sequences of at least 2 tokens; give a longer text (e.g. the prompt and its reply)")
    if len(ids) > limit:
        raise GenerationError(f"{where} has {len(ids)} tokens, but this bundle's reward model reads at most {limit} (the "
                              f"bundle's context): shorten it, or re-export with a larger --max-context")
    return ids


def rewards(bundle: "Bundle", sequences: list[list[int]]) -> list[float]:
    """The RM's reward of each whole sequence of its ids (from `rm_ids`). Run it where the models may run (ArgsEngine's
    thread); it reads and writes no cache a request uses."""
    if not sequences:
        return []
    if bundle.reads_text:
        return [float(r) for r in bundle.rm.score_ids(sequences)]
    return [sequence_reward(bundle.rm, ids) for ids in sequences]


def sequence_reward(rm: "RewardModel", ids: list[int]) -> float:
    """The reward of `ids` on the id path: candidate ids[-1] scored after ids[:-1], one pass of the RM graph (a fused
    bundle's FusedStep has the same inputs) over a past of its own."""
    spec, n = rm.spec, len(ids) - 1
    feeds: dict[str, Any] = {"input_ids": np.asarray([ids[:-1]], np.int64), "position_ids": np.arange(n, dtype=np.int64)[None]}
    if rm.static:  # zero buffers as wide as the context; the mask says which slots hold the sequence
        width = rm.max_context
        mask = np.zeros((1, width), np.int64)
        mask[0, :n] = 1
        feeds.update(attention_mask=mask, cache_position=np.arange(n, dtype=np.int64)[None])
    else:
        width = 0
        feeds["attention_mask"] = np.ones((1, n), np.int64)
    feeds["candidate_ids"] = np.asarray([[ids[-1]]], np.int64)
    shape = (1, spec.num_kv_heads, width, spec.head_dim)
    feeds.update({name: rm.backend.empty(shape, spec.dtype) for name in rm.past_names})
    out = rm.backend.run(feeds)
    return float(rm.backend.to_host(out["rewards"]).reshape(-1)[0])
