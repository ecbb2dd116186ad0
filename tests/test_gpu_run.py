"""The GPU acceptance run's preparation, on the CPU: the wheel folder's parts survive the trip (and a bad part is
caught), the repacked onnxruntime wheel still installs, the exporter's one-file weights match onnx's own layout, the
stage machinery kills what runs out of time and goes on after a failure, the targets are judged from the numbers,
and the whole run end to end in its dry-run mode (tiny models, CPU onnxruntime)."""

from __future__ import annotations

import base64
import copy
import filecmp
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from args_benchmarks.gpu import box, packing, summary
from args_benchmarks.gpu.stage import FAILED, PASSED, Context, Stage, StageResult, run_child, run_stages
from args_export.onnx_export import save_with_one_data_file

REPO = Path(__file__).resolve().parents[1]


def _checkout_tool(path: Path):
    """A tool that prepares a GPU box from the checkout and is not installed with the package (benchmarks/gpu/wheels.py)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


wheels = _checkout_tool(REPO / "benchmarks" / "gpu" / "wheels.py")


def make_wheel(folder: Path, name: str, files: dict[str, bytes], version: str = "0.1", tag: str = "py3-none-any") -> Path:
    """A minimal valid wheel: the files, METADATA, WHEEL and a RECORD with their hashes."""
    dist = f"{name}-{version}.dist-info"
    files = {**files, f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
             f"{dist}/WHEEL": f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: {tag}\n".encode()}
    rows = [f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}" for path, data in files.items()]
    path = folder / f"{name}-{version}-{tag}.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for arcname, data in files.items():
            z.writestr(arcname, data)
        z.writestr(f"{dist}/RECORD", "\n".join([*rows, f"{dist}/RECORD,,"]) + "\n")
    return path


# ---------------------------------------------------------------------------------------------- the wheel folder


def test_parts_round_trip_and_a_bad_or_missing_part_is_named(tmp_path):
    source = tmp_path / "src"
    (source / "folder" / "deeper").mkdir(parents=True)
    rng = np.random.default_rng(0)
    blobs = {"a.bin": rng.bytes(300_000), "folder/b.txt": b"tokenizer" * 1000, "folder/deeper/c.bin": rng.bytes(50_000)}
    for name, data in blobs.items():
        (source / name).write_bytes(data)
    made = packing.pack({"a.bin": source / "a.bin", "folder": source / "folder"}, tmp_path / "w", "core", part_bytes=64 * 1024, filters="plain")
    packing.write_index(tmp_path / "w", [made])
    assert len(made.parts) >= 5 and all((tmp_path / "w" / p).stat().st_size <= 64 * 1024 for p in made.parts)
    assert set(made.files) == set(blobs) and made.unpacked_bytes == sum(map(len, blobs.values()))
    packs, _ = packing.read_index(tmp_path / "w")
    packing.unpack(tmp_path / "w", packs["core"], tmp_path / "out")
    assert {name: (tmp_path / "out" / name).read_bytes() for name in blobs} == blobs
    sums = subprocess.run(["sha256sum", "-c", packing.SUMS_FILE], cwd=tmp_path / "w", capture_output=True, text=True)
    assert sums.returncode == 0, sums.stdout  # the box can check the parts with coreutils too

    packing.resplit(tmp_path / "w", made, 100 * 1024)  # other part sizes, the same stream: no recompression
    packing.write_index(tmp_path / "w", [made])
    assert all((tmp_path / "w" / p).stat().st_size <= 100 * 1024 for p in made.parts) and len(list((tmp_path / "w").glob("core.*"))) == len(made.parts)
    packs, _ = packing.read_index(tmp_path / "w")
    packing.unpack(tmp_path / "w", packs["core"], tmp_path / "out2")
    assert {name: (tmp_path / "out2" / name).read_bytes() for name in blobs} == blobs

    third = tmp_path / "w" / made.parts[2]
    third.write_bytes(b"x" + third.read_bytes()[1:])
    with pytest.raises(packing.PackError, match=f"part {made.parts[2]} is corrupt"):
        packing.unpack(tmp_path / "w", packs["core"], tmp_path / "again")
    third.unlink()
    with pytest.raises(packing.PackError, match=f"1 of {len(made.parts)} parts missing"):
        packing.unpack(tmp_path / "w", packs["core"], tmp_path / "again")


def test_repacked_onnxruntime_wheel_drops_what_the_box_cannot_use_and_still_installs(tmp_path):
    original = make_wheel(tmp_path, "onnxruntime_gpu", {
        "onnxruntime/__init__.py": b"__version__ = '9.9'\n",
        "onnxruntime/capi/libonnxruntime_providers_tensorrt.so": b"\x7fELF trt",
        "onnxruntime/capi/libonnxruntime.so.9.9": b"\x7fELF c api",
        "onnxruntime/capi/libonnxruntime_providers_cuda.so": b"\x7fELF cuda" * 100,
        "onnxruntime/transformers/__init__.py": b"",
    }, version="9.9")
    (tmp_path / "slim").mkdir()
    slim, dropped = wheels.repack(original, tmp_path / "slim")
    assert sorted(dropped) == ["onnxruntime/capi/libonnxruntime.so.9.9", "onnxruntime/capi/libonnxruntime_providers_tensorrt.so",
                               "onnxruntime/transformers/__init__.py"]
    with zipfile.ZipFile(slim) as z:
        assert all(info.compress_type == zipfile.ZIP_STORED for info in z.infolist())
        record = z.read("onnxruntime_gpu-9.9.dist-info/RECORD").decode()
        assert "tensorrt" not in record and "libonnxruntime_providers_cuda.so" in record
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(site), str(slim)], check=True)
    assert (site / "onnxruntime" / "capi" / "libonnxruntime_providers_cuda.so").is_file()
    assert not (site / "onnxruntime" / "capi" / "libonnxruntime_providers_tensorrt.so").exists()


def test_a_wheel_not_built_for_cuda_13_is_refused(tmp_path):
    import args_runtime

    # the installed package's (an installed wheel's is in site-packages, an editable build's in runtime/)
    steploop = next(Path(args_runtime.__file__).parent.glob("_steploop*.so"), None)
    if steploop is None:
        pytest.skip("the C++ step loop is not built here: no ELF library of ours to read")
    assert "libstdc++.so.6" in wheels.needed_libraries(steploop.read_bytes())
    fake = make_wheel(tmp_path, "onnxruntime_gpu", {"onnxruntime/capi/build_and_package_info.py": b"cuda_version = '12.8'\n",
                                                     "onnxruntime/capi/libonnxruntime_providers_cuda.so": steploop.read_bytes()})
    with pytest.raises(SystemExit, match="built for CUDA 12.8 .* not CUDA 13"):
        wheels.check_cuda(fake)


# ---------------------------------------------------------------------------------------------- the exporter's weights file


@pytest.mark.parametrize("traced", ["one file per tensor", "embedded"])
def test_one_data_file_is_laid_out_as_onnx_writes_it(tmp_path, traced):
    """The tracer spills a >2 GB model as one file per tensor; the exporter streams them into lm.onnx.data: byte for byte
    what onnx.save_model(save_as_external_data=True) writes, small tensors kept inline, the tracer's files removed."""
    rng = np.random.default_rng(0)
    shapes = [((300,), np.float32), ((2,), np.float32), ((64, 64), np.float16), ((5,), np.int64), ((247,), np.float32), ((248,), np.float32)]
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(d), f"w{i}") for i, (s, d) in enumerate(shapes)]
    x, y = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]), helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    model = helper.make_model(helper.make_graph([helper.make_node("Add", ["x", "w1"], ["y"])], "g", [x], [y], initializer=inits))
    scratch, expected, ours = (tmp_path / n for n in ("scratch", "expected", "ours"))
    for folder in (scratch, expected, ours):
        folder.mkdir()
    if traced == "embedded":
        onnx.save_model(copy.deepcopy(model), str(scratch / "traced.onnx"))
    else:
        onnx.save_model(copy.deepcopy(model), str(scratch / "traced.onnx"), save_as_external_data=True, all_tensors_to_one_file=False, size_threshold=0)
    onnx.save_model(onnx.load(str(scratch / "traced.onnx")), str(expected / "lm.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="lm.onnx.data", size_threshold=1024)
    save_with_one_data_file(onnx.load(str(scratch / "traced.onnx"), load_external_data=False), scratch, ours / "lm.onnx")
    assert filecmp.cmp(expected / "lm.onnx", ours / "lm.onnx", shallow=False)
    assert filecmp.cmp(expected / "lm.onnx.data", ours / "lm.onnx.data", shallow=False)
    assert [p.name for p in scratch.iterdir()] == ["traced.onnx"]  # every spilled tensor file removed once copied
    loaded = onnx.load(str(ours / "lm.onnx"))
    assert all(np.array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b)) for a, b in zip(loaded.graph.initializer, inits))


