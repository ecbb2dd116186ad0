"""The bundle's manifest.json: schema, checksums and loading. Shared by the exporter and the runtime."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import BundleError

FORMAT_NAME = "args-rt-bundle"
FORMAT_VERSION = 4  # 2: top-k sliced in the LM graph, graphs record their cache layout; 3: k is the length of `candidate_slots`; 4: the LM graph returns no full logits, static caches take each row's write slots ([B, S] cache_position)
MANIFEST_FILE = "manifest.json"


@dataclass
class TensorSpec:
    """Name, symbolic shape and element type of one graph input or output."""

    name: str
    shape: list[int | str]
    dtype: str


@dataclass
class GraphSpec:
    """One exported ONNX graph and the model facts the runtime needs to drive it."""

    file: str
    source: str
    architecture: str
    dtype: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    cache: str = "dynamic"  # "dynamic": the cache grows by concatenation; "static": fixed [B, Hkv, max_context, D] buffers written in place
    hf_config: dict[str, Any] = field(default_factory=dict)
    # Weight-only quantization (args-export --quantize): {"scheme": "int8" | "int4", "bits", "block_size", ...}, or
    # None for weights in `dtype`. The graph's interface is the same either way.
    quantization: dict[str, Any] | None = None

    @property
    def weights(self) -> str:
        """What the weights are stored as: the scheme when quantized, else the dtype."""
        return self.quantization["scheme"] if self.quantization else self.dtype

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "GraphSpec":
        d = dict(d)
        d["inputs"] = [TensorSpec(**t) for t in d["inputs"]]
        d["outputs"] = [TensorSpec(**t) for t in d["outputs"]]
        return GraphSpec(**d)


@dataclass
class TokenizerSpec:
    """Tokenizer files and the special ids generation needs."""

    file: str
    chat_template_file: str | None
    eos_token_ids: list[int]
    pad_token_id: int
    bos_token: str | None = None
    eos_token: str | None = None


@dataclass
class Manifest:
    """Everything in manifest.json; `files` maps each bundle file to its sha256."""

    lm: GraphSpec
    rm: GraphSpec
    tokenizer: TokenizerSpec
    max_context: int
    max_k: int
    files: dict[str, str] = field(default_factory=dict)
    choice_file: str = ""  # choose.onnx: combine and choose on the device (empty: the host stepper chooses)
    validation: dict[str, Any] = field(default_factory=dict)
    # Optional TensorRT engines, {"lm": {"file", "sha256", "tensorrt_version", "compute_capability", "precision", "max_batch", "profiles"}, ...};
    # absent in bundles without engines.
    engines: dict[str, Any] = field(default_factory=dict)
    created_by: str = ""
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Manifest":
        d = dict(d)
        d["lm"] = GraphSpec.from_dict(d["lm"])
        d["rm"] = GraphSpec.from_dict(d["rm"])
        d["tokenizer"] = TokenizerSpec(**d["tokenizer"])
        return Manifest(**d)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so multi-GB weights do not fill memory."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_manifest(bundle_dir: str | Path, verify_checksums: bool = True) -> Manifest:
    """Read and check a bundle's manifest; raise BundleError naming the problem and the fix."""
    bundle = Path(bundle_dir)
    rebuild = f"re-export it with `args-export ... --out {bundle} --force`"
    if not bundle.is_dir():
        raise BundleError(f"bundle folder {bundle} does not exist: export one with `args-export --lm ... --rm ... --out {bundle}`")
    path = bundle / MANIFEST_FILE
    if not path.is_file():
        raise BundleError(f"{bundle} is not an args-rt bundle: it has no {MANIFEST_FILE}; {rebuild}")
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BundleError(f"{path} is not valid JSON ({e}); {rebuild}") from e
    if not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME:
        raise BundleError(f"{path} is not an args-rt manifest (format={raw.get('format') if isinstance(raw, dict) else None!r}); {rebuild}")
    if raw.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{path} has format version {raw.get('format_version')!r}, this args-rt reads version {FORMAT_VERSION}; {rebuild}"
        )
    try:
        manifest = Manifest.from_dict(raw)
    except (KeyError, TypeError) as e:
        raise BundleError(f"{path} is missing or has malformed fields ({e}); {rebuild}") from e
    if verify_checksums:
        for name, digest in manifest.files.items():
            file = bundle / name
            if not file.is_file():
                raise BundleError(f"bundle file {file} is missing; {rebuild}")
            if sha256_file(file) != digest:
                raise BundleError(f"bundle file {file} is corrupt (sha256 differs from the manifest); {rebuild}")
    return manifest
