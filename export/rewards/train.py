"""`args-train-rm`: train a reward model on preference pairs with the paper's Bradley–Terry objective.

    loss = −log σ(r(x, y_w) − r(x, y_l))

r is a scalar head on a decoder backbone, read at the last token of prompt + response (never through
pad-based pooling: with pad == eos the pad token sits inside every chat prompt). By default the backbone is
frozen (`--train-layers 0`): its features are computed once, batched and without gradients (`--feature-cache`
keeps them for reruns), and only the head is trained, in seconds; `--prefixes` also trains it on every partial
reply, as ARGS scores them; `--pooling mean` makes it a token-level reward whose mean over a reply is the reply's
reward (recorded as `reward_pooling` in the RM's config; ARGS adds w times the candidate token's own reward, which
is ARGS with the sum of the reply's token rewards: the earlier tokens' part is the same for every candidate).
`--train-layers N` also trains the top N decoder layers and the final norm.
The rewards are then standardized: the head is divided by the standard deviation of its rewards on the
held-out replies, so one unit of reward (and so ARGS's w) means the same for every RM (`--no-standardize`).
The result is a Hugging Face `…ForSequenceClassification` folder (num_labels=1) that args-export accepts.

An encoder backbone (a BERT-like folder, e.g. all-MiniLM-L6-v2) trains the same frozen head on what its classifier
reads of a whole text (BertForSequenceClassification: the pooler output of [CLS]), the text being what ARGS gives
the RM on the text path: the LM's rendering of the prompt and the reply (`--lm`, docs/reward-models.md's rule),
re-tokenized by the encoder's own tokenizer. The reward is the whole text's, so only `--pooling last` applies.

Input: JSONL, one pair per line: {"prompt": str or chat messages, "chosen": str, "rejected": str, "kind": str
(optional, default "preference")}. Accuracies are reported per kind; a kind starting with "negative:" marks a
hard negative (a degenerate rejected reply), which the reward scale leaves out. A text prompt is wrapped as one
user message in the backbone's chat template when it has one (`--no-chat` turns that off); the response's
tokens follow the rendered prompt's tokens directly, as they do in generation.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from args_runtime.errors import ArgsError, GenerationError, TrainingError
from args_runtime.files import atomic_folder, write_atomic
from args_runtime.tokenizer import check_messages

from ..architectures import family_of
from .features import Encoded, EncoderFeatureStore, FeatureStore, backbone_digest, padded_batch
from .frozen_head import POOLINGS, HeadOptions, bt_loss, fit_head


@dataclass
class TrainOptions:
    backbone: Path
    pairs: Path
    out: Path
    train_layers: int = 0
    epochs: int = 30
    lr: float = 1e-2
    weight_decay: float = 1e-3
    batch_size: int = 32
    held_out_fraction: float = 0.2
    seed: int = 0
    chat: bool = True
    force: bool = False
    head_out: Path | None = None
    prefixes: bool = False
    prefix_weight: float = 1.0
    standardize: bool = True
    feature_cache: Path | None = None
    pooling: str = "last"
    lm: Path | None = None          # an encoder backbone: the LM whose text it reads (default: its own tokenizer's)


@dataclass
class TrainReport:
    train_pairs: int
    held_out_pairs: int
    train_accuracy: float
    held_out_accuracy: float | None
    pairs_sha256: str
    accuracy_by_kind: dict | None = None
    reward_scale: dict | None = None


NEGATIVE = "negative:"


# ---------------------------------------------------------------------------------------------- data

def load_pairs(path: Path) -> list[dict]:
    """Read and check the JSONL preference pairs; every problem names the line and the fix."""
    if not Path(path).is_file():
        raise TrainingError(f"preference file {path} does not exist")
    pairs = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise TrainingError(f"{path}:{n}: not valid JSON ({e.msg}); each line must be one {{prompt, chosen, rejected}} object") from e
        if not isinstance(row, dict):
            raise TrainingError(f"{path}:{n}: expected a JSON object with prompt, chosen, rejected; got {type(row).__name__}")
        missing = [f for f in ("prompt", "chosen", "rejected") if f not in row]
        if missing:
            raise TrainingError(f"{path}:{n}: missing field(s) {', '.join(missing)}; each pair needs prompt, chosen and rejected")
        if not isinstance(row["chosen"], str) or not isinstance(row["rejected"], str) or not row["chosen"] or not row["rejected"]:
            raise TrainingError(f"{path}:{n}: chosen and rejected must be non-empty strings")
        if not isinstance(row["prompt"], (str, list)):
            raise TrainingError(f"{path}:{n}: prompt must be a string or a list of chat messages")
        if isinstance(row["prompt"], list):
            try:
                check_messages(row["prompt"], "the prompt")
            except GenerationError as e:
                raise TrainingError(f"{path}:{n}: {e}") from e
        if not isinstance(row.setdefault("kind", "preference"), str):
            raise TrainingError(f"{path}:{n}: kind must be a string (e.g. \"preference\" or \"negative:repetition\")")
        pairs.append(row)
    if not pairs:
        raise TrainingError(f"{path} holds no preference pairs")
    return pairs


def split_by_prompt(pairs: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Held-out pairs are those of a seeded random subset of prompts, so no held-out prompt is trained on."""
    if not 0.0 <= fraction < 1.0:
        raise TrainingError(f"--held-out-fraction must be in [0, 1); got {fraction}")
    prompts = sorted({json.dumps(p["prompt"], sort_keys=True) for p in pairs})
    random.Random(seed).shuffle(prompts)
    held = set(prompts[: round(len(prompts) * fraction)])
    train = [p for p in pairs if json.dumps(p["prompt"], sort_keys=True) not in held]
    if not train:
        raise TrainingError(f"no training pairs left after holding out {fraction:.0%} of {len(prompts)} prompts; lower --held-out-fraction")
    return train, [p for p in pairs if json.dumps(p["prompt"], sort_keys=True) in held]


