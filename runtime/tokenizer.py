"""Text ↔ token ids with the `tokenizers` library, and chat templates rendered as transformers renders them. Every
prompt form is checked here before it becomes ids: text (valid Unicode), chat messages (their structure), token ids
(integers the models can embed)."""

from __future__ import annotations

from numbers import Integral
from pathlib import Path
from typing import Any

from .errors import BundleError, GenerationError
from .manifest import TokenizerSpec

Prompt = str | list[dict[str, Any]] | list[int]

ROLES = ("system", "developer", "user", "assistant", "tool")  # developer: the OpenAI API's newer name for system
MESSAGE_KEYS = ("role", "content")
FORMS = ("a prompt is text, a list of token ids, or a list of chat messages ({'role': ..., 'content': ...} dicts); "
         "a batch is a list of prompts")


class Tokenizer:
    """The bundle's tokenizer: encode text or chat messages, decode ids, incrementally for streams. `vocab_size`: token
    ids must be below it (the models' embedding size; None: not checked)."""

    def __init__(self, bundle: Path, spec: TokenizerSpec, vocab_size: int | None = None) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        self.spec, self.vocab_size = spec, vocab_size
        try:
            self.backend = HFTokenizer.from_file(str(bundle / spec.file))
        except Exception as e:
            raise BundleError(f"cannot read tokenizer {bundle / spec.file}: {e}; re-export the bundle with --force") from e
        # A tokenizer.json may carry padding and truncation (sentence-transformers folders pad every text to 128 ids and
        # cut it there); transformers' calls never apply them unless asked, so neither may we.
        self.backend.no_padding()
        self.backend.no_truncation()
        self.chat_template, self._template_path = None, None
        if spec.chat_template_file:
            path = bundle / spec.chat_template_file
            try:
                self.chat_template = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise BundleError(f"cannot read the chat template {path}: {e}; re-export the bundle with --force") from e
            self._template_path = path
            _compile(self.chat_template, path)  # a template that does not compile is a broken bundle: say so when it opens

    def encode(self, prompt: Prompt, where: str = "the prompt") -> list[int]:
        """Text → ids (with the tokenizer's own special tokens); chat messages → template → ids; ids are checked and
        pass through. `where` names the prompt in errors (e.g. "prompt 2" of a batch)."""
        if isinstance(prompt, str):
            return self.backend.encode(check_text(prompt, where)).ids
        if is_chat(prompt):
            return self.backend.encode(self.render_chat(prompt, where=where), add_special_tokens=False).ids
        if isinstance(prompt, list):
            return self.check_ids(prompt, where)
        raise GenerationError(f"{where} is {kind_of(prompt)}: {FORMS}{_hint(prompt)}")

    def check_ids(self, ids: list[Any], where: str = "the prompt") -> list[int]:
        """Token ids as plain ints, each an integer in 0 … vocab_size − 1."""
        for i, token in enumerate(ids):
            if isinstance(token, dict):
                raise GenerationError(f"{where} mixes chat messages with other values (element {i} is a dict): a chat prompt "
                                      "is a list of message dicts only, token ids a list of ints")
            if not isinstance(token, Integral) or isinstance(token, bool):
                raise GenerationError(f"{where}, element {i}, is {kind_of(token)}: {FORMS}")
            if token < 0 or (self.vocab_size is not None and token >= self.vocab_size):
                top = f"{self.vocab_size - 1}" if self.vocab_size is not None else "the vocabulary size − 1"
                raise GenerationError(f"{where} has token id {int(token)} at position {i}, outside this bundle's vocabulary: "
                                      f"token ids are 0 … {top}")
        return [int(t) for t in ids]

    def render_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, where: str = "the prompt") -> str:
        """The chat template applied to checked messages, as transformers applies it."""
        if self.chat_template is None:
            raise GenerationError("this bundle's tokenizer has no chat template: pass the prompt as text or token ids")
        check_messages(messages, where)
        template = _compile(self.chat_template, self._template_path)
        try:
            return template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                   bos_token=self.spec.bos_token or "", eos_token=self.spec.eos_token or "")
        except GenerationError:
            raise
        except Exception as e:  # jinja2's UndefinedError and friends, or a TypeError inside the template
            raise GenerationError(f"the bundle's chat template cannot render {where} ({type(e).__name__}: {e}); "
                                  "check the messages' roles and order (e.g. a template may require alternating user/assistant)") from e

    def decode(self, ids: list[int]) -> str:
        return self.backend.decode(ids, skip_special_tokens=True)


