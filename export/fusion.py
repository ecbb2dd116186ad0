"""Whether the RM is a score head on the LM's own backbone, judged by content: the two decoder stacks' tensors hash the
same (names, dtypes, shapes and bytes) and their configs agree on everything but the heads. Then export writes a
fused bundle (graphs.FusedStep): one pass per token instead of an LM step and an RM step."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from .loading import LoadedModel, ModelPair

# Config keys that describe a model's head, labels or provenance, not its backbone's arithmetic.
HEAD_KEYS = {"architectures", "id2label", "label2id", "num_labels", "problem_type", "finetuning_task", "_name_or_path",
             "transformers_version", "torch_dtype", "dtype", "pad_token_id", "bos_token_id", "eos_token_id",
             "tie_word_embeddings", "use_cache", "return_dict", "output_hidden_states", "output_attentions",
             "reward_pooling", "reward_scale",  # args-train-rm: how the head judges a whole reply, what it was divided by
             "quantization_config"}  # how the loader read the weights (a GGUF's dequantization): the tensors, hashed, decide


@dataclass(frozen=True)
class Fusion:
    """The verdict: whether the pair can be fused, and why (for the export log and the manifest)."""

    fused: bool
    reason: str


def backbone_digest(model: LoadedModel) -> tuple[str, int]:
    """sha256 over the backbone's tensors in name order (name, dtype, shape, bytes), and how many there are."""
    digest = hashlib.sha256()
    state = model.backbone.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().contiguous().cpu()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest(), len(state)


def _backbone_config(model: LoadedModel) -> dict:
    return {key: value for key, value in model.config.to_dict().items() if key not in HEAD_KEYS}


def check_fusion(pair: ModelPair) -> Fusion:
    """Fused when the RM's decoder is the LM's: same family and backbone config, and equal backbone tensors."""
    lm, rm = pair.lm, pair.rm
    if lm.config.model_type != rm.config.model_type:
        return Fusion(False, f"the RM is a {rm.config.model_type}, the LM a {lm.config.model_type}")
    lm_config, rm_config = _backbone_config(lm), _backbone_config(rm)
    differ = sorted(key for key in lm_config.keys() | rm_config.keys() if lm_config.get(key) != rm_config.get(key))
    if differ:
        return Fusion(False, f"the backbone configs differ in {', '.join(differ[:5])}")
    (lm_hash, count), (rm_hash, _) = backbone_digest(lm), backbone_digest(rm)
    if lm_hash != rm_hash:
        return Fusion(False, "the RM's decoder weights differ from the LM's (two passes per token: a fused bundle needs the RM's "
                             "decoder to be the LM's own)")
    return Fusion(True, f"the RM's decoder weights equal the LM's ({count} tensors, sha256 {lm_hash[:12]})")
