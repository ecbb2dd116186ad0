"""The bundle's manifest.json: schema, checksums and loading. Shared by the exporter and the runtime."""

from __future__ import annotations

import hashlib
import json
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path, PurePath
from typing import Any

from .dtypes import FLOAT_TYPES, HOST_TYPES
from .errors import BundleError

FORMAT_NAME = "args-rt-bundle"
FORMAT_VERSION = 9  # 2: top-k sliced in the LM graph, graphs record their cache layout; 3: k is the length of `candidate_slots`; 4: the LM graph returns no full logits, static caches take each row's write slots ([B, S] cache_position); 5: fused bundles (`fused`); 6: a fused pass returns its candidates' hidden states and `propose` heads the chosen one; 7: a static cache's slot axis is free (`cache_slots`); 8: an RM may read text (`reward_input`: its own tokenizer, a text-path or encoder graph); 9: an RM reading the LM's ids may read them inside its own chat template (`reward_input.format`)
MANIFEST_FILE = "manifest.json"
CACHE_LAYOUTS = ("dynamic", "static")
# The static layout's slot axis, left free in the graphs: the runtime allocates the buffers max_context slots wide, or
# (continuous batching) only as wide as the requests in them need, with the same graph.
CACHE_SLOTS = "cache_slots"
# The inputs and outputs the runtime feeds and reads, by role (besides past_key_values.* / present.*, one per layer).
RUNTIME_IO = {
    "lm": (("input_ids", "position_ids", "attention_mask", "candidate_slots"), ("topk_values", "topk_ids")),
    "rm": (("input_ids", "position_ids", "attention_mask", "candidate_ids"), ("rewards",)),
    # a fused bundle's RM graph (FusedStep): the RM's, plus each candidate's hidden state for the LM head it shares
    "fused": (("input_ids", "position_ids", "attention_mask", "candidate_ids"), ("rewards", "candidate_hidden")),
    # a fused bundle's propose graph (ProposalHead): the LM head over each row's chosen candidate, and its top-k
    "propose": (("candidate_hidden", "pick", "candidate_slots"), ("topk_values", "topk_ids")),
    # the text path (an RM with a tokenizer of its own, reward_input.path == "text"): a decoder RM's TailScorer, over its
    # own cache, scores k re-tokenized tails per pass; an encoder RM scores k whole texts per pass, no cache
    "rm_text": (("input_ids", "position_ids", "attention_mask", "tail_ids", "tail_read"), ("rewards",)),
    "rm_encoder": (("input_ids", "attention_mask"), ("rewards",)),
    "choose": (("topk_values", "topk_ids", "rewards", "w", "sample", "temperature", "draws"), ("chosen_ids", "chosen_logits", "chosen_rewards")),
}


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
    cache: str = "dynamic"  # "dynamic": the cache grows by concatenation; "static": [B, Hkv, cache_slots, D] buffers written in place
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


READ_PATHS = ("ids", "text")  # how the RM reads the LM's tokens
RM_KINDS = ("decoder", "encoder")
RM_FORMATS = ("raw", "chat")  # the id path: the LM's ids as they are, or inside the RM's chat template (--rm-format)


@dataclass
class RewardInput:
    """How the RM reads what the LM writes. "ids": the LM's token ids as they are (one tokenizer, or the RM's adds tokens
    of its own). "text": decoded by the LM's tokenizer and re-tokenized by the RM's own (`tokenizer`, with its chat
    template), cut from the left to `max_positions`; a decoder RM keeps its own cache, an encoder reads whole texts.
    `format` "chat" (the id path, --rm-format chat): a chat prompt's reply ids go inside the RM's own template (ids
    before + reply + after), and the RM keeps its own cache as on the text path."""

    path: str = "ids"
    reason: str = ""  # why this path (the export log says it too)
    kind: str = "decoder"
    tokenizer: TokenizerSpec | None = None  # the RM's own (text path)
    max_positions: int = 0  # text path: the RM's position limit
    lm_clean_up_spaces: bool = False  # text path: the LM's decode cleans up tokenization spaces (transformers' rule)
    format: str = "raw"  # the id path: "raw" (the official code's reading) or "chat" (inside the RM's template)

    @property
    def own_tokens(self) -> bool:
        """Whether the RM reads ids of its own making (text, or its own chat format): its own graph and cache."""
        return self.path == "text" or self.format == "chat"

    @property
    def role(self) -> str:
        """The RM graph's role in RUNTIME_IO."""
        return f"rm_{'text' if self.kind == 'decoder' else 'encoder'}" if self.own_tokens else "rm"

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "RewardInput":
        d = dict(d)
        d["tokenizer"] = TokenizerSpec(**d["tokenizer"]) if d.get("tokenizer") else None
        return RewardInput(**d)


