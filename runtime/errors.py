"""One exception type per family of failure, each message naming the bad value and the fix."""

from __future__ import annotations


class ArgsError(Exception):
    """Base class of every error args-rt raises on purpose."""


class BundleError(ArgsError):
    """A bundle folder is missing, corrupt, foreign, or of another format version, or an engine cannot run it."""


class ExportError(ArgsError):
    """Exporting a model failed, or the exported graph disagrees with PyTorch."""


class UnsupportedModelError(ExportError):
    """The model's architecture or configuration is one args-export cannot export."""


class TokenizerMismatchError(ExportError):
    """The LM and the RM do not share one tokenizer, so RM scores would read other tokens."""


class GenerationError(ArgsError, ValueError):
    """A runtime option (device, engine, loop, choice) or a generate() argument is out of range or does not fit the bundle."""


class SettingError(GenerationError):
    """One generate() keyword is out of range; `keyword` names it (args-serve answers 400 naming the request field)."""

    def __init__(self, message: str, keyword: str) -> None:
        super().__init__(message)
        self.keyword = keyword

    def __reduce__(self):
        return type(self), (str(self), self.keyword)


class ContextLengthError(GenerationError):
    """A prompt leaves no room for a new token in the bundle's context."""


class TrainingError(ArgsError, ValueError):
    """Reward-model training cannot start: bad or empty preference data, a bad option, or an existing output."""


class MissingDependencyError(ArgsError, ImportError):
    """An optional package a feature needs is not installed (or not usable here); the message names the install command."""


class RequestCancelled(ArgsError):
    """A request was cancelled (its caller or client went away, or the engine or server closed) before it finished."""
