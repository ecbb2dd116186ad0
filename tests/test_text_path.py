"""The text path (issue 29): an RM with a tokenizer of its own reads the LM's tokens as text. Every comparison is with
the oracle `args_export.reference.TextReferenceARGS`, the naive loop that makes each candidate's whole text again,
re-tokenizes it with the RM's tokenizer and runs the RM's transformers class without a cache, every step.

The pairs: tiny seeded Llamas whose tokenizers are of the kinds reward models come with (tests/tiny_tokenizers.py):
byte-level BPE, WordPiece, Unigram with byte fallback; raw and chat prompts, multilingual and emoji."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from args_export.bundle import ExportOptions, export_bundle
from args_export.reference import RewardReading, TextReferenceARGS
from args_export.text_path import rm_max_positions
from args_runtime import ArgsEngine, ArgsGenerator
from args_runtime.errors import TokenizerMismatchError
from args_runtime.manifest import load_manifest
from args_runtime.text_reward import RewardPrompt, TextRows

from .tiny_tokenizers import byte_bpe, unigram, wordpiece

RAW = ["The quick brown fox", "Déjà vu: le café 🙂 東京は", "Привет! 🚀👍🏽"]
CHATS = [[{"role": "user", "content": "Tell me about the sea."}],
         [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello, how are you? 🙂"}]]
# Longer than the encoder RMs read (their position limits are 48 and 49 below): its texts are cut from the left.
LONG = ("The quick brown fox jumps over the lazy dog. Once upon a time, in a land far away, there lived a king. Tell me "
        "about the sea. The sea is wide and deep, and its waves are loud.")
K, W, NEW = 6, 3.0, 24


def _config(tok, labels: bool, positions: int = 256):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, max_position_embeddings=positions, initializer_range=0.2, tie_word_embeddings=False,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       **({"num_labels": 1} if labels else {}))


@dataclass
class TextPair:
    name: str
    lm_dir: Path
    rm_dir: Path
    bundles: dict[str, Path]  # layout → bundle
    oracle: TextReferenceARGS


def _save(model, tok, folder: Path) -> Path:
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _pair(root: Path, name: str, lm_tok, rm_tok, seed: int, rm_positions: int = 256) -> TextPair:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    torch.manual_seed(seed)
    lm = AutoModelForCausalLM.from_config(_config(lm_tok, False)).eval()
    torch.manual_seed(seed + 1)
    rm = AutoModelForSequenceClassification.from_config(_config(rm_tok, True, rm_positions)).eval()
    lm_dir, rm_dir = _save(lm, lm_tok, root / f"{name}-lm"), _save(rm, rm_tok, root / f"{name}-rm")
    bundles = {}
    for layout, options in {"static": dict(max_context=128), "dynamic": dict(cache="dynamic", max_context=128)}.items():
        bundles[layout] = root / f"{name}-{layout}"
        export_bundle(ExportOptions(lm_dir, rm_dir, bundles[layout], max_k=16, **options), quiet=True)
    return TextPair(name, lm_dir, rm_dir, bundles, TextReferenceARGS(lm, rm, RewardReading(lm_tok, rm_tok, rm_positions)))


def _encoder_pair(root: Path, name: str, lm_tok, rm_tok, config, seed: int) -> TextPair:
    """A tiny LM and an encoder RM (a sequence classifier with one label) with its own tokenizer."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    torch.manual_seed(seed)
    lm = AutoModelForCausalLM.from_config(_config(lm_tok, False)).eval()
    torch.manual_seed(seed + 1)
    rm = AutoModelForSequenceClassification.from_config(config).eval()
    lm_dir, rm_dir = _save(lm, lm_tok, root / f"{name}-lm"), _save(rm, rm_tok, root / f"{name}-rm")
    bundle = root / f"{name}-static"
    export_bundle(ExportOptions(lm_dir, rm_dir, bundle, max_k=16, max_context=192), quiet=True)
    reading = RewardReading(lm_tok, rm_tok, rm_max_positions(config))
    assert load_manifest(bundle).reward_input.max_positions == reading.max_positions
    return TextPair(name, lm_dir, rm_dir, {"static": bundle}, TextReferenceARGS(lm, rm, reading))