@dataclass
class Manifest:
    """Everything in manifest.json; `files` maps each bundle file to its sha256."""

    lm: GraphSpec
    rm: GraphSpec
    tokenizer: TokenizerSpec
    max_context: int
    max_k: int
    files: dict[str, str] = field(default_factory=dict)
    # The RM is a score head on the LM's own backbone and its graph is a FusedStep: one pass per token scores the
    # candidates and proposes each one's next top-k, so ARGS never runs the LM graph (kept for greedy and sampling).
    fused: bool = False
    propose: GraphSpec | None = None  # a fused bundle's LM head over the chosen candidate (None in two-graph bundles)
    choice_file: str = ""  # choose.onnx: combine and choose on the device (empty: the host chooses)
    validation: dict[str, Any] = field(default_factory=dict)
    # Optional TensorRT engines, {"lm": {"file", "sha256", "tensorrt_version", "compute_capability", "precision", "max_batch", "profiles"}, ...};
    # absent in bundles without engines.
    engines: dict[str, Any] = field(default_factory=dict)
    created_by: str = ""
    reward_input: RewardInput = field(default_factory=RewardInput)
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Manifest":
        d = dict(d)
        d["lm"] = GraphSpec.from_dict(d["lm"])
        d["rm"] = GraphSpec.from_dict(d["rm"])
        d["propose"] = GraphSpec.from_dict(d["propose"]) if d.get("propose") else None
        d["tokenizer"] = TokenizerSpec(**d["tokenizer"])
        d["reward_input"] = RewardInput.from_dict(d.get("reward_input") or {})
        return Manifest(**d)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so multi-GB weights do not fill memory."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_manifest(bundle_dir: str | Path, verify_checksums: bool = True) -> Manifest:
    """Read and check a bundle's manifest (syntax, fields and their types, the facts the runtime relies on, the files it
    names, and, with `verify_checksums`, every file's sha256); raise BundleError naming the problem and the fix."""
    if not isinstance(bundle_dir, (str, PurePath)):
        raise BundleError(f"bundle path {bundle_dir!r} is not a folder path: pass a str or pathlib.Path naming the folder args-export wrote")
    bundle = Path(bundle_dir)
    rebuild = f"re-export it with `args-export ... --out {bundle} --force`"
    if not bundle.is_dir():
        what = "is a file, not a bundle folder" if bundle.exists() else "does not exist"
        raise BundleError(f"bundle folder {bundle} {what}: pass the folder written by `args-export --lm ... --rm ... --out {bundle}`")
    path = bundle / MANIFEST_FILE
    if not path.is_file():
        raise BundleError(f"{bundle} is not an args-rt bundle: it has no {MANIFEST_FILE}; {rebuild}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{path} is not valid JSON ({e}); {rebuild}") from e
    if not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME:
        raise BundleError(f"{path} is not an args-rt manifest (format={raw.get('format') if isinstance(raw, dict) else None!r}); {rebuild}")
    if raw.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{path} has format version {raw.get('format_version')!r}, this args-rt reads version {FORMAT_VERSION}; {rebuild}"
        )
    problem = _schema_problem(raw, Manifest, "")
    if problem:
        raise BundleError(f"{path} is missing or has malformed fields: {problem}; {rebuild}")
    manifest = Manifest.from_dict(raw)
    problem = _consistency_problem(manifest)
    if problem:
        raise BundleError(f"{path} does not describe a bundle this runtime can drive: {problem}; {rebuild}")
    rm_tok = manifest.reward_input.tokenizer
    named = [manifest.lm.file, manifest.rm.file, manifest.propose and manifest.propose.file, manifest.tokenizer.file, manifest.tokenizer.chat_template_file,
             manifest.choice_file, rm_tok and rm_tok.file, rm_tok and rm_tok.chat_template_file]
    for name in [n for n in named if n] + list(manifest.files):
        if not _plain_name(name):
            raise BundleError(f"{path} names the file {name!r}, which is not a plain file name inside the bundle; {rebuild}")
    unlisted = sorted(n for n in named if n and n not in manifest.files)
    if unlisted:
        raise BundleError(f"{path} names {unlisted} but has no checksum for them (`files`); {rebuild}")
    for name in (manifest.files if verify_checksums else [n for n in named if n]):
        if not (bundle / name).is_file():
            raise BundleError(f"bundle file {bundle / name} is missing; {rebuild}")
        if verify_checksums and sha256_file(bundle / name) != manifest.files[name]:
            raise BundleError(f"bundle file {bundle / name} is corrupt (sha256 differs from the manifest); {rebuild}")
    return manifest


