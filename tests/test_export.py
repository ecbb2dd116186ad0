"""args-export: graphs match PyTorch for every architecture, the bundle is complete and atomic, bad input fails clearly."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from args_export import graphs
from args_export.bundle import ExportOptions, export_bundle
from args_export.reference import ReferenceARGS, hf_rewards
from args_runtime.engines.onnxruntime_engine import OrtBackend
from args_runtime.errors import ExportError, TokenizerMismatchError, UnsupportedModelError
from args_runtime.manifest import load_manifest, sha256_file
from args_runtime.models import PrefixState, RewardModel

from .conftest import ARCHS, save_tiny_pair, tiny_configs


@pytest.mark.parametrize("arch", ARCHS)
def test_bundle_is_complete_and_validated(tiny_pairs, arch):
    pair = tiny_pairs[arch]
    manifest = load_manifest(pair.bundle)
    assert manifest.lm.architecture == pair.lm.config.model_type
    assert set(manifest.files) == {"lm.onnx", "lm.onnx.data", "rm.onnx", "rm.onnx.data", "choose.onnx", "tokenizer.json", "chat_template.jinja"}
    for name, digest in manifest.files.items():
        assert sha256_file(pair.bundle / name) == digest
    checks = manifest.validation["checks"]
    assert len(checks) == 8 + 4 and all(c["ok"] for c in checks.values())  # 4 steps × (LM, RM), choose.onnx × 4
    lm_inputs = [t.name for t in manifest.lm.inputs]
    assert lm_inputs[:4] == ["input_ids", "position_ids", "attention_mask", "candidate_slots"]
    assert lm_inputs[4:6] == ["past_key_values.0.key", "past_key_values.0.value"]
    assert [t.name for t in manifest.lm.outputs][:2] == ["topk_values", "topk_ids"]  # the full logits never leave the graph
    assert "logits" not in [t.name for t in manifest.lm.outputs]
    assert [t.name for t in manifest.rm.outputs][0] == "rewards"


@pytest.mark.parametrize("arch", ARCHS)
def test_graphs_compute_no_shape_they_know(tiny_pairs, arch):
    """Head splits and merges are Reshapes with constant shapes (0 = keep, -1 = the rest) and rotary embeddings split
    the head at a constant: no Shape → Gather → Concat chain per view. What is left is about one Shape per layer
    (the cache length); a traced view(b, s, ...) had put 18 in each. GPT-2's Conv1D layers are transformers' own
    (a view around addmm), left as they are."""
    manifest = load_manifest(tiny_pairs[arch].bundle)
    for spec in (manifest.lm, manifest.rm):
        model = onnx.load(str(tiny_pairs[arch].bundle / spec.file), load_external_data=False)
        constant = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output} | {i.name for i in model.graph.initializer}
        conv1d = ("/c_attn", "/c_proj", "/c_fc")  # /stack/c_attn/…, /stack/c_attn_1/…
        ours = [n for n in model.graph.node if not any(part in n.name for part in conv1d)]
        reshapes = [n for n in ours if n.op_type == "Reshape"]
        assert reshapes and [n.name for n in reshapes if n.input[1] not in constant] == []
        assert sum(n.op_type == "Shape" for n in ours) <= 2 * spec.num_layers + 8, spec.file


@pytest.mark.parametrize("arch", ["llama", "opt-350m-style", "gpt2"])
def test_candidate_rewards_equal_full_sequence_rewards(tiny_pairs, arch):
    """k candidates scored in one pass against one cache == the RM run on each prefix + candidate_i,
    also for a padded batch and after the cache has been extended."""
    pair = tiny_pairs[arch]
    manifest = load_manifest(pair.bundle)
    rm = RewardModel(OrtBackend(pair.bundle / "rm.onnx"), manifest.rm, manifest.max_context)
    prompts = [[5, 17, 300, 2, 41, 9, 12], [88, 2, 7]]  # token 2 is pad == eos: it must not move the reading point
    prefix, ids, positions = PrefixState.for_prompts(prompts, pad_id=2)
    rm.reset(2)
    candidates = np.array([[2, 11, 12, 13, 14], [15, 16, 2, 18, 19]])
    rewards = rm.extend_and_score(ids, positions, prefix, candidates)
    _, positions = prefix.next_inputs()
    chosen = candidates[:, :1]
    later = rm.extend_and_score(chosen, positions, prefix, candidates[:, ::-1].copy())
    for row, prompt in enumerate(prompts):
        seqs = torch.tensor([prompt + [c] for c in candidates[row]])
        np.testing.assert_allclose(rewards[row], hf_rewards(pair.rm, pair.rm_family, seqs).numpy(), atol=1e-4)
        seqs = torch.tensor([prompt + [int(chosen[row, 0]), c] for c in candidates[row, ::-1]])
        np.testing.assert_allclose(later[row], hf_rewards(pair.rm, pair.rm_family, seqs).numpy(), atol=1e-4)


def test_graphs_use_only_standard_onnx_ops(tiny_pairs):
    for name in ("lm.onnx", "rm.onnx"):
        model = onnx.load(str(tiny_pairs["llama"].bundle / name), load_external_data=False)
        assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}
        assert "TopK" in {n.op_type for n in model.graph.node} or name == "rm.onnx"


@pytest.mark.parametrize("cache", ["static", "dynamic"])
def test_parity_check_catches_a_wrong_graph(tmp_path, tiny_pairs, monkeypatch, cache):
    """Let candidates see each other (in either layout's mask): the export must fail its PyTorch check and leave
    nothing behind."""
    original = graphs.with_candidates

    def leaky(new_rows, attention_mask, num_candidates):
        allowed = original(new_rows, attention_mask, num_candidates).clone()
        allowed[:, new_rows.shape[1]:, -num_candidates:] = True
        return allowed

    monkeypatch.setattr(graphs, "with_candidates", leaky)
    pair = tiny_pairs["llama"]
    out = tmp_path / "bad"
    with pytest.raises(ExportError, match="disagree with PyTorch"):
        export_bundle(ExportOptions(pair.lm_dir, pair.rm_dir, out, cache=cache), quiet=True)
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_overwrite_without_force_and_replaces_with_it(tmp_path, tiny_pairs):
    pair = tiny_pairs["gpt2"]
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(ExportError, match="already exists: pass --force"):
        export_bundle(ExportOptions(pair.lm_dir, pair.rm_dir, out), quiet=True)
    assert (out / "keep.txt").exists()
    export_bundle(ExportOptions(pair.lm_dir, pair.rm_dir, out, max_k=8, force=True), quiet=True)
    assert load_manifest(out).max_k == 8 and not (out / "keep.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_rm_input_ids_with_another_tokenizer_is_refused_before_any_work(tmp_path, tiny_pairs, smol_tokenizer):
    """--rm-input ids and an RM whose ids mean other tokens: refused, naming what differs and the way forward (the text
    path, which `auto` takes: tests/test_text_path.py)."""
    from transformers import GPT2TokenizerFast

    pair = tiny_pairs["llama"]
    other = tmp_path / "other-rm"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({**pair.rm.config.to_dict()}))
    vocab = {t: (i + 1) % len(smol_tokenizer) for t, i in list(smol_tokenizer.get_vocab().items())}
    tok_json = json.loads(smol_tokenizer.backend_tokenizer.to_str())
    tok_json["model"]["vocab"] = vocab
    (other / "tokenizer.json").write_text(json.dumps(tok_json))
    GPT2TokenizerFast(tokenizer_file=str(other / "tokenizer.json")).save_pretrained(other)
    with pytest.raises(TokenizerMismatchError, match=r"cannot read the LM's .* token ids: .* differ: 0 tokens only in the LM, 0 only in the RM, "
                       r"49152 with different ids\. Drop --rm-input ids .*--rm-input text"):
        export_bundle(ExportOptions(pair.lm_dir, other, tmp_path / "out", rm_input="ids"), quiet=True)
    assert not (tmp_path / "out").exists()


def test_an_rm_whose_vocabulary_only_adds_tokens_reads_the_lms_ids(tmp_path, tiny_pairs, capsys):
    """Skywork's shape: the RM's tokenizer is the LM's plus a [PAD] (its embedding one row longer). Every LM id means the
    same token to it, so it reads the LM's ids as they are, the log says so, and the tokens are the reference's."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from args_runtime import ArgsGenerator

    pair = tiny_pairs["llama"]
    tok = AutoTokenizer.from_pretrained(pair.rm_dir)
    tok.add_special_tokens({"pad_token": "[PAD]"})
    rm = AutoModelForSequenceClassification.from_pretrained(pair.rm_dir).eval()
    rm.resize_token_embeddings(len(tok), mean_resizing=False)
    rm.config.pad_token_id = tok.pad_token_id
    rm.save_pretrained(tmp_path / "rm-pad")
    tok.save_pretrained(tmp_path / "rm-pad")
    export_bundle(ExportOptions(pair.lm_dir, tmp_path / "rm-pad", tmp_path / "b", max_k=16, cache="dynamic"))
    assert "plus 1 token of its own ('[PAD]')" in capsys.readouterr().err
    prompt = [5, 17, 300, 2, 41]
    expected = ReferenceARGS(pair.lm, rm, pair.rm_family).generate(prompt, 5, 1.0, 16)
    assert ArgsGenerator.from_bundle(tmp_path / "b").generate(prompt, k=5, w=1.0, max_new_tokens=16, ignore_eos=True).token_ids == expected


def test_unsupported_architecture_lists_the_supported_ones(tmp_path, smol_tokenizer):
    from transformers import BertConfig, BertForMaskedLM

    BertForMaskedLM(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)).save_pretrained(tmp_path / "bert")
    smol_tokenizer.save_pretrained(tmp_path / "bert")
    with pytest.raises(UnsupportedModelError, match=r"'bert' is not supported.*gemma2, gemma3_text, gpt2, gpt_neox, llama, mistral, olmo2, opt, phi3, qwen2, qwen3"):
        export_bundle(ExportOptions(tmp_path / "bert", tmp_path / "bert", tmp_path / "out"), quiet=True)


