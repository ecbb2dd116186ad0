"""The id path's chat format (issue 29 item 5, `args-export --rm-format chat`): an RM that reads the LM's ids but was
trained on its own chat template reads a chat prompt's reply ids inside that template (ids before + reply + [v] + after).
The oracle is `args_export.reference.ChatIdsReading` in TextReferenceARGS: every candidate's whole id sequence made
again and scored by the RM's transformers class without a cache, every step.

The pair: a tiny seeded LM and RM with one vocabulary (the same byte-level BPE) and two chat templates."""

from __future__ import annotations

import pytest
import torch

from args_export.bundle import ExportOptions, export_bundle
from args_export.reference import ChatIdsReading, TextReferenceARGS
from args_export.text_path import rm_max_positions
from args_runtime import ArgsEngine, ArgsGenerator
from args_runtime.errors import ExportError
from args_runtime.manifest import load_manifest
from args_runtime.text_reward import RewardPrompt

from .test_text_path import CHATS, RAW, _config, _save
from .tiny_tokenizers import byte_bpe

# A Llama-3-like template of the RM's own: BOS in the text, a header per message, an end token after each.
RM_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|start|>{{ m['role'] }}\n\n{{ m['content'] | trim }}<|end|>{% endfor %}"
               "{% if add_generation_prompt %}<|start|>assistant\n\n{% endif %}")
K, W, NEW = 6, 3.0, 16


