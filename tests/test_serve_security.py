"""args-serve's API keys and limits, for real: uvicorn on 127.0.0.1 serving the tiny static-cache bundle, the `openai`
client with and without the key, raw HTTP (httpx) for the limits, a queue filled past --max-queue from threads, a
deadline that ends a running request and frees its slot, the CLI's rules (a key before listening beyond loopback;
the install hint without the serve extra), and Ray Serve with a key. Every admitted answer must still equal what
ArgsGenerator.generate gives for the same request alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from args_runtime import ArgsGenerator
from args_runtime.errors import ArgsError
from args_runtime.serve import ServeConfig, create_app
from args_runtime.serve.security import KeyBackend, api_keys, check_exposure, is_loopback

from .conftest import CHAT_PROMPTS, TEXT_PROMPTS
from .serve_utils import ThreadServer, free_port, metric, wait_health, wait_idle

K, W = 5, 1.0
KEYS = ("key-one-7f3a9c", "key-two-51be02")
NAMES = ("tiny", "tiny-alias")  # --served-model-name tiny tiny-alias
FOLDER = "llama-bundle"  # the bundle folder's name: accepted too
SLOTS, QUEUE = 2, 2  # --max-batch, --max-queue of the guarded server


@pytest.fixture(scope="module")
def bundle(static_llama_bundle):
    return static_llama_bundle


@pytest.fixture(scope="module")
def reference(bundle):
    return ArgsGenerator.from_bundle(bundle, threads=1)


@pytest.fixture(scope="module")
def guarded(bundle):
    """The server with two keys, two served names, and a small queue (2 running + 2 waiting)."""
    config = ServeConfig(bundle, served_model_names=NAMES, k=K, w=W, max_batch=SLOTS, max_queue=QUEUE, threads=1,
                         api_keys=KEYS)
    with ThreadServer(create_app(config)) as s:
        s.wait_health()
        yield s


def client(server, key: str | None = KEYS[0]) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key or "no-key", max_retries=0, timeout=120)


def auth(key: str = KEYS[1]) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def error_of(r: httpx.Response) -> dict:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


# ---------------------------------------------------------------------------------------------- API keys


def test_the_openai_client_needs_a_key_and_sees_the_names_it_types(guarded, reference):
    ref = reference.generate(TEXT_PROMPTS[0], k=K, w=W, max_new_tokens=8)
    c = client(guarded)
    assert [m.id for m in c.models.list()] == list(NAMES)
    for name in (*NAMES, FOLDER):  # each served name and the folder's name; responses carry the first served name
        r = c.completions.create(model=name, prompt=TEXT_PROMPTS[0], max_tokens=8)
        assert r.choices[0].text == ref.text and r.model == NAMES[0]
    r = client(guarded, KEYS[1]).chat.completions.create(model="tiny", messages=CHAT_PROMPTS[0], max_tokens=8)
    assert r.choices[0].message.content == reference.generate(CHAT_PROMPTS[0], k=K, w=W, max_new_tokens=8).text
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="llama", prompt="Hi", max_tokens=2)
    assert e.value.code == "model_not_found" and "'tiny' or 'tiny-alias' or 'llama-bundle'" in e.value.message
    refused = metric(guarded.url, "args_refusals_total", reason="invalid_api_key")
    wrong = "key-one-7f3a9d"  # one character off
    for key in (wrong, None):
        with pytest.raises(openai.AuthenticationError) as e:
            client(guarded, key).completions.create(model="tiny", prompt="Hi", max_tokens=2)
        assert e.value.status_code == 401 and e.value.code == "invalid_api_key" and wrong not in e.value.message
        with pytest.raises(openai.AuthenticationError):
            client(guarded, key).models.list()
    assert metric(guarded.url, "args_refusals_total", reason="invalid_api_key") - refused == 4


def test_every_v1_route_needs_the_key_before_its_body_is_read_and_health_and_metrics_stay_open(guarded):
    url = guarded.url
    for method, path, body in (("GET", "/v1/models", None), ("POST", "/v1/completions", b"{not json"),
                               ("POST", "/v1/chat/completions", b'{"messages": []}'), ("GET", "/v1/nowhere", None),
                               ("POST", "/v1/completions", b"x" * (2 << 20))):  # over the body limit: still 401
        for headers in ({}, {"authorization": "Basic a2V5LW9uZQ=="}, {"authorization": "Bearer"}, auth("KEY-ONE-7F3A9C")):
            r = httpx.request(method, url + path, content=body, headers=headers, timeout=30)
            assert r.status_code == 401, (path, headers, r.text)
            assert error_of(r)["code"] == "invalid_api_key" and r.headers["www-authenticate"] == "Bearer"
    assert httpx.post(f"{url}/v1/completions", content=b"{not json", headers=auth(), timeout=30).status_code == 400
    assert httpx.get(f"{url}/health").status_code == 200
    text = httpx.get(f"{url}/metrics").text  # open without --metrics-need-key; no key in any label
    assert "args_refusals_total" in text and not any(key in text for key in KEYS)


# ---------------------------------------------------------------------------------------------- limits, by raw HTTP


def test_limits_answer_with_openai_errors_and_the_server_keeps_serving(guarded, reference):
    url = guarded.url
    before = {reason: metric(url, "args_refusals_total", reason=reason)
              for reason in ("request_too_large", "too_many_stop_sequences", "context_length_exceeded")}
    big = json.dumps({"model": "tiny", "prompt": "word " * 300_000, "max_tokens": 2}).encode()  # 1.5 MB
    r = httpx.post(f"{url}/v1/completions", content=big, headers={**auth(), "content-type": "application/json"}, timeout=60)
    assert r.status_code == 413 and error_of(r)["code"] == "request_too_large" and "1048576 bytes" in error_of(r)["message"]

    def chunked():  # no Content-Length: the limit counts what arrives
        for i in range(0, len(big), 64 << 10):
            yield big[i:i + (64 << 10)]

    r = httpx.post(f"{url}/v1/completions", content=chunked(), headers={**auth(), "content-type": "application/json"}, timeout=60)
    assert r.status_code == 413 and error_of(r)["code"] == "request_too_large", r.text
    body = {"model": "tiny", "prompt": TEXT_PROMPTS[0], "max_tokens": 8}
    r = httpx.post(f"{url}/v1/completions", json={**body, "stop": ["a", "b", "c", "d", "e"]}, headers=auth(), timeout=60)
    error = error_of(r)
    assert r.status_code == 400 and error["param"] == "stop" and error["code"] == "too_many_stop_sequences", error
    r = httpx.post(f"{url}/v1/completions", json={**body, "max_tokens": 100_000}, headers=auth(), timeout=60)
    assert r.status_code == 400 and error_of(r)["code"] == "context_length_exceeded"
    stops = ["zq1", "zq2", "zq3", "zq4"]  # four are allowed, and change nothing here
    r = httpx.post(f"{url}/v1/completions", json={**body, "stop": stops}, headers=auth(), timeout=60)
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == reference.generate(
        TEXT_PROMPTS[0], k=K, w=W, max_new_tokens=8, stop=stops).text
    after = {reason: metric(url, "args_refusals_total", reason=reason) - n for reason, n in before.items()}
    assert after == {"request_too_large": 2, "too_many_stop_sequences": 1, "context_length_exceeded": 1}


def test_a_queue_filled_past_max_queue_gets_503s_while_admitted_requests_get_their_tokens(guarded, reference):
    """12 clients at once on 2 slots + 2 queue places: the 4 admitted get exactly their single-request tokens, the others
    503 with Retry-After (each admitted request is long enough, 200 tokens, that all 12 arrive while 4 are held)."""
    url, n = guarded.url, 12
    prompts = [TEXT_PROMPTS[0], TEXT_PROMPTS[1]]
    refs = [reference.generate(p, k=K, w=W, max_new_tokens=200, ignore_eos=True) for p in prompts]
    wait_idle(url)
    full = metric(url, "args_refusals_total", reason="queue_full")
    start = threading.Barrier(n)

    def one(i: int) -> httpx.Response:
        body = {"model": "tiny", "prompt": prompts[i % 2], "max_tokens": 200, "args": {"ignore_eos": True}}
        with httpx.Client(timeout=120) as c:
            start.wait(timeout=60)
            return c.post(f"{url}/v1/completions", json=body, headers=auth())

    with ThreadPoolExecutor(n) as pool:
        answers = list(pool.map(one, range(n)))
    ok = [i for i, r in enumerate(answers) if r.status_code == 200]
    busy = [i for i, r in enumerate(answers) if r.status_code == 503]
    assert len(ok) + len(busy) == n, [r.text for r in answers]
    assert len(ok) >= SLOTS + QUEUE and busy, (ok, busy)
    for i in ok:
        assert answers[i].json()["choices"][0]["text"] == refs[i % 2].text, i
    for i in busy:
        assert error_of(answers[i])["code"] == "queue_full" and answers[i].headers["retry-after"] == "1"
    assert metric(url, "args_refusals_total", reason="queue_full") - full == len(busy)
    wait_idle(url)
    assert httpx.get(f"{url}/health").status_code == 200
    r = client(guarded).completions.create(model="tiny", prompt=prompts[1], max_tokens=200, extra_body={"args": {"ignore_eos": True}})
    assert r.choices[0].text == refs[1].text


# ---------------------------------------------------------------------------------------------- the deadline


def test_scoring_requests_count_against_the_queue(guarded):
    """/pooling is admitted as a generation is: with 2 slots and 2 queue places held by long generations it gets a 503
    queue_full with Retry-After; once they are done it is scored."""
    url = guarded.url
    wait_idle(url)
    body = {"model": "tiny", "prompt": TEXT_PROMPTS[0], "max_tokens": 200, "args": {"ignore_eos": True}}
    with ThreadPoolExecutor(SLOTS + QUEUE) as pool:
        held = [pool.submit(httpx.post, f"{url}/v1/completions", json=body, headers=auth(), timeout=120) for _ in range(SLOTS + QUEUE)]
        deadline = time.monotonic() + 60
        while metric(url, "args_running_requests") + metric(url, "args_queue_depth") < SLOTS + QUEUE:
            assert time.monotonic() < deadline, "the generations never filled the slots and the queue"
            time.sleep(0.02)
        busy = httpx.post(f"{url}/pooling", json={"input": TEXT_PROMPTS[1]}, headers=auth(), timeout=60)
        assert [f.result().status_code for f in held] == [200] * (SLOTS + QUEUE)
    assert busy.status_code == 503 and error_of(busy)["code"] == "queue_full" and busy.headers["retry-after"] == "1", busy.text
    wait_idle(url)
    scored = httpx.post(f"{url}/pooling", json={"input": TEXT_PROMPTS[1]}, headers=auth(), timeout=60)
    assert scored.status_code == 200 and len(scored.json()["data"]) == 1, scored.text

def test_request_timeout_ends_a_running_request_and_frees_its_slot(bundle, reference):
    """One slot, a deadline a quarter of what a long request (480 tokens of k=48) takes here: it is stopped, streamed or
    not, and the next request gets the slot at once and its own tokens. This server has no key: it is open (loopback)."""
    started = time.perf_counter()
    reference.generate(TEXT_PROMPTS[0], k=48, w=W, max_new_tokens=480, ignore_eos=True)
    deadline = round((time.perf_counter() - started) / 4, 3)
    config = ServeConfig(bundle, k=K, w=W, max_batch=1, threads=1, request_timeout_s=deadline)
    long = {"model": FOLDER, "prompt": TEXT_PROMPTS[0], "max_tokens": 480, "args": {"k": 48, "ignore_eos": True}}
    with ThreadServer(create_app(config)) as s:
        s.wait_health()
        steps = metric(s.url, "args_model_step_seconds_count", model="lm", phase="decode")
        r = httpx.post(f"{s.url}/v1/completions", json=long, timeout=120)
        assert r.status_code == 504 and error_of(r)["code"] == "request_timeout", r.text
        assert f"deadline of {deadline:g} s" in error_of(r)["message"]
        with httpx.stream("POST", f"{s.url}/v1/completions", json={**long, "stream": True}, timeout=120) as r:
            events = [line.removeprefix("data: ") for line in r.iter_lines() if line]
        assert r.status_code == 200 and events[-1] == "[DONE]"
        assert json.loads(events[-2])["error"]["code"] == "request_timeout"
        wait_idle(s.url)
        assert metric(s.url, "args_model_step_seconds_count", model="lm", phase="decode") - steps < 2 * 479
        assert metric(s.url, "args_requests_total", outcome="timeout") == 2
        assert metric(s.url, "args_refusals_total", reason="request_timeout") == 2
        ref = reference.generate(TEXT_PROMPTS[1], k=K, w=W, max_new_tokens=12)
        r = client(s, None).completions.create(model=FOLDER, prompt=TEXT_PROMPTS[1], max_tokens=12)
        assert r.choices[0].text == ref.text


# ---------------------------------------------------------------------------------------------- keys, hosts, the CLI


def test_keys_come_from_flags_and_the_environment_and_are_never_shown():
    assert api_keys(["a1"], {"ARGS_RT_API_KEY": " b2 , c3,,a1"}) == ("a1", "b2", "c3")
    assert api_keys([], {}) == ()
    for flags, env, secret in ((["has space"], {}, "has space"), ([""], {}, None), ([], {"ARGS_RT_API_KEY": "ok,bad\tkey"}, "bad")):
        with pytest.raises(ArgsError, match="is not a usable API key") as e:
            api_keys(flags, env)
        assert secret is None or secret not in str(e.value)
    config = ServeConfig("b", api_keys=("s3cret-key",))
    assert "s3cret" not in repr(config) and "s3cret" not in repr(KeyBackend(config.api_keys, False))
    backend = KeyBackend(("k1", "k2"), False)
    assert backend.accepts("k2") and not backend.accepts("k3") and not backend.accepts("k") and not backend.accepts("é")
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.8.0.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("192.168.1.10")
    check_exposure("127.0.0.1", (), False)
    check_exposure("0.0.0.0", ("k",), False)
    check_exposure("0.0.0.0", (), True)
    with pytest.raises(ArgsError, match="--allow-open"):
        check_exposure("0.0.0.0", (), False)
    with pytest.raises(ArgsError, match="--metrics-need-key needs an API key"):
        create_app(ServeConfig("b", metrics_need_key=True))
    with pytest.raises(ArgsError, match="--max-queue -1"):
        create_app(ServeConfig("b", max_queue=-1))


def run_cli(*args, env=None, code: str = ""):
    """args-serve as a user runs it (python -m), `code` run first (e.g. to hide a package)."""
    command = [sys.executable, "-c", f"{code}\nimport sys\nfrom args_runtime.serve.cli import main\nsys.exit(main(sys.argv[1:]))",
               *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})


def test_cli_refuses_an_open_server_beyond_loopback_and_without_the_serve_extra(bundle):
    r = run_cli(bundle, "--host", "0.0.0.0", env={"ARGS_RT_API_KEY": ""})
    assert r.returncode == 2 and "--host 0.0.0.0" in r.stderr and "--api-key" in r.stderr and "--allow-open" in r.stderr
    r = run_cli(bundle, "--metrics-need-key", env={"ARGS_RT_API_KEY": ""})
    assert r.returncode == 2 and "--metrics-need-key needs an API key" in r.stderr
    r = run_cli(bundle, "--api-key", "bad key")
    assert r.returncode == 2 and "--api-key number 1 is not a usable API key" in r.stderr and "bad key" not in r.stderr
    for argv in (["--help"], [bundle]):
        r = run_cli(*argv, code="import sys; sys.modules['fastapi'] = None")
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert "args-serve needs args-rt[serve]" in r.stderr and "pip install 'args-rt[serve]'" in r.stderr


def test_cli_takes_keys_from_flags_and_environment_and_never_logs_them(bundle, reference):
    port = free_port()
    command = [sys.executable, "-m", "args_runtime.serve.cli", str(bundle), "--port", str(port), "--k", str(K), "--w", str(W),
               "--threads", "1", "--api-key", KEYS[0], "--served-model-name", "smol", "--metrics-need-key"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "ARGS_RT_API_KEY": KEYS[1]})
    try:
        url = f"http://127.0.0.1:{port}"
        wait_health(url)
        ref = reference.generate(CHAT_PROMPTS[1], k=K, w=W, max_new_tokens=6)
        for key in KEYS:
            c = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)
            assert c.chat.completions.create(model="smol", messages=CHAT_PROMPTS[1], max_tokens=6).choices[0].message.content == ref.text
        assert httpx.get(f"{url}/metrics").status_code == 401
        assert "args_refusals_total" in httpx.get(f"{url}/metrics", headers=auth(KEYS[0])).text
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "/v1/*, /pooling, /classify and /metrics require an API key (2 accepted)" in out and not any(key in out for key in KEYS), out


# ---------------------------------------------------------------------------------------------- Ray Serve


@pytest.mark.slow
def test_ray_serve_takes_the_same_keys_and_limits(bundle, reference):
    ray = pytest.importorskip("ray")
    serve = pytest.importorskip("ray.serve")
    from args_runtime.serve.ray_app import app_builder

    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = app_builder({"bundle": str(bundle), "served_model_name": "tiny,tiny-alias", "k": str(K), "w": str(W), "threads": "1",
                           "max_batch": "2", "api_key": KEYS[0], "max_queue": "0", "cpus_per_replica": "0.5"})
        serve.run(app, name="args-serve-security-test", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        wait_health(url, timeout=180)
        with pytest.raises(openai.AuthenticationError) as e:
            openai.OpenAI(base_url=f"{url}/v1", api_key=KEYS[1], max_retries=0).models.list()
        assert e.value.code == "invalid_api_key"
        c = openai.OpenAI(base_url=f"{url}/v1", api_key=KEYS[0], max_retries=0, timeout=120)
        assert [m.id for m in c.models.list()] == ["tiny", "tiny-alias"]
        ref = reference.generate(TEXT_PROMPTS[1], k=K, w=W, max_new_tokens=8)
        assert c.completions.create(model="tiny-alias", prompt=TEXT_PROMPTS[1], max_tokens=8).choices[0].text == ref.text
        with pytest.raises(openai.BadRequestError) as e:
            c.completions.create(model="tiny", prompt="Hi", stop=["a", "b", "c", "d", "e"])
        assert e.value.param == "stop"
    finally:
        serve.shutdown()
        ray.shutdown()
