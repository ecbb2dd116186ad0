"""args-serve: the real `openai` client against a real uvicorn server on 127.0.0.1, serving a tiny seeded bundle (static
cache: continuous batching, every request through ArgsEngine; the dynamic layout's fixed batches once, at the end).
Every answer must equal what ArgsGenerator.generate gives for the same request alone (greedy), or the same seeded
sample (stochastic), whether it was streamed, batched with others, or answered under load with cancellations."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from args_runtime import ArgsGenerator
from args_runtime.engine import ArgsEngine
from args_runtime.requests import Request
from args_runtime.serve import ServeConfig, create_app

from .conftest import CHAT_PROMPTS, TEXT_PROMPTS
from .serve_utils import ThreadServer, free_port, metric, wait_health, wait_idle

ROOT = Path(__file__).parents[1]
K, W = 5, 1.0  # the test server's defaults (--k, --w)
MODEL = "llama-bundle"
WORDS = ("the harbour town woke slowly while fishing boats rocked against the pier and gulls argued over scraps near "
         "the baker who pulled the first loaves from a stone oven").split()


@pytest.fixture(scope="module")
def bundle(static_llama_bundle):
    return static_llama_bundle


@pytest.fixture(scope="module")
def reference(bundle):
    """The generator the answers are compared with, in this process (the server has its own)."""
    return ArgsGenerator.from_bundle(bundle, threads=1)


@pytest.fixture(scope="module")
def server(bundle):
    app = create_app(ServeConfig(bundle, k=K, w=W, max_batch=4, threads=1, batch_wait_ms=20))
    with ThreadServer(app) as s:
        s.wait_health()
        yield s


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture
def aclient(server):
    return openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def trace(choice) -> dict:
    """The `args` object a choice (or chunk choice) carries with args.return_rewards."""
    return choice.model_extra["args"]


def assert_equal_result(token_ids, text, rewards, ref) -> None:
    assert token_ids == ref.token_ids
    assert text == ref.text
    np.testing.assert_allclose(rewards, ref.rewards, rtol=1e-4, atol=1e-4)


FINISH = {"eos": "stop", "stop": "stop", "length": "length", "context": "length"}


# ---------------------------------------------------------------------------------------------- answers equal generate()


def test_chat_greedy_equals_generate(client, reference):
    messages = CHAT_PROMPTS[1]
    ref = reference.generate(messages, k=8, w=2.0, max_new_tokens=16)
    r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16,
                                       extra_body={"args": {"k": 8, "w": 2.0, "return_rewards": True}})
    choice = r.choices[0]
    assert_equal_result(trace(choice)["token_ids"], choice.message.content, trace(choice)["rewards"], ref)
    np.testing.assert_allclose(trace(choice)["logits"], ref.chosen_logits, rtol=1e-4, atol=1e-4)
    assert choice.message.role == "assistant" and choice.finish_reason == FINISH[ref.finish_reason]
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (ref.prompt_tokens, len(ref.token_ids))
    assert r.model == MODEL and r.object == "chat.completion" and r.id.startswith("chatcmpl-")


def test_completion_stochastic_equals_the_seeded_sample(client, reference):
    kw = dict(k=10, w=0.5, max_new_tokens=20, method="stochastic", temperature=0.9, ignore_eos=True)
    args = {"k": 10, "w": 0.5, "method": "stochastic", "ignore_eos": True, "return_rewards": True}
    answers = {}
    for seed in (7, 8):
        ref = reference.generate(TEXT_PROMPTS[1], seed=seed, **kw)
        r = client.completions.create(model=MODEL, prompt=TEXT_PROMPTS[1], max_tokens=20, temperature=0.9, seed=seed,
                                      extra_body={"args": args})
        assert_equal_result(trace(r.choices[0])["token_ids"], r.choices[0].text, trace(r.choices[0])["rewards"], ref)
        answers[seed] = ref.token_ids
    assert answers[7] != answers[8]  # the seed reaches the sampler
    # the prompt as token ids gives the same sample as the prompt as text
    ids = reference.tokenizer.encode(TEXT_PROMPTS[1])
    r = client.completions.create(model=MODEL, prompt=ids, max_tokens=20, temperature=0.9, seed=7, extra_body={"args": args})
    assert trace(r.choices[0])["token_ids"] == answers[7]


def test_requests_without_args_take_the_server_defaults(client, reference):
    ref = reference.generate(TEXT_PROMPTS[0], k=K, w=W, max_new_tokens=12)
    r = client.completions.create(model=MODEL, prompt=TEXT_PROMPTS[0], max_tokens=12)
    assert r.choices[0].text == ref.text and r.choices[0].finish_reason == FINISH[ref.finish_reason]
    assert "args" not in r.choices[0].model_extra  # only with args.return_rewards


def test_streamed_chat_equals_generate_chunk_by_chunk(client, server, reference):
    messages = CHAT_PROMPTS[0]
    ref = reference.generate(messages, k=6, w=1.5, max_new_tokens=24, ignore_eos=True)
    stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=24, stream=True,
                                            stream_options={"include_usage": True},
                                            extra_body={"args": {"k": 6, "w": 1.5, "ignore_eos": True, "return_rewards": True}})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    token_chunks = [c for c in chunks if c.choices and c.choices[0].model_extra.get("args")]
    ids = [i for c in token_chunks for i in trace(c.choices[0])["token_ids"]]
    rewards = [x for c in token_chunks for x in trace(c.choices[0])["rewards"]]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert_equal_result(ids, text, rewards, ref)
    assert len(token_chunks) == len(ref.token_ids)  # one chunk per token, rewards included
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert not chunks[-1].choices and chunks[-1].usage.completion_tokens == len(ref.token_ids)
    # on the wire: Server-Sent Events ending with data: [DONE]
    body = {"model": MODEL, "prompt": TEXT_PROMPTS[0], "max_tokens": 4, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2][6:])["choices"][0]["finish_reason"] is not None


def test_stream_holds_back_stop_strings_as_generate_does(client, reference):
    prompt = TEXT_PROMPTS[1]
    full = reference.generate(prompt, k=K, w=W, max_new_tokens=30, ignore_eos=True).text
    stop = full[len(full) // 2: len(full) // 2 + 3]
    assert stop.strip(), full
    ref = reference.generate(prompt, k=K, w=W, max_new_tokens=30, ignore_eos=True, stop=[stop])
    assert ref.finish_reason == "stop"
    stream = client.completions.create(model=MODEL, prompt=prompt, max_tokens=30, stop=[stop], stream=True,
                                       extra_body={"args": {"ignore_eos": True}})
    pieces, finish = [], None
    for chunk in stream:
        pieces.append(chunk.choices[0].text)
        finish = chunk.choices[0].finish_reason or finish
        assert stop not in "".join(pieces)  # never sent, not even for a moment
    assert "".join(pieces) == ref.text and finish == "stop"
    plain = client.completions.create(model=MODEL, prompt=prompt, max_tokens=30, stop=stop, extra_body={"args": {"ignore_eos": True}})
    assert plain.choices[0].text == ref.text and plain.choices[0].finish_reason == "stop"


def test_concurrent_greedy_requests_are_batched_and_equal_single_requests(server, aclient, reference):
    prompts = [TEXT_PROMPTS[0], CHAT_PROMPTS[1], TEXT_PROMPTS[1], CHAT_PROMPTS[0]]
    refs = [reference.generate(p, k=K, w=W, max_new_tokens=10, ignore_eos=True) for p in prompts]
    runs, batched = metric(server.url, "args_batch_size_count"), metric(server.url, "args_batch_size_sum")

    async def ask(prompt):
        if isinstance(prompt, str):
            r = await aclient.completions.create(model=MODEL, prompt=prompt, max_tokens=10,
                                                 extra_body={"args": {"ignore_eos": True, "return_rewards": True}})
            return r.choices[0].text, trace(r.choices[0])
        r = await aclient.chat.completions.create(model=MODEL, messages=prompt, max_tokens=10,
                                                  extra_body={"args": {"ignore_eos": True, "return_rewards": True}})
        return r.choices[0].message.content, trace(r.choices[0])

    async def main():
        # a long stream keeps the worker busy, so the four arrive together and wait together
        busy = await aclient.completions.create(model=MODEL, prompt=TEXT_PROMPTS[0], max_tokens=150, stream=True,
                                                extra_body={"args": {"ignore_eos": True}})
        first = await busy.__anext__()
        answers = await asyncio.gather(*(ask(p) for p in prompts))
        async for _ in busy:
            pass
        return first, answers

    _, answers = asyncio.run(main())
    for (text, tr), ref in zip(answers, refs):
        assert_equal_result(tr["token_ids"], text, tr["rewards"], ref)
    assert metric(server.url, "args_batch_size_sum") - batched > metric(server.url, "args_batch_size_count") - runs  # a batch > 1 ran


def test_concurrent_requests_with_different_settings_share_steps_and_each_get_their_single_request_tokens(server, aclient, reference):
    """A long greedy stream and a sampled chat request with other k, w, temperature and seed run in the same decode steps
    of the engine, and each gets exactly what generate() gives it alone."""
    assert server.app.state.args.engine.continuous  # a static bundle: continuous batching
    long_kw = dict(k=3, w=2.0, max_new_tokens=300, ignore_eos=True)
    sampled_kw = dict(k=12, w=0.5, max_new_tokens=20, method="stochastic", temperature=0.7, seed=5, ignore_eos=True)
    long_ref = reference.generate(TEXT_PROMPTS[1], **long_kw)
    sampled_ref = reference.generate(CHAT_PROMPTS[0], **sampled_kw)
    wait_idle(server.url)
    steps, rows = metric(server.url, "args_batch_size_count"), metric(server.url, "args_batch_size_sum")

    async def main():
        stream = await aclient.completions.create(model=MODEL, prompt=TEXT_PROMPTS[1], max_tokens=300, stream=True,
                                                  extra_body={"args": {"k": 3, "w": 2.0, "ignore_eos": True, "return_rewards": True}})
        first = await stream.__anext__()  # the stream is running: the sampled request joins its batch
        sampled = await aclient.chat.completions.create(
            model=MODEL, messages=CHAT_PROMPTS[0], max_tokens=20, temperature=0.7, seed=5,
            extra_body={"args": {"k": 12, "w": 0.5, "method": "stochastic", "ignore_eos": True, "return_rewards": True}})
        ids = list(trace(first.choices[0])["token_ids"])
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].model_extra.get("args"):
                ids += trace(chunk.choices[0])["token_ids"]
        return ids, sampled

    ids, sampled = asyncio.run(main())
    assert ids == long_ref.token_ids
    c = sampled.choices[0]
    assert_equal_result(trace(c)["token_ids"], c.message.content, trace(c)["rewards"], sampled_ref)
    assert metric(server.url, "args_batch_size_sum") - rows > metric(server.url, "args_batch_size_count") - steps  # they shared steps


def test_args_exports_default_layout_is_served_with_continuous_batching(tiny_pairs, tmp_path):
    """What a user gets from `args-export --lm … --rm … --out B` then `args-serve B`: the static layout, whose requests
    join and leave a running batch (issue 28: the default server batched nothing)."""
    from args_export.cli import main as export_main

    pair, out = tiny_pairs["llama"], tmp_path / "default-bundle"
    assert export_main(["--lm", str(pair.lm_dir), "--rm", str(pair.rm_dir), "--out", str(out), "--max-k", "8", "--max-context", "96"]) == 0
    assert json.loads((out / "manifest.json").read_text())["lm"]["cache"] == "static"
    with ThreadServer(create_app(ServeConfig(out, k=K, w=W, max_batch=4, threads=1))) as s:
        s.wait_health()
        assert s.app.state.args.engine.continuous
        assert httpx.get(f"{s.url}/health").json()["batching"] == "continuous batching, 4 slots"


def test_a_dynamic_cache_bundle_is_served_with_fixed_batches_of_any_settings(tiny_pairs):
    """A dynamic-cache bundle's rows share one left-padded cache: requests that wait together are decoded together as a
    fixed batch, streamed or not, greedy or sampled, of any k, each with exactly its single-request tokens; /health
    says how the server batches."""
    dynamic = tiny_pairs["llama"].bundle
    reference = ArgsGenerator.from_bundle(dynamic, threads=1)
    settings = [dict(k=K, w=W, max_new_tokens=12), dict(k=3, w=0.5, max_new_tokens=9, method="stochastic", temperature=0.8, seed=3),
                dict(k=8, w=2.0, max_new_tokens=15), dict(k=K, w=W, max_new_tokens=6, method="stochastic", temperature=1.2, seed=9)]
    refs = [reference.generate(TEXT_PROMPTS[i % 2], ignore_eos=True, **kw) for i, kw in enumerate(settings)]
    with ThreadServer(create_app(ServeConfig(dynamic, k=K, w=W, max_batch=4, threads=1, batch_wait_ms=500))) as s:
        s.wait_health()
        health = httpx.get(f"{s.url}/health").json()
        assert not s.app.state.args.engine.continuous and health["batching"].startswith("fixed batches of up to 4 requests")
        c = openai.AsyncOpenAI(base_url=f"{s.url}/v1", api_key="unused", max_retries=0, timeout=120)

        async def one(i: int, kw: dict):
            args = {"k": kw["k"], "w": kw["w"], "ignore_eos": True, "method": kw.get("method", "greedy")}
            return await c.completions.create(model="llama-bundle", prompt=TEXT_PROMPTS[i % 2], max_tokens=kw["max_new_tokens"],
                                              seed=kw.get("seed"), temperature=kw.get("temperature"), extra_body={"args": args})

        async def main():
            return await asyncio.gather(*(one(i, kw) for i, kw in enumerate(settings)))

        answers = asyncio.run(main())
        assert [a.choices[0].text for a in answers] == [r.text for r in refs]
        assert metric(s.url, "args_batch_size_sum") > metric(s.url, "args_batch_size_count")  # they ran together


# ---------------------------------------------------------------------------------------------- bad input: 400, and serving goes on

LONG_TEXT = " ".join(WORDS * 30)  # > 512 tokens: longer than the tiny bundle's context
BAD_REQUESTS = [
    # (endpoint, raw body or JSON object, the param the error must name)
    ("completions", b'{"model": "llama-bundle", "prompt": "Hi", "max_tokens": 4,', None),
    ("completions", b"[1, 2, 3]", None),
    ("completions", {"model": "gpt-4o", "prompt": "Hi"}, "model"),
    ("completions", {"prompt": "Hi", "args": {"k": 0}}, "args.k"),
    ("completions", {"prompt": "Hi", "args": {"k": 49}}, "args.k"),
    ("completions", {"prompt": "Hi", "args": {"k": "ten"}}, "args.k"),
    ("completions", b'{"prompt": "Hi", "args": {"w": NaN}}', "args.w"),
    ("completions", b'{"prompt": "Hi", "args": {"w": 1e999}}', "args.w"),
    ("completions", {"prompt": "Hi", "args": {"w": "inf"}}, "args.w"),
    ("completions", {"prompt": "Hi", "args": {"method": "beam"}}, "args.method"),
    ("completions", {"prompt": "Hi", "args": {"method": "stochastic"}, "temperature": 0}, "temperature"),
    ("chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "temperature": -1}, "temperature"),
    ("completions", {"prompt": LONG_TEXT}, "prompt"),
    ("chat/completions", {"messages": [{"role": "user", "content": LONG_TEXT}]}, "messages"),
    ("completions", {"prompt": "Hi", "max_tokens": 600}, "max_tokens"),
    ("completions", {"prompt": "Hi", "max_tokens": 0}, "max_tokens"),
    ("completions", {"prompt": "Hi", "n": 2}, "n"),
    ("completions", {"prompt": "Hi", "top_p": 0.5}, "top_p"),
    ("completions", {"prompt": "Hi", "logprobs": 2}, "logprobs"),
    ("completions", {"prompt": "Hi", "best_of": 3}, "best_of"),
    ("chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "frequency_penalty": 0.5}, "frequency_penalty"),
    ("chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "logprobs": True}, "logprobs"),
    ("chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "tools": [{"type": "function"}]}, "tools"),
    ("chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "response_format": {"type": "json_object"}}, "response_format"),
    ("completions", {"prompt": "Hi", "repetition_penalty": 1.2}, "repetition_penalty"),
    ("completions", {"prompt": "Hi", "args": {"beam_width": 4}}, "args.beam_width"),
    ("completions", {"prompt": "Hi", "stream_options": {"include_usage": True}}, "stream_options"),
    ("completions", {"prompt": ["one", "two"]}, "prompt"),
    ("completions", {"prompt": [1, 2, 999999]}, "prompt"),
    ("completions", {"prompt": ""}, "prompt"),
    ("completions", {"prompt": "Hi", "stop": ["ok", ""]}, "stop"),
    ("completions", {"max_tokens": 4}, "prompt"),
    ("chat/completions", {"messages": []}, "messages"),
    ("chat/completions", {"messages": [{"role": "wizard", "content": "Hi"}]}, "messages[0].role"),
    ("chat/completions", {"messages": [{"role": "user", "content": "Hi", "name": "Ann"}]}, "messages[0].name"),
    ("chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content[0]"),
    # the runtime's own door checks (ArgsGenerator.prompt_ids, check_settings), answered as 400s naming the field
    ("completions", {"prompt": "Hi", "args": {"w": 1e300}}, "args.w"),
    ("completions", {"prompt": "Hi", "args": {"method": "stochastic"}, "seed": -1}, "seed"),
    ("completions", {"prompt": "Hi", "args": {"method": "stochastic"}, "temperature": 1e-9}, "temperature"),
    ("completions", {"prompt": [-1, 5]}, "prompt"),
    ("chat/completions", b'{"messages": [{"role": "user", "content": "\\ud800"}]}', "messages"),  # a lone surrogate: not valid Unicode
]


def test_bad_requests_get_a_400_naming_the_field_and_the_server_keeps_serving(server, client, reference):
    invalid = metric(server.url, "args_requests_total", outcome="invalid")
    for endpoint, body, param in BAD_REQUESTS:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        r = httpx.post(f"{server.url}/v1/{endpoint}", content=raw, headers={"content-type": "application/json"}, timeout=60)
        assert r.status_code == 400, (body, r.text)
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error", error
        assert error["param"] == param, (body, error)
        if param:
            assert param.split(".")[-1].split("[")[0] in error["message"], error
    assert metric(server.url, "args_requests_total", outcome="invalid") - invalid == len(BAD_REQUESTS)
    # the openai client sees the same as a BadRequestError
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="Hi", extra_body={"args": {"k": 1000}})
    assert e.value.param == "args.k" and "1 <= k <= 48" in e.value.message
    ref = reference.generate(TEXT_PROMPTS[0], k=K, w=W, max_new_tokens=8)
    assert client.completions.create(model=MODEL, prompt=TEXT_PROMPTS[0], max_tokens=8).choices[0].text == ref.text


def test_health_models_and_metrics(server, client):
    assert httpx.get(f"{server.url}/health").json()["status"] == "ready"
    assert [m.id for m in client.models.list()] == [MODEL]
    client.completions.create(model=MODEL, prompt=TEXT_PROMPTS[0], max_tokens=3)
    text = httpx.get(f"{server.url}/metrics").text
    for name in ("args_requests_total", "args_prompt_tokens_total", "args_generation_tokens_total", "args_queue_depth",
                 "args_time_to_first_token_seconds_bucket", "args_time_per_output_token_seconds_bucket", "args_batch_size_bucket"):
        assert name in text, name
    for model in ("lm", "rm"):
        for phase in ("prefill", "decode"):
            assert metric(server.url, "args_model_step_seconds_count", model=model, phase=phase) > 0, (model, phase)
    assert metric(server.url, "args_generation_tokens_total") >= 3
    assert httpx.get(f"{server.url}/v1/nowhere").json()["error"]["type"] == "not_found_error"


# ---------------------------------------------------------------------------------------------- cancellation and load


def decode_steps(url: str) -> float:
    return metric(url, "args_model_step_seconds_count", model="lm", phase="decode")


def test_a_client_that_goes_away_ends_its_generation(server, client, reference):
    body = {"model": MODEL, "prompt": TEXT_PROMPTS[0], "max_tokens": 400, "args": {"ignore_eos": True}}
    # a stream closed after three chunks
    wait_idle(server.url)
    before = decode_steps(server.url)
    with httpx.stream("POST", f"{server.url}/v1/completions", json={**body, "stream": True}, timeout=60) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i == 4:
                break
    wait_idle(server.url)
    assert decode_steps(server.url) - before < 399
    # a plain request whose client gives up once its generation has started (not after a fixed time: a fast
    # machine finishes 400 tiny-model tokens in well under a second)
    before = decode_steps(server.url)

    async def give_up_after_two_steps():
        async with httpx.AsyncClient(timeout=60) as c:
            post = asyncio.ensure_future(c.post(f"{server.url}/v1/completions", json=body))
            while not post.done() and await asyncio.to_thread(decode_steps, server.url) - before < 2:
                await asyncio.sleep(0.002)
            assert not post.done(), "400 tokens came back before the client could give up"
            post.cancel()
            with pytest.raises(asyncio.CancelledError):
                await post

    asyncio.run(give_up_after_two_steps())
    wait_idle(server.url)
    assert decode_steps(server.url) - before < 399
    assert metric(server.url, "args_requests_total", outcome="cancelled") >= 2
    # the generator is fine afterwards
    ref = reference.generate(TEXT_PROMPTS[0], k=K, w=W, max_new_tokens=12, ignore_eos=True)
    r = client.completions.create(model=MODEL, prompt=TEXT_PROMPTS[0], max_tokens=12, extra_body={"args": {"ignore_eos": True}})
    assert r.choices[0].text == ref.text


def load_requests(n: int, seed: int = 0) -> list[dict]:
    """n requests of mixed prompt lengths, lengths, methods and settings; some streamed, some cancelled midway."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = rng.choice([3, 8, 20, 60, 120])
        prompt = " ".join(rng.choice(WORDS) for _ in range(words))
        chat = rng.random() < 0.3
        kind = rng.choice(["greedy", "greedy", "greedy", "greedy-k8", "stochastic", "stop"])
        args = {"ignore_eos": True, "return_rewards": True}
        kw = dict(k=K, w=W, max_new_tokens=rng.choice([4, 8, 16, 24]), ignore_eos=True)
        if kind == "greedy-k8":
            args.update(k=8, w=2.0)
            kw.update(k=8, w=2.0)
        if kind == "stochastic":
            args.update(method="stochastic")
            kw.update(method="stochastic", temperature=0.8, seed=i)
        cancel = i % 6 == 5
        if cancel:
            kw["max_new_tokens"] = 300
        out.append({"prompt": [{"role": "user", "content": prompt}] if chat else prompt, "args": args, "kw": kw,
                    "stream": rng.random() < 0.4 or cancel and i % 12 == 5, "cancel": cancel, "stop": kind == "stop"})
    return out


