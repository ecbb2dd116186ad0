"""The static KV-cache layout: fixed buffers written in place, tokens identical to the growing cache and to the
reference, cost independent of the text length; and the LM's top-k ids handed to the RM without a host copy."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from args_export.bundle import ExportOptions, export_bundle
from args_export.reference import ReferenceARGS
from args_runtime.backend import EngineOptions
from args_runtime.engines.onnxruntime_engine import ort_session_options
from args_runtime import ArgsGenerator, BundleError
from args_runtime.manifest import CACHE_SLOTS, load_manifest

from .conftest import ARCHS, CHAT_PROMPTS, STATIC_CONTEXT as CONTEXT, TEXT_PROMPTS


@pytest.fixture(scope="module")
def static_generators(static_bundles):
    return {name: ArgsGenerator.from_bundle(bundle) for name, bundle in static_bundles.items()}


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output}


@pytest.mark.parametrize("graph", ["lm.onnx", "rm.onnx"])
def test_every_present_is_written_in_place_into_its_past(static_bundles, tmp_path, graph):
    """present.i.* comes straight out of a ScatterND over past_key_values.i.* (so ORT skips the copy when both are
    bound to one buffer), also after ONNX Runtime's graph optimizations; and the slot axis is left free (cache_slots),
    so one graph runs over caches of any width."""
    path = static_bundles["llama"] / graph
    options = ort_session_options(ort, EngineOptions())  # ENABLE_ALL, on this process's thread pool
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for model in (onnx.load(str(path), load_external_data=False), onnx.load(str(tmp_path / "optimized.onnx"), load_external_data=False)):
        producers = _producers(model)
        presents = [o.name for o in model.graph.output if o.name.startswith("present.")]
        assert len(presents) == 4
        for name in presents:
            node = producers[name]
            assert node.op_type == "ScatterND" and node.input[0] == name.replace("present.", "past_key_values."), (name, node.op_type)
        shapes = [[d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim] for o in model.graph.output if o.name in presents]
        assert all(shape[2] == CACHE_SLOTS for shape in shapes)


def test_manifest_records_the_layout(static_bundles, tiny_pairs):
    static, dynamic = load_manifest(static_bundles["llama"]), load_manifest(tiny_pairs["llama"].bundle)
    assert (static.lm.cache, static.rm.cache, dynamic.lm.cache) == ("static", "static", "dynamic")
    past = next(t for t in static.rm.inputs if t.name == "past_key_values.0.key")
    assert past.shape == ["batch_size", 2, CACHE_SLOTS, 16] and static.max_context == CONTEXT
    assert [t.shape for t in static.lm.inputs if t.name in ("attention_mask", "cache_position")] == [["batch_size", CACHE_SLOTS], ["batch_size", "sequence_length"]]


@pytest.mark.parametrize("arch", ARCHS)
def test_static_tokens_equal_dynamic_tokens(tiny_pairs, static_generators, arch):
    """The growing-cache runtime is checked token for token against the reference (test_runtime); the static one
    must choose exactly its tokens, logits and rewards included, over k, w, chat and text prompts."""
    static, dynamic = static_generators[arch], ArgsGenerator.from_bundle(tiny_pairs[arch].bundle)
    for prompt in (CHAT_PROMPTS[1], TEXT_PROMPTS[0]):
        for k, w in ((1, 0.0), (5, 0.5), (10, 1.0), (40, 3.0)):
            a = static.generate(prompt, k=k, w=w, max_new_tokens=48, ignore_eos=True)
            b = dynamic.generate(prompt, k=k, w=w, max_new_tokens=48, ignore_eos=True)
            assert a.token_ids == b.token_ids, (arch, k, w)
            np.testing.assert_allclose(a.rewards, b.rewards, atol=1e-4)
            np.testing.assert_allclose(a.chosen_logits, b.chosen_logits, atol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "opt-350m-style", "gpt2"])
def test_static_tokens_equal_reference(tiny_pairs, static_generators, arch):
    pair, gen = tiny_pairs[arch], static_generators[arch]
    ids = gen.tokenizer.encode(CHAT_PROMPTS[0])
    ours = gen.generate(ids, k=10, w=1.5, max_new_tokens=64, ignore_eos=True).token_ids
    assert ours == ReferenceARGS(pair.lm, pair.rm, pair.rm_family).generate(ids, 10, 1.5, 64)


def test_static_batch_and_sampling_equal_dynamic(tiny_pairs, static_generators):
    static, dynamic = static_generators["llama"], ArgsGenerator.from_bundle(tiny_pairs["llama"].bundle)
    prompts = [TEXT_PROMPTS[1], "Hi", CHAT_PROMPTS[0]]
    kw = dict(k=10, w=1.0, max_new_tokens=32, ignore_eos=True)
    assert [r.token_ids for r in static.generate(prompts, **kw)] == [r.token_ids for r in dynamic.generate(prompts, **kw)]
    kw.update(method="stochastic", seed=5)
    assert static.generate(prompts[0], **kw).token_ids == dynamic.generate(prompts[0], **kw).token_ids


def test_generation_fills_the_context_exactly(static_generators):
    """Up to the last slot: a prompt of n tokens gets max_context - n new tokens, then finish_reason 'context'."""
    gen = static_generators["qwen2"]
    ids = list(range(100, 100 + CONTEXT - 20))
    res = gen.generate(ids, k=4, w=1.0, max_new_tokens=1000, ignore_eos=True)
    assert len(res.token_ids) == 20 and res.finish_reason == "context"


def test_slot_caches_are_written_in_place_and_only_as_wide_as_needed(static_bundles):
    """generate() on a static bundle runs its request in a slot of caches held outside the models, written in place at
    the request's own columns and only as wide as it needs (a width congruent to the context modulo 64)."""
    from args_runtime.batch import Batcher
    from args_runtime.requests import Request

    gen = ArgsGenerator.from_bundle(static_bundles["llama"])
    prompt = gen.tokenizer.encode("Once upon a time")
    batcher = Batcher(gen.bundle, 1)
    request = Request(prompt, gen.settings(k=5, w=1.0, max_new_tokens=30, ignore_eos=True))
    handle = request.handle
    batcher.seat([request])
    while batcher.busy:
        batcher.step()
    assert handle.result().token_ids == gen.generate(prompt, k=5, w=1.0, max_new_tokens=30, ignore_eos=True).token_ids
    assert batcher.info["context_width"] == "narrow" and batcher.caches.width == CONTEXT - 3 * 64  # 64 slots hold 34
    keys = batcher.caches.host[0]["past_key_values.0.key"]
    written = len(prompt) + 30 - 1  # the last token is chosen, never fed back
    assert np.abs(keys[0, :, :written]).sum(axis=(0, 2)).min() > 0  # every fed token's slot was written in place
    assert not np.any(keys[0, :, written:])  # slots past the text were never touched
    assert gen.lm.cache_bytes() == 0  # the models' own caches were not used
    row_bytes = 2 * 2 * 64 * 16 * 4 * 2  # layers · (k, v) · the narrow width · head_dim · fp32 · kv heads
    assert handle.result().timings["kv_cache_bytes"] == {"lm": row_bytes, "rm": row_bytes}  # what its one slot held


