"""torch.onnx's two paths: the TorchScript tracer (the default: torch deprecates it, but it exports 7-10x faster here)
and the dynamo exporter (`args-export --exporter dynamo`) give graphs with the same I/O, the same in-place cache writes
and the same tokens; and the exporter prints nothing of its own at the user."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest

from args_export import onnx_export
from args_export.bundle import ExportOptions, export_bundle
from args_export.cli import main as export_main
from args_runtime import ArgsGenerator
from args_runtime.manifest import load_manifest

from .conftest import CHAT_PROMPTS, STATIC_CONTEXT, TEXT_PROMPTS

OPSETS = {"dynamo": onnx_export.DYNAMO_OPSET, "torchscript": onnx_export.OPSET}


def _opset(path) -> int:
    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def test_the_default_exporter_is_torchscript(tiny_pairs, static_bundles):
    """The suite's bundles come from the default path; its opset tells which path wrote them."""
    assert ExportOptions("lm", "rm", "out").exporter == "torchscript"
    for bundle in (tiny_pairs["llama"].bundle, static_bundles["llama"]):
        assert _opset(bundle / "lm.onnx") == _opset(bundle / "rm.onnx") == OPSETS["torchscript"]


@pytest.fixture(scope="module")
def other_static_bundle(tiny_pairs, tmp_path_factory):
    """The llama pair's static bundle written by the dynamo exporter."""
    pair = tiny_pairs["llama"]
    out = tmp_path_factory.mktemp("other-exporter") / "llama-static"
    export_bundle(ExportOptions(pair.lm_dir, pair.rm_dir, out, max_k=48, max_context=STATIC_CONTEXT, cache="static", exporter="dynamo"),
                  quiet=True)
    return out


def test_both_exporters_write_the_same_interface(static_bundles, other_static_bundle):
    """Same input and output names, symbolic dims and dtypes (what the manifest records and the runtime binds), and
    the same in-place ScatterND writes of every present into its past; only the opset differs."""
    ours, theirs = load_manifest(static_bundles["llama"]), load_manifest(other_static_bundle)
    for a, b in ((ours.lm, theirs.lm), (ours.rm, theirs.rm)):
        assert a.inputs == b.inputs and a.outputs == b.outputs
    for graph in ("lm.onnx", "rm.onnx"):
        io = []
        for bundle in (static_bundles["llama"], other_static_bundle):
            model = onnx.load(str(bundle / graph), load_external_data=False)
            io.append([(v.name, v.type.tensor_type.elem_type, [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim])
                       for v in (*model.graph.input, *model.graph.output)])
            producers = {out: node for node in model.graph.node for out in node.output}
            scatters = [producers[v.name] for v in model.graph.output if v.name.startswith("present.")]
            assert all(n.op_type == "ScatterND" for n in scatters), (bundle, graph)
            assert [n.input[0] for n in scatters] == [v.name.replace("present.", "past_key_values.") for v in model.graph.output
                                                      if v.name.startswith("present.")]
        assert io[0] == io[1], graph
    assert _opset(other_static_bundle / "lm.onnx") == OPSETS["dynamo"]


def test_both_exporters_choose_the_same_tokens(static_bundles, other_static_bundle):
    ours, theirs = ArgsGenerator.from_bundle(static_bundles["llama"]), ArgsGenerator.from_bundle(other_static_bundle)
    for prompt in (CHAT_PROMPTS[1], TEXT_PROMPTS[0]):
        for k, w, method in ((1, 0.0, "greedy"), (10, 1.5, "greedy"), (10, 1.0, "stochastic")):
            a = ours.generate(prompt, k=k, w=w, max_new_tokens=32, ignore_eos=True, method=method, seed=1)
            b = theirs.generate(prompt, k=k, w=w, max_new_tokens=32, ignore_eos=True, method=method, seed=1)
            assert a.token_ids == b.token_ids, (k, w, method)
            np.testing.assert_allclose(a.chosen_logits, b.chosen_logits, atol=1e-4)
            np.testing.assert_allclose(a.rewards, b.rewards, atol=1e-4)


EXPORTER_MARKS = ("torch.onnx", "torch/onnx", "onnxscript", "onnx_ir", "torchvision", "TorchScript", "torch.export", "torch._dynamo",
                  "opset")


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_the_export_log_has_no_exporter_warnings(tiny_pairs, tmp_path, capfd, exporter):
    """args-export prints its staged log and parity report; nothing from torch.onnx, torch.export or onnxscript
    (progress lines, skipped torchvision ops, axis renames, deprecations) reaches the user."""
    pair = tiny_pairs["gpt2"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert export_main(["--lm", str(pair.lm_dir), "--rm", str(pair.rm_dir), "--out", str(tmp_path / "b"), "--cache", "static",
                            "--max-context", "64", "--exporter", exporter]) == 0
    err = capfd.readouterr().err
    assert "[7/7] writing the manifest: done" in err  # the log itself was printed
    assert not [line for line in err.splitlines() if any(mark in line for mark in EXPORTER_MARKS)]
    exporter_files = ("/torch/onnx/", "/torch/export/", "/torch/_export/", "/onnxscript/", "/onnx_ir/", "/torch/fx/")
    assert not [str(w.message) for w in caught if any(part in w.filename for part in exporter_files)]


def test_an_unknown_exporter_fails_clearly_and_writes_nothing(tiny_pairs, tmp_path):
    from args_runtime.errors import ExportError

    pair = tiny_pairs["llama"]
    with pytest.raises(ExportError, match=r"--exporter 'jit' is not one of \['torchscript', 'dynamo'\]"):
        export_bundle(ExportOptions(pair.lm_dir, pair.rm_dir, tmp_path / "b", exporter="jit"), quiet=True)
    assert not list(tmp_path.iterdir())