def test_an_unsupported_rm_architecture_lists_the_encoders_too(tmp_path, smol_tokenizer):
    from transformers import MptConfig

    lm_dir, _ = save_tiny_pair("llama", tiny_configs()["llama"], smol_tokenizer, tmp_path)
    MptConfig(d_model=32, n_heads=2, n_layers=1).save_pretrained(tmp_path / "mpt-rm")
    with pytest.raises(UnsupportedModelError, match=r"'mpt' is not supported.*qwen3; a reward model may also be an encoder "
                                                    r"classifier: bert, roberta, xlm-roberta, deberta-v2, distilbert, electra"):
        export_bundle(ExportOptions(lm_dir, tmp_path / "mpt-rm", tmp_path / "out"), quiet=True)
    assert not (tmp_path / "out").exists()


def test_reward_model_must_have_one_label(tmp_path, smol_tokenizer):
    from transformers import LlamaForSequenceClassification

    config = tiny_configs()["llama"]
    lm_dir, _ = save_tiny_pair("llama", config, smol_tokenizer, tmp_path)
    config.num_labels = 3
    LlamaForSequenceClassification(config).save_pretrained(tmp_path / "rm3")
    smol_tokenizer.save_pretrained(tmp_path / "rm3")
    with pytest.raises(UnsupportedModelError, match="num_labels=3"):
        export_bundle(ExportOptions(lm_dir, tmp_path / "rm3", tmp_path / "out"), quiet=True)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_k=0), "--max-k 0 is out of range"),
        (dict(max_k=10**6), "--max-k 1000000 is out of range"),
        (dict(max_context=10**6), "--max-context 1000000 is out of range"),
        (dict(dtype="int8"), "--dtype 'int8' is not one of"),
        (dict(quantize="int3"), "--quantize 'int3' is not one of"),
        (dict(quantize="int8", dtype="bf16"), "applies to fp32 or fp16 graphs"),
        (dict(quantize="int8", quantize_models=("lm", "head")), "--quantize-only head"),
    ],
)
def test_bad_options_fail_clearly(tmp_path, tiny_pairs, kwargs, message):
    pair = tiny_pairs["llama"]
    with pytest.raises(ExportError, match=message):
        export_bundle(ExportOptions(pair.lm_dir, pair.rm_dir, tmp_path / "out", **kwargs), quiet=True)
    assert list(tmp_path.iterdir()) == []