def test_fixed_batches_reuse_the_models_own_buffers(static_bundles):
    """With fixed addresses (what CUDA graphs need) a call runs over the models' own max_context-wide buffers, allocated
    once per batch size and written in place."""
    from args_runtime.backend import EngineOptions
    from args_runtime.engines.onnxruntime_engine import OrtBackend

    gen = ArgsGenerator.from_bundle(static_bundles["llama"])
    for model, graph in ((gen.lm, "lm.onnx"), (gen.rm, "rm.onnx")):
        model.backend = OrtBackend(static_bundles["llama"] / graph, "cpu", EngineOptions(fixed_addresses=True))
    gen.generate("Hello there", k=5, w=1.0, max_new_tokens=2, ignore_eos=True)
    addresses = {name: value.data_ptr() for name, value in gen.lm.past.items()}
    size = gen.lm.cache_bytes()
    prompt = gen.tokenizer.encode("Once upon a time")
    result = gen.generate(prompt, k=5, w=1.0, max_new_tokens=30, ignore_eos=True)
    assert result.timings["scheduler"] == "fixed batches"
    assert {name: value.data_ptr() for name, value in gen.lm.past.items()} == addresses  # same buffers, same batch
    assert gen.lm.cache_bytes() == size == 2 * 2 * CONTEXT * 16 * 4 * 2  # layers · (k, v) · slots · head_dim · fp32 · kv heads
    assert result.timings["kv_cache_bytes"] == {"lm": size, "rm": gen.rm.cache_bytes()}
    keys = gen.lm.past["past_key_values.0.key"].numpy()
    written = len(prompt) + 30 - 1
    assert np.abs(keys[0, :, :written]).sum(axis=(0, 2)).min() > 0
    assert not np.any(keys[0, :, written:])  # slots past the text were never touched (the first call's text was shorter)