@pytest.fixture(scope="module")
def encoder_pairs(tmp_path_factory) -> dict[str, TextPair]:
    from transformers import BertConfig, DebertaV2Config, RobertaConfig

    root = tmp_path_factory.mktemp("encoders")
    wp, bpe = wordpiece(), byte_bpe(vocab_size=520, chat_template=None)
    shape = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=1, initializer_range=0.3)
    return {
        "bert": _encoder_pair(root, "bert", byte_bpe(), wp, BertConfig(vocab_size=len(wp), pad_token_id=wp.pad_token_id,
                                                                     max_position_embeddings=48, **shape), 10),
        "roberta": _encoder_pair(root, "roberta", unigram(), bpe, RobertaConfig(vocab_size=len(bpe), pad_token_id=bpe.pad_token_id,
                                                                              max_position_embeddings=50, **shape), 12),
        "deberta-v2": _encoder_pair(root, "deberta", byte_bpe(), wp, DebertaV2Config(vocab_size=len(wp), pad_token_id=wp.pad_token_id,
                                                                                   max_position_embeddings=48, **shape), 14),
    }


@pytest.mark.parametrize("name", ["bert", "roberta", "deberta-v2"])
def test_an_encoder_rm_reads_text_and_its_tokens_equal_the_oracles(encoder_pairs, name):
    """Encoder RMs (issue 29 item 4): k whole texts per pass, no cache; the same tokens as the oracle, raw and chat
    (their tokenizers have no chat template: a chat is read raw), alone and in a batch; a text longer than the RM's
    position limit (RoBERTa's counts from its pad id) is cut from the left."""
    pair = encoder_pairs[name]
    gen = ArgsGenerator.from_bundle(pair.bundles["static"])
    reads = gen.bundle.manifest.reward_input
    assert reads.kind == "encoder"
    prompts = RAW + CHATS + [LONG]
    expected = [_oracle(pair, gen, p) for p in prompts]
    reading = pair.oracle.reading
    assert len(reading.rm_tok(reading.text(gen.prompt_ids(LONG), expected[-1])).input_ids) > reads.max_positions
    assert [gen.generate(p, k=K, w=W, max_new_tokens=NEW, ignore_eos=True).token_ids for p in prompts] == expected
    assert [r.token_ids for r in gen.generate(prompts, k=K, w=W, max_new_tokens=NEW, ignore_eos=True)] == expected
    assert expected != [gen.generate(p, k=K, w=0.0, max_new_tokens=NEW, ignore_eos=True).token_ids for p in prompts]  # the RM counts


@pytest.fixture(scope="module")
def text_pairs(tmp_path_factory) -> dict[str, TextPair]:
    root = tmp_path_factory.mktemp("text-path")
    return {
        "bpe→unigram": _pair(root, "bpe-unigram", byte_bpe(), unigram(), 0),
        "bpe→wordpiece": _pair(root, "bpe-wordpiece", byte_bpe(), wordpiece(), 2),
        "unigram→bpe": _pair(root, "unigram-bpe", unigram(), byte_bpe(vocab_size=520), 4),
        # an RM with a short position limit: its texts are cut from the left, so the cache starts over every step
        "bpe→short-rm": _pair(root, "bpe-short", byte_bpe(), unigram(), 6, rm_positions=24),
    }


def _oracle(pair: TextPair, gen: ArgsGenerator, prompt, **kw) -> list[int]:
    messages = prompt if isinstance(prompt, list) else None
    return pair.oracle.generate(RewardPrompt(gen.prompt_ids(prompt), messages), kw.pop("k", K), kw.pop("w", W), NEW, **kw)


@pytest.mark.parametrize("layout", ["static", "dynamic"])
@pytest.mark.parametrize("name", ["bpe→unigram", "bpe→wordpiece", "unigram→bpe", "bpe→short-rm"])
def test_greedy_tokens_equal_the_oracles_raw_and_chat(text_pairs, name, layout):
    pair = text_pairs[name]
    gen = ArgsGenerator.from_bundle(pair.bundles[layout])
    assert gen.bundle.reads_text
    for prompt in RAW + CHATS:
        ours = gen.generate(prompt, k=K, w=W, max_new_tokens=NEW, ignore_eos=True)
        assert ours.token_ids == _oracle(pair, gen, prompt), (name, prompt)