def test_cli_help_and_errors(tmp_path):
    help_text = subprocess.run([sys.executable, "-m", "args_export.cli", "--help"], capture_output=True, text=True, check=True).stdout
    for option in ("--lm", "--rm", "--out", "--dtype", "--max-context", "--max-k", "--force", "--json"):
        assert option in help_text
    run = subprocess.run([sys.executable, "-m", "args_export.cli", "--lm", str(tmp_path / "nope"), "--rm", str(tmp_path), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True)
    assert run.returncode == 2
    assert "args-export: error: LM path" in run.stderr and "does not exist" in run.stderr
    assert "Traceback" not in run.stderr


def test_export_log_carries_no_deprecation_warning(tmp_path, tiny_pairs):
    """The export talks to transformers and torch.onnx through their current APIs: with every warning shown, the log a
    user reads holds the stages and the checks, and no warning (DeprecationWarning, FutureWarning, transformers' own)."""
    pair = tiny_pairs["qwen2"]
    run = subprocess.run([sys.executable, "-W", "default", "-m", "args_export.cli", "--lm", str(pair.lm_dir), "--rm", str(pair.rm_dir),
                          "--out", str(tmp_path / "b"), "--max-k", "8"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "[7/7] writing the manifest: done" in run.stderr
    noisy = [line for line in run.stderr.splitlines() if "warn" in line.lower() or "deprecat" in line.lower()]
    assert not noisy, noisy


def test_reference_uses_the_current_cache_api(tiny_pairs):
    """The reference ARGS (and the export's check) pass caches under the keyword the installed transformers defines:
    with warnings as errors, a deprecated keyword would fail here."""
    import warnings

    pair = tiny_pairs["llama"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tokens = ReferenceARGS(pair.lm, pair.rm, pair.rm_family).generate([5, 17, 300], k=4, w=1.0, max_new_tokens=3)
    assert len(tokens) == 3


@pytest.mark.slow
def test_real_smollm2_export_matches_pytorch(smollm2_pair):
    manifest = load_manifest(smollm2_pair.bundle)
    assert manifest.lm.architecture == "llama" and manifest.lm.num_layers == 30 and manifest.lm.num_kv_heads == 3
    assert manifest.tokenizer.pad_token_id == 2 and 2 in manifest.tokenizer.eos_token_ids
    assert all(c["ok"] for c in manifest.validation["checks"].values())


def test_fp16_export_is_checked_on_cpu(tmp_path, tiny_pairs):
    pair = tiny_pairs["llama"]
    manifest = export_bundle(ExportOptions(pair.lm_dir, pair.rm_dir, tmp_path / "fp16", dtype="fp16", max_k=8), quiet=True)
    assert manifest.lm.dtype == manifest.rm.dtype == "float16"
    assert all(c["ok"] for c in manifest.validation["checks"].values())
    from args_runtime import ArgsGenerator

    assert len(ArgsGenerator.from_bundle(tmp_path / "fp16").generate("Hi", k=4, max_new_tokens=6, ignore_eos=True).token_ids) == 6


def test_bf16_without_cuda_fails_before_any_work(tmp_path, tiny_pairs):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine can check bf16 graphs on CUDA")
    pair = tiny_pairs["llama"]
    with pytest.raises(ExportError, match="bf16 graphs can only be checked on ONNX Runtime CUDA"):
        export_bundle(ExportOptions(pair.lm_dir, pair.rm_dir, tmp_path / "bf16", dtype="bf16"), quiet=True)
    assert list(tmp_path.iterdir()) == []


def test_a_gguf_tokenizer_takes_its_special_tokens_from_the_model_config(smollm2_dir):
    """transformers 5.17 (the GPU box's) reads a GGUF's tokenizer with bos and eos swapped and no pad, while the config
    read from the same file is right: the exporter and the demo's GGUF conversion take the tokens from the config."""
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from args_export.loading import align_special_tokens

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    right = (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert right == (1, 2, 2)
    config = SimpleNamespace(bos_token_id=1, eos_token_id=2, pad_token_id=2)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == right
    tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token = "<|im_end|>", "<|im_start|>", None  # as 5.17 reads it
    align_special_tokens(tokenizer, config)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == right
    assert tokenizer.eos_token == "<|im_end|>"
    assert align_special_tokens(tokenizer, SimpleNamespace()) is tokenizer and tokenizer.eos_token_id == 2  # no ids: unchanged


def test_the_exporter_reads_a_gguf_tokenizer_with_its_configs_special_tokens():
    """`--lm model.gguf`: the tokenizer comes from the GGUF, its bos/eos/pad from the config the spec read once."""
    from args_export.demo.models import smollm2_gguf
    from args_export.loading import ModelSpec, load_tokenizer

    spec = ModelSpec.read(smollm2_gguf(), "LM")
    assert spec.source.gguf_file
    tokenizer = load_tokenizer(spec)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (spec.config.bos_token_id, 2, 2)
    assert tokenizer.eos_token == "<|im_end|>"
