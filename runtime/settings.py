"""A request's settings, checked at the door: every bad value is a GenerationError naming it and the fix, raised
before any engine work. An unknown keyword is a TypeError, as in any Python call. One `Settings` value goes from the
caller (generate()'s keywords, an HTTP body) to the rows that decode it: each row chooses and stops by its own."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from numbers import Integral, Real

import numpy as np

from .choice import ChoiceConfig
from .errors import SettingError

METHODS = ("greedy", "stochastic")
MAX_ABS_W = 1e6  # scores are float32 (logit + w·reward): ARGS's useful weights are O(1), and 1e39 is not a float32
PAPER_W = 1.5  # the reward weight of the paper (and of the demo, chosen on its RM's held-out training prompts): every default w
MIN_TEMPERATURE = 1e-5  # below it softmax(score / T) is the argmax (and score / T can overflow): that is method="greedy"


@dataclass(frozen=True)
class Settings:
    """Checked settings of one request (the keywords of generate(), stream() and ArgsEngine.submit())."""

    k: int = 10
    w: float = PAPER_W
    max_new_tokens: int = 128
    method: str = "greedy"
    temperature: float = 0.7
    seed: int | None = 0
    ignore_eos: bool = False
    stop: tuple[str, ...] = ()

    @property
    def choice(self) -> ChoiceConfig:
        """How a row of this request chooses."""
        return ChoiceConfig(self.k, self.w, self.method == "stochastic", self.temperature, self.seed)


KEYWORDS = tuple(f.name for f in fields(Settings))


def check_settings(max_k: int, caller: str = "generate", /, **kwargs) -> Settings:
    """The keywords checked against their ranges and the bundle's `max_k`; `caller` names the method in a TypeError."""
    unknown = [name for name in kwargs if name not in KEYWORDS]
    if unknown:
        raise TypeError(f"{caller}() got an unexpected keyword argument {unknown[0]!r}; its keywords are {', '.join(KEYWORDS)}")
    s = Settings(**kwargs)
    k, w, temperature = s.k, s.w, s.temperature
    if not _is_int(k) or not 1 <= k <= max_k:
        raise SettingError(f"k={k!r} is out of range: this bundle supports 1 <= k <= {max_k} (an integer; re-export with --max-k for more)", "k")
    if not _is_real(w) or not _finite(w) or abs(w) > MAX_ABS_W:
        raise SettingError(f"w={w!r} must be a finite number with |w| <= {MAX_ABS_W:g} (the reward weight; 0 is plain greedy)", "w")
    if not isinstance(s.method, str) or s.method not in METHODS:
        raise SettingError(f"method={s.method!r} is not one of {METHODS}", "method")
    if not _is_real(temperature) or not _finite(temperature) or temperature < MIN_TEMPERATURE:
        raise SettingError(f"temperature={temperature!r} must be a finite number >= {MIN_TEMPERATURE:g} "
                              "(a colder sample is the argmax: use method='greedy')", "temperature")
    if not _is_int(s.max_new_tokens) or s.max_new_tokens < 1:
        raise SettingError(f"max_new_tokens={s.max_new_tokens!r} must be an integer >= 1", "max_new_tokens")
    if s.seed is not None and (not _is_int(s.seed) or s.seed < 0):
        raise SettingError(f"seed={s.seed!r} must be None (a fresh random stream) or an integer >= 0", "seed")
    if not isinstance(s.ignore_eos, (bool, np.bool_)):
        raise SettingError(f"ignore_eos={s.ignore_eos!r} must be True or False", "ignore_eos")
    stops = [] if s.stop is None else [s.stop] if isinstance(s.stop, str) else s.stop
    if not isinstance(stops, (list, tuple)) or any(not isinstance(x, str) or not x for x in stops):
        raise SettingError(f"stop={s.stop!r} must be None, a non-empty string, or a list of non-empty strings", "stop")
    return Settings(int(k), float(w), int(s.max_new_tokens), str(s.method), float(temperature),
                    None if s.seed is None else int(s.seed), bool(s.ignore_eos), tuple(str(x) for x in stops))


def _is_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, (bool, np.bool_))


def _is_real(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, (bool, np.bool_))


def _finite(value: Real) -> bool:
    """A finite number that fits a float (an int of 400 digits does not)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False
