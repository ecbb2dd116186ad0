"""The reward model as a scoring endpoint in vLLM's shape (issue 29 item 6): `POST /pooling` and `POST /classify` on a
real uvicorn server, and `ArgsEngine.score`. Every reward must equal the RM's own transformers class on the same ids
(the id path: the tiny Llama pair; the text path: `TextReferenceARGS.reward` on the same text), alone, in a list, for
a conversation, and while generations run beside it (which keep their usual tokens)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import torch

from args_export.bundle import ExportOptions, export_bundle
from args_export.reference import RewardReading, TextReferenceARGS
from args_runtime import ArgsGenerator
from args_runtime.engine import ArgsEngine
from args_runtime.errors import GenerationError
from args_runtime.serve import ServeConfig, create_app

from .conftest import CHAT_PROMPTS, load_pair_models, save_tiny_pair, tiny_configs
from .serve_utils import ThreadServer, metric
from .tiny_tokenizers import byte_bpe, unigram, wordpiece

TEXTS = ["The quick brown fox jumps over the lazy dog", "Once upon a time, in a land far away, there lived a king",
         "I love this movie, it's wonderful."]
CONVERSATION = [*CHAT_PROMPTS[0], {"role": "assistant", "content": "The sea is wide and deep."}]
TOL = dict(rel=1e-4, abs=1e-4)


@pytest.fixture(scope="module")
def llama(smol_tokenizer, tmp_path_factory):
    """The tiny Llama pair of conftest's `tiny_pairs["llama"]` (same config and seeds), in both layouts, with its models."""
    root = tmp_path_factory.mktemp("scoring")
    lm_dir, rm_dir = save_tiny_pair("llama", tiny_configs()["llama"], smol_tokenizer, root)
    bundles = {"static": root / "llama-bundle", "dynamic": root / "llama-dynamic"}
    export_bundle(ExportOptions(lm_dir, rm_dir, bundles["static"], max_k=48), quiet=True)
    export_bundle(ExportOptions(lm_dir, rm_dir, bundles["dynamic"], max_k=48, cache="dynamic"), quiet=True)
    return bundles, load_pair_models(lm_dir, rm_dir)[1]


@torch.no_grad()
def hf_reward(rm, ids: list[int]) -> float:
    t = torch.tensor([ids])
    return float(rm(input_ids=t, attention_mask=torch.ones_like(t)).logits[0, 0])


