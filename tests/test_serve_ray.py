"""args-serve on Ray Serve, for real: Ray started locally, the deployment with two replicas (one generator each),
the real `openai` client through Ray's HTTP proxy; both replicas answer, and every answer equals generate()."""

from __future__ import annotations

import numpy as np
import openai
import pytest

from args_runtime import ArgsGenerator
from args_runtime.errors import ArgsError

from .conftest import CHAT_PROMPTS, TEXT_PROMPTS
from .serve_utils import free_port, wait_health

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")


@pytest.fixture(scope="module")
def ray_server(static_llama_bundle):
    from args_runtime.serve.ray_app import app_builder

    bundle = static_llama_bundle  # each replica serves it with continuous batching
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        # the application builder `serve run` and Serve config files use, with its arguments as strings
        app = app_builder({"bundle": str(bundle), "model_name": "tiny", "k": "4", "w": "1.0", "max_batch": "4", "threads": "1",
                           "replicas": "2", "cpus_per_replica": "0.5"})
        serve.run(app, name="args-serve-test", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        wait_health(url, timeout=180)
        yield url, bundle
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.mark.slow
def test_two_ray_replicas_answer_and_each_answer_equals_generate(ray_server):
    url, bundle = ray_server
    reference = ArgsGenerator.from_bundle(bundle, threads=1)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
    prompts = [TEXT_PROMPTS[0], TEXT_PROMPTS[1], CHAT_PROMPTS[0], CHAT_PROMPTS[1]]
    refs = [reference.generate(p, k=4, w=1.0, max_new_tokens=8) for p in prompts]
    replicas = set()
    for i in range(40):  # Ray routes by load (power of two choices): both replicas show up within a few requests
        prompt, ref = prompts[i % 4], refs[i % 4]
        if isinstance(prompt, str):
            raw = client.completions.with_raw_response.create(model="tiny", prompt=prompt, max_tokens=8,
                                                              extra_body={"args": {"return_rewards": True}})
            choice = raw.parse().choices[0]
            text = choice.text
        else:
            raw = client.chat.completions.with_raw_response.create(model="tiny", messages=prompt, max_tokens=8,
                                                                   extra_body={"args": {"return_rewards": True}})
            choice = raw.parse().choices[0]
            text = choice.message.content
        assert choice.model_extra["args"]["token_ids"] == ref.token_ids and text == ref.text
        np.testing.assert_allclose(choice.model_extra["args"]["rewards"], ref.rewards, rtol=1e-4, atol=1e-4)
        replicas.add(raw.headers["x-args-replica"])
        if len(replicas) == 2 and i >= 7:
            break
    assert len(replicas) == 2, replicas
    # streaming and the 400s go through Ray's proxy unchanged
    stream = client.chat.completions.create(model="tiny", messages=CHAT_PROMPTS[0], max_tokens=8, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == refs[2].text
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="Hi", extra_body={"args": {"k": 0}})
    assert e.value.param == "args.k"


def test_the_application_builder_refuses_unknown_or_malformed_arguments():
    from args_runtime.serve.ray_app import app_builder, parse_autoscale

    with pytest.raises(ArgsError, match="unknown args-serve application argument"):
        app_builder({"bundle": "b", "replica": "2"})
    with pytest.raises(ArgsError, match="needs bundle="):
        app_builder({"k": "4"})
    with pytest.raises(ArgsError, match="k='four' must be an integer"):
        app_builder({"bundle": "b", "k": "four"})
    assert parse_autoscale("1:4") == (1, 4)
    with pytest.raises(ArgsError, match="MIN:MAX"):
        parse_autoscale("4:1")
