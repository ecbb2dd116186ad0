"""`args-train-rm`: train a reward model on preference pairs with the paper's Bradley–Terry objective.

    loss = −log σ(r(x, y_w) − r(x, y_l))

r is a scalar head on a decoder backbone, read at the last token of prompt + response (never through
pad-based pooling: with pad == eos the pad token sits inside every chat prompt). By default the backbone is
frozen (`--train-layers 0`): its features are computed once, batched and without gradients, and only the
head is trained, in seconds. `--train-layers N` also trains the top N decoder layers and the final norm.
The result is a Hugging Face `…ForSequenceClassification` folder (num_labels=1) that args-export accepts.

Input: JSONL, one pair per line: {"prompt": str or chat messages, "chosen": str, "rejected": str}. A text
prompt is wrapped as one user message in the backbone's chat template when it has one (`--no-chat` turns
that off); the response's tokens follow the rendered prompt's tokens directly, as they do in generation.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from args_runtime.errors import ArgsError, GenerationError, TrainingError
from args_runtime.files import atomic_folder, write_atomic
from args_runtime.tokenizer import check_messages

from ..architectures import family_of


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


@dataclass
class TrainReport:
    train_pairs: int
    held_out_pairs: int
    train_accuracy: float
    held_out_accuracy: float | None
    pairs_sha256: str


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
    if isinstance(prompt, list) or (chat and tokenizer.chat_template):
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        prompt_text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    else:
        prompt_ids = tokenizer(prompt)["input_ids"]
    return prompt_ids + tokenizer(response, add_special_tokens=False)["input_ids"]


# ---------------------------------------------------------------------------------------------- model

def last_token_hidden(backbone: nn.Module, rows: list[list[int]], pad_id: int) -> torch.Tensor:
    """Backbone's last hidden state at each row's last real token (right padding, so padding is never seen)."""
    lengths = torch.tensor([len(r) for r in rows])
    ids = torch.full((len(rows), int(lengths.max())), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    hidden = backbone(input_ids=ids, attention_mask=mask).last_hidden_state
    return hidden[torch.arange(len(rows)), lengths - 1]


def bt_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Bradley–Terry: −log σ(r_w − r_l), averaged."""
    return -nn.functional.logsigmoid(chosen - rejected).mean()


def top_layers(backbone: nn.Module) -> nn.ModuleList:
    """The decoder's layer list (the first ModuleList in the backbone: layers / h / decoder.layers)."""
    return next(m for m in backbone.modules() if isinstance(m, nn.ModuleList))


