"""args_runtime: ARGS tokens equal the transformers reference; sampling, batching, stops and bad input behave."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest

from args_export.bundle import ExportOptions, export_bundle
from args_export.reference import ReferenceARGS, hf_greedy
from args_runtime import LOOP_IMPL, ArgsGenerator, BundleError, GenerationError
from args_runtime.manifest import FORMAT_VERSION
from args_runtime.choice import ChoiceConfig, HostChooser
from args_runtime.models import PrefixState, TopK
from args_runtime.selection import args_scores, softmax

from .conftest import ARCHS, CHAT_PROMPTS, TEXT_PROMPTS

KS = [1, 5, 10, 40]
WS = [0.0, 0.5, 1.0, 3.0]


@pytest.fixture(scope="module")
def generators(tiny_pairs):
    return {name: ArgsGenerator.from_bundle(pair.bundle) for name, pair in tiny_pairs.items()}


def reference_tokens(pair, gen, prompt, k, w, n, **kw):
    ids = gen.tokenizer.encode(prompt)
    return ReferenceARGS(pair.lm, pair.rm, pair.rm_family).generate(ids, k, w, n, **kw)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("w", WS)
def test_args_greedy_matches_reference(tiny_pairs, generators, arch, k, w):
    pair, gen = tiny_pairs[arch], generators[arch]
    for prompt in [CHAT_PROMPTS[1], TEXT_PROMPTS[0]] if arch != "llama" else CHAT_PROMPTS + TEXT_PROMPTS:
        ours = gen.generate(prompt, k=k, w=w, max_new_tokens=64, ignore_eos=True)
        assert len(ours.token_ids) == 64 and ours.finish_reason == "length"
        assert ours.token_ids == reference_tokens(pair, gen, prompt, k, w, 64), (arch, k, w, prompt)


def test_chat_prompts_contain_the_pad_token_and_encode_like_transformers(tiny_pairs, generators, smol_tokenizer):
    gen = generators["llama"]
    for messages in CHAT_PROMPTS:
        ids = gen.tokenizer.encode(messages)
        assert ids == list(smol_tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"])
        assert gen.manifest.tokenizer.pad_token_id in ids[:-1]


@pytest.mark.parametrize("arch", ["llama", "opt", "gpt2"])
def test_w0_equals_plain_greedy(tiny_pairs, generators, arch):
    pair, gen = tiny_pairs[arch], generators[arch]
    for prompt in TEXT_PROMPTS:
        ids = gen.tokenizer.encode(prompt)
        expected = hf_greedy(pair.lm, ids, 64)
        assert gen.generate(prompt, k=10, w=0.0, max_new_tokens=64, ignore_eos=True).token_ids == expected
        assert gen.greedy(prompt, max_new_tokens=64, ignore_eos=True).token_ids == expected


def test_lm_sampling_runs_the_lm_alone_and_equals_args_sampling_at_w0(tiny_pairs):
    """sample() is ARGS-stochastic at w = 0 without the reward model: the same seeded tokens, rewards 0, and the RM
    never runs; k = 1 is plain greedy."""
    gen = ArgsGenerator.from_bundle(tiny_pairs["llama"].bundle)
    kw = dict(k=8, temperature=1.0, max_new_tokens=24, ignore_eos=True)
    expected = [gen.generate(p, w=0.0, method="stochastic", seed=3, **kw).token_ids for p in TEXT_PROMPTS]

    def rm_must_not_run(*args, **kwargs):
        raise AssertionError("sample() ran the reward model")

    gen.rm.backend.run = rm_must_not_run
    got = gen.sample(TEXT_PROMPTS[:1], seed=3, **kw)[0]
    assert got.token_ids == expected[0] and set(got.rewards) == {0.0}
    assert gen.sample(TEXT_PROMPTS[1], seed=3, **kw).token_ids == expected[1]
    assert gen.sample(TEXT_PROMPTS[1], seed=4, **kw).token_ids != expected[1]
    assert gen.sample(TEXT_PROMPTS[0], k=1, max_new_tokens=24, ignore_eos=True).token_ids == gen.greedy(TEXT_PROMPTS[0], max_new_tokens=24, ignore_eos=True).token_ids


@pytest.mark.slow
def test_smollm2_args_matches_reference(smollm2_pair):
    gen = ArgsGenerator.from_bundle(smollm2_pair.bundle)
    for prompt, w in ((CHAT_PROMPTS[0], 1.5), (CHAT_PROMPTS[1], 3.0)):
        ours = gen.generate(prompt, k=10, w=w, max_new_tokens=32, ignore_eos=True)
        assert ours.token_ids == reference_tokens(smollm2_pair, gen, prompt, 10, w, 32)


def test_stochastic_same_seed_same_tokens_and_matches_reference(tiny_pairs, generators):
    pair, gen = tiny_pairs["llama"], generators["llama"]
    kw = dict(k=10, w=1.0, max_new_tokens=32, method="stochastic", temperature=0.7, ignore_eos=True)
    a = gen.generate(TEXT_PROMPTS[0], seed=3, **kw).token_ids
    assert a == gen.generate(TEXT_PROMPTS[0], seed=3, **kw).token_ids
    assert a != gen.generate(TEXT_PROMPTS[0], seed=4, **kw).token_ids
    ref = reference_tokens(pair, gen, TEXT_PROMPTS[0], 10, 1.0, 32, method="stochastic", temperature=0.7, seed=3)
    assert a == ref


def test_stochastic_frequencies_follow_softmax_of_scores(generators):
    """One step, many draws: rows of one prompt, each drawing from its own stream (seeds 0 … n-1), pick the candidates
    as often as softmax(score / T) says; and a sampled row of a batch gets what it gets alone."""
    gen = generators["llama"]
    prompt, k, w, temperature, n = TEXT_PROMPTS[1], 5, 1.0, 2.0, 4000
    ids = gen.tokenizer.encode(prompt)
    prefix, batch_ids, positions = PrefixState.for_prompts([ids], gen.manifest.tokenizer.pad_token_id)
    gen.lm.reset(1)
    gen.rm.reset(1)
    top = gen.lm.extend(batch_ids, positions, prefix, k)
    logits, candidates = top.logits, top.ids
    rewards = gen.rm.extend_and_score(batch_ids, positions, prefix, top)
    expected = softmax(args_scores(logits, rewards, w)[0].astype(np.float64) / temperature)
    chooser = HostChooser(n)
    for row in range(n):
        chooser.seat(row, ChoiceConfig(k, w, True, temperature, row))
    many = TopK(gen.lm.backend, np.repeat(logits, n, 0), np.repeat(candidates, n, 0), n)
    first = chooser(many, np.repeat(rewards, n, 0), range(n)).tokens
    observed = np.array([(first == c).mean() for c in candidates[0]])
    assert observed.sum() == pytest.approx(1.0)
    assert np.abs(observed - expected).max() < 4 * math.sqrt(0.25 / n), (observed, expected)
    kw = dict(k=k, w=w, max_new_tokens=6, method="stochastic", temperature=temperature, seed=11)
    batch = gen.generate([ids, TEXT_PROMPTS[0], ids], **kw)
    assert batch[0].token_ids == batch[2].token_ids == gen.generate(ids, **kw).token_ids  # each row alone, seed 11
    assert expected.max() < 0.9  # the test must be able to fail: the distribution is not degenerate


@pytest.mark.parametrize("arch", ["llama", "opt", "gpt2"])
def test_batch_of_different_lengths_equals_single_prompts(generators, arch):
    gen = generators[arch]
    prompts = [TEXT_PROMPTS[0], CHAT_PROMPTS[1], TEXT_PROMPTS[1], CHAT_PROMPTS[0]]
    kw = dict(k=5, w=1.0, max_new_tokens=24, ignore_eos=True)
    batch = gen.generate(prompts, **kw)
    assert len({r.prompt_tokens for r in batch}) == 4
    for prompt, got in zip(prompts, batch):
        single = gen.generate(prompt, **kw)
        assert got.token_ids == single.token_ids
        np.testing.assert_allclose(got.rewards, single.rewards, atol=1e-4)


def test_stops_on_eos_unless_ignored(generators):
    gen = generators["llama"]
    full = gen.generate(TEXT_PROMPTS[0], k=5, w=1.0, max_new_tokens=12, ignore_eos=True).token_ids
    eos_like = full[5]
    first_hit = full.index(eos_like)
    original = gen.manifest.tokenizer.eos_token_ids
    gen.manifest.tokenizer.eos_token_ids = [eos_like]
    try:
        stopped = gen.generate(TEXT_PROMPTS[0], k=5, w=1.0, max_new_tokens=12)
        ignored = gen.generate(TEXT_PROMPTS[0], k=5, w=1.0, max_new_tokens=12, ignore_eos=True)
    finally:
        gen.manifest.tokenizer.eos_token_ids = original
    assert stopped.finish_reason == "eos" and stopped.token_ids == full[: first_hit + 1]
    assert ignored.finish_reason == "length" and ignored.token_ids == full


def test_stop_strings_and_max_new_tokens(generators):
    gen = generators["llama"]
    full = gen.generate(TEXT_PROMPTS[0], k=5, w=1.0, max_new_tokens=20, ignore_eos=True)
    assert len(full.token_ids) == 20 and full.finish_reason == "length"
    stop = full.text[len(full.text) // 2 : len(full.text) // 2 + 3]
    assert stop.strip()
    cut = gen.generate(TEXT_PROMPTS[0], k=5, w=1.0, max_new_tokens=20, ignore_eos=True, stop=[stop, "never-there"])
    assert cut.finish_reason == "stop" and stop not in cut.text and full.text.startswith(cut.text)
    assert cut.token_ids == full.token_ids[: len(cut.token_ids)] and len(cut.token_ids) < 20


def test_stream_yields_the_generated_tokens(generators):
    gen = generators["gpt2"]
    kw = dict(k=5, w=0.5, max_new_tokens=16, ignore_eos=True)
    events = list(gen.stream(CHAT_PROMPTS[0], **kw))
    result = gen.generate(CHAT_PROMPTS[0], **kw)
    assert [e.token_id for e in events] == result.token_ids
    assert events[-1].result is not None and events[-1].result.token_ids == result.token_ids
    assert all(e.result is None for e in events[:-1])
    assert "".join(e.text for e in events) == result.text


def test_result_fields_and_timings(generators):
    res = generators["qwen2"].generate(TEXT_PROMPTS[0], k=3, w=2.0, max_new_tokens=8, ignore_eos=True)
    assert len(res.chosen_logits) == len(res.rewards) == len(res.token_ids) == 8
    assert res.timings["loop"] == generators["qwen2"].loop == LOOP_IMPL and res.timings["backend"] == "onnxruntime"
    for key in ("time_to_first_token_ms", "decode_ms_per_token", "total_ms"):  # present and filled, not a speed target
        assert res.timings[key] > 0, key
    # One entry per decode step after the first token; with the first token's time they add up to the total.
    first, steps, total = (res.timings[key] for key in ("time_to_first_token_ms", "step_ms", "total_ms"))
    assert len(steps) == 7 and abs(first + sum(steps) - total) < 0.01
    assert res.prompt_tokens == len(generators["qwen2"].tokenizer.encode(TEXT_PROMPTS[0]))


def test_context_limit(tmp_path, tiny_pairs):
    pair = tiny_pairs["gpt2"]
    bundle = tmp_path / "short"
    export_bundle(ExportOptions(pair.lm_dir, pair.rm_dir, bundle, max_context=24, max_k=8), quiet=True)
    gen = ArgsGenerator.from_bundle(bundle)
    prompt = list(range(100, 120))  # 20 tokens: room for 4 more
    res = gen.generate(prompt, k=4, w=1.0, max_new_tokens=50, ignore_eos=True)
    assert res.finish_reason == "context" and len(res.token_ids) == 4
    with pytest.raises(GenerationError, match="the prompt has 24 tokens, but the bundle's context is 24 tokens"):
        gen.generate(list(range(100, 124)), k=4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(k=0), r"k=0 is out of range: this bundle supports 1 <= k <= 48"),
        (dict(k=49), r"k=49 is out of range"),
        (dict(k=2.5), r"k=2.5 is out of range"),
        (dict(w=float("nan")), r"w=nan must be a finite number"),
        (dict(w=float("inf")), r"w=inf must be a finite number"),
        (dict(method="beam"), r"method='beam' is not one of"),
        (dict(method="stochastic", temperature=0.0), r"temperature=0.0 must be a finite number >= 1e-05"),
        (dict(temperature=-1.0), r"temperature=-1.0 must be"),
        (dict(max_new_tokens=0), r"max_new_tokens=0 must be an integer >= 1"),
        (dict(stop=[""]), r"stop=\[''\] must be None, a non-empty string"),
    ],
)
def test_bad_arguments_fail_clearly(generators, kwargs, message):
    with pytest.raises(GenerationError, match=message):
        generators["llama"].generate(TEXT_PROMPTS[0], **kwargs)


def test_bad_prompts_fail_clearly(generators):
    gen = generators["llama"]
    with pytest.raises(GenerationError, match="the prompt is empty"):
        gen.generate([], k=2)
    with pytest.raises(GenerationError, match="the prompt is a float \\(3.5\\): a prompt is text"):
        gen.generate(3.5, k=2)
    with pytest.raises(GenerationError, match="the prompt has 600 tokens, but the bundle's context is 512"):
        gen.generate(list(range(600)), k=2)


@pytest.fixture
def bundle_copy(tmp_path, tiny_pairs):
    dst = tmp_path / "bundle"
    shutil.copytree(tiny_pairs["llama"].bundle, dst)
    return dst


def test_missing_bundle(tmp_path):
    with pytest.raises(BundleError, match="does not exist: pass the folder written by `args-export"):
        ArgsGenerator.from_bundle(tmp_path / "nope")
    with pytest.raises(BundleError, match="is not an args-rt bundle: it has no manifest.json"):
        ArgsGenerator.from_bundle(tmp_path)


def test_corrupt_bundle_file(bundle_copy):
    data = bundle_copy / "rm.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match=r"rm.onnx.data is corrupt \(sha256 differs"):
        ArgsGenerator.from_bundle(bundle_copy)


def test_missing_bundle_file(bundle_copy):
    (bundle_copy / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match="tokenizer.json is missing"):
        ArgsGenerator.from_bundle(bundle_copy)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.update(format="something-else"), "is not an args-rt manifest"),
        (lambda m: m.update(format_version=99), f"has format version 99, this args-rt reads version {FORMAT_VERSION}"),
        (lambda m: m.pop("lm"), "missing or has malformed fields"),
    ],
)
def test_foreign_or_other_version_manifest(bundle_copy, edit, message):
    path = bundle_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=message):
        ArgsGenerator.from_bundle(bundle_copy)


def test_manifest_not_json(bundle_copy):
    (bundle_copy / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="is not valid JSON"):
        ArgsGenerator.from_bundle(bundle_copy)


def test_runtime_is_torch_free(tiny_pairs):
    code = (
        "import sys, args_runtime\n"
        "assert 'torch' not in sys.modules\n"
        f"g = args_runtime.ArgsGenerator.from_bundle({str(tiny_pairs['llama'].bundle)!r})\n"
        "r = g.generate('Hello', k=3, w=1.0, max_new_tokens=4)\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)\n"
        "print(len(r.token_ids))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "4"


def test_generate_cli_json_and_errors(tiny_pairs):
    bundle = str(tiny_pairs["llama"].bundle)
    run = subprocess.run([sys.executable, "-m", "args_runtime.cli", bundle, "--chat", "Hi", "--k", "3", "--max-new-tokens", "5", "--json", "--ignore-eos"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert len(out["token_ids"]) == 5 and out["finish_reason"] == "length" and out["timings"]["loop"] == LOOP_IMPL
    bad = subprocess.run([sys.executable, "-m", "args_runtime.cli", bundle, "--prompt", "Hi", "--k", "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and "args-generate: error: k=0 is out of range" in bad.stderr and "Traceback" not in bad.stderr
    table = subprocess.run([sys.executable, "-m", "args_runtime.cli", bundle, "--prompt", "Hi", "--k", "3", "--max-new-tokens", "4",
                            "--ignore-eos", "--return-rewards"], capture_output=True, text=True)
    assert table.returncode == 0, table.stderr
    rows = table.stdout.splitlines()[-4:]  # one per chosen token: step, id, text, logit, reward (the --json result's)
    expected = ArgsGenerator.from_bundle(bundle).generate("Hi", k=3, max_new_tokens=4, ignore_eos=True)
    assert [int(r.split()[1]) for r in rows] == expected.token_ids
    assert [float(r.split()[-1]) for r in rows] == pytest.approx(expected.rewards, abs=1e-3)


def test_reward_changes_the_choice(generators):
    """Guards the reference matrix against being vacuous: with w > 0 the RM must actually steer the tokens."""
    gen = generators["llama"]
    plain = gen.generate(TEXT_PROMPTS[0], k=10, w=0.0, max_new_tokens=32, ignore_eos=True).token_ids
    steered = gen.generate(TEXT_PROMPTS[0], k=10, w=1.0, max_new_tokens=32, ignore_eos=True).token_ids
    assert sum(a != b for a, b in zip(plain, steered)) > 8


def test_rm_cache_does_not_grow_with_k(generators):
    """The RM keeps one prefix cache whatever k is (the official code keeps k copies)."""
    gen = generators["llama"]
    sizes = {}
    for k in (1, 40):
        res = gen.generate(TEXT_PROMPTS[0], k=k, w=1.0, max_new_tokens=16, ignore_eos=True)
        sizes[k] = gen.rm.cache_bytes()
        spec = gen.manifest.rm
        tokens = res.prompt_tokens + len(res.token_ids) - 1  # the last chosen token is never fed back
        assert sizes[k] == 2 * spec.num_layers * spec.num_kv_heads * spec.head_dim * tokens * 4
    assert sizes[1] == sizes[40]


def test_stream_never_shows_text_a_stop_string_later_removes(generators):
    gen = generators["llama"]
    kw = dict(k=5, w=1.0, max_new_tokens=20, ignore_eos=True)
    full = gen.generate(TEXT_PROMPTS[0], **kw)
    # A stop string spanning two whole tokens: the first arrives before the match is complete.
    ends = [len(gen.tokenizer.decode(full.token_ids[:j])) for j in range(8, 11)]
    stop = full.text[ends[0] : ends[2]]
    assert ends[0] < ends[1] < ends[2] and full.text.find(stop) == ends[0]
    events = list(gen.stream(TEXT_PROMPTS[0], stop=stop, **kw))
    result = events[-1].result
    assert result.finish_reason == "stop"
    assert "".join(e.text for e in events) == result.text
