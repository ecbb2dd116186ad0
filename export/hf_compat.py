"""Calls into transformers whose spelling changed within the 5.x versions args-export supports (pyproject: >=5.0,<6).

transformers 5.24 renamed the models' `past_key_values` keyword and output to `cache` (the old keyword warns, and goes
in 5.40); earlier 5.x versions know only `past_key_values`. The keyword is looked up on the model's own forward, so no
deprecation warning reaches the user and both kinds of version work (tests/test_export.py runs the reference with
transformers' warnings as errors). Also the one quiet context of torch.onnx's exporters (`quiet_exporter`), shared by
every graph export."""

from __future__ import annotations

import inspect
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def quiet_exporter() -> Iterator[None]:
    """The dynamo exporter logs (torchvision ops it skips, axis renames) and warns about internals the user cannot act
    on; the export's own staged log says what happens."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "torch.export", "torch._export", "torch.fx.experimental")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)