def encode_pair_side(tokenizer, prompt, response: str, chat: bool) -> list[int]:
    """Token ids of prompt + response, the response's tokens appended as generation appends them."""
    return list(encode_side(tokenizer, prompt, response, chat).ids)


def encode_side(tokenizer, prompt, response: str, chat: bool) -> Encoded:
    """Prompt + response as token ids, and where the response starts."""
    if isinstance(prompt, list) or (chat and tokenizer.chat_template):
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        prompt_text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    else:
        prompt_ids = tokenizer(prompt)["input_ids"]
    return Encoded(tuple(prompt_ids + tokenizer(response, add_special_tokens=False)["input_ids"]), len(prompt_ids))


@dataclass
class TextReader:
    """How an encoder RM reads a pair's side: the text path's rule (args_export.reference.RewardReading) applied to
    the LM's ids of prompt + reply, then the encoder's own tokenizer. The whole text is one position (start = its
    last id): an encoder's feature is the text's, not a token's."""

    lm_tok: object
    reading: object  # RewardReading

    def encode(self, prompt, response: str, chat: bool) -> Encoded:
        lm_side = encode_side(self.lm_tok, prompt, response, chat)
        messages = prompt if isinstance(prompt, list) else ([{"role": "user", "content": prompt}] if chat else None)
        ids = self.reading.ids(self.reading.text(list(lm_side.ids[: lm_side.start]), list(lm_side.ids[lm_side.start :]), messages))
        return Encoded(tuple(ids), len(ids) - 1)


def text_reader(opts: TrainOptions, config, tokenizer) -> TextReader:
    """The encoder's reading of the LM's text (the LM's tokenizer from --lm, else the encoder's own stands in)."""
    from transformers import AutoTokenizer

    from ..reference import RewardReading
    from ..text_path import rm_max_positions

    lm_tok = AutoTokenizer.from_pretrained(opts.lm) if opts.lm is not None else tokenizer
    return TextReader(lm_tok, RewardReading(lm_tok, tokenizer, rm_max_positions(config)))


