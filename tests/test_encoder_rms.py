"""Encoder reward models as one ONNX graph (export/encoders.py): tiny seeded classifiers of every accepted type, saved
and loaded as a user's would be, exported, and compared with transformers' logits."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from args_export.architectures import ENCODER_TYPES, is_encoder
from args_export.encoders import check_encoder, export_encoder
from args_export.loading import load_encoder_rm
from args_runtime.errors import ExportError, UnsupportedModelError

VOCAB = 96
LENGTHS = (3, 17, 1, 9, 12)  # a right-padded batch of 5 rows


def encoder_config(model_type: str, **overrides):
    """A tiny config of `model_type` (hidden 32, 2 layers), one label, weights large enough that rewards differ."""
    from transformers import BertConfig, DebertaV2Config, DistilBertConfig, ElectraConfig, RobertaConfig, XLMRobertaConfig

    common = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  max_position_embeddings=64, initializer_range=0.2, num_labels=1)
    made = {
        "bert": lambda: BertConfig(**common, pad_token_id=0),
        "roberta": lambda: RobertaConfig(**common, pad_token_id=1),  # positions count from the pad id (padding_idx)
        "xlm-roberta": lambda: XLMRobertaConfig(**common, pad_token_id=1),
        "electra": lambda: ElectraConfig(**common, embedding_size=16, pad_token_id=0),
        # as DeBERTa-v3 reward models are configured: relative attention in log buckets, no absolute positions
        "deberta-v2": lambda: DebertaV2Config(**common, pad_token_id=0, relative_attention=True, position_buckets=16,
                                              max_relative_positions=-1, pos_att_type=["p2c", "c2p"], share_att_key=True,
                                              norm_rel_ebd="layer_norm", position_biased_input=False, type_vocab_size=0),
        "distilbert": lambda: DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64,
                                               initializer_range=0.2, num_labels=1, pad_token_id=0),
    }[model_type]()
    for key, value in overrides.items():
        setattr(made, key, value)
    return made


def save_seeded(config, folder, seed: int = 0):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """model type → (the loaded model, its graph's path, its spec): each saved, loaded and exported once."""
    made = {}
    for model_type in ENCODER_TYPES:
        root = tmp_path_factory.mktemp(model_type)
        model = load_encoder_rm(save_seeded(encoder_config(model_type), root / f"tiny-{model_type}-rm"))
        made[model_type] = model, root / "rm.onnx", export_encoder(model, root / "rm.onnx")
    return made


def padded(lengths, pad_id: int, seed: int = 3, width: int | None = None):
    """Rows of random non-pad tokens, right-padded with `pad_id` (mask 0) to `width` (default: the longest row)."""
    g = np.random.default_rng(seed)
    ids = np.full((len(lengths), width or max(lengths)), pad_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = g.choice([t for t in range(VOCAB) if t != pad_id], size=n)
        mask[i, :n] = 1
    return ids, mask


def session(path):
    """A plain ONNX Runtime session with the options every args-rt session gets (ort_session_options: on the process's
    shared thread pool once an earlier test made one, which ORT requires)."""
    from args_runtime.backend import EngineOptions
    from args_runtime.engines.onnxruntime_engine import ort_session_options

    return ort.InferenceSession(str(path), ort_session_options(ort, EngineOptions()), providers=["CPUExecutionProvider"])


def rewards(sess, ids, mask) -> np.ndarray:
    return sess.run(["rewards"], {"input_ids": ids, "attention_mask": mask})[0]


def logits(model, ids, mask) -> np.ndarray:
    """transformers' own answer: the classifier's logit, token types 0 (DistilBERT takes none)."""
    extra = {} if model.config.model_type == "distilbert" else {"token_type_ids": torch.zeros(ids.shape, dtype=torch.int64)}
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), **extra).logits[:, 0].numpy()


def test_is_encoder_routes_encoders_and_not_decoders():
    from transformers import LlamaConfig

    assert all(is_encoder(encoder_config(t)) for t in ENCODER_TYPES)
    assert not is_encoder(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4))


