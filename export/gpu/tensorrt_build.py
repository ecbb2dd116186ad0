"""TensorRT engines for a bundle: optimization profiles derived from the graphs' inputs (pure, tested without
TensorRT) and the engine build (trt.Builder + OnnxParser). `tensorrt` and cuda-python are imported lazily.

    build_engines(bundle)  →  lm.engine, rm.engine (a fused bundle: and propose.engine) and manifest.engines, written atomically
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from args_runtime.errors import ArgsError, ExportError
from args_runtime.files import write_atomic
from args_runtime.manifest import CACHE_SLOTS, MANIFEST_FILE, TensorSpec, load_manifest, sha256_file

PRECISIONS = ("fp16", "bf16", "fp32")
ENGINE_FILES = {"lm": "lm.engine", "rm": "rm.engine", "propose": "propose.engine"}  # propose: fused bundles only

Shape = tuple[int, ...]
DimRange = tuple[int, int, int]  # (min, opt, max)


def require_build_stack():
    """TensorRT, cuda-python and a visible GPU, or one error naming what is missing (checked before any write)."""
    from args_runtime.engines.tensorrt_engine import cuda_call, require_stack  # noqa: PLC0415

    trt, cudart = require_stack()  # MissingDependencyError with the install command
    try:
        count = cuda_call(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
    except ArgsError as e:  # CUDA cannot start (no driver)
        raise ExportError(f"building TensorRT engines needs a CUDA GPU ({e})") from e
    if not count:
        raise ExportError("building TensorRT engines needs an NVIDIA GPU; CUDA sees none here")
    return trt


# --- optimization profiles: pure functions of the graph's input specs and the manifest's limits -------------


@dataclass(frozen=True)
class Profile:
    """One optimization profile: [min, opt, max] shapes of every input (no input is a shape tensor: sizes such as
    the LM's k travel as tensor shapes, see LMStep)."""

    name: str
    shapes: dict[str, tuple[Shape, Shape, Shape]] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"shapes": {k: [list(s) for s in v] for k, v in self.shapes.items()}}


