"""Continuous batching (ArgsEngine): requests join and leave the running batch between steps, each at its own position in
both models' static caches, and every request gets exactly what ArgsGenerator.generate gives it alone (greedy tokens,
and the same sample from the same seed), whatever shares the batch and whenever it joined."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from args_export.bundle import ExportOptions, export_bundle
from args_export.demo.models import seeded_reward_model
from args_runtime import ArgsGenerator, GenerationError, RequestCancelled
from args_runtime.books import Books, Seat
from args_runtime.engine import ArgsEngine, EngineHooks
from args_runtime.loops import available_loops
from args_runtime.slots import SlotCaches, WidthPolicy

from .conftest import ARCHS, CHAT_PROMPTS, STATIC_CONTEXT, TEXT_PROMPTS

LONG_PROMPT = " ".join(f"item {i} is {'odd' if i % 2 else 'even'}," for i in range(20))  # 135 tokens: mixed lengths

# Mixed prompts and per-request settings: k, w, greedy or sampled, temperature, seed, EOS, token budgets.
JOBS = [
    (TEXT_PROMPTS[1], dict(k=10, w=1.0, max_new_tokens=40, ignore_eos=True)),
    (CHAT_PROMPTS[0], dict(k=5, w=0.5, max_new_tokens=12)),
    ("Hi", dict(k=40, w=3.0, max_new_tokens=25, method="stochastic", temperature=0.8, seed=7)),
    (CHAT_PROMPTS[1], dict(k=1, w=0.0, max_new_tokens=9)),
    (LONG_PROMPT, dict(k=20, w=2.0, max_new_tokens=30, method="stochastic", temperature=1.3, seed=1, ignore_eos=True)),
    (TEXT_PROMPTS[0], dict(k=8, w=1.5, max_new_tokens=18)),
]


def staggered(engine: ArgsEngine, jobs: list) -> list:
    """Submit two jobs, then each later one after the first request has streamed three more tokens (so it joins a
    running batch); the handles, in job order."""
    handles = [engine.submit(prompt, **settings) for prompt, settings in jobs[:2]]
    first = iter(handles[0])
    for prompt, settings in jobs[2:]:
        for _ in range(3):
            next(first, None)
        handles.append(engine.submit(prompt, **settings))
    return handles


def assert_same(alone, batched) -> None:
    assert batched.token_ids == alone.token_ids
    assert (batched.finish_reason, batched.text, batched.prompt_tokens) == (alone.finish_reason, alone.text, alone.prompt_tokens)
    np.testing.assert_allclose(batched.chosen_logits, alone.chosen_logits, atol=1e-4)
    np.testing.assert_allclose(batched.rewards, alone.rewards, atol=1e-4)


@pytest.fixture(scope="module")
def static_generators(static_bundles):
    return {name: ArgsGenerator.from_bundle(bundle) for name, bundle in static_bundles.items()}


@pytest.fixture(scope="module")
def alone(static_generators):
    """What generate() gives each job alone, per architecture."""
    return {arch: [gen.generate(p, **s) for p, s in JOBS] for arch, gen in static_generators.items()}


@pytest.mark.parametrize("arch", ARCHS)
def test_requests_joining_mid_run_get_their_single_request_tokens(static_generators, alone, arch):
    """Six requests of mixed lengths and settings through three slots: later ones join a running batch, wait for a
    slot, take the slot a finished one left, and move down into holes; each equals generate() alone."""
    with ArgsEngine(static_generators[arch], slots=3) as engine:
        results = [h.result(timeout=120) for h in staggered(engine, JOBS)]
        stats = engine.stats()
    for job, one, batched in zip(JOBS, alone[arch], results):
        assert_same(one, batched), job
    assert [r.timings["joined_at_step"] for r in results][:2] == [0, 0]
    assert all(r.timings["joined_at_step"] > 0 for r in results[2:])  # they joined a running batch
    assert stats["running"] == stats["waiting"] == 0 and stats["moves"] > 0  # holes were closed by moving rows down
    assert stats["resizes"] > 0 and stats["width"] < STATIC_CONTEXT  # the caches followed the slots in use


@pytest.mark.parametrize("loop", available_loops())
def test_python_and_cpp_host_loops_choose_alike(static_bundles, alone, loop):
    """Each request chooses with the host chooser of the active loop (numpy or C++), per row, its own seeded stream."""
    with ArgsEngine.from_bundle(static_bundles["llama"], slots=4, loop=loop) as engine:
        assert engine.info["loop"] == loop
        for one, handle in zip(alone["llama"], staggered(engine, JOBS)):
            assert_same(one, handle.result(timeout=120))


def test_the_same_seed_gives_the_same_sample_in_any_company(static_generators):
    """A sampled request equals its single-request sample however many others run beside it and whenever it joins; a
    different seed gives a different sample (so the test can fail)."""
    gen = static_generators["qwen2"]
    sampled = dict(k=30, w=1.0, max_new_tokens=24, method="stochastic", temperature=1.5, seed=11, ignore_eos=True)
    reference = gen.generate(TEXT_PROMPTS[0], **sampled)
    assert gen.generate(TEXT_PROMPTS[0], **{**sampled, "seed": 12}).token_ids != reference.token_ids
    with ArgsEngine(gen, slots=4) as engine:
        for company in (0, 1, 3):
            others = [engine.submit(p, **s) for p, s in JOBS[:company]]
            mine = engine.submit(TEXT_PROMPTS[0], **sampled)
            late = staggered(engine, [(TEXT_PROMPTS[1], dict(k=4, max_new_tokens=30, ignore_eos=True)), JOBS[1], (TEXT_PROMPTS[0], sampled)])
            assert mine.result(timeout=120).token_ids == reference.token_ids
            assert late[2].result(timeout=120).token_ids == reference.token_ids  # joined mid-run
            for handle in others + late:
                handle.result(timeout=120)


def test_each_slot_has_its_own_context(static_generators):
    """A long prompt no longer bounds everyone's context: beside it a short request gets its full token budget, and the
    long one stops at the context as it does alone."""
    gen = static_generators["llama"]
    long_ids = gen.tokenizer.encode(LONG_PROMPT * 2)[: STATIC_CONTEXT - 10]
    with ArgsEngine(gen, slots=2) as engine:
        crowded = engine.submit(long_ids, k=5, max_new_tokens=40, ignore_eos=True)
        short = engine.submit("Hi", k=5, max_new_tokens=40, ignore_eos=True)
        assert_same(gen.generate(long_ids, k=5, max_new_tokens=40, ignore_eos=True), crowded.result(timeout=60))
        assert crowded.result().finish_reason == "context" and len(crowded.result().token_ids) == 10
        assert short.result(timeout=60).finish_reason == "length" and len(short.result().token_ids) == 40
    batched = gen.generate([long_ids, "Hi"], k=5, max_new_tokens=40, ignore_eos=True)  # a batch of generate() too
    assert [r.finish_reason for r in batched] == ["context", "length"]


def test_a_finished_request_frees_its_slot_for_the_next_step(static_generators):
    gen = static_generators["gpt2"]
    with ArgsEngine(gen, slots=1) as engine:
        first = engine.submit("Hi", k=3, max_new_tokens=20, ignore_eos=True)
        waiting = engine.submit(TEXT_PROMPTS[0], k=3, max_new_tokens=5, ignore_eos=True)
        left = first.result(timeout=60).timings["left_at_step"]
        assert waiting.result(timeout=60).timings["joined_at_step"] == left  # seated before the next decode step
        assert left == 19 and engine.stats()["steps"] == 19 + 4


def test_events_and_stop_strings_stream_as_generate_streams(static_generators):
    """A handle's events carry the same text deltas (stop strings held back) as ArgsGenerator.stream, and the last one
    the result; a stop string found mid-run ends the request as it does alone."""
    gen = static_generators["mistral"]
    free = gen.generate(TEXT_PROMPTS[1], k=6, max_new_tokens=30, ignore_eos=True).text
    stop = free[len(free) // 2 : len(free) // 2 + 3]
    settings = dict(k=6, max_new_tokens=30, ignore_eos=True, stop=[stop, "never appears"])
    expected = list(gen.stream(TEXT_PROMPTS[1], **settings))
    with ArgsEngine(gen, slots=2) as engine:
        beside = engine.submit(LONG_PROMPT, k=9, max_new_tokens=30)
        events = list(engine.submit(TEXT_PROMPTS[1], **settings))
        beside.result(timeout=60)
    assert [(e.token_id, e.text) for e in events] == [(e.token_id, e.text) for e in expected]
    assert events[-1].result.finish_reason == "stop" and events[-1].result.text == expected[-1].result.text
    assert all(e.result is None for e in events[:-1])


def test_cancel_frees_the_slot_and_leaves_the_others_exact(static_generators, alone):
    gen = static_generators["llama"]
    with ArgsEngine(gen, slots=2) as engine:
        doomed = engine.submit(TEXT_PROMPTS[0], k=5, max_new_tokens=200, ignore_eos=True)
        kept = engine.submit(*JOBS[0][:1], **JOBS[0][1])
        queued = engine.submit(*JOBS[1][:1], **JOBS[1][1])
        never = engine.submit("never runs", max_new_tokens=5)
        never.cancel()  # still waiting: it never starts
        events = iter(doomed)
        next(events), next(events)
        doomed.cancel()
        with pytest.raises(RequestCancelled):
            list(events)
        with pytest.raises(RequestCancelled):
            doomed.result(timeout=60)
        with pytest.raises(RequestCancelled, match="before it started"):
            never.result(timeout=1)
        assert_same(alone["llama"][0], kept.result(timeout=60))
        assert_same(alone["llama"][1], queued.result(timeout=60))
        doomed.cancel()  # idempotent, also once finished
        kept.cancel()
        assert kept.result().token_ids == alone["llama"][0].token_ids


def test_handles_work_from_threads_and_event_loops(static_generators, alone):
    """submit() from several threads at once; `await handle` and `async for` on an event loop."""
    gen = static_generators["opt"]
    with ArgsEngine(gen, slots=3) as engine:
        results: dict[int, object] = {}

        def client(i: int) -> None:
            results[i] = engine.submit(JOBS[i][0], **JOBS[i][1]).result(timeout=120)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

        async def asynchronous():
            streamed = engine.submit(JOBS[4][0], **JOBS[4][1])
            awaited = engine.submit(JOBS[5][0], **JOBS[5][1])
            events = [e async for e in streamed]
            return events, await awaited, await streamed

        events, awaited, streamed = asyncio.run(asynchronous())
    for i in range(4):
        assert_same(alone["opt"][i], results[i])
    assert_same(alone["opt"][5], awaited)
    assert [e.token_id for e in events] == alone["opt"][4].token_ids == streamed.token_ids


def test_a_prefill_writes_only_its_own_slot(static_generators):
    """A new request's prompt goes into its own rows of both caches (bound at their address) and nowhere else."""
    gen = static_generators["llama"]
    caches, books = SlotCaches((gen.lm, gen.rm), 3), Books(3, STATIC_CONTEXT, ())
    assert caches.movable
    for views in caches.host:
        for view in views.values():
            view[...] = 7.0
    before = [{n: v.copy() for n, v in views.items()} for views in caches.host]
    prompt = gen.tokenizer.encode(TEXT_PROMPTS[1])
    books.seat(1, Seat(len(prompt), 0, 10, False))
    positions = np.arange(len(prompt))[None]
    lm_rows, rm_rows = caches.rows(1, 2, books.mask[1:2], positions)
    top = gen.lm.extend(np.array([prompt]), positions, lm_rows, 5)
    gen.rm.extend_and_score(np.array([prompt]), positions, rm_rows, top)
    for old, views in zip(before, caches.host):
        for name, view in views.items():
            assert np.array_equal(view[[0, 2]], old[name][[0, 2]]), name  # the other slots: untouched
            assert np.array_equal(view[1, :, len(prompt):], old[name][1, :, len(prompt):]), name  # past the prompt: untouched
            assert not np.any(view[1, :, : len(prompt)] == 7.0), name  # the prompt's slots: written
    assert top.ids.shape == (1, 5)