def is_chat(prompt: Any) -> bool:
    """Whether a prompt is chat messages (a non-empty list of dicts)."""
    return isinstance(prompt, list) and bool(prompt) and all(isinstance(m, dict) for m in prompt)


def check_text(text: str, where: str = "the prompt") -> str:
    """Text the tokenizer can read: it must encode as UTF-8 (a lone surrogate, e.g. from undecodable bytes, does not)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise GenerationError(f"{where} is not valid Unicode: {e.reason} at character {e.start} ({text[e.start]!r}); "
                              "decode bytes with errors='replace' (or fix the source's encoding)") from None
    return text


def check_messages(messages: Any, where: str = "the prompt") -> list[dict[str, str]]:
    """Chat messages as templates read them: a non-empty list of {'role', 'content'} dicts, a known role and text
    content each. Shared by everything that applies a chat template (the runtime, the server, RM training)."""
    if not isinstance(messages, list) or not messages:
        raise GenerationError(f"{where} must be a non-empty list of chat messages ({{'role': ..., 'content': ...}} dicts)")
    for i, m in enumerate(messages):
        name = f"{where}, message {i},"
        if not isinstance(m, dict):
            raise GenerationError(f"{name} is {kind_of(m)}, not a {{'role': ..., 'content': ...}} dict")
        missing = [k for k in MESSAGE_KEYS if k not in m]
        if missing:
            raise GenerationError(f"{name} has no {' and no '.join(repr(k) for k in missing)}: each message needs a role and its content")
        extra = sorted(str(k) for k in m if k not in MESSAGE_KEYS)
        if extra:
            raise GenerationError(f"{name} has keys {extra} that the chat template would ignore: give only 'role' and 'content'")
        if not isinstance(m["role"], str) or m["role"] not in ROLES:
            raise GenerationError(f"{name} has role {m['role']!r}: roles are {', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            parts = " (OpenAI-style content parts: join their text into one string)" if isinstance(m["content"], list) else ""
            raise GenerationError(f"{name} has content of type {type(m['content']).__name__}: content must be a string{parts}")
        check_text(m["content"], f"{where}, message {i}'s content,")
    return messages


def kind_of(value: Any) -> str:
    """'a float (3.5)': a value's type, and the value when short (for error messages)."""
    shown = repr(value)
    article = "an" if type(value).__name__[0] in "aeiou" else "a"
    return f"{article} {type(value).__name__}" + (f" ({shown})" if len(shown) <= 40 else "")


def _hint(prompt: Any) -> str:
    if isinstance(prompt, dict):
        return ": wrap one chat message in a list, [{'role': 'user', 'content': ...}]"
    if hasattr(prompt, "tolist"):
        return ": pass token ids as a list, ids.tolist()"
    if isinstance(prompt, tuple):
        return ": pass a list, not a tuple"
    if isinstance(prompt, (bytes, bytearray)):
        return ": decode bytes to text first"
    return ""


_TEMPLATES: dict[str, Any] = {}


def _compile(source: str, path: Path):
    """Compile a chat template in the sandbox transformers uses (trim_blocks, lstrip_blocks, raise_exception)."""
    if source not in _TEMPLATES:
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str):
            raise GenerationError(f"the chat template rejected the messages: {message}")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
        env.globals["raise_exception"] = raise_exception
        try:
            _TEMPLATES[source] = env.from_string(source)
        except TemplateError as e:
            raise BundleError(f"the chat template {path} does not compile ({e}); re-export the bundle with --force") from e
    return _TEMPLATES[source]
