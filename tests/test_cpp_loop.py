"""The optional C++ step loop gives the same tokens, logits, rewards, texts and finish reasons as the Python loop.

Skipped when args_runtime._steploop is not built (pip install with -Ccmake.define.ARGS_RT_NO_CPP_EXT=ON, or
no compiler); the fallback test runs either way."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from types import SimpleNamespace

from args_runtime import ArgsGenerator
from args_runtime.books import Books, CppBooks, Seat
from args_runtime.choice import ChoiceConfig, CppHostChooser, HostChooser
from args_runtime.selection import args_scores, softmax

from .conftest import ARCHS, CHAT_PROMPTS, TEXT_PROMPTS

try:
    from args_runtime import _steploop
except ImportError:
    _steploop = None

needs_cpp = pytest.mark.skipif(_steploop is None, reason="args_runtime._steploop is not built (installed without the C++ step loop)")


def _both(bundle):
    return ArgsGenerator.from_bundle(bundle, loop="python"), ArgsGenerator.from_bundle(bundle, loop="cpp")


@pytest.fixture(scope="module")
def loops(tiny_pairs):
    if _steploop is None:
        pytest.skip("args_runtime._steploop is not built (installed without the C++ step loop)")
    return {name: _both(pair.bundle) for name, pair in tiny_pairs.items()}


def assert_same(a, b):
    for x, y in zip(a if isinstance(a, list) else [a], b if isinstance(b, list) else [b]):
        assert x.token_ids == y.token_ids
        assert x.chosen_logits == y.chosen_logits and x.rewards == y.rewards
        assert (x.text, x.finish_reason, x.prompt_tokens) == (y.text, y.finish_reason, y.prompt_tokens)
        assert (x.timings["loop"], y.timings["loop"]) == ("python", "cpp")


# ---------------------------------------------------------------- the chooser and the books alone, on random scores


def _loops_side_by_side(configs, seats, logits, candidates, rewards, eos):
    """The host chooser and the books of each loop, side by side on the same scores, step by step: rows of their own
    settings and seats; at step 10 row 0 is released and the last row moves into it (continuous batching's moves)."""
    rows, context = len(configs), 128
    py = (HostChooser(rows), Books(rows, context, eos))
    cpp = (CppHostChooser(rows), CppBooks(rows, context, eos))
    for chooser, books in (py, cpp):
        for row, (config, seat) in enumerate(zip(configs, seats)):
            chooser.seat(row, config)
            books.seat(row, seat)
    span = rows
    for t in range(logits.shape[0]):
        if t == 10:
            for chooser, books in (py, cpp):
                books.release(0)
                chooser.move(rows - 1, 0)
                books.move(rows - 1, 0)
            span = rows - 1
        top = SimpleNamespace(logits=logits[t, :span], ids=candidates[t, :span])
        a = py[1].step(py[0](top, rewards[t, :span], range(span)), range(span))
        b = cpp[1].step(cpp[0](top, rewards[t, :span], range(span)), range(span))
        assert np.array_equal(a.tokens, b.tokens), (configs, t)
        assert np.array_equal(a.logits, b.logits) and np.array_equal(a.rewards, b.rewards) and np.array_equal(a.finish, b.finish)
        for name in ("mask", "next_ids", "positions", "columns"):
            assert np.array_equal(getattr(py[1], name), getattr(cpp[1], name)), (name, t)
        last = max((row for row in range(span) if py[0].rngs[row] is not None), default=None)
        if last is not None:  # the last sampled row's distribution, to the bit (sum order, exp, division)
            k, w, temperature = py[0].k[last], py[0].w[last], py[0].temperature[last]
            scores = args_scores(logits[t, last : last + 1, :k], rewards[t, last : last + 1, :k], w).astype(np.float64) / temperature
            assert np.cumsum(softmax(scores), axis=-1)[0].tobytes() == cpp[0].native.last_cdf().tobytes()
    return py, cpp


@needs_cpp
@pytest.mark.parametrize("temperature", [0.05, 0.7, 1.0, 5.0])
@pytest.mark.parametrize("k", [1, 2, 7, 8, 10, 17, 40, 200])
def test_chooser_and_books_match_on_random_scores(temperature, k):
    """Many random score matrices (ties included), several seeds, rows of different k, w, methods, limits and seats:
    the same picks, the same books, the same rng streams."""
    for seed in (0, 1, 12345):
        data = np.random.default_rng(seed + 100 * k)
        steps, rows = 40, 4
        logits = (data.normal(size=(steps, rows, k)) * 4).astype(np.float32)
        rewards = data.normal(size=(steps, rows, k)).astype(np.float32)
        logits[::7, :, : max(1, k // 2)] = 1.0  # tied scores: the first wins
        rewards[::7, :, : max(1, k // 2)] = 0.5
        candidates = data.integers(0, 49152, size=(steps, rows, k), dtype=np.int64)
        configs = [ChoiceConfig(k, 1.3, False, temperature, seed), ChoiceConfig(max(1, k // 3), -0.4, True, temperature, seed),
                   ChoiceConfig(k, 0.0, True, temperature, seed + 1), ChoiceConfig(max(1, k - 1), 2.5, True, temperature * 2, seed + 2)]
        seats = [Seat(3, 0, 10, False), Seat(5, 2, 25, True), Seat(1, 60, 40, False), Seat(7, 0, 35, False)]
        py, cpp = _loops_side_by_side(configs, seats, logits, candidates, rewards, (int(candidates[5, 0, 0]), int(candidates[3, 2, 0])))
        for row in range(3):  # both consumed exactly one draw per sampled row per step
            rng = py[0].rngs[row]
            if rng is not None:
                state = rng.bit_generator.state["state"]
                hi, lo, inc_hi, inc_lo = cpp[0].native.rng_state(row)
                assert (hi << 64 | lo, inc_hi << 64 | inc_lo) == (state["state"], state["inc"])


@needs_cpp
def test_stochastic_chooser_depends_on_the_stream():
    """Guards the guard: near-uniform scores make every pick depend on the draw, so a wrong rng would show."""
    k, steps = 10, 50
    logits = np.zeros((steps, 1, k), np.float32)
    candidates = np.tile(np.arange(k, dtype=np.int64), (steps, 1, 1))
    picks = {}
    for seed in (1, 2):
        tops = [SimpleNamespace(logits=logits[t], ids=candidates[t]) for t in range(steps)]
        cpp, py = CppHostChooser(1), HostChooser(1)
        cpp.seat(0, ChoiceConfig(k, 0.0, True, 1.0, seed))
        py.seat(0, ChoiceConfig(k, 0.0, True, 1.0, seed))
        picks[seed] = [int(cpp(top, top.logits, range(1)).tokens[0]) for top in tops]
        assert picks[seed] == [int(py(top, top.logits, range(1)).tokens[0]) for top in tops]
    assert picks[1] != picks[2] and len(set(picks[1])) > 5


@needs_cpp
def test_the_books_refuse_what_they_cannot_keep():
    books = CppBooks(2, 8, ())
    with pytest.raises(ValueError, match="does not fit"):
        books.seat(0, Seat(6, 4, 2, False))
    books.seat(1, Seat(7, 0, 5, True))
    chosen = SimpleNamespace(tokens=np.array([0, 3]), logits=np.zeros(2, np.float32), rewards=np.zeros(2, np.float32))
    books.step(chosen, range(2))
    with pytest.raises(ValueError, match="no cache column left"):
        books.step(chosen, range(2))


# ---------------------------------------------------------------- whole generations on the tiny bundles


@pytest.mark.parametrize("arch", ARCHS)
def test_args_greedy_identical(loops, arch):
    py, cpp = loops[arch]
    for k, w in ((1, 0.0), (5, 0.5), (10, 3.0), (40, 1.0)):
        kw = dict(k=k, w=w, max_new_tokens=24, ignore_eos=True)
        assert_same(py.generate(CHAT_PROMPTS[1], **kw), cpp.generate(CHAT_PROMPTS[1], **kw))


@pytest.mark.parametrize("seed", [0, 3, 4, 99])
@pytest.mark.parametrize("temperature", [0.3, 0.7, 2.0])
def test_stochastic_identical(loops, seed, temperature):
    py, cpp = loops["llama"]
    kw = dict(k=10, w=1.0, max_new_tokens=32, method="stochastic", temperature=temperature, seed=seed, ignore_eos=True)
    a, b = py.generate(TEXT_PROMPTS[0], **kw), cpp.generate(TEXT_PROMPTS[0], **kw)
    assert_same(a, b)
    if temperature >= 0.7:  # the sample really depends on the seed here, so equal tokens test the stream
        other = cpp.generate(TEXT_PROMPTS[0], **{**kw, "seed": seed + 1000})
        assert other.token_ids != b.token_ids


@pytest.mark.parametrize("method", ["greedy", "stochastic"])
@pytest.mark.parametrize("arch", ["llama", "opt", "gpt2"])
def test_uneven_batch_identical(loops, method, arch):
    py, cpp = loops[arch]
    batch = [TEXT_PROMPTS[1], CHAT_PROMPTS[0], TEXT_PROMPTS[0]]
    kw = dict(k=8, w=1.5, max_new_tokens=20, method=method, seed=7)
    assert_same(py.generate(batch, **kw), cpp.generate(batch, **kw))


def test_eos_stops_and_max_tokens_identical(loops):
    py, cpp = loops["llama"]
    # Find a setting that stops on EOS early with the Python loop, then require the same from C++.
    for w in (0.0, 1.0, 2.0, 4.0, 8.0):
        a = py.generate(TEXT_PROMPTS, k=40, w=w, max_new_tokens=48)
        if any(r.finish_reason == "eos" for r in a):
            break
    assert_same(a, cpp.generate(TEXT_PROMPTS, k=40, w=w, max_new_tokens=48))
    assert_same(py.generate(TEXT_PROMPTS, k=4, w=w, max_new_tokens=48, ignore_eos=True),
                cpp.generate(TEXT_PROMPTS, k=4, w=w, max_new_tokens=48, ignore_eos=True))
    for n in (1, 2, 7):
        assert_same(py.generate(TEXT_PROMPTS[0], k=5, w=1.0, max_new_tokens=n), cpp.generate(TEXT_PROMPTS[0], k=5, w=1.0, max_new_tokens=n))


def test_stop_strings_and_stream_identical(loops):
    py, cpp = loops["llama"]
    full = py.generate(TEXT_PROMPTS[0], k=5, w=1.0, max_new_tokens=24, ignore_eos=True)
    stop = full.text[len(full.text) // 2 : len(full.text) // 2 + 3]
    kw = dict(k=5, w=1.0, max_new_tokens=24, ignore_eos=True, stop=[stop, "zzzz"])
    a, b = py.generate(TEXT_PROMPTS[0], **kw), cpp.generate(TEXT_PROMPTS[0], **kw)
    assert a.finish_reason == "stop"
    assert_same(a, b)
    assert [e.text for e in py.stream(TEXT_PROMPTS[0], **kw)] == [e.text for e in cpp.stream(TEXT_PROMPTS[0], **kw)]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "opt-350m-style"])
def test_plain_greedy_identical(loops, arch):
    py, cpp = loops[arch]
    for prompt in (TEXT_PROMPTS, CHAT_PROMPTS[1]):
        assert_same(py.greedy(prompt, max_new_tokens=24), cpp.greedy(prompt, max_new_tokens=24))


# ---------------------------------------------------------------- the fallback


def test_python_fallback_when_forced(tiny_pairs):
    code = ("import args_runtime, sys; from args_runtime import ArgsGenerator; g = ArgsGenerator.from_bundle(sys.argv[1]); "
            "r = g.generate('Hi', k=3, max_new_tokens=2); print(args_runtime.LOOP_IMPL, r.timings['loop'])")
    env = {**os.environ, "ARGS_RT_LOOP": "python"}
    out = subprocess.run([sys.executable, "-c", code, str(tiny_pairs["llama"].bundle)], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["python", "python"]


def test_default_loop_is_the_built_one(tiny_pairs):
    """Without overrides the loop is "cpp" exactly when the extension is built: a broken build cannot pass silently
    where ARGS_RT_EXPECT_LOOP says which one it must be (CI sets it to cpp)."""
    env = {k: v for k, v in os.environ.items() if k != "ARGS_RT_LOOP"}
    out = subprocess.run([sys.executable, "-c", "import args_runtime; print(args_runtime.LOOP_IMPL)"], env=env,
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ("cpp" if _steploop is not None else "python")
    if os.environ.get("ARGS_RT_EXPECT_LOOP"):
        assert out.stdout.strip() == os.environ["ARGS_RT_EXPECT_LOOP"]
