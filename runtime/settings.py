"""generate()'s arguments, checked at the door: every bad value is a GenerationError naming it and the fix, raised
before any engine work."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from numbers import Integral, Real

from .choice import ChoiceConfig

METHODS = ("greedy", "stochastic")


@dataclass(frozen=True)
class Settings:
    """Checked generation arguments (the keywords of generate() and stream())."""

    k: int = 10
    w: float = 1.0
    max_new_tokens: int = 128
    method: str = "greedy"
    temperature: float = 0.7
    seed: int | None = 0
    ignore_eos: bool = False
    stop: list[str] = field(default_factory=list)

    def choice(self, batch: int) -> ChoiceConfig:
        return ChoiceConfig(batch, self.k, self.w, self.method == "stochastic", self.temperature, self.seed)


def check_settings(max_k: int, **kwargs) -> Settings:
    """The keywords checked against their ranges and the bundle's `max_k` (an unknown keyword is a TypeError, as in any
    Python call)."""
    from .errors import GenerationError

    s = Settings(**kwargs)
    k, w = s.k, s.w
    if not _is_int(k) or not 1 <= k <= max_k:
        raise GenerationError(f"k={k!r} is out of range: this bundle supports 1 <= k <= {max_k} (re-export with --max-k for more)")
    if not _is_real(w) or not math.isfinite(w):
        raise GenerationError(f"w={w!r} must be a finite number (the reward weight)")
    if s.method not in METHODS:
        raise GenerationError(f"method={s.method!r} is not one of {METHODS}")
    if not _is_real(s.temperature) or not math.isfinite(s.temperature) or s.temperature <= 0:
        raise GenerationError(f"temperature={s.temperature!r} must be a finite number > 0")
    if not _is_int(s.max_new_tokens) or s.max_new_tokens < 1:
        raise GenerationError(f"max_new_tokens={s.max_new_tokens!r} must be an integer >= 1")
    if s.seed is not None and (not _is_int(s.seed) or s.seed < 0):
        raise GenerationError(f"seed={s.seed!r} must be None or an integer >= 0")
    stops = [] if s.stop is None else [s.stop] if isinstance(s.stop, str) else s.stop
    if not isinstance(stops, (list, tuple)) or any(not isinstance(x, str) or not x for x in stops):
        raise GenerationError(f"stop={s.stop!r} must be a non-empty string or a list of them")
    return Settings(int(k), float(w), int(s.max_new_tokens), s.method, float(s.temperature),
                    None if s.seed is None else int(s.seed), bool(s.ignore_eos), list(stops))


def _is_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)