# ---------------------------------------------------------------------------------------------- stages and verdicts


def _context(tmp_path: Path, budget: float = 60.0) -> Context:
    (tmp_path / "out").mkdir(exist_ok=True)
    return Context(REPO, tmp_path / "out", tmp_path / "work", None, dry_run=True, quick=True, deadline=time.monotonic() + budget)


def test_a_child_is_killed_at_its_budget_with_its_process_group(tmp_path):
    ctx = _context(tmp_path)
    started = time.monotonic()
    status, seconds = run_child(ctx, [sys.executable, "-c", "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
                                      "'import time; time.sleep(60)']); print('started', flush=True); time.sleep(60)"], tmp_path / "child.log", 2)
    assert status is None and time.monotonic() - started < 10 and seconds < 10
    assert "started" in (tmp_path / "child.log").read_text()


def test_a_failing_stage_is_reported_and_the_next_one_runs(tmp_path):
    ctx = _context(tmp_path)
    written = []

    def broken(ctx, stage):
        raise RuntimeError("a bug in this stage")

    def fine(ctx, stage):
        return StageResult(stage.name, PASSED, f"ran with {stage.budget_s:.0f} s")

    results = run_stages(ctx, [Stage("first", 30, broken), Stage("second", 30, fine), Stage("third", 1000, fine)],
                         lambda r: written.append([x.name for x in r]))
    assert [(r.name, r.status) for r in results] == [("first", FAILED), ("second", PASSED), ("third", PASSED)]
    assert "RuntimeError: a bug in this stage" in results[0].detail
    assert results[2].budget_s <= 60  # a stage never gets more than the run has left
    assert written == [["first"], ["first", "second"], ["first", "second", "third"]]  # the summary after every stage