@pytest.fixture(scope="module")
def chat_pair(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    root = tmp_path_factory.mktemp("rm-chat-format")
    lm_tok, rm_tok = byte_bpe(), byte_bpe(chat_template=RM_TEMPLATE)
    torch.manual_seed(20)
    lm = AutoModelForCausalLM.from_config(_config(lm_tok, False)).eval()
    torch.manual_seed(21)
    rm = AutoModelForSequenceClassification.from_config(_config(rm_tok, True)).eval()
    lm_dir, rm_dir = _save(lm, lm_tok, root / "lm"), _save(rm, rm_tok, root / "rm")
    bundles = {}
    for name, options in {"static": dict(rm_format="chat"), "dynamic": dict(rm_format="chat", cache="dynamic"),
                          "raw": dict(fuse=False)}.items():
        bundles[name] = root / name
        export_bundle(ExportOptions(lm_dir, rm_dir, bundles[name], max_k=16, max_context=128, **options), quiet=True)
    oracle = TextReferenceARGS(lm, rm, ChatIdsReading(lm_tok, rm_tok, rm_max_positions(rm.config)))
    return dict(lm_dir=lm_dir, rm_dir=rm_dir, bundles=bundles, oracle=oracle, root=root)


def _oracle(pair, gen: ArgsGenerator, prompt, **kw) -> list[int]:
    messages = prompt if isinstance(prompt, list) else None
    return pair["oracle"].generate(RewardPrompt(gen.prompt_ids(prompt), messages), K, W, NEW, **kw)


def test_the_manifest_says_the_rm_reads_ids_in_its_own_template(chat_pair):
    reads = load_manifest(chat_pair["bundles"]["static"]).reward_input
    assert (reads.path, reads.format, reads.kind, reads.role) == ("ids", "chat", "decoder", "rm_text")
    assert "--rm-format chat" in reads.reason and reads.tokenizer.chat_template_file
    assert load_manifest(chat_pair["bundles"]["raw"]).reward_input.format == "raw"


@pytest.mark.parametrize("layout", ["static", "dynamic"])
def test_tokens_equal_the_oracles_alone_batched_and_in_the_engine(chat_pair, layout):
    gen = ArgsGenerator.from_bundle(chat_pair["bundles"][layout])
    prompts = RAW + CHATS
    expected = [_oracle(chat_pair, gen, p) for p in prompts]
    assert [gen.generate(p, k=K, w=W, max_new_tokens=NEW, ignore_eos=True).token_ids for p in prompts] == expected
    assert [r.token_ids for r in gen.generate(prompts, k=K, w=W, max_new_tokens=NEW, ignore_eos=True)] == expected
    with ArgsEngine.from_bundle(chat_pair["bundles"][layout], slots=3) as engine:
        handles = [engine.submit(p, k=K, w=W, max_new_tokens=NEW, ignore_eos=True) for p in prompts]
        assert [h.result(timeout=120).token_ids for h in handles] == expected


def test_stochastic_tokens_equal_the_oracles_seed_for_seed(chat_pair):
    gen = ArgsGenerator.from_bundle(chat_pair["bundles"]["static"])
    for seed in (0, 3):
        ours = gen.generate(CHATS[1], k=K, w=W, max_new_tokens=NEW, method="stochastic", temperature=0.8, seed=seed, ignore_eos=True)
        assert ours.token_ids == _oracle(chat_pair, gen, CHATS[1], method="stochastic", temperature=0.8, seed=seed)


def test_the_template_changes_chat_rewards_and_raw_prompts_read_as_before(chat_pair):
    """Not vacuous: a chat prompt decodes other tokens than the official reading (the LM's ids in the LM's template)
    gives; a text prompt has no conversation, so it reads exactly as the raw bundle reads it."""
    chat, raw = (ArgsGenerator.from_bundle(chat_pair["bundles"][n]) for n in ("static", "raw"))
    run = lambda gen, p: gen.generate(p, k=K, w=W, max_new_tokens=NEW, ignore_eos=True).token_ids  # noqa: E731
    assert [run(chat, p) for p in RAW] == [run(raw, p) for p in RAW]
    assert any(run(chat, p) != run(raw, p) for p in CHATS)


def test_the_rms_ids_are_the_template_around_the_reply(chat_pair):
    """What the rule gives for one candidate, against the RM's own rendering: the same text once decoded."""
    gen = ArgsGenerator.from_bundle(chat_pair["bundles"]["static"])
    rule, rm_tok = gen.rm.texts, chat_pair["oracle"].reading.rm_tok
    reply = rm_tok("The sea", add_special_tokens=False).input_ids
    (ids,) = rule.candidates(RewardPrompt(gen.prompt_ids(CHATS[0]), CHATS[0]), reply[:-1], [reply[-1]])
    whole = rm_tok.apply_chat_template([*CHATS[0], {"role": "assistant", "content": "The sea"}], tokenize=False)
    assert rm_tok.decode(ids) == whole and ids[0] == rm_tok.bos_token_id and ids.count(rm_tok.bos_token_id) == 1


@pytest.mark.parametrize("template, says", [
    (None, "has no chat template"),
    ("{% for m in messages %}{{ m['content'] }}|{{ m['content'] }}{% endfor %}", "places the assistant's reply 2 times"),
])
def test_an_rm_without_a_usable_template_is_refused_naming_the_fix(chat_pair, tmp_path, template, says):
    rm_dir = tmp_path / "rm"
    from transformers import AutoModelForSequenceClassification

    rm = AutoModelForSequenceClassification.from_pretrained(chat_pair["rm_dir"])
    _save(rm, byte_bpe(chat_template=template), rm_dir)
    out = tmp_path / "bundle"
    with pytest.raises(ExportError, match=says) as e:
        export_bundle(ExportOptions(chat_pair["lm_dir"], rm_dir, out, max_k=8, max_context=64, rm_format="chat"), quiet=True)
    assert "drop --rm-format chat" in str(e.value)
    assert not out.exists()


def test_an_unknown_format_is_refused(chat_pair, tmp_path):
    with pytest.raises(ExportError, match=r"--rm-format 'jinja' is not one of \['raw', 'chat'\]"):
        export_bundle(ExportOptions(chat_pair["lm_dir"], chat_pair["rm_dir"], tmp_path / "b", rm_format="jinja"), quiet=True)


def test_scoring_a_conversation_reads_the_rms_own_template(chat_pair):
    """/pooling's `messages` (ArgsEngine.score) on a chat-format bundle: the RM's template, as its generations read it."""
    conversation = [*CHATS[0], {"role": "assistant", "content": "The sea is wide and deep."}]
    oracle = chat_pair["oracle"]
    with ArgsEngine.from_bundle(chat_pair["bundles"]["static"], slots=1) as engine:
        got = engine.score(conversation)
    text = oracle.reading.rm_tok.apply_chat_template(conversation, tokenize=False)
    assert text.startswith("<s><|start|>user") and got == pytest.approx([oracle.reward(text)], abs=1e-4)
