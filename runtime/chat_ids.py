"""The id path's chat format (`args-export --rm-format chat`): an RM that reads the LM's ids but was trained on its own
chat template reads a chat prompt's reply inside that template, as ids (docs/reward-models.md). Per candidate v:

    RM ids = before + reply + [v] + after      (a chat prompt; before/after: the RM's template around the reply)
           = prompt ids + reply + [v]          (a text or token-id prompt: the official code's reading)

cut from the left to the RM's position limit. `before` and `after` are the RM's template rendered with the assistant's
reply marked, the text on each side of the mark tokenized apart (its special tokens in front unless the text starts
with its BOS). The rewards are read at the end of `after` (e.g. Llama 3's `<|eot_id|>`), so the RM runs on the text
path's machinery (CachedTextRM): its own cache over what candidates share, their tails scored in one pass."""

from __future__ import annotations

import numpy as np

from .errors import GenerationError
from .text_reward import RewardPrompt, RewardTexts

REPLY_MARK = "\u2063args-rt-reply\u2063"  # stands in the reply's place while the template renders


class RewardChatIds:
    """The rule above, with the `candidates` of a text-path rule (and its `ids`, `rm_tok` for scoring inputs)."""

    def __init__(self, texts: RewardTexts) -> None:
        self.texts, self.rm_tok, self.max_positions = texts, texts.rm_tok, texts.max_positions

    def ids(self, text: str) -> list[int]:
        return self.texts.ids(text)

    def decode(self, ids: list[int]) -> str:
        return self.texts.decode(ids)

    def around(self, messages: list[dict]) -> tuple[list[int], list[int]]:
        """The RM's ids before and after the assistant's reply to `messages`."""
        rendered = self.rm_tok.render_chat([*messages, {"role": "assistant", "content": REPLY_MARK}], add_generation_prompt=False)
        parts = rendered.split(REPLY_MARK)
        if len(parts) != 2:
            raise GenerationError(f"the RM's chat template places the assistant's reply {len(parts) - 1} times, not once: "
                                  "re-export the bundle without --rm-format chat (the RM then reads the LM's ids as they are)")
        before, after = parts
        bos = self.texts.bos
        head = self.rm_tok.backend.encode(before, add_special_tokens=not (bos and before.startswith(bos))).ids
        return head, self.rm_tok.backend.encode(after, add_special_tokens=False).ids

    def candidates(self, prompt: RewardPrompt, reply: list[int], candidates: np.ndarray) -> list[list[int]]:
        """Each candidate's RM ids."""
        if prompt.messages is None:
            return [(prompt.ids + reply + [int(v)])[-self.max_positions :] for v in candidates]
        before, after = self.around(prompt.messages)
        return [(before + reply + [int(v)] + after)[-self.max_positions :] for v in candidates]
