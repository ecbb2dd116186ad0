"""Model families beyond the first five: each as LM, as RM and fused, in both cache layouts, token-exact with the
transformers reference in ARGS-greedy and logit by logit after export, sliding windows included beyond the window.
Tiny seeded models from transformers' own config classes, with every feature of the family switched on."""

from __future__ import annotations


import numpy as np
import onnx
import pytest
import torch

from args_export.architectures import FAMILIES, family_of
from args_export.bundle import ExportOptions, export_bundle
from args_export.reference import hf_rewards
from args_runtime import ArgsGenerator
from args_runtime.engines.onnxruntime_engine import OrtBackend
from args_runtime.errors import UnsupportedModelError
from args_runtime.manifest import load_manifest
from args_runtime.models import PrefixState, RewardModel

from .conftest import LAYOUTS, PROMPTS, family_configs

K, W, NEW = 6, 1.5, 20

FAMILY_NAMES = list(family_configs())
BUNDLES = [(kind, layout) for kind in ("two-graph", "fused") for layout in LAYOUTS]


@pytest.mark.parametrize("kind,layout", BUNDLES)
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_args_greedy_tokens_equal_transformers(family_pairs, family, kind, layout):
    pair = family_pairs[family]
    bundle = pair.bundles[kind, layout]
    manifest = load_manifest(bundle)
    assert manifest.fused == (kind == "fused") and manifest.rm.cache == layout
    assert all(check["ok"] for check in manifest.validation["checks"].values())
    gen = ArgsGenerator.from_bundle(bundle)
    expected = [pair.references[kind].generate(p, K, W, NEW) for p in PROMPTS]
    assert [gen.generate(p, k=K, w=W, max_new_tokens=NEW, ignore_eos=True).token_ids for p in PROMPTS] == expected
    batch = gen.generate(PROMPTS, k=K, w=W, max_new_tokens=NEW, ignore_eos=True)  # padded rows: windows count real tokens
    assert [r.token_ids for r in batch] == expected


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_lm_logits_and_rm_rewards_equal_transformers(family_pairs, family):
    """After export, the LM graph's top-k values are transformers' logits (soft-capped where the family caps them) and
    the RM's candidate rewards its full-sequence rewards, past the window and after the cache has grown."""
    pair = family_pairs[family]
    bundle = pair.bundles["two-graph", "dynamic"]
    manifest = load_manifest(bundle)
    lm = OrtBackend(bundle / "lm.onnx")
    prompt = PROMPTS[0]
    feeds = {"input_ids": np.array([prompt]), "position_ids": np.arange(len(prompt))[None], "attention_mask": np.ones((1, len(prompt)), np.int64),
             "candidate_slots": np.zeros(K, np.int64)}
    for spec in manifest.lm.inputs:
        if spec.name.startswith("past_key_values"):
            feeds[spec.name] = np.zeros((1, manifest.lm.num_kv_heads, 0, manifest.lm.head_dim), np.float32)
    out = lm.run(feeds)
    with torch.no_grad():
        logits = pair.lm(torch.tensor([prompt])).logits[0, -1].float()
    values, ids = torch.topk(logits, K)
    np.testing.assert_array_equal(lm.to_host(out["topk_ids"])[0], ids.numpy())
    np.testing.assert_allclose(lm.to_host(out["topk_values"])[0], values.numpy(), atol=1e-4)

    rm = RewardModel(OrtBackend(bundle / "rm.onnx"), manifest.rm, manifest.max_context)
    prefix, ids, positions = PrefixState.for_prompts(PROMPTS, pad_id=2)
    rm.reset(2)
    candidates = np.array([[2, 11, 12, 13], [15, 16, 2, 18]])
    rewards = rm.extend_and_score(ids, positions, prefix, candidates)
    _, positions = prefix.next_inputs()
    later = rm.extend_and_score(candidates[:, :1], positions, prefix, candidates[:, ::-1].copy())
    family = family_of(pair.rm.config)
    for row, p in enumerate(PROMPTS):
        seqs = torch.tensor([p + [c] for c in candidates[row]])
        np.testing.assert_allclose(rewards[row], hf_rewards(pair.rm, family, seqs).numpy(), atol=1e-4)
        seqs = torch.tensor([p + [int(candidates[row, 0]), c] for c in candidates[row, ::-1]])
        np.testing.assert_allclose(later[row], hf_rewards(pair.rm, family, seqs).numpy(), atol=1e-4)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_int8_bundle_exports_checked_and_decodes(family_pairs, family, tmp_path):
    pair = family_pairs[family]
    bundle = tmp_path / "int8"
    export_bundle(ExportOptions(pair.lm_dir, pair.lm_dir.parent / f"{family}-rm", bundle, max_k=16, cache="dynamic", quantize="int8"), quiet=True)
    manifest = load_manifest(bundle)
    assert manifest.lm.quantization and all(check["ok"] for check in manifest.validation["checks"].values())
    ops = {n.op_type for n in onnx.load(str(bundle / "lm.onnx"), load_external_data=False).graph.node}
    assert "MatMulNBits" in ops
    result = ArgsGenerator.from_bundle(bundle).generate(PROMPTS[0], k=K, w=W, max_new_tokens=8, ignore_eos=True)
    assert len(result.token_ids) == 8


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_graphs_compute_no_shape_they_know(family_pairs, family):
    """As the first five families' (test_export): head splits are constant-shape Reshapes and about one Shape per
    layer is left; a sliding window adds one CumSum (its key positions) for all the window layers, and no Shape."""
    bundle = family_pairs[family].bundles["two-graph", "dynamic"]
    manifest = load_manifest(bundle)
    sliding = any(family_configs()[family].to_dict().get(key) for key in ("sliding_window",))
    for spec in (manifest.lm, manifest.rm):
        model = onnx.load(str(bundle / spec.file), load_external_data=False)
        constant = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output} | {i.name for i in model.graph.initializer}
        reshapes = [n for n in model.graph.node if n.op_type == "Reshape"]
        assert reshapes and [n.name for n in reshapes if n.input[1] not in constant] == []
        assert sum(n.op_type == "Shape" for n in model.graph.node) <= 2 * spec.num_layers + 8, spec.file
        assert sum(n.op_type == "CumSum" for n in model.graph.node) == int(sliding), spec.file