def test_load_32_requests_from_8_clients_each_equals_its_single_request_result(server, reference):
    requests = load_requests(32)
    for req in requests:
        if req["stop"]:  # a stop string from the request's own greedy text
            full = reference.generate(req["prompt"], **req["kw"]).text
            req["kw"]["stop"] = [full[len(full) // 2: len(full) // 2 + 2]] if len(full.strip()) > 4 else None
    expected = [None if r["cancel"] and r["stream"] else reference.generate(r["prompt"], **r["kw"]) for r in requests]
    client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=300)

    async def one(req):
        kw = req["kw"]
        common = dict(model=MODEL, max_tokens=kw["max_new_tokens"], seed=kw.get("seed"), stop=kw.get("stop"),
                      temperature=kw.get("temperature"), extra_body={"args": req["args"]})
        chat = isinstance(req["prompt"], list)
        create = client.chat.completions.create if chat else client.completions.create
        call = dict(common, messages=req["prompt"]) if chat else dict(common, prompt=req["prompt"])
        if req["cancel"] and not req["stream"]:  # the client gives up after 50 ms, unless 300 tokens came back by then
            post = asyncio.ensure_future(create(**call))
            await asyncio.wait([post], timeout=0.05)
            if not post.done():
                post.cancel()
                return None
            r = post.result()
            c = r.choices[0]
            return (c.message.content if chat else c.text), trace(c), c.finish_reason
        if not req["stream"]:
            r = await create(**call)
            c = r.choices[0]
            return (c.message.content if chat else c.text), trace(c), c.finish_reason
        stream = await create(**call, stream=True)
        text, ids, rewards, finish = "", [], [], None
        async for chunk in stream:
            c = chunk.choices[0]
            text += (c.delta.content or "") if chat else c.text
            if c.model_extra.get("args"):
                ids += trace(c)["token_ids"]
                rewards += trace(c)["rewards"]
            finish = c.finish_reason or finish
            if req["cancel"] and len(ids) >= 2:
                await stream.close()
                return None
        return text, {"token_ids": ids, "rewards": rewards}, finish

    async def client_loop(share):
        return [await one(req) for req in share]

    async def main():
        shares = [requests[i::8] for i in range(8)]
        answers = await asyncio.gather(*(client_loop(s) for s in shares))
        out = [None] * len(requests)
        for i, share in enumerate(answers):
            for j, answer in enumerate(share):
                out[i + 8 * j] = answer
        return out

    answers = asyncio.run(main())
    done = 0
    for i, (req, ref, answer) in enumerate(zip(requests, expected, answers)):
        if answer is None:  # cancelled midway: streamed ones always, plain ones when 50 ms were too short
            assert req["cancel"], (i, req)
            continue
        text, tr, finish = answer
        assert tr["token_ids"] == ref.token_ids and text == ref.text, (i, req, text, ref.text)
        np.testing.assert_allclose(tr["rewards"], ref.rewards, rtol=1e-4, atol=1e-4, err_msg=str(i))
        assert finish == FINISH[ref.finish_reason], (i, req)
        done += 1
    assert done >= sum(not r["cancel"] for r in requests) >= 24
    wait_idle(server.url)
    assert metric(server.url, "args_requests_total", outcome="cancelled") >= 1
    assert httpx.get(f"{server.url}/health").status_code == 200


# ---------------------------------------------------------------------------------------------- loading, failing, the CLI


def corrupt_copy(bundle, folder):
    broken = folder / "broken-bundle"
    shutil.copytree(bundle, broken)
    with open(broken / "tokenizer.json", "a") as f:
        f.write(" ")
    return broken


def test_a_bundle_that_fails_to_load_gives_503_with_the_reason(bundle, tmp_path):
    app = create_app(ServeConfig(corrupt_copy(bundle, tmp_path), threads=1))
    with ThreadServer(app) as s:
        deadline = time.monotonic() + 120
        while (r := httpx.get(f"{s.url}/health")).json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert r.status_code == 503 and r.json()["status"] == "failed" and "is corrupt" in r.json()["error"]
        c = openai.OpenAI(base_url=f"{s.url}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.InternalServerError) as e:
            c.completions.create(model="broken-bundle", prompt="Hi")
        assert e.value.status_code == 503 and "failed to load" in e.value.message


def run_cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "args_runtime.serve.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120, **kw)


def test_cli_serves_answers_and_stops_on_sigint(bundle, reference):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "args_runtime.serve.cli", str(bundle), "--port", str(port), "--k", "3",
                             "--w", "0.5", "--threads", "1", "--model-name", "tiny"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        wait_health(f"http://127.0.0.1:{port}")  # 503 'loading' until the bundle is loaded, then 200
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        r = c.chat.completions.create(model="tiny", messages=CHAT_PROMPTS[0], max_tokens=8)
        assert r.choices[0].message.content == reference.generate(CHAT_PROMPTS[0], k=3, w=0.5, max_new_tokens=8).text
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out


def test_cli_refuses_bad_settings_and_unloadable_bundles(bundle, tmp_path):
    r = run_cli(bundle, "--k", "100")
    assert r.returncode == 2 and "--k 100 is out of range" in r.stderr and "1 <= k <= 48" in r.stderr
    r = run_cli(tmp_path / "nowhere")
    assert r.returncode == 2 and "args-serve: error:" in r.stderr
    r = run_cli(corrupt_copy(bundle, tmp_path), "--port", free_port())
    assert r.returncode == 1 and "cannot load" in r.stderr and "is corrupt" in r.stderr
    assert "extra_body" in run_cli("--help").stdout


def test_serve_benchmark_quick_run(bundle, tmp_path):
    out = tmp_path / "bench"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serve.py"), "--quick", "--bundle", str(bundle), "--out", str(out),
                        "--threads", "1"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads((out / "serve.json").read_text())
    rows = doc["rows"]
    assert [(row["clients"], row["stream"]) for row in rows] == [(1, False), (1, False), (4, False), (1, True), (4, True)]
    assert all(row["exact"] == row["requests"] == 8 and row["tokens_per_s"] > 0 for row in rows)
    assert all(row["ttft_p50_ms"] is not None for row in rows if row["stream"])
    assert (out / "serve.png").stat().st_size > 10_000 and "vs 1-at-a-time" in r.stdout


# ---------------------------------------------------------------------------------------------- the batching rule


def test_a_fixed_batch_takes_only_requests_whose_context_it_cannot_shorten(tiny_pairs):
    """The longest prompt of a fixed batch bounds everyone's context: a request joins only when no member would then run
    out of context sooner than alone (the dynamic bundle's context is 512)."""
    with ArgsEngine.from_bundle(tiny_pairs["llama"].bundle, slots=8) as engine:
        settings = engine.bundle.settings(k=5, max_new_tokens=10)
        job = lambda n: Request(list(range(1, n + 1)), settings)  # noqa: E731
        a, b, long, fits = job(5), job(9), job(505), job(502)  # 502 + 10 new tokens = 512
        assert engine.batcher.fits([a], b) and engine.batcher.fits([a], fits)
        assert not engine.batcher.fits([a], long) and not engine.batcher.fits([long], a)