def _bench_record(kind: str, engine: str, ms: float, batch: int = 1, agreement: float | None = None) -> dict:
    return {"kind": kind, "engine": engine, "ms_per_token": ms, "batch": batch, "sweep": "headline" if batch == 1 else "batch",
            "agreement_with_reference": agreement, "contender": kind, "tokens_per_s": batch * 1e3 / ms}


@pytest.mark.parametrize("gpu, ms, met", [("NVIDIA H100 80GB HBM3", 9.5, True), ("NVIDIA H100 80GB HBM3", 12.5, False), ("NVIDIA H200", 9.5, None)])
def test_the_7b_targets_are_judged_from_the_records(tmp_path, gpu, ms, met):
    ctx = _context(tmp_path)
    ctx.dry_run, ctx.facts["gpu"] = False, gpu
    graphs = "onnxruntime cuda, static cache, cuda graph, cpp loop"
    records = [_bench_record("reference", "transformers eager cuda", 60.0), _bench_record("args", graphs, ms, agreement=0.75),
               _bench_record("args", graphs, ms * 1.5, batch=4)]
    tests = StageResult("gpu-tests", PASSED, data={"cases": {"tests.test_gpu::test_cuda_graphs_engage_and_change_no_token": "passed",
                                                             "tests.test_gpu::test_fp32_cuda_tokens_equal_cpu_tokens[static]": "failed"}})
    verdicts = {v.target.split(":")[0].split(" (")[0]: v for v in summary.judge(ctx, [tests, StageResult("random-7b", PASSED, data={"bench": {"records": records}})])}
    latency = verdicts["7B-shaped fp16, k=10, batch 1"]
    assert latency.met is met and f"{ms:.2f} ms/token" in latency.measured
    speedup = next(v for name, v in verdicts.items() if name.startswith("7B-shaped") and "faster" in v.target)
    assert speedup.met is (60.0 / ms >= 5.0)
    assert verdicts["CUDA graphs engage for LM and RM with no token changed"].met is True
    assert verdicts["fp32 CUDA tokens equal the CPU's"].met is False
    assert verdicts["every `gpu` test passes"].met is False
    agreement = next(v for v in verdicts.values() if "7B-shaped random" in v.target)
    assert agreement.met is None and "0.75" in agreement.measured


# ---------------------------------------------------------------------------------------------- the dry run


