"""Random-weight LM + RM pairs of a named shape, built on the machine that measures them (no download):
the issue's GPU figure uses a LLaMA-7B-shaped pair in fp16. Latency depends on shape and dtype, not on
what the weights say, so seeded random weights measure the same thing as trained ones.

The RM is the LM's own backbone with a seeded one-label score head (as the demo's RM is SmolLM2's backbone with a
trained head): the same shapes and cost as a separately trained RM, and its folder links the LM's backbone file
instead of holding a second copy (a 7B pair takes 13 GB of disk, not 26). The weights are drawn on the GPU when
there is one (seconds for 7B, where the CPU takes minutes)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from args_runtime.errors import ExportError

# LLaMA-7B's published shape; the vocabulary is the tokenizer's own (SmolLM2's 49152, not LLaMA's 32000).
SHAPES = {
    "llama-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=32, rms_norm_eps=1e-6),
    "llama-tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
}
TOKENIZER_DIR_ENV = "ARGS_RT_TOKENIZER_DIR"  # a folder with SmolLM2's tokenizer files alone (where the GGUF is not at hand)
BACKBONE_FILE = "backbone.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def tokenizer_folder(cache: Path) -> Path:
    """SmolLM2's tokenizer: $ARGS_RT_TOKENIZER_DIR when set, else the packaged SmolLM2 converted from its GGUF."""
    given = os.environ.get(TOKENIZER_DIR_ENV)
    if given:
        if not (Path(given) / "tokenizer.json").is_file():
            raise ExportError(f"${TOKENIZER_DIR_ENV}={given} has no tokenizer.json: point it at a folder saved by a Hugging Face tokenizer")
        return Path(given)
    from args_export.demo.prepare import smollm2_folder

    return smollm2_folder(cache)


def weights_device() -> str:
    """Where to draw the random weights: the GPU when PyTorch sees one (the CPU takes minutes for 7B)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def random_pair(shape: str, dtype: str, cache: Path, max_positions: int = 4096, device: str | None = None) -> tuple[Path, Path]:
    """Seeded random LM and RM folders of `shape` (cached under `cache`), with SmolLM2's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig

    from args_export.loading import torch_dtype

    if shape not in SHAPES:
        raise ExportError(f"unknown shape {shape!r}; choose one of {sorted(SHAPES)}")
    lm_dir, rm_dir = cache / f"random-{shape}-{dtype}-lm", cache / f"random-{shape}-{dtype}-rm"
    if (lm_dir / "config.json").is_file() and (rm_dir / "config.json").is_file():
        return lm_dir, rm_dir
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder(cache))
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=max_positions, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **SHAPES[shape])
    device = device or weights_device()
    with torch.no_grad():
        lm_state = _random_lm_state(config, torch_dtype(dtype), device)
        torch.manual_seed(1)
        score = {"score.weight": (torch.randn(1, config.hidden_size) * config.initializer_range).to(torch_dtype(dtype))}
    cache.mkdir(parents=True, exist_ok=True)
    for folder in (lm_dir, rm_dir):
        shutil.rmtree(folder.with_name(folder.name + ".partial"), ignore_errors=True)
    lm_tmp = _write_folder(lm_dir, config, lm_state, {"lm_head.weight"}, tokenizer)
    del lm_state
    rm_config = LlamaConfig.from_dict({**config.to_dict(), "num_labels": 1, "architectures": ["LlamaForSequenceClassification"]})
    rm_tmp = _write_folder(rm_dir, rm_config, score, set(score), tokenizer, backbone_from=lm_tmp)
    lm_tmp.rename(lm_dir)
    rm_tmp.rename(rm_dir)
    return lm_dir, rm_dir


def _random_lm_state(config, dtype, device: str) -> dict:
    """A LlamaForCausalLM's weights drawn with seed 0 on `device`, as CPU tensors by name."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    state = {name: tensor.detach().to("cpu").contiguous() for name, tensor in model.state_dict().items()}
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return state


def _write_folder(final: Path, config, state: dict, own: set[str], tokenizer, backbone_from: Path | None = None) -> Path:
    """A Hugging Face folder (config, tokenizer, sharded safetensors with an index) written to `final`.partial:
    the backbone ("model.*") in one file, the head in another; `backbone_from` links that folder's backbone file."""
    from safetensors.torch import save_file

    tmp = final.with_name(final.name + ".partial")
    tmp.mkdir(parents=True)
    head_file = "head.safetensors"
    save_file({name: state[name] for name in own}, str(tmp / head_file), metadata={"format": "pt"})
    if backbone_from is None:
        backbone = {name: t for name, t in state.items() if name not in own}
        save_file(backbone, str(tmp / BACKBONE_FILE), metadata={"format": "pt"})
        backbone_names = sorted(backbone)
    else:
        try:
            os.link(backbone_from / BACKBONE_FILE, tmp / BACKBONE_FILE)
        except OSError:  # another file system: a copy
            shutil.copyfile(backbone_from / BACKBONE_FILE, tmp / BACKBONE_FILE)
        backbone_names = [n for n in json.loads((backbone_from / INDEX_FILE).read_text())["weight_map"] if n.startswith("model.")]
    weight_map = {**{name: BACKBONE_FILE for name in backbone_names}, **{name: head_file for name in own}}
    total = sum((tmp / f).stat().st_size for f in (BACKBONE_FILE, head_file))
    (tmp / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    config.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    return tmp
