"""Sharing one generator and interrupting it. The contract (runtime/turns.py): one ArgsGenerator runs one call at a
time, calls from several threads take turns, a stream holds the generator until it ends or is closed, and a later call
from the stream's own thread ends a stream left suspended. Whatever happens to a call (a consumer that breaks off or
raises, Ctrl-C anywhere), the next call gives the reference tokens."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from args_export.reference import ReferenceARGS
from args_runtime import ArgsGenerator, GenerationError

from .conftest import CHAT_PROMPTS, TEXT_PROMPTS
from .test_interrupts import sigint_default

KW = dict(k=5, w=1.0, max_new_tokens=16, ignore_eos=True)

JOBS = {  # every public call, each with its own settings; a job returns the tokens it produced
    "args greedy": lambda g: g.generate(TEXT_PROMPTS[0], **KW).token_ids,
    "args stochastic": lambda g: g.generate(TEXT_PROMPTS[1], k=8, w=0.5, method="stochastic", seed=7, max_new_tokens=16, ignore_eos=True).token_ids,
    "batch": lambda g: [r.token_ids for r in g.generate([TEXT_PROMPTS[0], CHAT_PROMPTS[1], [5, 6, 7]], k=4, w=2.0, max_new_tokens=12, ignore_eos=True)],
    "stream": lambda g: [e.token_id for e in g.stream(CHAT_PROMPTS[0], k=6, w=1.5, max_new_tokens=16, ignore_eos=True)],
    "slow stream": lambda g: [threading.Event().wait(0.002) or e.token_id for e in g.stream(TEXT_PROMPTS[1], **KW)],
    "greedy": lambda g: g.greedy(TEXT_PROMPTS[1], max_new_tokens=16, ignore_eos=True).token_ids,
    "sample": lambda g: g.sample(TEXT_PROMPTS[0], k=10, seed=3, max_new_tokens=16, ignore_eos=True).token_ids,
}


@pytest.fixture(scope="module")
def reference(tiny_pairs):
    """The transformers reference's ARGS-greedy tokens for KW on TEXT_PROMPTS[0]."""
    pair = tiny_pairs["llama"]
    ids = ArgsGenerator.from_bundle(pair.bundle).tokenizer.encode(TEXT_PROMPTS[0])
    return ReferenceARGS(pair.lm, pair.rm, pair.rm_family).generate(ids, KW["k"], KW["w"], KW["max_new_tokens"])


@pytest.fixture
def gen(tiny_pairs, reference):
    gen = ArgsGenerator.from_bundle(tiny_pairs["llama"].bundle)
    assert gen.generate(TEXT_PROMPTS[0], **KW).token_ids == reference
    return gen


def _run_threads(work, count: int) -> list[BaseException]:
    """Run `work(i)` in `count` threads released together; the exceptions they raised."""
    errors: list[BaseException] = []
    start = threading.Barrier(count)

    def run(i):
        try:
            start.wait()
            work(i)
        except BaseException as e:  # noqa: BLE001  (a crash in a thread must fail the test, not vanish)
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    return errors


@pytest.mark.parametrize("layout", ["dynamic", "static"])
def test_threads_sharing_one_generator_get_exactly_the_sequential_tokens(tiny_pairs, static_bundles, reference, layout):
    bundle = tiny_pairs["llama"].bundle if layout == "dynamic" else static_bundles["llama"]
    gen = ArgsGenerator.from_bundle(bundle)
    expected = {name: job(gen) for name, job in JOBS.items()}
    assert expected["args greedy"] == reference
    names = list(JOBS)
    wrong: list[str] = []

    def work(i):
        for r in range(2):
            for name in names[i % len(names):] + names[: i % len(names)]:  # each thread in its own order
                got = JOBS[name](gen)
                if got != expected[name]:
                    wrong.append(f"thread {i} round {r}: {name}")

    errors = _run_threads(work, 4)
    assert not errors, errors
    assert not wrong, wrong


def test_a_call_from_another_thread_waits_for_a_suspended_stream(gen, reference):
    expected_other = JOBS["greedy"](gen)
    stream = gen.stream(TEXT_PROMPTS[0], **KW)
    first = next(stream)  # the stream now holds the generator
    done = threading.Event()
    got: dict[str, list[int]] = {}

    def other():
        got["tokens"] = JOBS["greedy"](gen)
        done.set()

    thread = threading.Thread(target=other)
    thread.start()
    assert not done.wait(0.5), "a second call ran while a stream held the generator"
    tokens = [first.token_id] + [e.token_id for e in stream]  # the stream's own tokens are untouched
    thread.join(timeout=120)
    assert tokens == reference and got["tokens"] == expected_other