def test_lm_topk_ids_go_to_the_rm_as_engine_values(static_bundles):
    """Same device: the RM is fed the LM's own output value, not a host array; different devices: host ids."""
    seen = []

    def recording(backend):
        run = backend.run

        def wrapped(feeds, into=None):
            seen.append(type(feeds.get("candidate_ids")))
            return run(feeds, into)

        backend.run = wrapped

    shared = ArgsGenerator.from_bundle(static_bundles["llama"])
    recording(shared.rm.backend)
    shared.generate("Hi", k=5, w=1.0, max_new_tokens=3)
    assert seen and all(t is ort.OrtValue for t in seen)
    seen.clear()
    split = ArgsGenerator.from_bundle(static_bundles["llama"], lm_device="cpu", rm_device="cpu:1")
    recording(split.rm.backend)
    split.generate("Hi", k=5, w=1.0, max_new_tokens=3)
    assert seen and all(t is np.ndarray for t in seen)


def test_cuda_graphs_need_a_static_bundle(tiny_pairs, static_bundles):
    with pytest.raises(BundleError, match="--cache static"):
        ArgsGenerator.from_bundle(tiny_pairs["llama"].bundle, cuda_graph=True)
    gen = ArgsGenerator.from_bundle(static_bundles["llama"], cuda_graph=True)  # on CPU: nothing to capture, says so
    assert gen.generate("Hi", k=3, w=1.0, max_new_tokens=2).timings["engines"]["lm"]["cuda_graph"] == "off"


def test_cuda_graphs_need_an_onnxruntime_that_keeps_replay_metadata():
    from args_runtime.engines.onnxruntime_engine import cuda_graph_blocker

    assert cuda_graph_blocker("1.29.1").startswith("off: onnxruntime 1.29.1 can replay stale kernel metadata")
    assert "onnxruntime-gpu >= 1.30" in cuda_graph_blocker("1.20.0")
    assert cuda_graph_blocker("1.30.0") is cuda_graph_blocker("1.31.1") is cuda_graph_blocker("1.32.0.dev20261101+cu13") is None
    assert cuda_graph_blocker("2.0") is None


def test_ort_tensorrt_provider_on_cpu_fails_clearly(static_bundles):
    with pytest.raises(BundleError, match="needs device='cuda'"):
        ArgsGenerator.from_bundle(static_bundles["llama"], backend="onnxruntime-trt", device="cpu")


def test_export_rejects_unknown_cache_layout(tiny_pairs, tmp_path):
    from args_runtime.errors import ExportError

    pair = tiny_pairs["llama"]
    with pytest.raises(ExportError, match="--cache 'paged' is not one of"):
        export_bundle(ExportOptions(pair.lm_dir, pair.rm_dir, tmp_path / "b", cache="paged"), quiet=True)
    assert not list(tmp_path.iterdir())


def test_tensorrt_profiles_fix_the_static_cache_axis(static_bundles):
    """The static graphs' only ranged dims are batch, sequence and candidates; every cache slot axis is fixed."""
    from args_export.gpu.tensorrt_build import graph_profiles

    m = load_manifest(static_bundles["llama"])
    for spec in (m.lm, m.rm):
        for profile in graph_profiles(spec.inputs, 4, m.max_context, m.max_k):
            lo, opt, hi = profile.shapes["past_key_values.0.key"]
            assert lo[1:] == opt[1:] == hi[1:] == (2, CONTEXT, 16) and (lo[0], hi[0]) == (1, 4)
            assert profile.shapes["attention_mask"][2] == (4, CONTEXT)


def test_static_graphs_use_only_ops_tensorrt_parses(static_bundles):
    from args_export.gpu.tensorrt_ops import check_paths

    reports = check_paths([static_bundles["llama"], static_bundles["gpt2"]])
    assert [r.path.name for r in reports] == ["lm.onnx", "rm.onnx"] * 2
    assert all(r.ok and r.op_counts["ScatterND"] == 4 for r in reports), "\n".join(r.describe() for r in reports)