def check_graph_io(role: str, spec: GraphSpec | None, path: Path, found: tuple[list[TensorSpec], list[TensorSpec]]) -> None:
    """A graph file must be the graph its manifest entry describes: the same input and output names, element types
    and ranks, and the same fixed dims (an RM graph saved as lm.onnx, or a graph from another bundle, is refused here,
    not by the engine in the middle of a step). choose.onnx has no entry: its names are checked."""
    if spec is None:
        declared_io = tuple([TensorSpec(n, [], "") for n in names] for names in RUNTIME_IO[role])
    else:
        declared_io = (spec.inputs, spec.outputs)
    for kind, declared, actual in (("input", declared_io[0], found[0]), ("output", declared_io[1], found[1])):
        have = {t.name: t for t in actual}
        missing = [t.name for t in declared if t.name not in have]
        extra = sorted(set(have) - {t.name for t in declared})
        wrong = [f"{t.name}: {have[t.name].dtype} {have[t.name].shape} where the manifest says {t.dtype} {t.shape}"
                 for t in declared if spec is not None and t.name in have and not _same_tensor(t, have[t.name])]
        if missing or extra or wrong:
            details = "; ".join(filter(None, [missing and f"missing {kind}s {missing}", extra and f"unexpected {kind}s {extra}", *wrong]))
            raise BundleError(f"{path} is not the {role} graph the manifest describes ({details}): the file was replaced "
                              f"or belongs to another bundle; re-export the bundle with `args-export ... --force`")


def _same_tensor(declared: TensorSpec, actual: TensorSpec) -> bool:
    """Same element type and rank; every dim that is a number in either is the same number in both."""
    if declared.dtype != actual.dtype or len(declared.shape) != len(actual.shape):
        return False
    return all(a == b for a, b in zip(declared.shape, actual.shape) if isinstance(a, int) or isinstance(b, int))


def _plain_name(name: str) -> bool:
    return bool(name) and PurePath(name).name == name and name not in (".", "..") and "\\" not in name


# ------------------------------------------------------------------ the manifest's schema, read off the dataclasses


def _schema_problem(value: Any, kind: Any, where: str) -> str | None:
    """Why `value` (parsed JSON) does not fit the annotation `kind`, naming the field; None when it fits."""
    name = where or "the manifest"
    if is_dataclass(kind):
        if not isinstance(value, dict):
            return f"{name} must be an object, not {type(value).__name__}"
        hints = typing.get_type_hints(kind)
        known = {f.name: f for f in fields(kind)}
        unknown = sorted(set(value) - set(known))
        if unknown:
            return f"{where + '.' if where else ''}{unknown[0]} is not a field this args-rt knows"
        for f in known.values():
            if f.name not in value:
                if f.default is MISSING and f.default_factory is MISSING:
                    return f"{where + '.' if where else ''}{f.name} is missing"
                continue
            problem = _schema_problem(value[f.name], hints[f.name], f"{where + '.' if where else ''}{f.name}")
            if problem:
                return problem
        return None
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        problems = [_schema_problem(value, option, where) for option in args]
        return None if None in problems else f"{name} = {value!r:.60} must be {' or '.join(_type_name(a) for a in args)}"
    if kind is Any:
        return None
    if kind is type(None):
        return None if value is None else f"{name} must be null"
    if origin is list:
        if not isinstance(value, list):
            return f"{name} must be a list, not {type(value).__name__}"
        return next((p for i, v in enumerate(value) if (p := _schema_problem(v, args[0], f"{name}[{i}]"))), None)
    if origin is dict:
        if not isinstance(value, dict):
            return f"{name} must be an object, not {type(value).__name__}"
        return next((p for k, v in value.items() if (p := _schema_problem(v, args[1], f"{name}[{k!r}]"))), None)
    if kind is int and (not isinstance(value, int) or isinstance(value, bool)):
        return f"{name} = {value!r:.60} must be an integer"
    if kind is float and (not isinstance(value, (int, float)) or isinstance(value, bool)):
        return f"{name} = {value!r:.60} must be a number"
    if kind in (str, bool) and not isinstance(value, kind):
        return f"{name} = {value!r:.60} must be a {kind.__name__}"
    return None


def _type_name(kind: Any) -> str:
    return "null" if kind is type(None) else getattr(kind, "__name__", str(kind))