def test_separate_generators_run_side_by_side(tiny_pairs):
    gens = [ArgsGenerator.from_bundle(tiny_pairs[name].bundle) for name in ("llama", "gpt2", "qwen2")]
    expected = [JOBS["args greedy"](g) for g in gens]
    wrong = []

    def work(i):
        for _ in range(3):
            if JOBS["args greedy"](gens[i]) != expected[i]:
                wrong.append(i)

    assert not _run_threads(work, 3)
    assert not wrong


def test_a_later_call_in_the_same_thread_ends_a_suspended_stream(gen, reference):
    stream = gen.stream(TEXT_PROMPTS[1], **KW)
    next(stream), next(stream)
    assert gen.generate(TEXT_PROMPTS[0], **KW).token_ids == reference  # no deadlock, no mixed-up caches
    with pytest.raises(GenerationError, match="this stream was ended by a later call on the same generator from this thread"):
        next(stream)
    assert [e.token_id for e in gen.stream(TEXT_PROMPTS[0], **KW)] == reference


class ConsumerError(Exception):
    pass


def _leave(gen, how: str) -> None:
    """Read a stream for three tokens, then leave it the way `how` says."""
    stream = gen.stream(TEXT_PROMPTS[1], k=5, w=1.0, max_new_tokens=40, ignore_eos=True)
    if how == "close":
        next(stream)
        stream.close()
        return
    if how == "with block":
        with stream:
            next(stream)
        return
    raised = {"exception": ConsumerError, "keyboard interrupt": KeyboardInterrupt, "kept stream, exception": ConsumerError}.get(how)
    try:
        for i, _ in enumerate(stream if how.startswith("kept") else gen.stream(TEXT_PROMPTS[1], k=5, w=1.0, max_new_tokens=40, ignore_eos=True)):
            if i == 2:
                if raised:
                    raise raised()
                break
    except (ConsumerError, KeyboardInterrupt):
        pass
    if not how.startswith("kept"):
        del stream


@pytest.mark.parametrize("how", ["break", "exception", "keyboard interrupt", "kept stream, exception", "close", "with block"])
def test_a_stream_left_early_leaves_the_generator_ready(gen, reference, how):
    _leave(gen, how)
    assert gen.generate(TEXT_PROMPTS[0], **KW).token_ids == reference
    _leave(gen, how)
    assert [e.token_id for e in gen.stream(TEXT_PROMPTS[0], **KW)] == reference
    errors = _run_threads(lambda i: JOBS["greedy"](gen), 2)  # and nothing is left holding it for other threads
    assert not errors


SIGINT_SCRIPT = r"""
import json, os, random, signal, sys, threading, time
from args_runtime import ArgsGenerator

bundle, rounds, prompt = sys.argv[1], int(sys.argv[2]), sys.argv[3]
gen = ArgsGenerator.from_bundle(bundle)
kw = dict(k=5, w=1.0, max_new_tokens=16, ignore_eos=True)
long = dict(k=8, w=1.0, max_new_tokens=64, ignore_eos=True)
expected = gen.generate(prompt, **kw).token_ids
start = time.perf_counter()
gen.generate(prompt, **long)
span = time.perf_counter() - start
rng = random.Random(0)
interrupted = 0
for r in range(rounds):
    timer = threading.Timer(rng.uniform(0, span), os.kill, (os.getpid(), signal.SIGINT))  # a real Ctrl-C, at a random moment
    try:
        timer.start()
        if r % 3 == 0:
            gen.generate(prompt, **long)
        elif r % 3 == 1:
            gen.generate([prompt, "a second prompt", [5, 6, 7, 8]], **long)
        else:
            for event in gen.stream(prompt, **long):
                pass
        timer.cancel()
        timer.join()
        for _ in range(3):
            time.sleep(0.001)  # a signal sent just before cancel() lands here, still inside the try
    except KeyboardInterrupt:
        interrupted += 1
    timer.join()
    tokens = gen.generate(prompt, **kw).token_ids
    assert tokens == expected, (r, tokens, expected)
print(json.dumps({"expected": expected, "interrupted": interrupted, "rounds": rounds}))
"""


@pytest.mark.parametrize("layout, loop", [("dynamic", "cpp"), ("static", "python")])
def test_ctrl_c_at_random_moments_leaves_the_generator_ready(tiny_pairs, static_bundles, reference, layout, loop):
    """SIGINT sent to a real process at random moments of generate(), a batch and a stream; after each, the next call
    gives the reference tokens."""
    bundle = tiny_pairs["llama"].bundle if layout == "dynamic" else static_bundles["llama"]
    env = {**__import__("os").environ, "ARGS_RT_LOOP": loop}
    run = subprocess.run([sys.executable, "-c", SIGINT_SCRIPT, str(bundle), "24", TEXT_PROMPTS[0]], capture_output=True, text=True,
                         preexec_fn=sigint_default,
                         env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["expected"] == reference
    assert out["interrupted"] >= 8, out  # most rounds were interrupted mid-call (the delays span one long call)