def dim_ranges(max_batch: int, max_context: int, max_k: int) -> dict[str, dict[str, DimRange]]:
    """[min, opt, max] of every symbolic dim name the exported graphs use, per phase. Decode extends the cache by one
    token (opt: half-full cache); prefill takes up to the whole context in one pass on an empty cache. A static
    cache's free slot axis is fixed at the context: the runtime runs TensorRT engines over full-width buffers."""
    if max_batch < 1 or max_context < 2 or max_k < 1:
        raise ExportError(f"profile limits out of range: max_batch={max_batch} (>= 1), max_context={max_context} (>= 2), max_k={max_k} (>= 1)")
    batch = (1, max(1, max_batch // 2), max_batch)
    cands = (1, max_k, max_k)
    half = max_context // 2
    prompt = min(128, max_context)
    slots = {CACHE_SLOTS: (max_context, max_context, max_context)}
    return {
        "decode": {"batch_size": batch, "sequence_length": (1, 1, 1), "past_sequence_length": (0, half, max_context - 1),
                   "total_sequence_length": (1, half + 1, max_context), "num_candidates": cands, "num_proposals": cands, **slots},
        "prefill": {"batch_size": batch, "sequence_length": (1, prompt, max_context), "past_sequence_length": (0, 0, max_context - 1),
                    "total_sequence_length": (1, prompt, max_context), "num_candidates": cands, "num_proposals": cands, **slots},
    }


def graph_profiles(inputs: Sequence[TensorSpec], max_batch: int, max_context: int, max_k: int) -> list[Profile]:
    """Profiles for one graph, in the order the runtime tries them (first match wins): decode (only when the graph has a
    `sequence_length` axis), then prefill. Integer dims are fixed; an unknown symbolic dim is an ExportError."""
    phases = dim_ranges(max_batch, max_context, max_k)
    uses_sequence = any("sequence_length" in spec.shape for spec in inputs)
    profiles = []
    for phase, dims in phases.items():
        if phase == "decode" and not uses_sequence:
            continue
        profile = Profile(phase)
        for spec in inputs:
            unknown = [d for d in spec.shape if not isinstance(d, int) and d not in dims]
            if unknown:
                raise ExportError(f"input {spec.name!r} has symbolic dim(s) {unknown} with no TensorRT profile range; known: {sorted(dims)}")
            profile.shapes[spec.name] = tuple(
                tuple(d if isinstance(d, int) else dims[d][i] for d in spec.shape) for i in range(3)
            )  # type: ignore[assignment]
        profiles.append(profile)
    return profiles


# --- the engine build (needs TensorRT and a GPU) -------------------------------------------------------------


def _parse(trt, network, logger, onnx_path: Path):
    """Parse the ONNX file (external weights are read from beside it); raise with every parser error."""
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "\n  ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or "(no parser errors recorded)"
        raise ExportError(f"TensorRT cannot parse {onnx_path}:\n  {errors}")
    return parser


def _add_profiles(builder, config, network, profiles: list[Profile]) -> None:
    shape_inputs = sorted(network.get_input(i).name for i in range(network.num_inputs) if network.get_input(i).is_shape_tensor)
    if shape_inputs:
        raise ExportError(f"TensorRT reads inputs {shape_inputs} as shape tensors (their values set shapes); args-rt graphs carry "
                          "every size as a tensor shape: re-export the bundle with this args-rt")
    parsed = {network.get_input(i).name for i in range(network.num_inputs)}
    for p in profiles:
        if parsed != set(p.shapes):
            raise ExportError(f"the parsed network's inputs {sorted(parsed)} differ from the manifest's {sorted(p.shapes)}")
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in p.shapes.items():
            profile.set_shape(name, lo, opt, hi)
        if config.add_optimization_profile(profile) < 0:
            raise ExportError(f"TensorRT rejected the {p.name} profile {p.as_json()}")


def _load_timing_cache(config, path: Path | None, log):
    data = path.read_bytes() if path is not None and path.is_file() else b""
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        log(f"timing cache {path} is from another device or TensorRT version: starting a fresh one")
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


def _build_one(trt, onnx_path: Path, profiles: list[Profile], opts: "BuildOptions", log) -> bytes:
    logger = trt.Logger(trt.Logger.ERROR if opts.quiet else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TRT 10: explicit batch is the only mode; not STRONGLY_TYPED (we set precision flags)
    _parser = _parse(trt, network, logger, onnx_path)  # keep the parser alive until the build: it owns the weights
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace_gib * (1 << 30)))
    if opts.precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif opts.precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
    _add_profiles(builder, config, network, profiles)
    _load_timing_cache(config, opts.timing_cache, log)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT could not build an engine from {onnx_path} ({opts.precision}); rerun without --quiet for the builder log")
    if opts.timing_cache is not None:
        write_atomic(opts.timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(serialized))


@dataclass
class BuildOptions:
    precision: str = "fp16"
    max_batch: int = 8
    timing_cache: Path | None = None
    workspace_gib: float = 4.0
    quiet: bool = False


def device_compute_capability(device_id: int = 0) -> str:
    """'sm_XY' of a CUDA device, via cuda-python (the same call the runtime uses for the stamp check)."""
    from args_runtime.engines.tensorrt_engine import compute_capability  # noqa: PLC0415

    return compute_capability(device_id)


def _load_for_rebuild(bundle: Path):
    """The manifest, after checking every file but the engines (an interrupted earlier build may have left new ones)."""
    manifest = load_manifest(bundle, verify_checksums=False)
    for name, digest in manifest.files.items():
        path = bundle / name
        if name not in ENGINE_FILES.values() and (not path.is_file() or sha256_file(path) != digest):
            raise ExportError(f"bundle file {path} is missing or corrupt (sha256 differs from the manifest); re-export the bundle with --force")
    return manifest


def build_engines(bundle_dir: str | Path, precision: str = "fp16", max_batch: int = 8, timing_cache: str | Path | None = None,
                  workspace_gib: float = 4.0, quiet: bool = False) -> dict[str, Any]:
    """Build lm.engine and rm.engine for a bundle and record them in its manifest; return manifest.engines.
    Both engines are built in memory first; files change only after both builds succeeded."""
    if precision not in PRECISIONS:
        raise ExportError(f"TensorRT precision {precision!r} is not one of {list(PRECISIONS)}")
    trt = require_build_stack()
    bundle = Path(bundle_dir)
    manifest = _load_for_rebuild(bundle)
    opts = BuildOptions(precision, max_batch, Path(timing_cache) if timing_cache else None, workspace_gib, quiet)
    log = (lambda line: None) if quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    capability = device_compute_capability(0)
    built: dict[str, tuple[bytes, list[Profile]]] = {}
    graphs = [("lm", manifest.lm), ("rm", manifest.rm)] + ([("propose", manifest.propose)] if manifest.propose else [])
    for role, spec in graphs:
        profiles = graph_profiles(spec.inputs, max_batch, manifest.max_context, manifest.max_k)
        log(f"building {ENGINE_FILES[role]} from {spec.file} (TensorRT {trt.__version__}, {capability}, {precision}, "
            f"profiles: {', '.join(p.name for p in profiles)}) …")
        built[role] = (_build_one(trt, bundle / spec.file, profiles, opts, log), profiles)
    for role, (data, profiles) in built.items():
        write_atomic(bundle / ENGINE_FILES[role], data)
        manifest.engines[role] = {
            "file": ENGINE_FILES[role], "sha256": sha256_file(bundle / ENGINE_FILES[role]), "tensorrt_version": trt.__version__,
            "compute_capability": capability, "precision": precision, "max_batch": max_batch,
            "profiles": {p.name: p.as_json() for p in profiles},
        }
        manifest.files[ENGINE_FILES[role]] = manifest.engines[role]["sha256"]
    write_atomic(bundle / MANIFEST_FILE, manifest.to_json())
    log(f"engines written to {bundle}: {', '.join(ENGINE_FILES[r] for r in built)}")
    return manifest.engines

