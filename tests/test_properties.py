"""Property-based tests of bad input (issue 17), with hypothesis: arbitrary keyword values and prompt shapes against
generate(), stream() and args-generate. The property: a call returns a result or raises an ArgsError (a TypeError only
for an unknown keyword, which these strategies never pass), and the next valid call still gives the reference tokens.
Bounded for CI: tiny models, few new tokens, a fixed number of examples, derandomized (the same examples every run)."""

from __future__ import annotations

import string

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from args_runtime import ArgsError, ArgsGenerator, GenerationResult  # noqa: E402

from .conftest import TEXT_PROMPTS  # noqa: E402

PROMPT = TEXT_PROMPTS[0]
VALID = dict(k=3, w=1.0, max_new_tokens=4, ignore_eos=True)
BOUNDED = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                   suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def gen(tiny_pairs):
    return ArgsGenerator.from_bundle(tiny_pairs["llama"].bundle)


@pytest.fixture(scope="module")
def reference(gen):
    return gen.generate(PROMPT, **VALID).token_ids


def anything(small_ints: st.SearchStrategy) -> st.SearchStrategy:
    """A value of any of the kinds a user might pass by mistake (or on purpose)."""
    scalars = st.one_of(small_ints, st.integers(), st.floats(), st.booleans(), st.none(), st.text(max_size=4),
                        st.complex_numbers(max_magnitude=10), st.binary(max_size=3))
    return st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=3), scalars, max_size=2))


# max_new_tokens and k stay small when they are valid, so that a valid call is quick
KEYWORDS = {
    "k": anything(st.integers(-2, 60)),
    "w": anything(st.floats(-5, 5)),
    "max_new_tokens": anything(st.integers(-2, 6)),
    "method": st.one_of(st.sampled_from(["greedy", "stochastic", "Greedy", "beam", ""]), anything(st.integers(0, 2))),
    "temperature": anything(st.floats(-1, 3)),
    "seed": anything(st.integers(-3, 2**70)),
    "ignore_eos": anything(st.integers(0, 2)),
    "stop": st.one_of(st.text(max_size=3), st.lists(st.text(max_size=3), max_size=3), anything(st.integers(0, 2))),
}
some_keywords = st.dictionaries(st.sampled_from(sorted(KEYWORDS)), st.none()).flatmap(
    lambda chosen: st.fixed_dictionaries({name: KEYWORDS[name] for name in chosen}))


def _still_reference(gen, reference):
    assert gen.generate(PROMPT, **VALID).token_ids == reference


@BOUNDED
@given(kwargs=some_keywords)
def test_any_keyword_values_give_a_result_or_an_args_error(gen, reference, kwargs):
    kwargs.setdefault("max_new_tokens", 3)
    try:
        result = gen.generate(PROMPT, **kwargs)
    except ArgsError:
        pass
    else:
        assert isinstance(result, GenerationResult) and 1 <= len(result.token_ids) <= kwargs["max_new_tokens"]
    _still_reference(gen, reference)


token_ids = st.lists(st.one_of(st.integers(0, 49151), st.integers(-(2**64), 2**64), st.booleans(), st.floats(), st.none()),
                     max_size=6)
messages = st.lists(st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "robot", ""]), "content": st.text(max_size=8)}),
    st.dictionaries(st.sampled_from(["role", "content", "name", "extra"]), anything(st.integers(0, 3)), max_size=3),
    anything(st.integers(0, 3)),
), max_size=3)
texts = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=12) | st.text(string.printable, max_size=12)
prompts = st.recursive(st.one_of(texts, token_ids, messages, anything(st.integers(0, 10))),
                       lambda inner: st.lists(inner, max_size=3), max_leaves=8)


@BOUNDED
@given(prompt=prompts)
def test_any_prompt_shape_gives_a_result_or_an_args_error(gen, reference, prompt):
    try:
        result = gen.generate(prompt, k=2, w=0.5, max_new_tokens=2)
    except ArgsError:
        pass
    else:
        results = result if isinstance(result, list) else [result]
        assert results and all(isinstance(r, GenerationResult) and 1 <= len(r.token_ids) <= 2 for r in results)
    _still_reference(gen, reference)


@settings(BOUNDED, max_examples=30)
@given(prompt=prompts, kwargs=some_keywords, read=st.integers(0, 3))
def test_any_stream_read_or_left_gives_events_or_an_args_error(gen, reference, prompt, kwargs, read):
    """stream() checks at the call; a stream read partly and dropped leaves the generator ready."""
    kwargs.setdefault("max_new_tokens", 3)
    try:
        events = gen.stream(prompt, **kwargs)
        for _ in zip(range(read), events):
            pass
    except ArgsError:
        pass
    _still_reference(gen, reference)


cli_values = st.one_of(st.integers(-3, 60).map(str), st.floats().map(str), st.text(string.printable, max_size=5),
                       st.sampled_from(["nan", "inf", "-1", "0", "1e400", "greedy", "stochastic"]))
CLI_OPTIONS = ["--k", "--w", "--max-new-tokens", "--method", "--temperature", "--seed", "--stop", "--threads", "--device"]


@settings(BOUNDED, max_examples=25)
@given(options=st.dictionaries(st.sampled_from(CLI_OPTIONS), cli_values, max_size=3),
       prompt=st.text(string.printable, max_size=10))
def test_args_generate_exits_0_or_2_with_a_message_never_a_traceback(tiny_pairs, capsys, options, prompt):
    from args_runtime.cli import main

    argv = [str(tiny_pairs["llama"].bundle), "--prompt", prompt, "--max-new-tokens", "2"]
    for name, value in options.items():
        argv += [f"{name}={value}"]  # the = form: a value that starts with '-' stays a value
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own usage errors (a --k that is not an int) exit 2
        code = e.code
    err = capsys.readouterr().err
    assert code in (0, 2), (argv, code, err)
    assert "Traceback" not in err
    if code == 2:
        assert "error: " in err, err
