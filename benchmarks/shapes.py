"""Random-weight LM + RM pairs of a named shape, built on the machine that measures them (no download):
the issue's GPU figure uses a LLaMA-7B-shaped pair in fp16. Latency depends on shape and dtype, not on
what the weights say, so seeded random weights measure the same thing as trained ones."""

from __future__ import annotations

from pathlib import Path

# LLaMA-7B's published shape; the vocabulary is the tokenizer's own (SmolLM2's 49152, not LLaMA's 32000).
SHAPES = {
    "llama-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=32, rms_norm_eps=1e-6),
    "llama-tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
}


def random_pair(shape: str, dtype: str, cache: Path, max_positions: int = 4096) -> tuple[Path, Path]:
    """Seeded random LM and RM folders of `shape` (cached under `cache`), with SmolLM2's tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, LlamaConfig

    from args_export.demo.prepare import smollm2_folder
    from args_export.loading import torch_dtype
    from args_runtime.errors import GenerationError
    from args_runtime.files import atomic_folder

    if shape not in SHAPES:
        raise GenerationError(f"unknown shape {shape!r}; choose one of {sorted(SHAPES)}")
    lm_dir, rm_dir = cache / f"random-{shape}-{dtype}-lm", cache / f"random-{shape}-{dtype}-rm"
    if (lm_dir / "config.json").is_file() and (rm_dir / "config.json").is_file():
        return lm_dir, rm_dir
    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder(cache))
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=max_positions, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **SHAPES[shape])
    for seed, folder, auto, extra in ((0, lm_dir, AutoModelForCausalLM, {}), (1, rm_dir, AutoModelForSequenceClassification, {"num_labels": 1})):
        torch.manual_seed(seed)
        model = auto.from_config(LlamaConfig.from_dict({**config.to_dict(), **extra}), dtype=torch_dtype(dtype))
        with atomic_folder(folder, replace=True) as work:
            model.save_pretrained(work)
            tokenizer.save_pretrained(work)
        del model
    return lm_dir, rm_dir