def test_fixed_address_binding_gives_the_same_run(static_bundles):
    """The binding CUDA graphs use (every input staged into, and every output written to, a buffer kept per shape)
    exercised on the CPU: same tokens, and the same output buffers step after step."""
    from args_runtime.backend import EngineOptions
    from args_runtime.engines.onnxruntime_engine import OrtBackend

    plain = ArgsGenerator.from_bundle(static_bundles["llama"])
    fixed = ArgsGenerator.from_bundle(static_bundles["llama"])
    for model, graph in ((fixed.lm, "lm.onnx"), (fixed.rm, "rm.onnx")):
        model.backend = OrtBackend(static_bundles["llama"] / graph, "cpu", EngineOptions(fixed_addresses=True))
    for prompt in TEXT_PROMPTS:
        kw = dict(k=10, w=1.0, max_new_tokens=24, ignore_eos=True)
        assert fixed.generate(prompt, **kw).token_ids == plain.generate(prompt, **kw).token_ids
    decode_buffers = [key for key in fixed.lm.backend._buffers if key[0] == "topk_ids" and key[1] == (1, 10)]
    assert len(decode_buffers) == 1  # one [1, 10] top-k buffer served every decode step of both prompts
    assert ("candidate_slots", (10,), "int64") in fixed.lm.backend._buffers  # k's carrier: staged like any feed
    assert len(fixed.rm.backend._addresses) > 2  # the RM checked its bound addresses (the LM's top-k ids among them) every step


def test_fixed_addresses_refuse_an_engine_value_that_moved(static_bundles):
    """A replayed CUDA graph would read the captured address: a cache or id value fed from a new buffer for the same
    shapes is an error, not a silent stale read."""
    from args_runtime.backend import EngineOptions
    from args_runtime.engines.onnxruntime_engine import OrtBackend
    from args_runtime.errors import GenerationError

    gen = ArgsGenerator.from_bundle(static_bundles["llama"])
    backend = gen.rm.backend = OrtBackend(static_bundles["llama"] / "rm.onnx", "cpu", EngineOptions(fixed_addresses=True))
    spec = gen.manifest.rm
    feeds = {"input_ids": np.array([[7]]), "position_ids": np.array([[0]]), "attention_mask": np.eye(1, CONTEXT, dtype=np.int64),
             "cache_position": np.array([[0]])}
    past = {t.name: backend.empty((1, spec.num_kv_heads, CONTEXT, spec.head_dim), "float32") for t in spec.inputs if t.name.startswith("past")}
    ids = backend.empty((1, 3), "int64")
    backend.run({**feeds, **past, "candidate_ids": ids})
    backend.run({**feeds, **past, "candidate_ids": ids})  # same buffers: fine
    with pytest.raises(GenerationError, match=r"\['candidate_ids'\] moved to a new device address"):
        backend.run({**feeds, **past, "candidate_ids": backend.empty((1, 3), "int64")})


@pytest.mark.parametrize("graph", ["lm", "rm"])
def test_a_step_run_twice_changes_nothing(static_bundles, graph):
    """ORT runs a step more than once while it captures a CUDA graph (warm-up runs, then the capture), with the cache
    bound in place. A slot write is idempotent (the same values into the same slot), unlike a recurrent state update
    (microsoft/onnxruntime#32243): outputs and cache after two runs equal those after one."""
    from args_runtime.engines.onnxruntime_engine import OrtBackend

    bundle = static_bundles["llama"]
    spec = getattr(load_manifest(bundle), graph)
    backend = OrtBackend(bundle / spec.file, "cpu")
    past = {t.name: backend.empty((1, spec.num_kv_heads, CONTEXT, spec.head_dim), "float32") for t in spec.inputs if t.name.startswith("past")}
    into = dict(zip((t.name for t in spec.outputs if t.name.startswith("present")), past.values()))
    # the LM's top-k over all max_k (48) candidates, the RM's rewards of four
    extra = {"candidate_slots": np.zeros(load_manifest(bundle).max_k, np.int64)} if graph == "lm" else {"candidate_ids": np.array([[3, 50, 700, 9000]])}

    def step(ids: list[int], start: int):
        mask = np.zeros((1, CONTEXT), np.int64)
        mask[0, : start + len(ids)] = 1
        positions = np.arange(start, start + len(ids))
        feeds = {"input_ids": np.array([ids]), "position_ids": positions[None], "attention_mask": mask, "cache_position": positions[None]}
        out = backend.run({**feeds, **extra, **past}, into=into)
        first = out["topk_values" if graph == "lm" else "rewards"]
        return backend.to_host(first).copy(), [backend.to_host(v).copy() for v in past.values()]

    step([5, 9, 11], 0)
    once = step([7], 3)
    twice = step([7], 3)
    assert np.array_equal(once[0], twice[0]) and all(np.array_equal(a, b) for a, b in zip(once[1], twice[1]))
    assert np.abs(once[1][0][0, :, 3]).sum() > 0 and not np.abs(once[1][0][0, :, 4:]).any()  # slot 3 written, later ones not