@pytest.fixture(scope="module")
def lane(tmp_path_factory) -> Path:
    """The CI lane: a venv with the GPU box's exact package versions (benchmarks/gpu/box_versions.txt) over this
    interpreter's other packages (torch, args-rt). PyPI must be reachable (CI's is): a failed install fails the tests."""
    return box.make_lane(tmp_path_factory.mktemp("box-lane") / "venv")


def test_a_lane_pip_cannot_install_fails_with_pips_own_words(tmp_path):
    """No package index (CI without PyPI, a pinned version gone): the lane is not built and the error says what pip said,
    so the dry-run tests fail with the cause rather than run under other versions or skip."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}  # no local wheel folders or extra indexes
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL="http://127.0.0.1:9/simple", PIP_RETRIES="0", PIP_TIMEOUT="2")
    with pytest.raises(box.LaneError, match=r"(?s)pip could not install box_versions.txt's versions.*No matching distribution found for"):
        box.make_lane(tmp_path / "venv", timeout=120, env=env)


def test_the_stages_before_the_7b_bench_leave_it_its_time(tmp_path):
    """A slow stage before random-7b must not eat the time its bench needs after the background export (kept_s)."""
    ctx = _context(tmp_path, budget=100)
    budgets = {}

    def note(ctx, stage):
        budgets[stage.name] = stage.budget_s
        return StageResult(stage.name, PASSED)

    run_stages(ctx, [Stage("first", 90, note), Stage("second", 90, note), Stage("big", 10_000, note, kept_s=60)], lambda r: None)
    assert 35 <= budgets["first"] <= 40 and 35 <= budgets["second"] <= 40 and budgets["big"] > 95


def test_the_lane_has_exactly_the_box_versions(lane):
    """What the dry run runs under: each pinned package at the box's version, args-rt from this checkout."""
    probe = "import importlib.metadata as m, json, args_runtime; print(json.dumps({n: m.version(n) for n in %r}))" % sorted(box.pins())
    found = json.loads(subprocess.run([str(lane), "-c", probe], check=True, capture_output=True, text=True, timeout=120).stdout)
    assert found == box.pins()


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory, smol_tokenizer, lane):
    """The whole run on the CPU, under the lane's versions: a wheel folder packed as for the box (a small wheel and
    SmolLM2's tokenizer; a required pack with a corrupt part, so the install stage fails), then every stage with tiny
    models, quick."""
    root = tmp_path_factory.mktemp("gpu-dry-run")
    staging, wheels_dir = root / "staging", root / "wheels"
    staging.mkdir()
    probe = make_wheel(staging, "argsgpu_probe", {"argsgpu_probe.py": b"VALUE = 42\n"})
    smol_tokenizer.save_pretrained(staging / "smollm2-tokenizer")
    core = packing.pack({probe.name: probe, "smollm2-tokenizer": staging / "smollm2-tokenizer"}, wheels_dir, "core", 256 * 1024, "plain")
    extra = packing.pack({"notes.txt": probe}, wheels_dir, "extra", 256 * 1024, "plain")
    optional = packing.pack({"gguf.txt": probe}, wheels_dir, "smollm2", 256 * 1024, "plain")
    optional.optional = True
    packing.write_index(wheels_dir, [core, extra, optional])
    (wheels_dir / extra.parts[0]).write_bytes(b"corrupted in transfer")
    for part in optional.parts:  # not brought this time
        (wheels_dir / part).unlink()
    out, work, back = root / "out", root / "work", root / "return"
    env = {k: v for k, v in os.environ.items() if k not in ("ARGS_RT_TOKENIZER_DIR",)}
    env["ARGS_RT_CACHE"] = str(root / "args-rt-cache")  # never the user's ~/.cache/args-rt (issue 31: 2.3 GB landed there)
    env["PYTHON"] = str(lane)  # the box runs run.sh with its python3; here, the lane's
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu" / "run.sh"), "--dry-run", "--quick", "--wheels", str(wheels_dir), "--out", str(out),
                           "--work", str(work), "--return", str(back)], capture_output=True, text=True, env=env, timeout=1500)
    return done, out, work, back


