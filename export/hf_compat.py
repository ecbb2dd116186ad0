"""Calls into transformers whose spelling changed within the 5.x versions args-export supports (pyproject: >=5.0,<6).

transformers 5.24 renamed the models' `past_key_values` keyword and output to `cache` (the old keyword warns, and goes
in 5.40); earlier 5.x versions know only `past_key_values`. The keyword is looked up on the model's own forward, so no
deprecation warning reaches the user and both kinds of version work (tests/test_export.py runs the reference with
transformers' warnings as errors)."""

from __future__ import annotations

import inspect
from functools import lru_cache

from torch import nn


@lru_cache(maxsize=None)
def _cache_keyword(forward_class: type) -> str:
    parameters = inspect.signature(forward_class.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def forward_with_cache(model: nn.Module, input_ids, cache=None, **kwargs):
    """model(input_ids, <its cache keyword>=cache, use_cache=True) → (outputs, the extended cache)."""
    keyword = _cache_keyword(type(model))
    out = model(input_ids=input_ids, use_cache=True, **{keyword: cache}, **kwargs)
    return out, out[keyword] if keyword in out else out.past_key_values
