"""Child-process helpers of the acceptance run (benchmarks/gpu/run.py), run with the installed packages:

    python -m args_benchmarks.gpu.prepare versions OUT.json     # versions, the GPU, and one op on ORT's CUDA provider
    python -m args_benchmarks.gpu.prepare bundle smollm2 ...    # SmolLM2-135M + the demo's RM (needs the GGUF) → a bundle
    python -m args_benchmarks.gpu.prepare bundle llama-7b ...   # a seeded random pair of that shape (benchmarks/shapes.py) → a bundle

`bundle` makes the models (cached), exports them with args-export's own code (checked as usual) and writes a JSON
report: the model folders, the seconds each step took and the export's parity checks."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path


def cuda_smoke() -> dict:
    """One Add on ONNX Runtime's CUDA provider, imported without torch first (as the torch-free runtime runs): proves
    the provider library and its CUDA libraries load, which get_available_providers() alone does not. The same model
    runs on the CPU first, so that the dry run checks this code too."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "smoke", [x], [y])
    # IR 8 (what the exporter writes): the box's onnx may default to an IR version newer than its onnxruntime reads.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()
    value = np.arange(6, dtype=np.float32).reshape(2, 3)

    def run(providers: list[str]) -> tuple[bool, list[str]]:
        session = ort.InferenceSession(model, providers=providers)
        return bool(np.array_equal(session.run(None, {"x": value})[0], 2 * value)), session.get_providers()

    result = {"available": "CUDAExecutionProvider" in ort.get_available_providers(), "cpu_ran": run(["CPUExecutionProvider"])[0]}
    if not result["available"]:
        return {**result, "ok": False, "error": f"this onnxruntime has no CUDAExecutionProvider ({ort.get_available_providers()})"}
    try:
        same, providers = run(["CUDAExecutionProvider", "CPUExecutionProvider"])
        ok = same and providers[0] == "CUDAExecutionProvider"
        return {**result, "ok": ok, "session_providers": providers,
                "error": "" if ok else f"the session fell back to {providers} (see the log for ORT's reason)"}
    except Exception as e:  # noqa: BLE001 - reported, not raised: the run goes on
        return {**result, "ok": False, "error": f"{type(e).__name__}: {e}"}


def _version(module: str) -> dict:
    try:
        mod = importlib.import_module(module)
    except Exception as e:  # noqa: BLE001
        return {"version": None, "error": f"{type(e).__name__}: {e}"}
    return {"version": getattr(mod, "__version__", None), "path": str(Path(getattr(mod, "__file__", "") or "").parent)}


def _nvidia_smi() -> dict:
    query = "name,driver_version,memory.total,compute_cap"
    try:
        line = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True, text=True,
                              timeout=20).stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return {}
    return dict(zip(query.split(","), (v.strip() for v in line.split(","))))


def _meminfo() -> dict:
    try:
        fields = dict(line.split(":", 1) for line in open("/proc/meminfo"))
        return {k: round(int(fields[k].split()[0]) / 2**20, 1) for k in ("MemTotal", "MemAvailable")}  # GiB
    except (OSError, KeyError, ValueError):
        return {}


def versions(work: Path) -> dict:
    """What the box has, for versions.json and the summary's header. ORT first, torch after (see cuda_smoke)."""
    doc: dict = {"python": platform.python_version(), "executable": sys.executable, "platform": platform.platform()}
    doc["onnxruntime"] = _version("onnxruntime")
    doc["cuda_smoke"] = cuda_smoke()
    try:
        import onnxruntime as ort

        doc["onnxruntime"]["providers"] = ort.get_available_providers()
        doc["onnxruntime"]["built_for_cuda"] = getattr(importlib.import_module("onnxruntime.capi.build_and_package_info"), "cuda_version", None)
    except Exception:  # noqa: BLE001
        pass
    for module in ("numpy", "tokenizers", "onnx", "torch", "transformers", "gguf"):
        doc[module] = _version(module)
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            doc["torch"].update(cuda=torch.version.cuda, device=props.name, capability=f"{props.major}.{props.minor}",
                                memory_gib=round(props.total_memory / 2**30, 1))
        else:
            doc["torch"]["cuda"] = None
    except Exception:  # noqa: BLE001
        pass
    import args_runtime

    doc["args_runtime"] = {"path": str(Path(args_runtime.__file__).parent), "loop": args_runtime.LOOP_IMPL}
    doc["gpu"] = _nvidia_smi()
    doc["cpu"] = {"model": next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), ""),
                  "cores": os.cpu_count()}
    doc["memory_gib"] = _meminfo()
    doc["disk_free_gib"] = {str(p): round(shutil.disk_usage(p).free / 2**30, 1) for p in (work, Path("/dev/shm")) if p.exists()}
    doc["smollm2_gguf"] = _smollm2_gguf()
    from .box import against

    doc["pins"] = against(doc)  # box_versions.txt's packages: expected (the box's, as the lane runs them) and found
    return doc