def test_the_reward_model_changes_the_tokens(text_pairs):
    """Not vacuous: with w = 0 the same pair decodes other tokens for some prompt (the RM's rewards are read)."""
    pair = text_pairs["bpe→unigram"]
    gen = ArgsGenerator.from_bundle(pair.bundles["static"])
    changed = [p for p in RAW + CHATS if gen.generate(p, k=K, w=W, max_new_tokens=NEW, ignore_eos=True).token_ids
               != gen.generate(p, k=K, w=0.0, max_new_tokens=NEW, ignore_eos=True).token_ids]
    assert changed


def test_stochastic_tokens_equal_the_oracles_seed_for_seed(text_pairs):
    pair = text_pairs["bpe→wordpiece"]
    gen = ArgsGenerator.from_bundle(pair.bundles["static"])
    for seed in (0, 7):
        for prompt in (RAW[1], CHATS[0]):
            ours = gen.generate(prompt, k=K, w=W, max_new_tokens=NEW, method="stochastic", temperature=0.8, seed=seed, ignore_eos=True)
            assert ours.token_ids == _oracle(pair, gen, prompt, method="stochastic", temperature=0.8, seed=seed)


@pytest.mark.parametrize("layout", ["static", "dynamic"])
def test_a_batch_and_the_engine_give_each_prompt_its_oracles_tokens(text_pairs, layout):
    """A batch (continuous slots on the static bundle, one left-padded batch on the dynamic one) and ArgsEngine with the
    requests at once: each request's tokens are the oracle's for it alone (its RM state is its own)."""
    pair = text_pairs["unigram→bpe"]
    gen = ArgsGenerator.from_bundle(pair.bundles[layout])
    prompts = RAW + CHATS
    expected = [_oracle(pair, gen, p) for p in prompts]
    batch = gen.generate(prompts, k=K, w=W, max_new_tokens=NEW, ignore_eos=True)
    assert [r.token_ids for r in batch] == expected
    with ArgsEngine.from_bundle(pair.bundles[layout], slots=4) as engine:
        handles = [engine.submit(p, k=K, w=W, max_new_tokens=NEW, ignore_eos=True) for p in prompts]
        assert [h.result(timeout=120).token_ids for h in handles] == expected


def test_the_cache_is_used_on_every_pair(text_pairs):
    """A decoder RM on the text path keeps a KV cache per request (not whole texts every step)."""
    for name in ("bpe→unigram", "bpe→wordpiece", "unigram→bpe"):  # not the short RM: its texts outgrow it (cut each step)
        pair = text_pairs[name]
        gen = ArgsGenerator.from_bundle(pair.bundles["static"])
        result = gen.generate(CHATS[0], k=K, w=W, max_new_tokens=NEW, ignore_eos=True)
        assert result.timings["kv_cache_bytes"]["rm"] > 0, pair.name


def test_the_cache_is_corrected_when_re_tokenizing_changes_it(text_pairs):
    """Made to happen: every candidate of step 1 starts a new word, so the cache takes in the prompt's last word; step 2
    feeds a token that continues that word instead, and the RM's tokenizer cuts the longer word otherwise. The cached
    tokens that changed are dropped, and at every step the rewards equal those of each whole text scored alone."""
    pair = text_pairs["bpe→unigram"]
    gen = ArgsGenerator.from_bundle(pair.bundles["static"])
    rm, lm_tok = gen.rm, pair.oracle.reading.lm_tok
    prompt = RewardPrompt(lm_tok("I love this mo").input_ids)
    vocab = sorted(lm_tok.get_vocab().items())
    words = [i for t, i in vocab if t.startswith("Ġ") and len(t) > 3][:K]  # " jumps", " over" …: each starts a word
    before = rm.texts.ids(rm.texts.decode(prompt.ids))  # the RM's tokens of the prompt: … "▁", "mo"
    # a token that glues onto "mo" ("u": "mou") and changes how the RM's tokenizer cuts what it already read
    glue = next(i for t, i in vocab if t.isalpha() and rm.texts.ids(rm.texts.decode(prompt.ids + [i]))[: len(before)] != before)
    rows = TextRows([rm.row(prompt)])
    for fed in (prompt.ids, [glue]):
        rewards = rm.extend_and_score(np.asarray([fed]), None, rows, np.asarray([words]))
        row = rows.rows[0]
        whole = rm.score_ids(rm.texts.candidates(row.prompt, row.reply, np.asarray(words)))
        np.testing.assert_allclose(rewards[0], whole, rtol=1e-4, atol=1e-4)
        if fed is prompt.ids:
            assert row.cached[: len(before)] == before  # the prompt's last word is in the cache
    assert rm.dropped > 0