def test_every_registered_family_is_tested_here_or_in_the_first_five():
    from .conftest import tiny_configs

    tested = {c.model_type for c in [*family_configs().values(), *tiny_configs().values()]}
    assert set(FAMILIES) == tested


def test_an_unsupported_type_names_the_supported_ones_and_the_guide():
    from transformers import Gemma3Config, T5Config

    with pytest.raises(UnsupportedModelError, match="supported model_type values: .*gemma2.*gpt_neox.*adding-a-model-family"):
        family_of(T5Config())
    with pytest.raises(UnsupportedModelError, match="export its text model"):
        family_of(Gemma3Config())


def test_static_graphs_of_every_family_use_only_ops_tensorrt_parses(family_pairs):
    from args_export.gpu.tensorrt_ops import check_paths

    bundles = [pair.bundles[kind, "static"] for pair in family_pairs.values() for kind in ("two-graph", "fused")]
    reports = check_paths(bundles)
    assert len(reports) >= 2 * len(bundles) and all(r.ok for r in reports), "\n".join(r.describe() for r in reports if not r.ok)


def test_the_families_benchmark_races_a_family_against_llama(tmp_path):
    """`args-bench families` on a tiny shape: every family's row has its lines and its ratio to Llama's ms/token."""
    from args_benchmarks.cli import main

    assert main(["families", "--families", "qwen3,gemma2", "--hidden", "64", "--layers", "2", "--rounds", "1",
                 "--prompt-tokens", "8", "--new-tokens", "4", "--out", str(tmp_path)]) == 0
    doc = __import__("json").loads((tmp_path / "families.json").read_text())
    rows = {r["family"]: r for r in doc["families"]}
    assert list(rows) == ["llama", "qwen3", "gemma2"] and rows["llama"]["vs_llama"] == 1.0
    assert rows["qwen3"]["stack_module"] == "qwen3.py" and 0 < rows["qwen3"]["stack_lines"] < rows["llama"]["stack_lines"]
    assert all(r["ms_per_token"] > 0 for r in rows.values())