@pytest.mark.parametrize("model_type", ENCODER_TYPES)
def test_graph_matches_transformers_logits(exported, model_type):
    model, path, spec = exported[model_type]
    pad = model.config.pad_token_id
    assert (spec.file, spec.architecture, spec.source, spec.cache) == ("rm.onnx", model_type, f"tiny-{model_type}-rm", "none")
    assert (spec.dtype, spec.num_layers, spec.num_kv_heads, spec.head_dim, spec.vocab_size) == ("float32", 2, 0, 0, VOCAB)
    assert [(t.name, t.shape, t.dtype) for t in spec.inputs + spec.outputs] == [
        ("input_ids", ["batch_size", "sequence_length"], "int64"), ("attention_mask", ["batch_size", "sequence_length"], "int64"),
        ("rewards", ["batch_size"], "float32")]
    assert spec.hf_config["model_type"] == model_type
    assert sorted(p.name for p in path.parent.iterdir() if not p.name.startswith("tiny-")) == ["rm.onnx", "rm.onnx.data"]  # no scratch left
    sess = session(path)
    assert [(i.name, i.shape) for i in sess.get_inputs()] == [("input_ids", ["batch_size", "sequence_length"]),
                                                              ("attention_mask", ["batch_size", "sequence_length"])]
    for lengths in (LENGTHS, (14,)):  # batch 5, right-padded; batch 1
        ids, mask = padded(lengths, pad)
        ours, ref = rewards(sess, ids, mask), logits(model, ids, mask)
        assert ours.shape == (len(lengths),) and ours.dtype == np.float32
        assert np.max(np.abs(ours - ref)) <= 1e-4 + 1e-4 * np.max(np.abs(ref)), (ours, ref)
    assert np.ptp(rewards(sess, *padded(LENGTHS, pad))) > 1e-2, "rewards barely differ between texts: the comparison would prove little"
    checks = check_encoder(model, path, pad)
    assert len(checks) == 3 and all(diff <= limit for _, diff, limit in checks), checks


@pytest.mark.parametrize("model_type", ENCODER_TYPES)
def test_a_rows_reward_is_independent_of_its_batch_and_padding(exported, model_type):
    model, path, _ = exported[model_type]
    pad = model.config.pad_token_id
    sess = session(path)
    ids, mask = padded(LENGTHS, pad, width=max(LENGTHS) + 7)  # every row padded, the longest too
    batch = rewards(sess, ids, mask)
    alone = np.array([rewards(sess, ids[i:i + 1, :n], mask[i:i + 1, :n])[0] for i, n in enumerate(LENGTHS)])
    assert np.max(np.abs(batch - alone)) <= 1e-5, (batch, alone)
    # the graph does read the mask: the same rows with their padding unmasked score otherwise
    assert np.max(np.abs(rewards(sess, ids, np.ones_like(mask)) - batch)) > 1e-3


def test_check_encoder_refuses_a_graph_of_other_weights(exported, tmp_path):
    model, path, _ = exported["bert"]
    other = load_encoder_rm(save_seeded(encoder_config("bert"), tmp_path / "other", seed=1))
    with pytest.raises(ExportError, match=r"padded batch of 6 rows .* max \|difference\| .* > limit"):
        check_encoder(other, path, model.config.pad_token_id)


@pytest.mark.parametrize("model_type", ["bert", "deberta-v2"])
def test_dynamo_exporter(exported, model_type, tmp_path):
    pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript")
    model = exported[model_type][0]
    spec = export_encoder(model, tmp_path / "rm.onnx", exporter="dynamo")
    assert spec.file == "rm.onnx"
    ids, mask = padded(LENGTHS, model.config.pad_token_id)
    ref = logits(model, ids, mask)
    assert np.max(np.abs(rewards(session(tmp_path / "rm.onnx"), ids, mask) - ref)) <= 1e-4 + 1e-4 * np.max(np.abs(ref))
    assert all(diff <= limit for _, diff, limit in check_encoder(model, tmp_path / "rm.onnx", model.config.pad_token_id))


def test_an_unknown_exporter_is_refused(exported, tmp_path):
    with pytest.raises(ExportError, match="'onnxscript' is not one of torchscript, dynamo"):
        export_encoder(exported["bert"][0], tmp_path / "rm.onnx", exporter="onnxscript")


def test_a_two_label_head_is_refused(tmp_path):
    folder = save_seeded(encoder_config("roberta", num_labels=2), tmp_path / "two-label-rm")
    with pytest.raises(UnsupportedModelError, match=r"two-label-rm .*num_labels=2.*num_labels=1"):
        load_encoder_rm(folder)


def test_a_decoder_is_not_loaded_as_an_encoder(tmp_path):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, num_labels=1)
    LlamaForSequenceClassification(config).save_pretrained(tmp_path / "llama-rm")
    with pytest.raises(UnsupportedModelError, match="'llama' model, not an encoder"):
        load_encoder_rm(tmp_path / "llama-rm")