def test_stream_equals_generate(text_pairs):
    pair = text_pairs["bpe→unigram"]
    gen = ArgsGenerator.from_bundle(pair.bundles["static"])
    with gen.stream(CHATS[1], k=K, w=W, max_new_tokens=NEW, ignore_eos=True) as stream:
        streamed = [e.token_id for e in stream]
    assert streamed == _oracle(pair, gen, CHATS[1])


def test_the_bundle_carries_the_rms_tokenizer_and_the_log_says_why(text_pairs, tmp_path, capsys):
    pair = text_pairs["bpe→unigram"]
    export_bundle(ExportOptions(pair.lm_dir, pair.rm_dir, tmp_path / "b", max_k=8, max_context=64))
    err = capsys.readouterr().err
    assert "the RM reads text: the LM's tokenizer (600 tokens) and the RM's (450 tokens) differ" in err
    manifest = load_manifest(tmp_path / "b")
    reads = manifest.reward_input
    assert (reads.path, reads.kind, reads.max_positions) == ("text", "decoder", 256)
    assert {"rm_tokenizer.json", "rm_chat_template.jinja"} <= set(manifest.files)
    assert not manifest.fused
    assert [t.name for t in manifest.rm.inputs[:5]] == ["input_ids", "position_ids", "attention_mask", "tail_ids", "tail_read"]


def test_rm_input_text_on_a_shared_tokenizer_reads_what_the_id_path_reads(tiny_pairs, tmp_path, smol_tokenizer):
    """--rm-input text on a pair that shares SmolLM2's tokenizer: always the oracle's tokens; and wherever re-tokenizing
    the text gives the LM's ids back, the reward the id path reads. (k = 1: both paths then take the same tokens, so
    their rewards can be compared step by step; a random tiny LM writes many sub-words that re-tokenize otherwise.)"""
    pair = tiny_pairs["llama"]
    export_bundle(ExportOptions(pair.lm_dir, pair.rm_dir, tmp_path / "text", max_k=16, max_context=128, rm_input="text"), quiet=True)
    export_bundle(ExportOptions(pair.lm_dir, pair.rm_dir, tmp_path / "ids", max_k=16, max_context=128, fuse=False), quiet=True)
    text, ids = ArgsGenerator.from_bundle(tmp_path / "text"), ArgsGenerator.from_bundle(tmp_path / "ids")
    assert text.bundle.reads_text and not ids.bundle.reads_text
    oracle = TextReferenceARGS(pair.lm, pair.rm, RewardReading(smol_tokenizer, smol_tokenizer, 512))
    prompt = "The quick brown fox"
    assert text.generate(prompt, k=5, w=1.0, max_new_tokens=12, ignore_eos=True).token_ids == oracle.generate(text.prompt_ids(prompt), 5, 1.0, 12)
    a, b = (g.generate(prompt, k=1, w=1.0, max_new_tokens=16, ignore_eos=True) for g in (text, ids))
    assert a.token_ids == b.token_ids
    sequence, same = text.prompt_ids(prompt), 0
    for i, token in enumerate(a.token_ids):
        sequence = sequence + [token]
        if smol_tokenizer(smol_tokenizer.decode(sequence, skip_special_tokens=True))["input_ids"] == sequence:
            assert a.rewards[i] == pytest.approx(b.rewards[i], abs=1e-4)
            same += 1
    assert same >= 1


def test_rm_input_ids_on_another_tokenizer_is_refused(text_pairs, tmp_path):
    pair = text_pairs["bpe→unigram"]
    with pytest.raises(TokenizerMismatchError, match="Drop --rm-input ids"):
        export_bundle(ExportOptions(pair.lm_dir, pair.rm_dir, tmp_path / "b", rm_input="ids"), quiet=True)
    assert not (tmp_path / "b").exists()