def test_width_policy_grows_at_once_and_shrinks_with_room_to_spare():
    policy = WidthPolicy(context=768, step=64)
    assert [policy.fit(n) for n in (1, 64, 65, 300, 767, 768, 9999)] == [64, 64, 128, 320, 768, 768, 768]
    assert policy.next(64, 65) == 128  # a request needs more: grow now, to the narrowest width that holds it
    assert policy.next(512, 400) == 512 and policy.next(512, 512) == 512  # up to one step to spare: keep the width
    assert policy.next(512, 384) == 448 and policy.next(512, 300) == 384  # two steps or more: shrink, leaving one step of room
    odd = WidthPolicy(context=300, step=64)  # widths stay congruent to max_context
    assert [odd.fit(n) for n in (1, 44, 45, 299)] == [44, 44, 108, 300]


def test_narrow_caches_give_bit_identical_steps(static_generators):
    """At every width the engine runs, each request's chosen logits and rewards equal full width's bit for bit, and the
    caches really narrowed and widened on the way (a long prompt beside short ones, rows leaving)."""
    gen = static_generators["qwen2"]
    jobs = [(LONG_PROMPT, dict(k=12, w=1.5, max_new_tokens=30, ignore_eos=True))] + JOBS[:4]
    runs = {}
    for width_step in (None, 64):
        with ArgsEngine(gen, slots=3, width_step=width_step) as engine:
            runs[width_step] = ([h.result(timeout=120) for h in staggered(engine, jobs)], engine.stats(), engine.info["context_width"])
    (full, full_stats, full_width), (narrow, stats, width) = runs[None], runs[64]
    assert (full_width, full_stats["resizes"], full_stats["width"]) == ("full: width_step=None", 0, STATIC_CONTEXT)
    assert width == "narrow" and stats["resizes"] >= 2 and stats["width"] < STATIC_CONTEXT  # widened for the long prompt, narrowed after
    for a, b in zip(full, narrow):
        assert a.token_ids == b.token_ids
        assert np.array_equal(a.chosen_logits, b.chosen_logits) and np.array_equal(a.rewards, b.rewards)


