"""Continuous batching attends only over the cache slots in use: a static-cache bundle's graphs declare their caches and
mask max_context slots wide, so every row of every step would attend over all of them (on a 2-core CPU, 768 slots
cost about a third of an 8-row SmolLM2 step). ArgsEngine runs copies of the graphs whose context dimension is left free,
over caches only as wide as the seated requests need, in steps of `step` slots counted down from max_context.

Exactness: a narrower cache changes nothing but the masked tail of each attention row (exact zeros), and a width
congruent to max_context modulo 64 keeps every other value at the same offset within ONNX Runtime's vectorized
reductions as at full width, so the LM's logits and the RM's rewards stay bit-identical to generate()'s. Measured on
SmolLM2 (AVX-512 CPU): widths 16k slots short of 768 gave bit-identical outputs, other widths differed by up to 2e-4
(the RM's candidates sit right after the cache, so their offset moves with the width); 64 leaves room for other
vector widths. tests/test_engine.py compares logits and rewards bit for bit against full width, and tokens against
generate() alone, on every tiny architecture and SmolLM2.

Relaxing a graph needs the `onnx` package (args-rt[export] has it) and costs a second copy of the weights in memory (the
engine's sessions are its own; bundles whose manifest allowed a free context dimension would not need it). Without
`onnx`, or off the host (cache rows are re-laid out in host memory), the engine keeps the full width and says why in
its info."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .engines.onnxruntime_engine import OrtBackend
from .errors import ArgsError
from .models import CachedGraph
from .optional import require

if TYPE_CHECKING:
    from .generator import ArgsGenerator

__all__ = ["WidthPolicy", "narrow_models"]

log = logging.getLogger("args_runtime.engine")

FREE_DIM = "context"  # the name the relaxed graphs give their context dimension
NARROWED = ("past_key_values.", "present.", "attention_mask")  # the inputs and outputs max_context slots wide


@dataclass(frozen=True)
class WidthPolicy:
    """Which cache width a step runs at: the narrowest max_context - j * step that holds every seated request's next
    write; it grows at once when a request needs more, and shrinks (leaving one step of room) only when it can drop
    two steps, so a width is not re-laid out back and forth."""

    context: int
    step: int = 64

    def fit(self, need: int) -> int:
        """The narrowest allowed width >= need (need >= 1 slot)."""
        need = min(max(need, 1), self.context)
        return self.context - ((self.context - need) // self.step) * self.step

    def next(self, width: int, need: int) -> int:
        """The width to run at now, given the current one and the slots the seated requests need."""
        fitted = self.fit(need)
        if fitted > width:
            return fitted
        return fitted + self.step if fitted + 2 * self.step <= width else width


class _GraphBytesBackend(OrtBackend):
    """ONNX Runtime over a graph held in memory (the relaxed copy), its weights still read from the bundle's folder."""

    def __init__(self, model: bytes, graph_path: Any, device: Any, options: Any) -> None:
        self._model = model
        super().__init__(graph_path, device, options)

    def _open(self, session_options, providers: list):
        session_options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(self.graph_path.parent))
        try:
            return self._ort.InferenceSession(self._model, session_options, providers=providers)
        except Exception as e:  # ORT raises its own types
            raise ArgsError(f"ONNX Runtime cannot load the context-free copy of {self.graph_path}: {str(e).splitlines()[0]}") from e


def relaxed_graph(path: Any, context: int) -> bytes:
    """The graph at `path` with its caches' and mask's max_context dimension declared free (the weights stay external)."""
    onnx = require("onnx", "attending over the cache slots in use (continuous batching)")
    model = onnx.load(str(path), load_external_data=False)
    for value in [*model.graph.input, *model.graph.output]:
        if value.name.startswith(NARROWED):
            for dim in value.type.tensor_type.shape.dim:
                if dim.HasField("dim_value") and dim.dim_value == context:
                    dim.dim_param = FREE_DIM  # setting the oneof's other member clears dim_value
    del model.graph.value_info[:]  # intermediate shapes recorded at max_context would contradict a narrower run
    return model.SerializeToString()


def narrow_models(gen: "ArgsGenerator", models: tuple[CachedGraph, ...]) -> tuple[tuple[CachedGraph, ...] | None, str]:
    """The same models (the LM and the RM, or a fused bundle's one graph) over context-free copies of their graphs, and
    what the engine's info says of it; or None and why the engine keeps attending over every slot."""
    backends = [model.backend for model in models]
    if not all(type(b) is OrtBackend and not b.device.is_cuda for b in backends):
        return None, "full: cache rows are re-laid out in host memory, so narrower caches need ONNX Runtime on the CPU"
    context = gen.manifest.max_context
    try:
        narrow = []
        for model in models:
            path = gen.bundle / model.spec.file
            backend = _GraphBytesBackend(relaxed_graph(path, context), path, model.backend.device, gen.options.engine)
            narrow.append(model.on(backend, context))  # the same kind: LanguageModel, RewardModel, FusedModel (its head shared)
    except ArgsError as e:
        log.warning("continuous batching attends over all %d cache slots: %s", context, e)
        return None, f"full: {e}"
    return tuple(narrow), "narrow"
