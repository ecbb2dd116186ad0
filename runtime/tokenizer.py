"""Text ↔ token ids with the `tokenizers` library, and chat templates rendered as transformers renders them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import BundleError, GenerationError
from .manifest import TokenizerSpec

Prompt = str | list[dict[str, Any]] | list[int]


class Tokenizer:
    """The bundle's tokenizer: encode text or chat messages, decode ids, incrementally for streams."""

    def __init__(self, bundle: Path, spec: TokenizerSpec) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        self.spec = spec
        try:
            self.backend = HFTokenizer.from_file(str(bundle / spec.file))
        except Exception as e:
            raise BundleError(f"cannot read tokenizer {bundle / spec.file}: {e}; re-export the bundle with --force") from e
        self.chat_template = (bundle / spec.chat_template_file).read_text() if spec.chat_template_file else None

    def encode(self, prompt: Prompt) -> list[int]:
        """Text → ids (with the tokenizer's own special tokens); chat messages → template → ids; ids pass through."""
        if isinstance(prompt, str):
            return self.backend.encode(prompt).ids
        if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
            return list(prompt)
        if isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt):
            return self.backend.encode(self.render_chat(prompt), add_special_tokens=False).ids
        raise GenerationError(f"a prompt must be text, a list of chat messages ({{'role', 'content'}} dicts) or a list of token ids; got {type(prompt).__name__}")

    def render_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        if self.chat_template is None:
            raise GenerationError("this bundle's tokenizer has no chat template: pass the prompt as text or token ids")
        return _compile(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, bos_token=self.spec.bos_token or "", eos_token=self.spec.eos_token or ""
        )

    def decode(self, ids: list[int]) -> str:
        return self.backend.decode(ids, skip_special_tokens=True)


_TEMPLATES: dict[str, Any] = {}


def _compile(source: str):
    """Compile a chat template in the sandbox transformers uses (trim_blocks, lstrip_blocks, raise_exception)."""
    if source not in _TEMPLATES:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str):
            raise GenerationError(f"the chat template rejected the messages: {message}")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
        env.globals["raise_exception"] = raise_exception
        _TEMPLATES[source] = env.from_string(source)
    return _TEMPLATES[source]
