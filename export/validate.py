"""Check freshly exported graphs against PyTorch: ONNX Runtime (CPU) drives them through the runtime's own
model wrappers for a prefill, several decode steps and k-candidate scoring; transformers computes the same
logits and, for every candidate, the RM's reward on the full sequence prefix + candidate (and, for a fused RM graph,
the LM's logits after each candidate, which it proposes from)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from args_runtime.backend import Device
from args_runtime.engines.onnxruntime_engine import OrtBackend
from args_runtime.errors import ExportError
from args_runtime.manifest import GraphSpec
from args_runtime.models import FusedModel, LanguageModel, PrefixState, RewardModel

from .hf_compat import forward_with_cache
from .loading import ModelPair
from .plan import GraphPlan
from .reference import hf_rewards

# (atol, rtol of max |ref|), by what the weights are stored as. Quantized graphs are checked against the unquantized
# PyTorch model (after the traced fp graphs passed their own limits), so theirs bound the quantization's error. The
# worst error measured, in units of max |ref|, on the six tiny random architectures (hidden size 64, where block
# quantization hurts most) and on SmolLM2: int8 0.08, int4 0.82 (README, "Quantized bundles"). int4's limit only
# says "the same size as the values": its agreement is measured by `args-bench quantized`, not asserted here.
TOLERANCES = {"float32": (1e-4, 1e-4), "float16": (5e-2, 2e-2), "bfloat16": (2e-1, 5e-2), "int8": (1e-2, 2e-1), "int4": (5e-2, 1.0)}


@dataclass
class Check:
    name: str
    max_abs_diff: float
    limit: float
    against: str = "torch"  # what the ONNX result is compared with

    @property
    def ok(self) -> bool:
        return bool(self.max_abs_diff <= self.limit)


@dataclass
class ValidationReport:
    checks: list[Check] = field(default_factory=list)

    def add(self, name: str, ours: np.ndarray, ref: np.ndarray, spec: GraphSpec) -> None:
        """A check within the graph's limits; a quantized graph's line says it is held to quantization limits."""
        atol, rtol = TOLERANCES[spec.weights]
        diff = float(np.max(np.abs(ours.astype(np.float64) - ref.astype(np.float64))))
        against = f"torch {spec.dtype}, {spec.weights} weights' limits" if spec.quantization else "torch"
        self.checks.append(Check(name, diff, atol + rtol * float(np.max(np.abs(ref))), against))

    def add_exact(self, name: str, ours: np.ndarray, ref: np.ndarray, against: str) -> None:
        """A check that must agree to the bit (ids, picks)."""
        self.checks.append(Check(name, float(np.max(np.abs(ours.astype(np.float64) - ref.astype(np.float64)))), 0.0, against))

    def lines(self) -> list[str]:
        return [self.line(c) for c in self.checks]

    @staticmethod
    def line(c: Check) -> str:
        return f"{'✓' if c.ok else '✗'} {c.name}: max |onnx - {c.against}| = {c.max_abs_diff:.3g} (limit {c.limit:.3g})"

    def as_dict(self) -> dict:
        return {c.name: {"max_abs_diff": c.max_abs_diff, "limit": c.limit, "ok": c.ok} for c in self.checks}

    def raise_if_failed(self) -> None:
        failed = [c for c in self.checks if not c.ok]
        if failed and all(c.name.startswith("after quantization: ") for c in failed):
            raise ExportError(
                "the quantized graphs differ from the unquantized PyTorch models beyond the quantization limits:\n  "
                + "\n  ".join(self.lines()) + "\nThis model does not keep its outputs under this scheme: export with --quantize int8 "
                "(if this was int4), quantize only the RM (--quantize-only rm), or export without --quantize"
            )
        if failed:
            raise ExportError(
                "exported graphs disagree with PyTorch beyond tolerance:\n  " + "\n  ".join(self.lines())
                + "\nThis is a bug in args-export for this architecture: please report it with the model's config.json"
            )


@torch.no_grad()
def validate_graphs(folder: Path, specs: tuple[GraphSpec, GraphSpec, GraphSpec | None], pair: ModelPair, plan: GraphPlan, device: Device,
                    steps: int = 3) -> ValidationReport:
    """Prefill + `steps` decode steps on a batch of two seeded random prompts, k = min(4, max_k) candidates; compare
    the LM's top-k logits and the k rewards with PyTorch at each step. With ONNX Runtime on CUDA, PyTorch computes its
    side on the GPU too: a 7B model's fp16 forward passes on the CPU take minutes."""
    lm_spec, rm_spec, propose_spec = specs
    k = min(4, plan.max_k)
    report = ValidationReport()
    torch_device = "cuda" if device.is_cuda and torch.cuda.is_available() else "cpu"
    lm_hf, rm_hf = pair.lm.model.to(torch_device), pair.rm.model.to(torch_device)
    lm = LanguageModel(OrtBackend(folder / lm_spec.file, device), lm_spec, plan.max_context)
    fused = propose_spec is not None
    rm = None  # an RM that reads text is checked on its own texts (export/text_path.py)
    if rm_spec is not None:
        rm_backend = OrtBackend(folder / rm_spec.file, device)
        if fused:
            rm = FusedModel(rm_backend, rm_spec, plan.max_context, OrtBackend(folder / propose_spec.file, device))
        else:
            rm = RewardModel(rm_backend, rm_spec, plan.max_context)
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, lm_spec.vocab_size, (2, 6), generator=gen)
    prefix, ids, positions = PrefixState.for_prompts(prompts.tolist(), pad_id=0)
    lm.reset(2)
    if rm is not None:
        rm.reset(2)
    sequence, hf_cache, hf_feed = prompts, None, prompts
    for step in range(steps + 1):
        top = lm.extend(ids, positions, prefix, k)
        values, candidates = top.logits, top.ids
        out, hf_cache = forward_with_cache(lm_hf, hf_feed.to(torch_device), hf_cache)
        ref_logits = out.logits[:, -1, :].float().cpu()
        report.add(f"lm top-{k} logits, step {step}", values, np.take_along_axis(ref_logits.numpy(), candidates, axis=1), lm_spec)
        with_cands = torch.cat([sequence.repeat_interleave(k, dim=0), torch.from_numpy(candidates).reshape(-1, 1)], dim=1)
        if rm is None:
            pass
        elif fused:
            if step == 0:  # the first pass: the prompt but its last token, which proposes the first candidates
                first = rm.propose(ids, positions, prefix, k)
                report.add(f"fused top-{k} proposals after the prompt", *_proposed(first.logits, first.ids, ref_logits.numpy(), k), propose_spec)
                ids, positions = ids[:, -1:], positions[:, -1:]
            rewards, proposals = rm.score_and_propose(ids, positions, prefix, top, k)
            after = forward_with_cache(lm_hf, with_cands.to(torch_device), None)[0].logits[:, -1, :].float().cpu().numpy()  # [2k, V]
            each = [proposals.picked(np.full(2, j, np.int64)) for j in range(k)]  # every candidate picked in turn
            values, ids_after = (np.stack([getattr(t, name) for t in each], axis=1).reshape(2 * k, k) for name in ("logits", "ids"))
            report.add(f"fused top-{k} proposals after each candidate, step {step}", *_proposed(values, ids_after, after, k), propose_spec)
        else:
            rewards = rm.extend_and_score(ids, positions, prefix, top)
        if rm is not None:
            ref_rewards = hf_rewards(rm_hf, pair.rm.family, with_cands.to(torch_device)).reshape(2, k).cpu()
            report.add(f"rm rewards of {k} candidates, step {step}", rewards, ref_rewards.numpy(), rm_spec)
        chosen = candidates[:, :1]
        sequence = torch.cat([sequence, torch.from_numpy(chosen)], dim=1)
        hf_feed = torch.from_numpy(chosen)
        ids = chosen
        _, positions = prefix.next_inputs()
    return report


