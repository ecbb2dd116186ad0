"""The demo's models and bundle on disk, each made once and cached: the packaged SmolLM2 converted from GGUF, the
sentiment reward model on its backbone, and their bundle. Used by `args-demo`, the benchmarks and the RM recipe."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from args_runtime.manifest import FORMAT_VERSION

from ..data import SENTIMENT_HEAD


def cache_dir() -> Path:
    """Where args-rt keeps what it makes for itself: $ARGS_RT_CACHE, else ~/.cache/args-rt."""
    return Path(os.environ.get("ARGS_RT_CACHE", Path.home() / ".cache" / "args-rt"))


def head_digest(head_file: Path = SENTIMENT_HEAD) -> str:
    """Names the RM and bundle made from a score head, so a new head never reuses an old head's cache."""
    return hashlib.sha256(Path(head_file).read_bytes()).hexdigest()[:12]


def demo_paths(cache: Path, head_file: Path = SENTIMENT_HEAD) -> tuple[Path, Path, Path]:
    """Where the demo keeps the converted LM, the sentiment RM (of `head_file`) and their bundle."""
    tag = head_digest(head_file) if Path(head_file).is_file() else "missing-head"
    return cache / "smollm2-135m-instruct", cache / f"smollm2-135m-sentiment-rm-{tag}", cache / f"smollm2-sentiment-bundle-{tag}"


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


def prepare_bundle(cache: Path, force: bool = False, head_file: Path = SENTIMENT_HEAD) -> Path:
    """SmolLM2 (LM) + the sentiment reward model on its backbone (the shipped head, or `head_file`) → bundle,
    each step cached under `cache`."""
    from ..bundle import ExportOptions, export_bundle
    from .models import load_head, sentiment_reward_model

    _, rm_dir, bundle = demo_paths(cache, head_file)
    if _current(bundle) and not force:
        return bundle
    cache.mkdir(parents=True, exist_ok=True)
    print("args-demo: first run: converting SmolLM2-135M-Instruct and exporting the bundle (about a minute)", file=sys.stderr)
    lm = smollm2_folder(cache)
    rm = sentiment_reward_model(lm, rm_dir, load_head(head_file))
    export_bundle(ExportOptions(lm, rm, bundle, max_context=2048, force=True))
    return bundle