def _smollm2_gguf() -> str | None:
    from args_export.demo.models import smollm2_gguf
    from args_runtime.errors import ExportError

    try:
        return str(smollm2_gguf())
    except ExportError:
        return None


def model_pair(models: str, dtype: str, cache: Path, positions: int) -> tuple[Path, Path]:
    """HF folders of the LM and the RM: SmolLM2 + the demo's sentiment RM, or a random pair of a named shape."""
    if models == "smollm2":
        from args_export.demo.models import sentiment_reward_model
        from args_export.demo.prepare import demo_paths, smollm2_folder

        lm = smollm2_folder(cache)
        return lm, sentiment_reward_model(lm, demo_paths(cache)[1])
    from args_benchmarks.shapes import random_pair

    return random_pair(models, dtype, cache, positions)


# What each --variants entry changes in args-export's defaults (a fused bundle when the RM is a head on the LM's backbone).
VARIANTS = {"default": {}, "two-graph": {"fuse": False}, "int8": {"quantize": "int8"}}


def make_bundle(args: argparse.Namespace) -> dict:
    """Models (cached) → an exported, checked bundle; the report says how long each step took."""
    import time

    from args_export.bundle import ExportOptions, export_bundle

    report: dict = {"models": args.models, "dtype": args.dtype, "layouts": args.layouts, "bundles": {}, "exports_s": {}, "split": args.split}
    started = time.perf_counter()
    lm, rm = model_pair(args.models, args.dtype, args.cache, args.max_context)
    report.update(lm=str(lm), rm=str(rm), models_s=round(time.perf_counter() - started, 1))
    _write(args.report, report)
    for layout in args.layouts.split(","):
        for variant in args.variants.split(","):
            key, out = (layout, "") if variant == "default" else (f"{layout} {variant}", f"-{variant}")
            out = args.out / f"{args.models}-{args.dtype}-{layout}{out}"
            started = time.perf_counter()
            if args.split:
                manifest = split_export(args, lm, rm, layout, out)
            else:
                manifest = export_bundle(ExportOptions(lm, rm, out, dtype=args.dtype, max_context=args.max_context, max_k=args.max_k,
                                                       force=True, cache=layout, **VARIANTS[variant]))
            report["exports_s"][key] = round(time.perf_counter() - started, 1)
            report["bundles"][key] = str(out)
            report.setdefault("validation", {})[key] = manifest.validation
            report.setdefault("bundle_bytes", {})[key] = sum(f.stat().st_size for f in out.iterdir())
            _write(args.report, report)
    return report


def split_export(args: argparse.Namespace, lm: Path, rm: Path, layout: str, out: Path):
    """A big pair's two graphs exported at the same time: tracing a 13 GB graph to ONNX is minutes of single-threaded
    CPU work, so two args-export processes run side by side, one with the LM and a tiny stand-in RM, one with a tiny
    stand-in LM and the RM (same tokenizer, same settings), each checking its graphs against PyTorch as usual; the
    bundle then takes the LM graph of the first and the RM graph of the second (assemble). Two graphs, even for a pair
    whose RM is a head on the LM's backbone: a fused graph needs both models in one export."""
    from args_benchmarks.shapes import random_pair

    tiny_lm, tiny_rm = random_pair("llama-tiny", args.dtype, args.cache, args.max_context)
    halves = {"lm": (lm, tiny_rm), "rm": (tiny_lm, rm)}
    children = {}
    for half, (lm_dir, rm_dir) in halves.items():
        folder = out.with_name(f"{out.name}.{half}-half")
        log = open(args.report.with_name(f"export-{layout}-{half}.log"), "wb")
        argv = [sys.executable, "-m", "args_export.cli", "--lm", str(lm_dir), "--rm", str(rm_dir), "--out", str(folder), "--dtype", args.dtype,
                "--cache", layout, "--max-context", str(args.max_context), "--max-k", str(args.max_k), "--force",
                "--no-fuse"]  # each half holds one of the big models, so neither can fuse: the assembled bundle has two graphs
        children[half] = (folder, subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT), log)
    failed = []
    for half, (folder, child, log) in children.items():
        if child.wait() != 0:
            failed.append(f"the {half} half (exit {child.returncode}, see {log.name})")
        log.close()
    if failed:
        from args_runtime.errors import ExportError

        raise ExportError(f"split export of {out.name} failed: {'; '.join(failed)}")
    manifest = assemble(children["lm"][0], children["rm"][0], out)
    for folder, _, _ in children.values():
        shutil.rmtree(folder, ignore_errors=True)
    return manifest