def _consistency_problem(m: Manifest) -> str | None:
    """The facts the runtime relies on, checked once here instead of failing inside an engine later."""
    reads = m.reward_input
    if reads.path not in READ_PATHS or reads.kind not in RM_KINDS or reads.format not in RM_FORMATS:
        return (f"reward_input path = {reads.path!r}, kind = {reads.kind!r}, format = {reads.format!r} (path one of {READ_PATHS}, "
                f"kind one of {RM_KINDS}, format one of {RM_FORMATS})")
    if reads.own_tokens and (reads.tokenizer is None or reads.max_positions < 1 or m.fused):
        return f"reward_input path = {reads.path!r}, format = {reads.format!r} needs the RM's tokenizer and its max_positions, and no fused graph"
    if reads.format == "chat" and (reads.path != "ids" or reads.tokenizer.chat_template_file is None):
        return "reward_input.format = 'chat' is the id path's (path 'ids') and needs the RM's chat template"
    if reads.path == "ids" and reads.kind != "decoder":
        return "an encoder RM reads text: reward_input.path must be 'text'"
    vocab = m.lm.vocab_size if reads.path == "text" else min(m.lm.vocab_size, m.rm.vocab_size)
    if m.max_context < 2:
        return f"max_context = {m.max_context} (at least 2: a prompt token and a new one)"
    if not 1 <= m.max_k <= vocab:
        return f"max_k = {m.max_k} (it must be 1 … the vocabulary size {vocab})"
    for role, spec in (("lm", m.lm), ("fused" if m.fused else reads.role, m.rm)):
        problem = _encoder_problem(spec) if role == "rm_encoder" else _graph_problem(role, spec)
        if problem:
            return problem
    if m.fused != (m.propose is not None):
        return "fused = true needs a propose graph, and only a fused bundle has one" if m.fused else "propose is set but fused = false"
    if m.propose is not None:
        missing = [n for n in RUNTIME_IO["propose"][0] if n not in {t.name for t in m.propose.inputs}]
        missing += [n for n in RUNTIME_IO["propose"][1] if n not in {t.name for t in m.propose.outputs}]
        if missing:
            return f"the propose graph has no {missing}"
    t = m.tokenizer
    bad_ids = [i for i in [t.pad_token_id, *t.eos_token_ids] if not 0 <= i < vocab]
    if bad_ids:
        return f"tokenizer ids {bad_ids} (pad and EOS ids must be token ids, 0 … {vocab - 1})"
    return None


def _encoder_problem(spec: GraphSpec) -> str | None:
    """An encoder RM's graph: no cache, whole texts in, one reward per text out."""
    inputs, outputs = ({t.name for t in ts} for ts in (spec.inputs, spec.outputs))
    needed_in, needed_out = RUNTIME_IO["rm_encoder"]
    missing = sorted(set(needed_in) - inputs) + sorted(set(needed_out) - outputs)
    return f"the rm_encoder graph has no {missing}" if missing else None


def _graph_problem(role: str, spec: GraphSpec) -> str | None:
    if spec.cache not in CACHE_LAYOUTS:
        return f"{role}.cache = {spec.cache!r} (one of {CACHE_LAYOUTS})"
    if spec.dtype not in FLOAT_TYPES:
        return f"{role}.dtype = {spec.dtype!r} (one of {FLOAT_TYPES})"
    for name in ("num_layers", "num_kv_heads", "head_dim", "vocab_size"):
        if getattr(spec, name) < 1:
            return f"{role}.{name} = {getattr(spec, name)} (at least 1)"
    for t in spec.inputs + spec.outputs:
        if t.dtype not in HOST_TYPES or any(isinstance(d, int) and d < 0 for d in t.shape):
            return f"{role} tensor {t.name}: {t.dtype} {t.shape} (an element type of {sorted(HOST_TYPES)} and dims >= 0)"
    inputs, outputs = ({t.name for t in ts} for ts in (spec.inputs, spec.outputs))
    needed_in, needed_out = RUNTIME_IO[role]
    missing = sorted(set(needed_in + (("cache_position",) if spec.cache == "static" else ())) - inputs) + sorted(set(needed_out) - outputs)
    if missing:
        return f"the {role} graph has no {missing}"
    past = [t for t in spec.inputs if t.name.startswith("past_key_values.")]
    present = [t for t in spec.outputs if t.name.startswith("present.")]
    if not len(past) == len(present) == 2 * spec.num_layers:
        return f"the {role} graph has {len(past)} past and {len(present)} present cache tensors for num_layers = {spec.num_layers} (2 each per layer)"
    static = spec.cache == "static"
    for t in past:
        dims = (t.shape[1], t.shape[3]) if len(t.shape) == 4 else None
        if len(t.shape) != 4 or dims != (spec.num_kv_heads, spec.head_dim) or (static and t.shape[2] != CACHE_SLOTS):
            return (f"{role} cache tensor {t.name} has shape {t.shape}, not [batch, num_kv_heads = {spec.num_kv_heads}, "
                    f"{CACHE_SLOTS if static else 'past_sequence_length'}, head_dim = {spec.head_dim}]")
    return None