def test_dry_run_reports_every_stage_and_goes_on_after_a_failed_one(dry_run):
    done, out, work, _ = dry_run
    doc = json.loads((out / "summary.json").read_text())
    stages = {s["name"]: s for s in doc["stages"]}
    assert list(stages) == ["install", "gpu-tests", "smollm2", "batching", "bundles", "random-7b"], done.stdout[-3000:]
    assert done.returncode == 1  # the install stage failed
    assert stages["install"]["status"] == FAILED and "is corrupt" in stages["install"]["detail"]
    assert "pack smollm2 not here" in stages["install"]["detail"]
    assert (work / "site" / "argsgpu_probe.py").read_text() == "VALUE = 42\n"  # the good pack was installed all the same
    assert stages["install"]["data"]["env"]["ARGS_RT_TOKENIZER_DIR"] == str(work / "wheels" / "smollm2-tokenizer")
    smoke = stages["install"]["data"]["versions"]["cuda_smoke"]
    assert smoke["cpu_ran"] is True and smoke["ok"] is False  # the smoke model runs; this onnxruntime has no CUDA
    assert stages["gpu-tests"]["status"] == PASSED and stages["gpu-tests"]["data"]["counts"]["skipped"] >= 5  # no GPU: they skip
    for name in ("smollm2", "random-7b"):
        assert stages[name]["status"] == PASSED, stages[name]["detail"]
        export = stages[name]["data"]["export"]
        assert all(check["ok"] for layout in export["validation"].values() for check in layout["checks"].values())
        assert {r["kind"] for r in stages[name]["data"]["bench"]["records"]} >= {"reference", "args"}
    engines = {r["engine"] for r in stages["smollm2"]["data"]["bench"]["records"] if r["kind"] == "args"}
    assert {e.split(", ")[1] for e in engines} == {"dynamic cache", "static cache"}
    assert (out / "random-7b" / "latency.json").is_file() and (out / "gpu-tests" / "junit.xml").is_file()
    # Continuous batching ran through ArgsEngine on the smollm2 stage's static bundle, every request its own tokens.
    assert stages["batching"]["status"] == PASSED, stages["batching"]["detail"]
    [run] = stages["batching"]["data"]["runs"].values()
    assert run["identical_tokens"] and run["summary"]["continuous"]["tokens_per_s"] > 0 and (out / "batching" / "batching-8.json").is_file()
    # SmolLM2's static bundle (fused) against the same pair as two graphs and with int8 weights, exported in the background
    # after smollm2's and each checked; the fused bundle chooses the two-graph bundle's tokens (fp16 on the CPU).
    assert stages["bundles"]["status"] == PASSED, stages["bundles"]["detail"]
    variants = stages["bundles"]["data"]["export"]
    assert set(variants["bundles"]) == {"static two-graph", "static int8"} and variants["lm"] == stages["smollm2"]["data"]["export"]["lm"]
    assert all(check["ok"] for layout in variants["validation"].values() for check in layout["checks"].values())
    rows = {r["bundle"]: r for r in stages["bundles"]["data"]["compare"]["rows"]}
    assert list(rows) == ["two-graph float16", "fused float16", "fused int8"]
    assert rows["fused float16"]["token_agreement"] == 1.0 and 0 < rows["fused int8"]["token_agreement"] <= 1.0
    assert all(r["ms_per_token"] > 0 and r["greedy_ms_per_token"] > 0 for r in rows.values())
    assert "exporting SmolLM2's two-graph and int8 bundles in the background" in (out / "run.log").read_text()
    # The big pair's two graphs were exported side by side and assembled into one bundle, every graph checked.
    export = stages["random-7b"]["data"]["export"]
    assert export["split"] and (out / "random-7b" / "export-static-lm.log").is_file()
    manifest = json.loads((Path(export["bundles"]["static"]) / "manifest.json").read_text())
    assert "assembled" in manifest["validation"] and {"lm.onnx.data", "rm.onnx.data", "choose.onnx"} <= set(manifest["files"])
    assert {name.split(" ")[0] for name in manifest["validation"]["checks"]} == {"lm", "rm", "choose.onnx"}