def assemble(lm_bundle: Path, rm_bundle: Path, out: Path):
    """One bundle from two exports with the same settings: the LM graph of `lm_bundle` and the RM graph of `rm_bundle`,
    each with the parity checks its own export ran; tokenizer and choose.onnx from `lm_bundle` (files moved, not copied)."""
    import dataclasses

    from args_runtime.errors import ExportError
    from args_runtime.manifest import MANIFEST_FILE, load_manifest

    a, b = load_manifest(lm_bundle, verify_checksums=False), load_manifest(rm_bundle, verify_checksums=False)
    same = lambda m: (m.max_context, m.max_k, m.rm.cache, m.rm.dtype, m.lm.vocab_size, m.tokenizer, m.format_version)  # noqa: E731
    if same(a) != same(b):
        raise ExportError(f"cannot assemble {lm_bundle.name} and {rm_bundle.name}: they were exported with different settings")
    rm_files = {name for name in b.files if name == b.rm.file or name.startswith(b.rm.file + ".")}
    lm_side = {name for name in a.files if not (name == a.rm.file or name.startswith(a.rm.file + "."))}
    checks = {**{k: v for k, v in a.validation.get("checks", {}).items() if not k.startswith("rm ")},
              **{k: v for k, v in b.validation.get("checks", {}).items() if k.startswith("rm ")}}
    manifest = dataclasses.replace(
        a, rm=b.rm, files={**{n: a.files[n] for n in lm_side}, **{n: b.files[n] for n in rm_files}},
        validation={**a.validation, "checks": checks,
                    "assembled": "LM graph and RM graph exported side by side (each beside a tiny stand-in, checked by its own export)"},
        created_by=f"{a.created_by}; assembled by args_benchmarks.gpu.prepare")
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in lm_side:
        (lm_bundle / name).rename(tmp / name)
    for name in rm_files:
        (rm_bundle / name).rename(tmp / name)
    (tmp / MANIFEST_FILE).write_text(manifest.to_json())
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return manifest


def _write(path: Path, doc: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m args_benchmarks.gpu.prepare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    v = sub.add_parser("versions", help="write the versions, the GPU and the CUDA smoke test as JSON")
    v.add_argument("out", type=Path)
    b = sub.add_parser("bundle", help="make the models and export them")
    b.add_argument("models", help="smollm2, or a shape of benchmarks/shapes.py (llama-7b, llama-tiny)")
    b.add_argument("--dtype", default="fp16", choices=["fp32", "fp16", "bf16"])
    b.add_argument("--layouts", default="dynamic,static", help="comma-separated KV-cache layouts, one bundle each")
    b.add_argument("--max-context", type=int, default=256)
    b.add_argument("--max-k", type=int, default=16)
    b.add_argument("--cache", type=Path, required=True, help="where the model folders are made (and found again)")
    b.add_argument("--out", type=Path, required=True, help="folder for the bundles")
    b.add_argument("--report", type=Path, required=True, help="JSON report, rewritten after each step")
    b.add_argument("--split", action="store_true", help="export the LM and the RM graphs side by side in two processes (big pairs)")
    b.add_argument("--variants", default="default", help=f"comma-separated bundles per layout: {', '.join(VARIANTS)} (int8: weight-only, "
                   "fused when the pair fuses; the report names a variant's bundle 'LAYOUT VARIANT')")
    args = p.parse_args(argv)
    if unknown := sorted(set(getattr(args, "variants", "default").split(",")) - set(VARIANTS)):
        p.error(f"--variants: {', '.join(unknown)} unknown; choose among {', '.join(VARIANTS)}")
    from args_runtime.errors import ArgsError

    try:
        if args.command == "versions":
            doc = versions(args.out.parent)
            _write(args.out, doc)
            print(json.dumps(doc["cuda_smoke"]))
        else:
            print(json.dumps(make_bundle(args)))
    except ArgsError as e:
        print(f"prepare: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