# ---------------------------------------------------------------------------------------------- model

def last_token_hidden(backbone: nn.Module, rows: list[list[int]], pad_id: int) -> torch.Tensor:
    """Backbone's last hidden state at each row's last real token (right padding, so padding is never seen)."""
    lengths = torch.tensor([len(r) for r in rows])
    ids, mask = padded_batch(rows, pad_id)
    hidden = backbone(input_ids=ids, attention_mask=mask).last_hidden_state
    return hidden[torch.arange(len(rows)), lengths - 1]


def top_layers(backbone: nn.Module) -> nn.ModuleList:
    """The decoder's layer list (the first ModuleList in the backbone: layers / h / decoder.layers)."""
    return next(m for m in backbone.modules() if isinstance(m, nn.ModuleList))


@dataclass(frozen=True)
class EncoderHead:
    """Where an encoder classifier's score head is (the part of `Family` the trainer uses): a linear `classifier`."""

    score_attr: str = "classifier"


def load_model(opts: TrainOptions):
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from ..architectures import is_encoder

    if not (Path(opts.backbone) / "config.json").is_file():
        raise TrainingError(f"backbone {opts.backbone} is not a Hugging Face model folder (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(opts.backbone)
    if is_encoder(AutoConfig.from_pretrained(opts.backbone)):
        return load_encoder(opts, tokenizer)
    model = AutoModelForSequenceClassification.from_pretrained(opts.backbone, num_labels=1, dtype=torch.float32)
    family = family_of(model.config)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return model.eval(), tokenizer, family


def load_encoder(opts: TrainOptions, tokenizer):
    """An encoder backbone as a one-label classifier whose every layer but the linear `classifier` comes from the
    folder (a frozen head on untrained layers, such as a missing pooler, would learn from random features)."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    if opts.train_layers or opts.prefixes or opts.pooling != "last":
        raise TrainingError(f"backbone {opts.backbone} is an encoder: its reward is the whole text's, so the head trains on a frozen "
                            "backbone at --pooling last only (drop --train-layers, --prefixes and --pooling mean)")
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report calls the new classifier "MISSING": it is, until trained below
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(opts.backbone, num_labels=1, dtype=torch.float32,
                                                                         attn_implementation="eager", output_loading_info=True)
    finally:
        hf_logging.set_verbosity(level)
    head = getattr(model, EncoderHead.score_attr, None)
    if not isinstance(head, nn.Linear):
        raise TrainingError(f"backbone {opts.backbone} ({model.config.model_type}) has no linear `classifier` on its pooled text; "
                            "args-train-rm trains encoders whose classifier is one linear layer (BERT)")
    untrained = sorted(k for k in info["missing_keys"] if not k.startswith(f"{EncoderHead.score_attr}."))
    if untrained:
        raise TrainingError(f"backbone {opts.backbone} lacks weights the classifier reads through: {', '.join(untrained)}; "
                            "a frozen head on them would learn from random features: use a folder with them (e.g. BERT's pooler)")
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id or 0
    return model.eval(), tokenizer, EncoderHead()


def accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> float:
    return float((chosen > rejected).float().mean()) if len(chosen) else float("nan")


Pair = tuple[Encoded, Encoded]
Scorer = Callable[[list[Encoded]], torch.Tensor]


# ---------------------------------------------------------------------------------------------- training

def train_frozen(model, family, train: list[Pair], held: list[Pair], opts: TrainOptions) -> Scorer:
    """Features once (no grad, cached with --feature-cache), then a linear head on them (see frozen_head)."""
    head = getattr(model, family.score_attr)
    cache = Path(opts.feature_cache) / f"features-{backbone_digest(opts.backbone)}.pt" if opts.feature_cache else None
    if isinstance(family, EncoderHead):
        store = EncoderFeatureStore(model, head, model.config.pad_token_id, opts.batch_size, cache)
    else:
        store = FeatureStore(getattr(model, family.backbone_attr), model.config.pad_token_id, opts.batch_size, cache)
    store.compute([s for pair in train + held for s in pair])
    hopts = HeadOptions(opts.epochs, opts.lr, opts.weight_decay, opts.batch_size, opts.seed, opts.prefixes, opts.prefix_weight, opts.pooling)
    weight = fit_head(store, train, hopts)
    with torch.no_grad():
        head.weight.copy_(weight.unsqueeze(0))
        if getattr(head, "bias", None) is not None:
            head.bias.zero_()
    reply_state = store.mean if opts.pooling == "mean" else store.last

    def score(seqs: list[Encoded]) -> torch.Tensor:
        bias = head.bias[0] if getattr(head, "bias", None) is not None else 0.0
        return (torch.stack([reply_state(s) for s in seqs]) @ head.weight[0] + bias).detach()

    def token_rewards(seqs: list[Encoded]) -> torch.Tensor:
        bias = head.bias[0] if getattr(head, "bias", None) is not None else 0.0
        return (torch.cat([store.table[s.ids].float() for s in seqs]) @ head.weight[0] + bias).detach()

    if opts.pooling == "mean":
        score.token_rewards = token_rewards  # what ARGS reads of a token-level head (see standardize)
    return score


def train_layers(model, family, train: list[Pair], held: list[Pair], opts: TrainOptions) -> Scorer:
    """The top `train_layers` decoder layers, the final norm and the head, trained end to end."""
    from tqdm import tqdm

    if opts.prefixes:
        raise TrainingError("--prefixes trains a head on a frozen backbone; it cannot be combined with --train-layers")
    backbone, head = getattr(model, family.backbone_attr), getattr(model, family.score_attr)
    layers = top_layers(backbone)
    if opts.train_layers > len(layers):
        raise TrainingError(f"--train-layers {opts.train_layers} exceeds the backbone's {len(layers)} layers")
    for p in model.parameters():
        p.requires_grad_(False)
    trainable = [*layers[len(layers) - opts.train_layers :].parameters(), *head.parameters()]
    trainable += [p for name, p in backbone.named_parameters() if "norm" in name and "layers" not in name and ".h." not in name]
    for p in trainable:
        p.requires_grad_(True)
    nn.init.normal_(head.weight, std=0.02)
    optim = torch.optim.AdamW(trainable, lr=opts.lr, weight_decay=opts.weight_decay)
    pad = model.config.pad_token_id
    reward = lambda rows: head(last_token_hidden(backbone, [list(r.ids) for r in rows], pad)).squeeze(-1)  # noqa: E731
    gen = torch.Generator().manual_seed(opts.seed)
    model.train()
    for epoch in range(opts.epochs):
        order = torch.randperm(len(train), generator=gen).split(opts.batch_size)
        for idx in tqdm(order, desc=f"epoch {epoch + 1}/{opts.epochs}", unit="batch"):
            rows = [r for i in idx for r in train[i]]
            optim.zero_grad()
            r = reward(rows)
            bt_loss(r[0::2] - r[1::2]).backward()
            optim.step()
    model.eval()

    @torch.no_grad()
    def score(seqs: list[Encoded]) -> torch.Tensor:
        out = [reward(seqs[i : i + opts.batch_size]) for i in range(0, len(seqs), opts.batch_size)]
        return torch.cat(out) if out else torch.zeros(0)

    return score


def accuracies(score: Scorer, pairs: list[Pair], kinds: list[str]) -> tuple[float, dict[str, float]]:
    """Pair accuracy overall and per kind (each distinct sequence scored once)."""
    if not pairs:
        return float("nan"), {}
    seqs = list({s.ids: s for pair in pairs for s in pair}.values())
    rewards = dict(zip([s.ids for s in seqs], score(seqs).tolist()))
    right = [rewards[c.ids] > rewards[r.ids] for c, r in pairs]
    by_kind = {k: sum(ok for ok, kk in zip(right, kinds) if kk == k) / kinds.count(k) for k in sorted(set(kinds))}
    return sum(right) / len(right), by_kind


def scale_replies(pairs: list[Pair], kinds: list[str]) -> list[Encoded]:
    """The distinct replies that set the reward scale: both sides of each pair, but not a hard negative's rejected one."""
    seqs = [s for (c, r), k in zip(pairs, kinds) for s in ((c,) if k.startswith(NEGATIVE) else (c, r))]
    return list({s.ids: s for s in seqs}.values())


def standardize(model, family, score: Scorer, replies: list[Encoded]) -> dict:
    """Fold the reward scale into the score head: weight / std (and bias − mean / std where the head has a bias), with
    mean and std the rewards' on `replies`, so a unit of reward is one standard deviation of them. For a token-level
    (mean-pooled) head they are its rewards at every position of those replies: what ARGS weighs against the logits."""
    rewards = getattr(score, "token_rewards", score)(replies)
    mean, std = float(rewards.mean()), float(rewards.std())
    if not len(replies) > 1 or not std > 0:
        raise TrainingError(f"cannot standardize rewards: {len(replies)} reference replies with spread {std:g}; "
                            "add more varied pairs or pass --no-standardize")
    head = getattr(model, family.score_attr)
    with torch.no_grad():
        head.weight.div_(std)
        has_bias = getattr(head, "bias", None) is not None
        if has_bias:
            head.bias.sub_(mean).div_(std)
    return {"mean": round(mean, 6), "std": round(std, 6), "replies": len(replies), "bias_folded": has_bias,
            "mean_after": 0.0 if has_bias else round(mean / std, 6)}


# ---------------------------------------------------------------------------------------------- output

def unpadded(tokenizer):
    """The tokenizer without the padding and truncation its tokenizer.json may carry (sentence-transformers folders pad
    every text to 128 ids and cut it there): transformers' calls never use them, so neither training nor the oracle
    did, but the `tokenizers` library, which the runtime reads the saved file with, would apply them to every text."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        backend.no_padding()
        backend.no_truncation()
    return tokenizer


def save_atomically(model, tokenizer, out: Path, force: bool) -> None:
    """Write into a temporary sibling folder, then rename into place (replacing `out` only with --force)."""
    if Path(out).exists() and not force:
        raise TrainingError(f"{out} exists; pass --force to replace it")
    unpadded(tokenizer)
    with atomic_folder(out, replace=force) as work:
        model.save_pretrained(work)
        tokenizer.save_pretrained(work)


def write_head(model, family, path: Path, report: TrainReport, opts: TrainOptions) -> None:
    """The trained score head and its recipe's metadata as JSON (small: hidden_size floats)."""
    head = getattr(model, family.score_attr)
    reads = {"reads_text_of": Path(opts.lm).name if opts.lm else None} if isinstance(family, EncoderHead) else {}
    meta = {"backbone": str(opts.backbone.name), **reads, "seed": opts.seed, "epochs": opts.epochs, "lr": opts.lr,
            "weight_decay": opts.weight_decay, "held_out_fraction": opts.held_out_fraction, "prefixes": opts.prefixes,
            "prefix_weight": opts.prefix_weight if opts.prefixes else None, "pooling": opts.pooling, **report.__dict__}
    body = {"meta": meta, "weight": [round(float(x), 7) for x in head.weight[0].detach()],
            "bias": None if getattr(head, "bias", None) is None else float(head.bias[0].detach())}
    write_atomic(path, json.dumps(body, indent=1) + "\n")


def check_options(opts: TrainOptions) -> None:
    """Every option that needs no model, checked before any work."""
    if Path(opts.out).exists() and not opts.force:
        raise TrainingError(f"{opts.out} exists; pass --force to replace it")
    for name in ("epochs", "batch_size"):
        if getattr(opts, name) < 1:
            raise TrainingError(f"--{name.replace('_', '-')} must be at least 1; got {getattr(opts, name)}")
    if opts.train_layers < 0:
        raise TrainingError(f"--train-layers must be ≥ 0; got {opts.train_layers}")
    if not (math.isfinite(opts.lr) and opts.lr > 0):
        raise TrainingError(f"--lr must be a finite learning rate > 0; got {opts.lr}")
    if not (math.isfinite(opts.weight_decay) and opts.weight_decay >= 0):
        raise TrainingError(f"--weight-decay must be a finite number ≥ 0; got {opts.weight_decay}")
    if not 0.0 <= opts.held_out_fraction < 1.0:
        raise TrainingError(f"--held-out-fraction must be in [0, 1); got {opts.held_out_fraction}")
    if opts.pooling not in POOLINGS:
        raise TrainingError(f"--pooling must be one of {', '.join(POOLINGS)}; got {opts.pooling!r}")
    if opts.pooling != "last" and opts.train_layers:
        raise TrainingError("--pooling mean trains a token-level head on a frozen backbone; it cannot be combined with --train-layers")
    if opts.head_out and opts.train_layers:
        raise TrainingError("--head-out saves a head for a frozen backbone; it cannot be combined with --train-layers")
    if opts.lm is not None and not (Path(opts.lm) / "config.json").is_file():
        raise TrainingError(f"--lm {opts.lm} is not a Hugging Face model folder (no config.json): pass the LM the RM will read")
    if opts.head_out and Path(opts.head_out).is_dir():
        raise TrainingError(f"--head-out {opts.head_out} is a folder: give the JSON file to write, e.g. {Path(opts.head_out) / 'head.json'}")


def train_reward_model(opts: TrainOptions) -> TrainReport:
    check_options(opts)
    pairs = load_pairs(opts.pairs)
    torch.manual_seed(opts.seed)
    model, tokenizer, family = load_model(opts)
    train, held = split_by_prompt(pairs, opts.held_out_fraction, opts.seed)
    if opts.lm is not None and not isinstance(family, EncoderHead):
        raise TrainingError(f"--lm names the LM whose text an encoder reads; backbone {opts.backbone} is a decoder, which reads the "
                            "LM's own tokens: drop --lm")
    side = text_reader(opts, model.config, tokenizer).encode if isinstance(family, EncoderHead) else partial(encode_side, tokenizer)
    encode = lambda ps: [(side(p["prompt"], p["chosen"], opts.chat), side(p["prompt"], p["rejected"], opts.chat)) for p in ps]  # noqa: E731
    train_enc, held_enc = encode(train), encode(held)
    fit = train_layers if opts.train_layers else train_frozen
    score = fit(model, family, train_enc, held_enc, opts)
    train_acc, train_by_kind = accuracies(score, train_enc, [p["kind"] for p in train])
    held_acc, held_by_kind = accuracies(score, held_enc, [p["kind"] for p in held])
    scale = None
    if opts.standardize:
        reference = (held_enc, held) if held else (train_enc, train)
        scale = standardize(model, family, score, scale_replies(reference[0], [p["kind"] for p in reference[1]]))
        scale["on"] = "held-out replies" if held else "training replies (nothing held out)"
    digest = hashlib.sha256(Path(opts.pairs).read_bytes()).hexdigest()
    by_kind = {k: {"train": round(v, 4), "held_out": round(held_by_kind[k], 4) if k in held_by_kind else None,
                   "train_pairs": sum(p["kind"] == k for p in train), "held_out_pairs": sum(p["kind"] == k for p in held)}
               for k, v in train_by_kind.items()}
    report = TrainReport(len(train), len(held), round(train_acc, 4), round(held_acc, 4) if held else None, digest, by_kind, scale)
    model.config.reward_pooling = opts.pooling  # read by the quality scorer: how the RM judges a whole reply
    if scale is not None:
        model.config.reward_scale = scale  # what the head was divided by; args-export copies the config into the manifest
    save_atomically(model, tokenizer, opts.out, opts.force)
    if opts.head_out:
        write_head(model, family, opts.head_out, report, opts)
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="args-train-rm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", type=Path, required=True,
                   help="HF decoder folder (a causal LM or an existing RM) that shares the LM's tokenizer, or an encoder folder (BERT-like)")
    p.add_argument("--lm", type=Path, help="encoder backbone: the LM folder whose text the RM will read (its chat rendering of the prompt)")
    p.add_argument("--pairs", type=Path, required=True, help="JSONL preference pairs {prompt, chosen, rejected}")
    p.add_argument("--out", type=Path, required=True, help="reward-model folder to write (refused if it exists, unless --force)")
    p.add_argument("--train-layers", type=int, default=0, help="top decoder layers to train as well (default 0: frozen backbone, head only)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=1e-2, help="AdamW learning rate (use ~1e-5 with --train-layers)")
    p.add_argument("--weight-decay", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=32, help="pairs per optimizer step (also the feature batch)")
    p.add_argument("--held-out-fraction", type=float, default=0.2, help="fraction of prompts whose pairs are held out for accuracy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-chat", action="store_true", help="do not wrap text prompts in the chat template")
    p.add_argument("--head-out", type=Path, help="also write the trained head (frozen backbone only) as JSON")
    p.add_argument("--force", action="store_true", help="replace --out if it exists (only once the new folder is complete)")
    p.add_argument("--prefixes", action="store_true",
                   help="frozen backbone: also compare each pair's replies prefix by prefix (ARGS scores every partial reply)")
    p.add_argument("--prefix-weight", type=float, default=1.0, help="with --prefixes: total weight of a pair's prefix comparisons (its whole replies weigh 1)")
    p.add_argument("--pooling", choices=POOLINGS, default="last",
                   help="frozen backbone: 'mean' trains a token-level reward whose mean over the reply is compared (default: the last token's)")
    p.add_argument("--no-standardize", action="store_true",
                   help="keep the raw reward scale (default: divide the head by the std of its rewards on held-out replies)")
    p.add_argument("--feature-cache", type=Path, help="frozen backbone: folder keeping computed hidden states for reruns")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    opts = TrainOptions(a.backbone, a.pairs, a.out, a.train_layers, a.epochs, a.lr, a.weight_decay, a.batch_size,
                        a.held_out_fraction, a.seed, not a.no_chat, a.force, a.head_out, a.prefixes, a.prefix_weight,
                        not a.no_standardize, a.feature_cache, a.pooling, a.lm)
    try:
        report = train_reward_model(opts)
    except ArgsError as e:
        print(f"args-train-rm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the model folder and the head file are written atomically, at the end
        print(f"\nargs-train-rm: interrupted; nothing was written ({opts.out} is as it was)", file=sys.stderr)
        return 130
    held = f"{report.held_out_accuracy:.3f}" if report.held_out_accuracy is not None else "n/a (no held-out pairs)"
    print(f"trained on {report.train_pairs} pairs: train accuracy {report.train_accuracy:.3f}, "
          f"held-out accuracy {held} on {report.held_out_pairs} pairs")
    if len(report.accuracy_by_kind) > 1:
        for kind, acc in report.accuracy_by_kind.items():
            held_k = f"{acc['held_out']:.3f}" if acc["held_out"] is not None else "n/a"
            print(f"  {kind}: train {acc['train']:.3f} ({acc['train_pairs']} pairs), held-out {held_k} ({acc['held_out_pairs']} pairs)")
    if report.reward_scale:
        s = report.reward_scale
        print(f"rewards standardized on {s['replies']} {s['on']}: raw mean {s['mean']:+.3f}, std {s['std']:.3f} (head divided by it)")
    print(f"wrote {opts.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
