"""choose.onnx: combine and choose on the device. Picks equal the host choosers' to the bit, generations equal the
host-chosen ones, and only the chosen candidate of each row reaches the host."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from args_runtime import ArgsGenerator, BundleError, GenerationError
from args_runtime.engines.onnxruntime_engine import OrtBackend
from args_runtime.choice import choice_feeds, choice_settings
from args_runtime.selection import args_scores, choose_greedy, sample_index

from .conftest import CHAT_PROMPTS, TEXT_PROMPTS


def _choose(backend, values, ids, rewards, w, sample, temperature, draws):
    return {n: backend.to_host(v) for n, v in backend.run(choice_feeds(values, ids, rewards, choice_settings(w, sample, temperature), draws)).items()}


@pytest.mark.parametrize("k", [1, 2, 10, 48])
def test_choice_graph_picks_equal_the_host_choosers(tiny_pairs, k):
    backend = OrtBackend(tiny_pairs["llama"].bundle / "choose.onnx")
    rng = np.random.default_rng(k)
    batch = 256
    values = rng.normal(size=(batch, k)).astype(np.float32) * 4
    values[:8] = values[:8, :1]  # whole rows of ties: the first candidate wins, as in numpy's argmax
    rewards = rng.normal(size=(batch, k)).astype(np.float32)
    ids = rng.permuted(np.tile(np.arange(10_000, 10_000 + k), (batch, 1)), axis=1)
    for w, temperature in ((0.0, 0.7), (1.5, 0.7), (4.0, 2.0)):
        scores = args_scores(values, rewards, w)
        draws = rng.random(batch)
        for sample, picks in ((False, choose_greedy(scores)), (True, sample_index(scores, temperature, draws))):
            out = _choose(backend, values, ids, rewards, w, sample, temperature, draws)
            rows = np.arange(batch)
            np.testing.assert_array_equal(out["chosen_ids"][:, 0], ids[rows, picks])
            np.testing.assert_array_equal(out["chosen_logits"][:, 0], values[rows, picks])
            np.testing.assert_array_equal(out["chosen_rewards"][:, 0], rewards[rows, picks])
    if k > 2:  # the test can fail: sampling does not always take the argmax
        assert np.any(sample_index(scores, 2.0, draws) != choose_greedy(scores))


@pytest.mark.parametrize("arch", ["llama", "opt", "gpt2"])
def test_device_choice_generates_the_host_choice_tokens(tiny_pairs, arch):
    host = ArgsGenerator.from_bundle(tiny_pairs[arch].bundle, choice="host")
    device = ArgsGenerator.from_bundle(tiny_pairs[arch].bundle, choice="device")
    for prompt in (CHAT_PROMPTS[1], TEXT_PROMPTS[0]):
        for k, w in ((1, 0.0), (10, 1.0), (40, 3.0)):
            a = host.generate(prompt, k=k, w=w, max_new_tokens=40, ignore_eos=True)
            b = device.generate(prompt, k=k, w=w, max_new_tokens=40, ignore_eos=True)
            assert (a.token_ids, a.chosen_logits, a.rewards) == (b.token_ids, b.chosen_logits, b.rewards), (arch, k, w)
    for seed in range(4):
        kw = dict(k=10, w=1.0, max_new_tokens=32, ignore_eos=True, method="stochastic", temperature=0.7, seed=seed)
        assert device.generate(TEXT_PROMPTS[1], **kw).token_ids == host.generate(TEXT_PROMPTS[1], **kw).token_ids
    batch = [TEXT_PROMPTS[1], "Hi", CHAT_PROMPTS[0]]
    kw = dict(k=10, w=1.0, max_new_tokens=24, stop=[" the"])
    assert [(r.token_ids, r.text, r.finish_reason) for r in device.generate(batch, **kw)] == \
        [(r.token_ids, r.text, r.finish_reason) for r in host.generate(batch, **kw)]
    assert device.generate("Hi", k=3, w=1.0, max_new_tokens=2).timings["choice"] == "device"


def test_only_the_chosen_candidates_reach_the_host(tiny_pairs):
    """Every array copied to the host during a device-chosen generation is [B, 1] (ids, logit, reward); with the
    host choice the [B, k] top-k and rewards come over, which is what this counts."""

    def copied_shapes(gen):
        shapes = []
        for backend in {id(b): b for b in (gen.lm.backend, gen.rm.backend, gen.device_chooser) if b is not None}.values():
            to_host = backend.to_host
            backend.to_host = lambda v, to_host=to_host: shapes.append(to_host(v).shape) or to_host(v)
        gen.generate(["The quick brown fox", "Hi"], k=10, w=1.0, max_new_tokens=6, ignore_eos=True)
        return set(shapes)

    assert copied_shapes(ArgsGenerator.from_bundle(tiny_pairs["llama"].bundle, choice="device")) == {(2, 1)}
    assert (2, 10) in copied_shapes(ArgsGenerator.from_bundle(tiny_pairs["llama"].bundle, choice="host"))


def test_choice_arguments_and_bundles_without_the_graph(tiny_pairs, tmp_path):
    bundle = tiny_pairs["llama"].bundle
    assert ArgsGenerator.from_bundle(bundle).choice == "host"  # auto: the CPU already holds the data
    with pytest.raises(GenerationError, match="choice='gpu' is not one of"):
        ArgsGenerator.from_bundle(bundle, choice="gpu")
    with pytest.raises(GenerationError, match="needs the LM and the RM on one device"):
        ArgsGenerator.from_bundle(bundle, lm_device="cpu", rm_device="cpu:1", choice="device")
    copy = tmp_path / "no-choice"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["choice_file"] = ""
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="has no choice graph"):
        ArgsGenerator.from_bundle(copy, choice="device")
    assert ArgsGenerator.from_bundle(copy).choice == "host"


# ONNX IR versions that ONNX Runtime 1.20 and later read; the GPU box's 1.31.1 reads up to 13, while onnx 1.23's helper
# writes 14 unless told otherwise (the first GPU run failed on exactly that)
OLDEST_ORT_IR = 10


def test_every_bundle_graph_has_an_ir_version_older_onnx_runtimes_read(tiny_pairs, static_bundles):
    import onnx

    bundles = [pair.bundle for pair in tiny_pairs.values()] + list(static_bundles.values())
    graphs = [path for bundle in bundles for path in sorted(bundle.glob("*.onnx"))]
    assert any(path.name == "choose.onnx" for path in graphs)
    for path in graphs:
        ir_version = onnx.load(str(path), load_external_data=False).ir_version
        assert ir_version <= OLDEST_ORT_IR, f"{path}: IR {ir_version}"