def load_model(opts: TrainOptions):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if not (Path(opts.backbone) / "config.json").is_file():
        raise TrainingError(f"backbone {opts.backbone} is not a Hugging Face model folder (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(opts.backbone)
    model = AutoModelForSequenceClassification.from_pretrained(opts.backbone, num_labels=1, dtype=torch.float32)
    family = family_of(model.config)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return model.eval(), tokenizer, family


def accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> float:
    return float((chosen > rejected).float().mean()) if len(chosen) else float("nan")


# ---------------------------------------------------------------------------------------------- training

def train_frozen(model, family, train_rows, held_rows, opts: TrainOptions):
    """Features once (no grad), then the head on standardized features; the scaling is folded back in."""
    from tqdm import tqdm

    backbone, head = getattr(model, family.backbone_attr), getattr(model, family.score_attr)
    pad = model.config.pad_token_id

    @torch.no_grad()
    def features(rows):
        """Each distinct sequence once (pairs share replies), in length order (little padding)."""
        unique = sorted({tuple(r) for r in rows}, key=len)
        out = [last_token_hidden(backbone, [list(r) for r in unique[i : i + opts.batch_size]], pad)
               for i in tqdm(range(0, len(unique), opts.batch_size), desc="backbone features", unit="batch")]
        table = dict(zip(unique, torch.cat(out))) if out else {}
        return torch.stack([table[tuple(r)] for r in rows]) if rows else torch.zeros(0, head.in_features)

    feats = features([r for pair in train_rows for r in pair])
    held = features([r for pair in held_rows for r in pair])
    mean, std = feats.mean(0), feats.std(0) + 1e-6
    zc, zr = ((feats[0::2] - mean) / std), ((feats[1::2] - mean) / std)
    w = torch.zeros(head.in_features, requires_grad=True)
    optim = torch.optim.AdamW([w], lr=opts.lr, weight_decay=opts.weight_decay)
    gen = torch.Generator().manual_seed(opts.seed)
    for _ in tqdm(range(opts.epochs), desc="training head", unit="epoch"):
        for idx in torch.randperm(len(zc), generator=gen).split(opts.batch_size):
            optim.zero_grad()
            bt_loss(zc[idx] @ w, zr[idx] @ w).backward()
            optim.step()
    with torch.no_grad():
        head.weight.copy_((w / std).unsqueeze(0))
        if getattr(head, "bias", None) is not None:
            head.bias.fill_(-float((w / std) @ mean))
        score = lambda f: f @ head.weight[0]  # noqa: E731  (rewards up to the bias, which cancels in pairs)
        return accuracy(score(feats[0::2]), score(feats[1::2])), accuracy(score(held[0::2]), score(held[1::2]))


def train_layers(model, family, train_rows, held_rows, opts: TrainOptions):
    """The top `train_layers` decoder layers, the final norm and the head, trained end to end."""
    from tqdm import tqdm

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
    reward = lambda rows: head(last_token_hidden(backbone, rows, pad)).squeeze(-1)  # noqa: E731
    gen = torch.Generator().manual_seed(opts.seed)
    model.train()
    for epoch in range(opts.epochs):
        order = torch.randperm(len(train_rows), generator=gen).split(opts.batch_size)
        for idx in tqdm(order, desc=f"epoch {epoch + 1}/{opts.epochs}", unit="batch"):
            rows = [r for i in idx for r in train_rows[i]]
            optim.zero_grad()
            r = reward(rows)
            bt_loss(r[0::2], r[1::2]).backward()
            optim.step()
    model.eval()

    @torch.no_grad()
    def acc(pairs):
        rs = [reward([r for p in pairs[i : i + opts.batch_size] for r in p]) for i in range(0, len(pairs), opts.batch_size)]
        r = torch.cat(rs) if rs else torch.zeros(0)
        return accuracy(r[0::2], r[1::2])

    return acc(train_rows), acc(held_rows)


# ---------------------------------------------------------------------------------------------- output

def save_atomically(model, tokenizer, out: Path, force: bool) -> None:
    """Write into a temporary sibling folder, then rename into place (replacing `out` only with --force)."""
    if Path(out).exists() and not force:
        raise TrainingError(f"{out} exists; pass --force to replace it")
    with atomic_folder(out, replace=force) as work:
        model.save_pretrained(work)
        tokenizer.save_pretrained(work)


def write_head(model, family, path: Path, report: TrainReport, opts: TrainOptions) -> None:
    """The trained score head and its recipe's metadata as JSON (small: hidden_size floats)."""
    head = getattr(model, family.score_attr)
    meta = {"backbone": str(opts.backbone.name), "seed": opts.seed, "epochs": opts.epochs, "lr": opts.lr,
            "weight_decay": opts.weight_decay, "held_out_fraction": opts.held_out_fraction, **report.__dict__}
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
    if opts.head_out and opts.train_layers:
        raise TrainingError("--head-out saves a head for a frozen backbone; it cannot be combined with --train-layers")
    if opts.head_out and Path(opts.head_out).is_dir():
        raise TrainingError(f"--head-out {opts.head_out} is a folder: give the JSON file to write, e.g. {Path(opts.head_out) / 'head.json'}")


def train_reward_model(opts: TrainOptions) -> TrainReport:
    check_options(opts)
    pairs = load_pairs(opts.pairs)
    torch.manual_seed(opts.seed)
    model, tokenizer, family = load_model(opts)
    train, held = split_by_prompt(pairs, opts.held_out_fraction, opts.seed)
    encode = lambda ps: [(encode_pair_side(tokenizer, p["prompt"], p["chosen"], opts.chat),  # noqa: E731
                          encode_pair_side(tokenizer, p["prompt"], p["rejected"], opts.chat)) for p in ps]
    fit = train_layers if opts.train_layers else train_frozen
    train_acc, held_acc = fit(model, family, encode(train), encode(held), opts)
    digest = hashlib.sha256(Path(opts.pairs).read_bytes()).hexdigest()
    report = TrainReport(len(train), len(held), round(train_acc, 4), round(held_acc, 4) if held else None, digest)
    save_atomically(model, tokenizer, opts.out, opts.force)
    if opts.head_out:
        write_head(model, family, opts.head_out, report, opts)
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="args-train-rm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", type=Path, required=True, help="HF decoder folder (a causal LM or an existing RM) that shares the LM's tokenizer")
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
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    opts = TrainOptions(a.backbone, a.pairs, a.out, a.train_layers, a.epochs, a.lr, a.weight_decay, a.batch_size,
                        a.held_out_fraction, a.seed, not a.no_chat, a.force, a.head_out)
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
    print(f"wrote {opts.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
