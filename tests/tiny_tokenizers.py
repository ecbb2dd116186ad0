"""Tokenizers of the kinds reward models come with, trained in-process on a small multilingual corpus in seconds: a
byte-level BPE (GPT-2, Llama 3, Qwen), a WordPiece (BERT, MiniLM) and a Unigram with byte fallback (SentencePiece:
Llama 2, T5, DeBERTa-v3). Each is a transformers tokenizer, saved beside a tiny model like a real one.

The WordPiece and Unigram trainers of `tokenizers` are not deterministic from one process to the next (ties break by
hash order: another vocabulary, other ids, another model's tokens, and a test that passed fails in CI), so their trained
models are frozen in tests/tokenizers/*.json; `python -m tests.tiny_tokenizers` trains them again. The byte-level BPE
trainer is deterministic and runs in-process."""

from __future__ import annotations

from pathlib import Path

FROZEN = Path(__file__).with_name("tokenizers")

CORPUS = [
    "The quick brown fox jumps over the lazy dog. Once upon a time, in a land far away, there lived a king.",
    "Tell me about the sea. The sea is wide and deep, and its waves are loud. What is two plus two? Four!",
    "I love this movie, it's wonderful and happy. I hate this, it's terrible and sad. Hello, how are you?",
    "Le renard brun saute par-dessus le chien paresseux. Déjà vu, café, naïve, façade, über, straße.",
    "東京は日本の首都です。今日は良い天気ですね。", "Привет, как дела? Всё хорошо.", "emoji: 🙂 🚀 👍🏽 ❤️ 🇫🇷 — “quotes” and … dots",
    "Numbers 0123456789, symbols #$%&*()[]{}<>@^_|~ and tabs\tnew\nlines.",
]

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<|end|>"]


def byte_bpe(vocab_size: int = 600, chat_template: str | None = CHAT_TEMPLATE, bos: bool = True):
    """A byte-level BPE (every byte is a token: nothing is unknown), adding <s> in front when `bos`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 3, trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return _fast(tok, chat_template, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")


def wordpiece():
    """A BERT-style WordPiece: lower-cased, accents stripped, [CLS] text [SEP], unknown characters [UNK]."""
    return _fast(_frozen("wordpiece"), None, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                 mask_token="[MASK]")


def unigram(chat_template: str | None = CHAT_TEMPLATE):
    """A SentencePiece-style Unigram with byte fallback (a character it lacks becomes its UTF-8 bytes), ▁ for spaces."""
    return _fast(_frozen("unigram"), chat_template, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")


def _frozen(name: str):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(FROZEN / f"{name}.json"))


def train_wordpiece(vocab_size: int = 500):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(CORPUS * 3, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return tok


def train_unigram(vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace()])
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size + 256, special_tokens=SPECIALS + byte_tokens, unk_token="<unk>")
    tok.train_from_iterator(CORPUS * 3, trainer)
    model = tok.to_str()
    import json

    spec = json.loads(model)
    spec["model"]["byte_fallback"] = True
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return tok


def _fast(tok, chat_template: str | None, **special):
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **special)
    if chat_template:
        fast.chat_template = chat_template
    return fast


if __name__ == "__main__":
    FROZEN.mkdir(exist_ok=True)
    for name, train in (("wordpiece", train_wordpiece), ("unigram", train_unigram)):
        train().save(str(FROZEN / f"{name}.json"), pretty=False)
        print("wrote", FROZEN / f"{name}.json")