def test_the_runtime_never_needs_onnx(static_bundles, alone):
    """The graphs' slot axis is free in the bundle itself, so the engine runs narrow caches over the very graphs
    generate() runs, in a process where the onnx package cannot be imported."""
    import json
    import subprocess
    import sys

    code = (
        "import sys, json; sys.modules['onnx'] = None\n"
        "from args_runtime import ArgsEngine\n"
        f"engine = ArgsEngine.from_bundle({str(static_bundles['llama'])!r}, slots=2)\n"
        f"r = engine.generate({JOBS[0][0]!r}, **{JOBS[0][1]!r})\n"
        "print(json.dumps({'ids': r.token_ids, 'width': engine.info['context_width'], 'onnx': 'onnx' in sys.modules and sys.modules['onnx'] is not None}))\n"
        "engine.close()\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out == {"ids": alone["llama"][0].token_ids, "width": "narrow", "onnx": False}


def test_hooks_report_the_queue_the_running_requests_and_each_steps_batch(static_generators):
    gen = static_generators["llama"]
    seen = {"queue": [], "running": [], "batch": []}
    hooks = EngineHooks(queue_depth=seen["queue"].append, running=seen["running"].append, batch=seen["batch"].append)
    with ArgsEngine(gen, slots=2, hooks=hooks) as engine:
        handles = [engine.submit(p, **s) for p, s in JOBS[:3]]
        [h.result(timeout=120) for h in handles]
    assert max(seen["queue"]) >= 1 and seen["queue"][-1] == 0
    assert max(seen["running"]) == 2 and seen["running"][-1] == 0
    assert max(seen["batch"]) == 2 and min(seen["batch"]) >= 1


def test_resize_keeps_each_rows_used_slots(static_generators):
    gen = static_generators["llama"]
    caches = SlotCaches((gen.lm, gen.rm), 3, width=64)
    for views in caches.host:
        for view in views.values():
            view[...] = np.arange(view.size, dtype=view.dtype).reshape(view.shape)
    before = [{n: v.copy() for n, v in views.items()} for views in caches.host]
    caches.resize(128, {0: 10, 2: 64})
    assert caches.width == 128
    for old, views in zip(before, caches.host):
        for name, view in views.items():
            assert view.shape[2] == 128
            assert np.array_equal(view[0, :, :10], old[name][0, :, :10]) and np.array_equal(view[2, :, :64], old[name][2])
            assert not view[1].any() and not view[0, :, 10:].any()  # what was not kept is not copied
    caches.resize(64, {2: 40})
    assert np.array_equal(caches.host[0][gen.lm.past_names[0]][2, :, :40], before[0][gen.lm.past_names[0]][2, :, :40])
    with pytest.raises(GenerationError, match="cannot hold"):
        caches.resize(64, {0: 65})


def test_a_dynamic_bundle_runs_fixed_batches_and_says_how_to_get_continuous_ones(tiny_pairs):
    gen = ArgsGenerator.from_bundle(tiny_pairs["llama"].bundle)
    with ArgsEngine(gen, slots=3) as engine:
        assert not engine.continuous and "--cache static" in engine.batching and engine.info["scheduler"] == "fixed batches"
        handles = [engine.submit(p, **s) for p, s in JOBS]
        for (prompt, settings), handle in zip(JOBS, handles):
            assert_same(gen.generate(prompt, **settings), handle.result(timeout=120))


def test_bad_input_fails_clearly(static_generators, tiny_pairs):
    gen = static_generators["llama"]
    with pytest.raises(GenerationError, match="slots=0"):
        ArgsEngine(gen, slots=0)
    with pytest.raises(GenerationError, match="width_step=0"):
        ArgsEngine(gen, width_step=0)
    engine = ArgsEngine(gen, slots=1)
    with pytest.raises(GenerationError, match="k=99"):
        engine.submit("Hi", k=99)
    with pytest.raises(GenerationError, match="one prompt"):
        engine.submit(["a", "b"])
    with pytest.raises(GenerationError, match="empty"):
        engine.submit("")
    running = engine.submit(TEXT_PROMPTS[0], max_new_tokens=200, ignore_eos=True)
    waiting = engine.submit(TEXT_PROMPTS[1], max_new_tokens=5)
    next(iter(running))
    engine.close()
    for handle in (running, waiting):
        with pytest.raises(RequestCancelled, match="closed"):
            handle.result(timeout=10)
    with pytest.raises(GenerationError, match="closed"):
        engine.submit("Hi")


@pytest.fixture(scope="module")
def smollm2_static(cache_dir, smollm2_dir):
    """SmolLM2-135M as the LM and a seeded RM on its backbone, static layout, 320-slot context."""
    rm_dir = seeded_reward_model(smollm2_dir, cache_dir / "smollm2-seeded-rm")
    bundle = cache_dir / "smollm2-static-320"
    export_bundle(ExportOptions(smollm2_dir, rm_dir, bundle, max_context=320, cache="static", force=True), quiet=True)
    return ArgsGenerator.from_bundle(bundle)


def test_smollm2_requests_joining_mid_run_get_their_single_request_tokens(smollm2_static):
    gen = smollm2_static
    jobs = [
        (CHAT_PROMPTS[0], dict(k=10, w=1.5, max_new_tokens=24)),
        (LONG_PROMPT, dict(k=5, w=0.5, max_new_tokens=10, ignore_eos=True)),
        (CHAT_PROMPTS[1], dict(k=20, w=2.0, max_new_tokens=12, method="stochastic", temperature=0.7, seed=3)),
        (TEXT_PROMPTS[0], dict(k=3, w=0.0, max_new_tokens=8, ignore_eos=True)),
    ]
    alone = [gen.generate(p, **s) for p, s in jobs]
    with ArgsEngine(gen, slots=2) as engine:
        results = [h.result(timeout=300) for h in staggered(engine, jobs)]
        assert engine.info["context_width"] == "narrow" and engine.stats()["resizes"] > 0  # exact at narrow widths too
    for one, batched in zip(alone, results):
        assert_same(one, batched)
    assert results[2].timings["joined_at_step"] > 0