def test_a_tokenizer_json_that_pads_and_truncates_reads_as_transformers_reads_it(tmp_path):
    """sentence-transformers folders (all-MiniLM-L6-v2's) save padding to 128 ids and truncation in tokenizer.json;
    transformers never applies them unless asked, and the runtime's tokenizer must not either."""
    from args_runtime.manifest import TokenizerSpec
    from args_runtime.tokenizer import Tokenizer

    tok = wordpiece()
    tok.backend_tokenizer.enable_padding(length=128, pad_id=0, pad_token="[PAD]")
    tok.backend_tokenizer.enable_truncation(max_length=16)
    tok.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    text = LONG + " " + RAW[0]
    expected = tok(text)["input_ids"]
    assert 16 < len(expected) < 128
    ours = Tokenizer(tmp_path, TokenizerSpec("tokenizer.json", None, [], 0, None, None))
    assert ours.backend.encode(text).ids == expected


def test_an_rm_without_a_tokenizer_is_refused(text_pairs, tmp_path):
    from args_runtime.errors import ExportError

    pair = text_pairs["bpe→unigram"]
    bare = tmp_path / "bare-rm"
    bare.mkdir()
    (bare / "config.json").write_text((pair.rm_dir / "config.json").read_text())
    with pytest.raises(ExportError, match="has no tokenizer args-export can read.*save the tokenizer it was trained with"):
        export_bundle(ExportOptions(pair.lm_dir, bare, tmp_path / "b"), quiet=True)
    assert not (tmp_path / "b").exists()
    json.loads((bare / "config.json").read_text())


# ---------------------------------------------------------------- issue 29: the text path's own cost (helper "speed")


@pytest.mark.parametrize("name", ["bpe→unigram", "bpe→wordpiece", "unigram→bpe", "bpe→short-rm"])
def test_a_steps_batched_candidates_are_each_texts_own_ids(text_pairs, name):
    """RewardTexts.candidates encodes a step's k texts in one batch, a repeated text once: each candidate's ids are still
    `ids` of its own whole text (its special tokens or not, cut from the left), raw and chat, on every tokenizer kind.
    The candidates include the LM's special tokens (decoded to nothing: texts that repeat) and the RM's BOS text."""
    pair = text_pairs[name]
    gen = ArgsGenerator.from_bundle(pair.bundles["static"])
    texts = gen.rm.texts
    specials = [i for i in range(8)]  # <pad>, <s>, </s>, <unk>, <|end|> … decode to nothing: the same text as the reply's
    for prompt in RAW + CHATS + [LONG]:
        rp = RewardPrompt(gen.prompt_ids(prompt), prompt if isinstance(prompt, list) else None)
        reply = gen.generate(prompt, k=K, w=W, max_new_tokens=12, ignore_eos=True).token_ids
        candidates = np.asarray(specials + reply[:6] + list(range(100, 140, 7)))
        expected = [texts.ids(texts.text(rp, reply + [int(v)])) for v in candidates]
        assert texts.candidates(rp, reply, candidates) == expected, (name, prompt)
    # a text that starts with the RM's BOS gets none added: a byte-level LM writes it character by character
    if name in ("bpe→unigram", "bpe→short-rm"):  # (WordPiece has no BOS)
        lm = gen.bundle.tokenizer.backend
        rp = RewardPrompt([i for ch in texts.bos + " Hello" for i in lm.encode(ch, add_special_tokens=False).ids])
        assert texts.decode(rp.ids).startswith(texts.bos) and not texts.special(texts.decode(rp.ids))
        candidates = np.asarray(specials + list(range(100, 140, 7)))
        expected = [texts.ids(texts.text(rp, [int(v)])) for v in candidates]
        assert texts.candidates(rp, [], candidates) == expected


def test_the_prefix_and_read_helpers_equal_their_definitions():
    """_common (slices compared in C) and read_index (scanned from the end) against the plain loops they replace."""
    import random

    from args_runtime.text_reward import _common, read_index

    rng = random.Random(0)
    for _ in range(5000):
        a = [rng.randrange(3) for _ in range(rng.randrange(40))]
        b = a[: rng.randrange(len(a) + 1)] + [rng.randrange(3) for _ in range(rng.randrange(6))]
        first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        assert _common(a, b) == _common(b, a) == first
        for pad in (None, 0, 1):
            real = [i for i, t in enumerate(a) if t != pad] if pad is not None else [len(a) - 1]
            assert read_index(a, pad) == (real[-1] if real else 0)
