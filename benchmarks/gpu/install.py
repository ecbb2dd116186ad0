"""Stage 1: install onnxruntime-gpu and the rest of the wheel folder, then the project, into a folder of their own
that comes first on PYTHONPATH (the box's CPU onnxruntime installs the same `onnxruntime` package name), leaving
the box's torch and transformers alone; then record the versions and the GPU, and run one op on ORT's CUDA provider."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .packing import PackError, missing_parts, read_index, unpack
from .stage import FAILED, PASSED, Context, Stage, StageResult, run_child

PACKAGES = ("args_runtime", "args_export", "args_benchmarks")
FOLDERS = {"args_runtime": "runtime", "args_export": "export", "args_benchmarks": "benchmarks"}  # as CMakeLists.txt installs them
TOKENIZER_FOLDER = "smollm2-tokenizer"


def run(ctx: Context, stage: Stage) -> StageResult:
    site = ctx.work / "site"
    site.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    wheels, problems = _unpack_wheels(ctx, notes)
    _set_environment(ctx, site)
    log = ctx.out / "install" / "install.log"
    if wheels:
        status, _ = run_child(ctx, [ctx.python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--upgrade",
                                    "--target", str(site), *map(str, wheels)], log, stage.budget_s)
        if status != 0:
            problems.append(f"pip could not install {', '.join(w.name for w in wheels)} (see install/install.log)")
        else:
            notes.append(f"installed {', '.join(w.name for w in wheels)}")
    notes.append(_install_project(ctx, site, log, stage))
    versions_file = ctx.out / "install" / "versions.json"
    status, _ = run_child(ctx, [ctx.python, "-m", "args_benchmarks.gpu.prepare", "versions", str(versions_file)], log, max(30.0, ctx.left()))
    versions = json.loads(versions_file.read_text()) if status == 0 and versions_file.is_file() else {}
    if not versions:
        problems.append("could not read the versions (see install/install.log)")
    ctx.facts.update(versions=versions, cuda_ok=bool(versions.get("cuda_smoke", {}).get("ok")),
                     smollm2_gguf=versions.get("smollm2_gguf"), gpu=versions.get("gpu", {}).get("name"))
    cuda = versions.get("cuda_smoke", {})
    notes.append(f"ORT {versions.get('onnxruntime', {}).get('version')} CUDA provider: " + ("runs" if cuda.get("ok") else f"no ({cuda.get('error', '?')})"))
    if not ctx.dry_run and not cuda.get("ok"):
        problems.append("ONNX Runtime's CUDA provider does not run: the GPU stages will stop at once")
    data = {"wheels": [w.name for w in wheels], "site": str(site), "versions": versions,
            "env": {k: ctx.env.get(k, "") for k in ("PYTHONPATH", "LD_LIBRARY_PATH", "ARGS_RT_TOKENIZER_DIR")}}
    return StageResult(stage.name, FAILED if problems else PASSED, "; ".join(problems + notes), data=data)


def _unpack_wheels(ctx: Context, notes: list[str]) -> tuple[list[Path], list[str]]:
    """The wheels to install: loose *.whl in --wheels, and those inside every complete pack there (packing.py).
    A missing optional pack (SmolLM2) is a note; a missing or corrupt required one is a problem."""
    if ctx.wheels is None:
        notes.append("no --wheels: using the packages already installed")
        return [], []
    if not ctx.wheels.is_dir():
        return [], [f"--wheels {ctx.wheels} is not a folder"]
    problems: list[str] = []
    dest = ctx.work / "wheels"
    packs, _ = read_index(ctx.wheels)
    for pack_ in packs.values():
        missing = missing_parts(ctx.wheels, pack_)
        if missing and pack_.optional:
            notes.append(f"pack {pack_.name} not here ({len(missing)} of {len(pack_.parts)} parts missing): {pack_.note or 'skipped'}")
            continue
        try:
            unpack(ctx.wheels, pack_, dest)
            notes.append(f"unpacked {pack_.name} ({pack_.unpacked_bytes / 2**20:.0f} MiB from {len(pack_.parts)} parts)")
        except PackError as e:
            problems.append(str(e))
    wheels = sorted(ctx.wheels.glob("*.whl")) + sorted(dest.glob("*.whl"))
    tokenizer = dest / TOKENIZER_FOLDER
    if tokenizer.is_dir() and "ARGS_RT_TOKENIZER_DIR" not in ctx.env:
        ctx.env["ARGS_RT_TOKENIZER_DIR"] = str(tokenizer)
    if not wheels and not problems:
        problems.append(f"--wheels {ctx.wheels} holds no wheel and no pack")
    return wheels, problems


def _set_environment(ctx: Context, site: Path) -> None:
    """Our folder first on PYTHONPATH; the CUDA and cuDNN libraries of the box's pip `nvidia-*` packages on
    LD_LIBRARY_PATH, so ORT's CUDA provider loads them even in a process that never imports torch."""
    ctx.env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [ctx.env.get("PYTHONPATH")])])
    libs = []
    for entry in map(Path, sys.path):
        nvidia = entry / "nvidia"
        if nvidia.is_dir():
            libs += sorted(str(d) for d in nvidia.glob("*/lib") if any(d.glob("*.so*")))
    if libs:
        ctx.env["LD_LIBRARY_PATH"] = os.pathsep.join([*libs, *filter(None, [ctx.env.get("LD_LIBRARY_PATH")])])
    ctx.env.setdefault("ARGS_RT_CACHE", str(ctx.work / "cache"))
    ctx.env.setdefault("ARGS_RT_TEST_CACHE", str(ctx.work / "test-cache"))


def _importable(ctx: Context, log: Path) -> bool:
    probe = "import args_runtime, args_export, args_benchmarks.latency"
    status, _ = run_child(ctx, [ctx.python, "-c", probe], log, 120)
    return status == 0


def _install_project(ctx: Context, site: Path, log: Path, stage: Stage) -> str:
    """The project from the checkout: already importable (a dev install) → left alone; else pip builds it into our
    folder with the box's own build tools (the C++ step loop compiles if it can); else the packages are linked in
    (the Python step loop)."""
    if _importable(ctx, log):
        return "args-rt already importable: left as it is"
    status, seconds = run_child(ctx, [ctx.python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-build-isolation",
                                      "--no-compile", "--target", str(site), str(ctx.repo)], log, max(30.0, stage.budget_s - 40))
    if status == 0 and _importable(ctx, log):
        return f"args-rt built from the checkout in {seconds:.0f} s"
    for package, folder in FOLDERS.items():
        link = site / package
        if link.is_symlink() or link.exists():
            continue
        link.symlink_to(ctx.repo / folder, target_is_directory=True)
    return ("args-rt: pip could not build it (see install/install.log), linked from the checkout (Python step loop)"
            if _importable(ctx, log) else "args-rt could not be installed (see install/install.log)")