def test_dry_run_summary_judges_every_target_and_fits_what_a_session_brings_back(dry_run):
    _, out, _, back = dry_run
    text = (out / "summary.md").read_text()
    assert "DRY RUN" in text and "| install | failed |" in text and "| random-7b | passed |" in text
    assert f"pinned versions (box_versions.txt): all {len(box.pins())} as pinned" in text  # the lane's, found by the run
    targets = json.loads((out / "summary.json").read_text())["targets"]
    assert len(targets) == 10 and all(t["met"] is None for t in targets)  # a dry run judges nothing
    assert "8 requests:" in next(t for t in targets if t["target"].startswith("continuous batching"))["measured"]
    variants = next(t for t in targets if t["target"].startswith("SmolLM2 fp16 bundles"))["measured"]
    assert "fused float16" in variants and "fused int8" in variants and "| SmolLM2 bundle | ARGS ms/token |" in text
    latency = next(t for t in targets if t["target"].startswith("7B-shaped fp16"))
    assert "ms/token" in latency["measured"] and "dry run" in latency["measured"]
    files = sorted(p.name for p in back.iterdir())
    assert files == ["results.tar.gz", "run.log", "summary.json", "summary.md"]  # a GPU session's $OUT brings back 8 at most
    with tarfile.open(back / "results.tar.gz") as tar:
        names = tar.getnames()
    assert "out/summary.md" in names and "out/random-7b/latency.json" in names and "out/install/versions.json" in names


def test_call_plan_packs_the_parts_into_few_transfers(tmp_path):
    """Every part reaches the box in calls of at most the limit, as few as first-fit decreasing finds; the core-only
    plan carries no optional part."""
    unit = 1024
    core = packing.Pack("core", parts=["core.tar.xz.part00", "core.tar.xz.part01", "core.tar.xz.part02"])
    optional = packing.Pack("smollm2", parts=["smollm2.tar.xz.part00", "smollm2.tar.xz.part01"], optional=True)
    sizes = dict(zip(core.parts + optional.parts, (62, 62, 60, 62, 2)))
    for name, size in sizes.items():
        (tmp_path / name).write_bytes(b"\0" * size * unit)
    for name in (packing.INDEX_FILE, packing.SUMS_FILE):
        (tmp_path / name).write_text("{}")
    plans = wheels.call_plan(tmp_path, [core, optional], 63 * unit)
    assert len(plans["core-only"]) == 3 and len(plans["with-smollm2"]) == 4  # the small SmolLM2 part rides with core part 2
    for name, calls in plans.items():
        assert all(sum((tmp_path / f).stat().st_size for f in call) <= 63 * unit for call in calls)
        carried = sorted(f for call in calls for f in call)
        assert carried == sorted([packing.INDEX_FILE, packing.SUMS_FILE, *core.parts, *(optional.parts if name == "with-smollm2" else [])])


def test_the_7b_stage_refuses_to_fill_the_disk(tmp_path, monkeypatch):
    """A full disk would break every stage after it: the 7B build does not start without room for it."""
    from args_benchmarks.gpu import stages

    ctx = _context(tmp_path)
    ctx.work.mkdir(parents=True)
    monkeypatch.setitem(stages.DISK_NEEDED, "llama-tiny", 10**18)
    assert stages.start_random_export(ctx, "random-7b", 60) is None and not ctx.background
    result = stages.random_figures(ctx, Stage("random-7b", 60, stages.random_figures))
    assert result.status == FAILED and "needs ~1000000000 GB free in --work" in result.detail


def test_a_part_too_large_for_one_call_beside_the_checkout_is_refused(tmp_path, capsys):
    """The checkout travels with every device call: parts are planned against 64 MiB less its files (the first GPU
    session's 62-MiB parts no longer fitted beside a 2.3-MiB checkout), and a part that cannot fit is refused."""
    room = wheels.call_room(REPO)
    tracked = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True).stdout.split(b"\0")
    checkout = sum((REPO / n.decode()).stat().st_size for n in tracked if n and (REPO / n.decode()).is_file())
    assert 0 < room <= wheels.CALL_BYTES - checkout
    unit = 1024
    core = packing.Pack("core", parts=["core.tar.xz.part00", "core.tar.xz.part01"])
    for name, size in (("core.tar.xz.part00", 63), ("core.tar.xz.part01", 40)):
        (tmp_path / name).write_bytes(b"\0" * size * unit)
    for name in (packing.INDEX_FILE, packing.SUMS_FILE):
        (tmp_path / name).write_text("{}")
    assert wheels.oversized(tmp_path, [core], 62 * unit) == ["core.tar.xz.part00"]
    assert wheels.report(tmp_path, [core], 62 * unit) == 2
    assert "re-cut with --resplit --part-mib" in capsys.readouterr().err
    assert wheels.report(tmp_path, [core], 63 * unit) == 0 and (tmp_path / "calls.json").exists()
