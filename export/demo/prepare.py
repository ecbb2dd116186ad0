"""The demo's models and bundle on disk, each made once and cached: the packaged SmolLM2 converted from GGUF, the
sentiment reward model on its backbone (or, `rm="minilm"`, the encoder sentiment RM on all-MiniLM-L6-v2), and their
bundle. Used by `args-demo`, the benchmarks and the RM recipe."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from args_runtime.manifest import FORMAT_VERSION

from ..data import MINILM_HEAD, SENTIMENT_HEAD

# The demo's reward models: name → (its shipped head, the cache names of its RM folder and of its bundle with SmolLM2).
RMS = {
    "sentiment": (SENTIMENT_HEAD, "smollm2-135m-sentiment-rm", "smollm2-sentiment-bundle"),
    "minilm": (MINILM_HEAD, "minilm-sentiment-rm", "smollm2-minilm-bundle"),
}


def cache_dir() -> Path:
    """Where args-rt keeps what it makes for itself: $ARGS_RT_CACHE, else ~/.cache/args-rt."""
    return Path(os.environ.get("ARGS_RT_CACHE", Path.home() / ".cache" / "args-rt"))


def head_digest(head_file: Path = SENTIMENT_HEAD) -> str:
    """Names the RM and bundle made from a score head, so a new head never reuses an old head's cache."""
    return hashlib.sha256(Path(head_file).read_bytes()).hexdigest()[:12]


def demo_paths(cache: Path, head_file: Path | None = None, rm: str = "sentiment") -> tuple[Path, Path, Path]:
    """Where the demo keeps the converted LM, the RM `rm` (of `head_file`, default its shipped head) and their bundle."""
    default_head, rm_name, bundle_name = rm_choice(rm)
    head_file = head_file or default_head
    tag = head_digest(head_file) if Path(head_file).is_file() else "missing-head"
    return cache / "smollm2-135m-instruct", cache / f"{rm_name}-{tag}", cache / f"{bundle_name}-{tag}"


def rm_choice(rm: str) -> tuple[Path, str, str]:
    if rm not in RMS:
        from args_runtime.errors import ExportError

        raise ExportError(f"the demo has no reward model {rm!r}; choose one of {', '.join(RMS)}")
    return RMS[rm]


def smollm2_folder(cache: Path) -> Path:
    """The packaged SmolLM2-135M-Instruct as a Hugging Face folder (converted from its GGUF once)."""
    from .models import convert_gguf, smollm2_gguf

    return convert_gguf(smollm2_gguf(), demo_paths(cache)[0])


def _current(bundle: Path) -> bool:
    """A cached bundle this args-rt reads, in the default layout (an older one is re-exported, not refused)."""
    from ..bundle import ExportOptions

    try:
        manifest = json.loads((bundle / "manifest.json").read_text())
        return manifest.get("format_version") == FORMAT_VERSION and manifest["lm"].get("cache") == ExportOptions.cache
    except (OSError, ValueError, KeyError):
        return False


def rm_folder(cache: Path, head_file: Path | None = None, rm: str = "sentiment") -> Path:
    """The demo's reward model `rm` as a Hugging Face folder (of `head_file`, default its shipped head), cached."""
    from .models import load_head, minilm_reward_model, sentiment_reward_model

    head_file = head_file or rm_choice(rm)[0]
    _, rm_dir, _ = demo_paths(cache, head_file, rm)
    if rm == "minilm":
        return minilm_reward_model(rm_dir, load_head(head_file))
    return sentiment_reward_model(smollm2_folder(cache), rm_dir, load_head(head_file))


def prepare_bundle(cache: Path, force: bool = False, head_file: Path | None = None, rm: str = "sentiment") -> Path:
    """SmolLM2 (LM) + the reward model `rm` (the sentiment RM on its backbone, or "minilm": the encoder RM on
    all-MiniLM-L6-v2; the shipped head, or `head_file`) → bundle, each step cached under `cache`."""
    from ..bundle import ExportOptions, export_bundle

    _, _, bundle = demo_paths(cache, head_file, rm)
    if _current(bundle) and not force:
        return bundle
    cache.mkdir(parents=True, exist_ok=True)
    print("args-demo: first run: converting SmolLM2-135M-Instruct and exporting the bundle (about a minute)", file=sys.stderr)
    lm = smollm2_folder(cache)
    export_bundle(ExportOptions(lm, rm_folder(cache, head_file, rm), bundle, max_context=2048, force=True))
    return bundle