def _proposed(values: np.ndarray, ids: np.ndarray, ref_logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(ours, reference) for a top-k: the values proposed, against both the reference logits at the ids proposed and the
    reference's own top-k values, so that a wrong id fails as surely as a wrong value."""
    ref_top = -np.sort(-ref_logits, axis=1)[:, :k]
    return np.stack([values, values]), np.stack([np.take_along_axis(ref_logits, ids, axis=1), ref_top])


def validate_choice_graph(path: Path, report: ValidationReport, seed: int = 0) -> None:
    """choose.onnx against the host choosers (selection.py) on random scores: the same greedy and sampled picks."""
    from args_runtime.choice import choice_feeds, choice_settings
    from args_runtime.selection import args_scores, choose_greedy, sample_index

    rng = np.random.default_rng(seed)
    batch, k, w, temperature = 64, 7, 1.5, 0.7
    values = rng.normal(size=(batch, k)).astype(np.float32) * 3
    rewards = rng.normal(size=(batch, k)).astype(np.float32)
    ids = rng.integers(0, 50_000, size=(batch, k))
    draws = rng.random(batch)
    scores = args_scores(values, rewards, w)
    backend = OrtBackend(path, Device("cpu"))
    for name, sample, expected in (("greedy", False, choose_greedy(scores)), ("sampled", True, sample_index(scores, temperature, draws))):
        out = {n: backend.to_host(v) for n, v in backend.run(choice_feeds(values, ids, rewards, choice_settings(w, sample, temperature), draws)).items()}
        rows = np.arange(batch)
        report.add_exact(f"choose.onnx {name} picks ({batch} rows)", out["chosen_ids"][:, 0], ids[rows, expected], "host chooser")
        report.add_exact(f"choose.onnx {name} logit and reward", np.stack([out["chosen_logits"][:, 0], out["chosen_rewards"][:, 0]]),
                         np.stack([values[rows, expected], rewards[rows, expected]]), "host chooser")