def id_path_ids(tok, item) -> list[int]:
    if isinstance(item, str):
        return tok(item)["input_ids"]
    return tok(tok.apply_chat_template(item, tokenize=False, add_generation_prompt=False), add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def server(llama):
    app = create_app(ServeConfig(llama[0]["static"], k=5, w=1.0, max_batch=4, threads=1, batch_wait_ms=20))
    with ThreadServer(app) as s:
        s.wait_health()
        yield s


def post(server, route: str, body, **kw) -> httpx.Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{server.url}{route}", content=raw, headers={"content-type": "application/json", **kw}, timeout=60)


def test_pooling_rewards_equal_the_transformers_rm_on_the_same_ids(server, llama, smol_tokenizer):
    rm = llama[1]
    expected = [hf_reward(rm, id_path_ids(smol_tokenizer, t)) for t in TEXTS]
    r = post(server, "/pooling", {"model": "llama-bundle", "input": TEXTS[0]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"id", "object", "created", "model", "data", "usage"} and body["id"].startswith("pool-")
    assert body["object"] == "list" and body["model"] == "llama-bundle"
    assert body["data"][0]["index"] == 0 and body["data"][0]["object"] == "pooling"
    assert body["data"][0]["data"][0] == pytest.approx(expected[0], **TOL)
    n = len(id_path_ids(smol_tokenizer, TEXTS[0]))
    assert body["usage"] == {"prompt_tokens": n, "completion_tokens": 0, "total_tokens": n}
    # a list: one entry per text, in order
    body = post(server, "/pooling", {"input": TEXTS}).json()
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert [d["data"][0] for d in body["data"]] == pytest.approx(expected, **TOL)
    # a conversation, in the LM's chat template without a generation prompt
    body = post(server, "/pooling", {"messages": CONVERSATION}).json()
    assert body["data"][0]["data"][0] == pytest.approx(hf_reward(rm, id_path_ids(smol_tokenizer, CONVERSATION)), **TOL)
    # token ids (the RM's, which on the id path are the LM's): one list, or a list of lists
    ids = [id_path_ids(smol_tokenizer, t) for t in TEXTS]
    body = post(server, "/pooling", {"input": ids[0]}).json()
    assert len(body["data"]) == 1 and body["data"][0]["data"][0] == pytest.approx(expected[0], **TOL)
    body = post(server, "/classify", {"input": ids[1:]}).json()
    assert [d["probs"][0] for d in body["data"]] == pytest.approx(expected[1:], **TOL)


def test_classify_has_vllms_shape(server, llama, smol_tokenizer):
    r = post(server, "/classify", {"model": "llama-bundle", "input": TEXTS[:2]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"].startswith("classify-") and body["object"] == "list"
    assert [set(d) for d in body["data"]] == [{"index", "label", "probs", "num_classes"}] * 2
    assert [(d["index"], d["label"], d["num_classes"]) for d in body["data"]] == [(0, "reward", 1), (1, "reward", 1)]
    expected = [hf_reward(llama[1], id_path_ids(smol_tokenizer, t)) for t in TEXTS[:2]]
    assert [d["probs"][0] for d in body["data"]] == pytest.approx(expected, **TOL)


BAD = [
    ("/pooling", {}, "input"),
    ("/pooling", {"input": "Hi there", "messages": CONVERSATION}, "messages"),
    ("/pooling", {"model": "gpt-4", "input": "Hi there"}, "model"),
    ("/pooling", {"input": ""}, "input"),
    ("/pooling", {"input": ["Hello world", ""]}, "input[1]"),
    ("/pooling", {"input": []}, "input"),
    ("/pooling", {"input": "word " * 600}, "input"),  # more tokens than the RM reads
    ("/pooling", {"messages": []}, "messages"),
    ("/pooling", {"input": "Hi there", "dimensions": 3}, "dimensions"),
    ("/pooling", {"input": [5, 10**9]}, "input"),  # a token id outside the vocabulary
    ("/pooling", {"input": [[5, 6], [7]]}, "input[1]"),  # one token: the id path scores 2 at least
    ("/pooling", {"input": [5, "six"]}, "input"),
    ("/pooling", b'{"input": ', None),
    ("/classify", {}, "input"),
    ("/classify", {"input": ""}, "input"),
    ("/classify", {"model": "gpt-4", "input": "Hi there"}, "model"),
    ("/classify", {"messages": CONVERSATION}, "messages"),  # /classify takes texts
]


def test_bad_bodies_get_a_400_naming_the_field_and_the_server_keeps_serving(server):
    for route, body, param in BAD:
        r = post(server, route, body)
        assert r.status_code == 400, (body, r.text)
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error", error
        assert error["param"] == param, (body, error)
        if param:
            assert param.split("[")[0] in error["message"], error
    too_long = post(server, "/pooling", {"input": "word " * 600}).json()["error"]["message"]
    assert "at most 512" in too_long
    assert post(server, "/pooling", {"input": TEXTS[0]}).status_code == 200
    metrics = httpx.get(f"{server.url}/metrics", timeout=30).text  # the refusals are counted by route, as /v1/*'s are
    for route in ("/pooling", "/classify"):
        invalid = sum(1 for r, _, _ in BAD if r == route) + (route == "/pooling")  # + the text too long
        assert f'args_requests_total{{endpoint="{route}",outcome="invalid"}} {invalid:.1f}' in metrics, metrics
    assert 'args_requests_total{endpoint="/pooling",outcome="ok"}' in metrics


def test_scoring_while_generations_run_gives_the_same_rewards_and_tokens(server, llama):
    alone = post(server, "/pooling", {"input": TEXTS}).json()["data"]
    reference = ArgsGenerator.from_bundle(llama[0]["static"], threads=1)
    prompts = ["The harbour town woke slowly", "Gulls argued over scraps", "The baker pulled the loaves", "A stone oven"]
    expected = [reference.generate(p, k=5, w=1.0, max_new_tokens=24, ignore_eos=True).token_ids for p in prompts]

    async def run():
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as c:
            gens = [c.post("/v1/completions", json={"prompt": p, "max_tokens": 24, "args": {"ignore_eos": True, "return_rewards": True}})
                    for p in prompts]
            scores = [c.post("/pooling", json={"input": TEXTS}) for _ in range(6)]
            return await asyncio.gather(*gens, *scores)

    answers = asyncio.run(run())
    assert [a.json()["choices"][0]["args"]["token_ids"] for a in answers[:4]] == expected
    for a in answers[4:]:
        assert [d["data"] for d in a.json()["data"]] == [d["data"] for d in alone]


@pytest.mark.parametrize("layout", ["static", "dynamic"])
def test_engine_score_between_steps_leaves_the_batch_alone(llama, smol_tokenizer, layout):
    """ArgsEngine.score from another thread while a batch runs (continuous slots, or a fixed batch over the models' own
    caches): the transformers rewards, and the batch's tokens unchanged."""
    bundle, rm = llama[0][layout], llama[1]
    gen = ArgsGenerator.from_bundle(bundle, threads=1)
    prompts = TEXTS[:2]
    expected = [gen.generate(p, k=5, w=1.0, max_new_tokens=20, ignore_eos=True).token_ids for p in prompts]
    want = [hf_reward(rm, id_path_ids(smol_tokenizer, t)) for t in TEXTS]
    with ArgsEngine.from_bundle(bundle, slots=2, threads=1) as engine:
        handles = [engine.submit(p, k=5, w=1.0, max_new_tokens=20, ignore_eos=True) for p in prompts]
        got = [engine.score(TEXTS) for _ in range(3)]
        assert [h.result(timeout=120).token_ids for h in handles] == expected
        assert engine.score(CONVERSATION) == pytest.approx([hf_reward(rm, id_path_ids(smol_tokenizer, CONVERSATION))], **TOL)
        with pytest.raises(GenerationError, match="input 1 is an empty string"):
            engine.score(["Hello world", ""])
    for values in got:
        assert values == pytest.approx(want, **TOL)


def test_api_keys_guard_the_scoring_routes(llama):
    app = create_app(ServeConfig(llama[0]["static"], threads=1, api_keys=("s3cret-key",)))
    with ThreadServer(app) as s:
        s.wait_health()
        for route in ("/pooling", "/classify"):
            r = post(s, route, {"input": TEXTS[0]})
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", r.text
            assert post(s, route, {"input": TEXTS[0]}, authorization="Bearer wrong").status_code == 401
            assert post(s, route, {"input": 5}).status_code == 401  # the key is checked before the body is read
            assert post(s, route, {"input": TEXTS[0]}, authorization="Bearer s3cret-key").status_code == 200


# ---------------------------------------------------------------------------------------------- the text path


def _text_pair(root, name, lm_tok, rm_tok, seed):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, LlamaConfig

    def config(tok, labels):
        return LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.2, tie_word_embeddings=False,
                           pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                           **({"num_labels": 1} if labels else {}))

    torch.manual_seed(seed)
    lm = AutoModelForCausalLM.from_config(config(lm_tok, False)).eval()
    torch.manual_seed(seed + 1)
    rm = AutoModelForSequenceClassification.from_config(config(rm_tok, True)).eval()
    for model, tok, folder in ((lm, lm_tok, root / f"{name}-lm"), (rm, rm_tok, root / f"{name}-rm")):
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
    bundle = root / f"{name}-bundle"
    export_bundle(ExportOptions(root / f"{name}-lm", root / f"{name}-rm", bundle, max_k=16, max_context=128), quiet=True)
    return bundle, TextReferenceARGS(lm, rm, RewardReading(lm_tok, rm_tok, 256)), lm_tok, rm_tok


@pytest.fixture(scope="module")
def text_pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("scoring-text")
    return {"template": _text_pair(root, "bpe-unigram", byte_bpe(), unigram(), 0),  # the RM has a chat template
            "no-template": _text_pair(root, "bpe-wordpiece", byte_bpe(), wordpiece(), 2)}


TEXT_INPUTS = ["The quick brown fox", "Déjà vu: le café 🙂 東京は", "Hello, how are you?"]


def _chat_text(lm_tok, rm_tok) -> str:
    """What the text path's RM reads of CONVERSATION: its own chat template, else the LM's rendering decoded as text."""
    if rm_tok.chat_template:
        return rm_tok.apply_chat_template(CONVERSATION, tokenize=False)
    rendered = lm_tok.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=False)
    return lm_tok.decode(lm_tok(rendered, add_special_tokens=False)["input_ids"], skip_special_tokens=True)


@pytest.mark.parametrize("name", ["template", "no-template"])
def test_text_path_engine_score_equals_the_oracles_reward(text_pairs, name):
    bundle, oracle, lm_tok, rm_tok = text_pairs[name]
    gen = ArgsGenerator.from_bundle(bundle, threads=1)
    expected = gen.generate(TEXT_INPUTS[0], k=4, w=1.0, max_new_tokens=16, ignore_eos=True).token_ids
    with ArgsEngine.from_bundle(bundle, slots=2, threads=1) as engine:
        handle = engine.submit(TEXT_INPUTS[0], k=4, w=1.0, max_new_tokens=16, ignore_eos=True)
        assert engine.score(TEXT_INPUTS) == pytest.approx([oracle.reward(t) for t in TEXT_INPUTS], **TOL)
        assert engine.score(CONVERSATION) == pytest.approx([oracle.reward(_chat_text(lm_tok, rm_tok))], **TOL)
        rm_ids = oracle.reading.ids(TEXT_INPUTS[1])  # the RM's own token ids, given as they are
        assert engine.score(rm_ids) == pytest.approx([oracle.reward_of(rm_ids)], **TOL)
        with pytest.raises(GenerationError, match=f"token id {len(rm_tok) + 5} at position 1"):
            engine.score([rm_ids[0], len(rm_tok) + 5])
        assert handle.result(timeout=120).token_ids == expected
        with pytest.raises(GenerationError, match="input 0 is an empty string"):
            engine.score("")


def test_text_path_pooling_over_http_equals_the_oracles_reward(text_pairs):
    bundle, oracle, lm_tok, rm_tok = text_pairs["template"]
    app = create_app(ServeConfig(bundle, threads=1, k=4))
    with ThreadServer(app) as s:
        s.wait_health()
        body = post(s, "/pooling", {"input": TEXT_INPUTS}).json()
        assert [d["data"][0] for d in body["data"]] == pytest.approx([oracle.reward(t) for t in TEXT_INPUTS], **TOL)
        assert body["usage"]["prompt_tokens"] == sum(len(oracle.reading.ids(t)) for t in TEXT_INPUTS)
        body = post(s, "/pooling", {"messages": CONVERSATION}).json()
        assert body["data"][0]["data"][0] == pytest.approx(oracle.reward(_chat_text(lm_tok, rm_tok)), **TOL)
        assert post(s, "/classify", {"input": TEXT_INPUTS[0]}).json()["data"][0]["probs"][0] == pytest.approx(
            oracle.reward(TEXT_INPUTS[0]), **TOL)
        # ARGS requests work unchanged beside scoring, and /metrics times the text path's RM graph as the id path's
        r = post(s, "/v1/completions", {"prompt": TEXT_INPUTS[0], "max_tokens": 4, "args": {"ignore_eos": True}})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4, r.text
        assert metric(s.url, "args_model_step_seconds_count", model="rm") > 0
