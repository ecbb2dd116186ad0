"""The text path at export (an RM with a tokenizer of its own): its graph (a decoder RM's TailScorer, or an encoder's
whole-text scorer), its tokenizer and chat template beside the LM's, the manifest's `reward_input`, and the check of its
graph against PyTorch on the texts it will read: whole sequences, a cached prefix with tails of several lengths, and a
pass that adds nothing to the cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from args_runtime.backend import Device
from args_runtime.engines.onnxruntime_engine import OrtBackend
from args_runtime.dtypes import HOST_TYPES
from args_runtime.manifest import GraphSpec, RewardInput, TokenizerSpec
from args_runtime.text_reward import read_index

from .loading import ModelPair
from .onnx_export import export_text_rm
from .plan import GraphPlan
from .validate import Check, ValidationReport

RM_TOKENIZER_FILE = "rm_tokenizer.json"
RM_CHAT_TEMPLATE_FILE = "rm_chat_template.jinja"


def export_rm_graph(pair: ModelPair, plan: GraphPlan, path: Path) -> GraphSpec:
    """The RM's graph on the text path."""
    if pair.rm.spec.encoder:
        from .encoders import export_encoder

        return export_encoder(pair.rm.model, path, plan.exporter)
    return export_text_rm(pair.rm, plan, path)


# RoBERTa and its kin count positions from padding_idx + 1: roberta-base has 514 embeddings and reads 512 tokens.
POSITIONS_AFTER_PAD = ("roberta", "xlm-roberta", "camembert")


def rm_max_positions(config) -> int:
    """How many tokens the RM reads at most (a longer text is cut from the left to this many)."""
    limit = int(getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 512)
    if getattr(config, "model_type", None) in POSITIONS_AFTER_PAD:
        limit -= int(config.pad_token_id) + 1
    return limit


def decode_cleans_up(tok) -> bool:
    """Whether transformers' decode of this tokenizer cleans up tokenization spaces (it skips BPE models unless forced)."""
    if not getattr(tok, "clean_up_tokenization_spaces", False):
        return False
    backend = getattr(tok, "backend_tokenizer", None)
    bpe = backend is not None and type(backend.model).__name__ == "BPE"
    return not bpe or bool(getattr(tok, "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", False))


def write_rm_tokenizer(pair: ModelPair, work: Path) -> RewardInput:
    """The RM's tokenizer and chat template beside the LM's; how the RM reads the LM's tokens, for the manifest."""
    spec = pair.spec
    if spec is None or not spec.own_rm_tokens:
        return RewardInput("ids", spec.rm_input if spec else "")
    tok = spec.rm_tokenizer
    tok.backend_tokenizer.save(str(work / RM_TOKENIZER_FILE))
    template = tok.chat_template if isinstance(tok.chat_template, str) else None
    if template:
        (work / RM_CHAT_TEMPLATE_FILE).write_text(template)
    pad = getattr(pair.rm.config, "pad_token_id", None)
    tokens = TokenizerSpec(RM_TOKENIZER_FILE, RM_CHAT_TEMPLATE_FILE if template else None, [], int(pad) if pad is not None else -1,
                           tok.bos_token, tok.eos_token)
    return RewardInput(spec.reads, spec.rm_input, "encoder" if pair.rm.spec.encoder else "decoder", tokens,
                       rm_max_positions(pair.rm.config), decode_cleans_up(spec.tokenizer), spec.format)


@torch.no_grad()
def check_text_rm(folder: Path, spec: GraphSpec, pair: ModelPair, device: Device, report: ValidationReport) -> None:
    """The text path's RM graph against the RM's own transformers class on whole sequences."""
    rm = pair.rm.model.cpu()
    pad = getattr(rm.config, "pad_token_id", None)
    if pair.rm.spec.encoder:
        from .encoders import check_encoder

        for name, diff, limit in check_encoder(rm, folder / spec.file, pad if pad is not None else 0):
            report.checks.append(Check(f"rm (encoder) {name}", diff, limit))
        return
    backend = OrtBackend(folder / spec.file, device)
    ids = [t for t in torch.randint(0, rm.config.vocab_size, (64,), generator=torch.Generator().manual_seed(0)).tolist() if t != pad]
    names = [t.name for t in spec.inputs if t.name.startswith("past_key_values.")]
    presents = [t.name for t in spec.outputs if t.name.startswith("present.")]
    empty = np.zeros((1, spec.num_kv_heads, 0, spec.head_dim), HOST_TYPES[spec.dtype])
    past, seen = {n: empty for n in names}, []
    tails = [ids[7:8], ids[8:11], ids[11:15], ids[15:18]]
    # (new tokens for the cache, tails): a prompt, a pass that caches nothing, and one that caches a tail
    for step, (new, cands) in enumerate(((ids[:7], tails), ([], tails[:2]), (tails[1], [ids[20:21], ids[21:25]]))):
        width = max(len(t) for t in cands)
        tail_ids = np.zeros((1, len(cands), width), np.int64)
        for c, t in enumerate(cands):
            tail_ids[0, c, : len(t)] = t
        feeds = {"input_ids": np.asarray(new, np.int64).reshape(1, -1),
                 "position_ids": np.arange(len(seen), len(seen) + len(new), dtype=np.int64).reshape(1, -1),
                 "attention_mask": np.ones((1, len(seen) + len(new)), np.int64), "tail_ids": tail_ids,
                 "tail_read": np.asarray([[read_index(t, pad) for t in cands]], np.int64), **past}
        out = backend.run(feeds)
        past, seen = {n: out[o] for n, o in zip(names, presents)}, seen + new
        ref = [float(rm(input_ids=torch.tensor([seen + t])).logits[0, 0]) for t in cands]
        report.add(f"rm (text path) rewards of {len(cands)} tails, pass {step}", backend.to_host(out["rewards"])[0], np.asarray(ref), spec)
