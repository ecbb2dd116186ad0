"""Which implementation of the per-step host work runs: the optional C++ extension (`args_runtime._steploop`, built
from cpp_ext/) or numpy. Both choose and keep the books bit for bit alike (runtime/choice.py, runtime/books.py).

The choice is made at import (`LOOP_IMPL`: "cpp" when the extension is built, else "python"); the environment variable
ARGS_RT_LOOP=python|cpp, or `loop=` on ArgsGenerator.from_bundle, overrides it."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from .errors import GenerationError

try:
    from . import _steploop
except ImportError as error:  # built without the extension (ARGS_RT_NO_CPP_EXT, no compiler): the Python loop runs
    _steploop = None
    # The install records what happened to the extension (CMakeLists.txt); a source checkout has no record.
    _status_file = Path(__file__).with_name("cpp_ext_status.txt")
    _status = _status_file.read_text().strip() if _status_file.exists() else "skipped"
    if not _status.startswith("skipped"):
        _why = _status if _status.startswith("failed") else f"built, but it does not import: {error}"
        warnings.warn(f"args_runtime: the C++ step loop is not available ({_why}); using the Python loop. "
                      f"Reinstall with ARGS_RT_REQUIRE_CPP_EXT=1 to see the build error.", RuntimeWarning, stacklevel=2)

LOOPS = ("python", "cpp")


def resolve_loop(requested: str | None = None) -> str:
    """The loop to use: `requested`, else $ARGS_RT_LOOP, else "cpp" when the extension is built."""
    loop = requested or os.environ.get("ARGS_RT_LOOP") or ("cpp" if _steploop is not None else "python")
    if loop not in LOOPS:
        raise GenerationError(f"loop={loop!r} is not one of {LOOPS} (from the loop= argument or $ARGS_RT_LOOP)")
    if loop == "cpp" and _steploop is None:
        raise GenerationError(
            "loop='cpp' was requested but args_runtime._steploop is not built: reinstall with a C++ compiler "
            "(ARGS_RT_REQUIRE_CPP_EXT=1 pip install ... shows why it failed) or use loop='python'"
        )
    return loop


def available_loops() -> list[str]:
    """The step loops this install can run: always "python", and "cpp" when the extension is built."""
    return ["python", "cpp"] if _steploop is not None else ["python"]


def native():
    """The C++ extension module (only called once resolve_loop said "cpp")."""
    return _steploop


LOOP_IMPL = resolve_loop()
