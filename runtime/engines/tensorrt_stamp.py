"""Pure checks for TensorRT engines in a bundle: the build stamp and the choice of optimization profile.
No `import tensorrt` here, so both run (and are tested) anywhere."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import BundleError, GenerationError


def rebuild_command(bundle: str) -> str:
    return f"args-export --tensorrt-only {bundle}  (on this machine)"


def check_engine_stamp(stamp: dict[str, Any], trt_version: str, compute_capability: str, bundle: str = "BUNDLE") -> None:
    """A serialized engine only loads on the TensorRT version and GPU architecture it was built for."""
    built = (stamp.get("tensorrt_version"), stamp.get("compute_capability"))
    if built != (trt_version, compute_capability):
        raise BundleError(
            f"engine {stamp.get('file', '?')} was built with TensorRT {built[0]} for {built[1]}, this machine has "
            f"TensorRT {trt_version} on {compute_capability}; rebuild it: {rebuild_command(bundle)}"
        )


Shape = tuple[int, ...]
Ranges = Mapping[str, tuple[Shape, Shape, Shape]]  # input name → ([min], [opt], [max]) shapes


def _fits(observed: Shape, lo: Shape, hi: Shape) -> bool:
    return len(observed) == len(lo) == len(hi) and all(a <= x <= b for x, a, b in zip(observed, lo, hi))


def select_profile(profiles: Sequence[Ranges], observed: Mapping[str, Shape], engine: str = "engine",
                   names: Sequence[str] | None = None) -> int:
    """Index of the first optimization profile whose [min, max] holds every observed shape.
    Otherwise a GenerationError quoting, per profile, the first input outside it with the profile's [min, opt, max]."""
    problems = []
    for i, ranges in enumerate(profiles):
        bad = [name for name in ranges if name in observed and not _fits(observed[name], ranges[name][0], ranges[name][2])]
        if not bad:
            return i
        lo, opt, hi = ranges[bad[0]]
        label = names[i] if names and i < len(names) else f"profile {i}"
        problems.append(f"{label}: {bad[0]} is {list(observed[bad[0]])}, [min, opt, max] = [{list(lo)}, {list(opt)}, {list(hi)}]")
    raise GenerationError(
        f"the inputs fit no optimization profile of {engine} ({'; '.join(problems) or 'it has no profiles'}); shorten the input or "
        "rebuild the engines with larger limits (args-export --tensorrt-only BUNDLE --trt-max-batch N; the context limit is the bundle's max_context)"
    )
