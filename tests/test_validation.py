"""Validation at the door: every bad argument, prompt and bundle a user can hand args-rt gets one typed ArgsError naming
the value and the fix, raised before any engine work, and the generator stays usable. Each case here was tried by hand
first; the table is what a new user gets (issue 17). An unknown keyword is a TypeError, as in any Python call."""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import pytest

from args_runtime import ArgsGenerator, BundleError, GenerationError, MissingDependencyError
from args_runtime.manifest import sha256_file
from args_runtime.tokenizer import check_messages

from .conftest import TEXT_PROMPTS

PROMPT = TEXT_PROMPTS[0]
SMALL = dict(k=3, w=1.0, max_new_tokens=4, ignore_eos=True)


@pytest.fixture(scope="module")
def gen(tiny_pairs):
    return ArgsGenerator.from_bundle(tiny_pairs["llama"].bundle)


@pytest.fixture(scope="module")
def expected(gen):
    """The tokens of a valid call before any bad one (test_runtime.py checks them against the transformers reference)."""
    return gen.generate(PROMPT, **SMALL).token_ids


@pytest.fixture(autouse=True)
def _still_usable(gen, expected):
    """After every bad input, the next valid call gives the same tokens."""
    yield
    assert gen.generate(PROMPT, **SMALL).token_ids == expected


BAD_KEYWORDS = [
    (dict(k=0), r"k=0 is out of range: this bundle supports 1 <= k <= 48"),
    (dict(k=49), r"k=49 is out of range"),
    (dict(k=2.5), r"k=2.5 is out of range"),
    (dict(k="3"), r"k='3' is out of range"),
    (dict(k=None), r"k=None is out of range"),
    (dict(k=True), r"k=True is out of range"),
    (dict(k=10**20), r"k=100000000000000000000 is out of range"),
    (dict(w=float("nan")), r"w=nan must be a finite number"),
    (dict(w=float("-inf")), r"w=-inf must be a finite number"),
    (dict(w="1"), r"w='1' must be a finite number"),
    (dict(w=None), r"w=None must be a finite number"),
    (dict(w=False), r"w=False must be a finite number"),
    (dict(w=1e300), r"w=1e\+300 must be a finite number with \|w\| <= 1e\+06"),  # was silently inf in float32
    (dict(w=10**400), r"w=1000000000.* must be a finite number"),
    (dict(w=1j), r"w=1j must be a finite number"),
    (dict(max_new_tokens=0), r"max_new_tokens=0 must be an integer >= 1"),
    (dict(max_new_tokens=1.5), r"max_new_tokens=1.5 must be an integer >= 1"),
    (dict(max_new_tokens="5"), r"max_new_tokens='5' must be an integer"),
    (dict(max_new_tokens=True), r"max_new_tokens=True must be an integer"),
    (dict(method="beam"), r"method='beam' is not one of \('greedy', 'stochastic'\)"),
    (dict(method="Greedy"), r"method='Greedy' is not one of"),
    (dict(method=["greedy"]), r"method=\['greedy'\] is not one of"),
    (dict(method=None), r"method=None is not one of"),
    (dict(method="stochastic", temperature=0), r"temperature=0 must be a finite number >= 1e-05"),
    (dict(temperature=-1.0), r"temperature=-1.0 must be a finite number"),
    (dict(temperature=float("nan")), r"temperature=nan must be"),
    (dict(temperature=float("inf")), r"temperature=inf must be"),
    (dict(temperature="0.7"), r"temperature='0.7' must be"),
    (dict(method="stochastic", temperature=1e-300), r"temperature=1e-300 must be a finite number >= 1e-05 .*use method='greedy'"),
    (dict(seed=-1), r"seed=-1 must be None \(a fresh random stream\) or an integer >= 0"),
    (dict(seed=1.5), r"seed=1.5 must be None"),
    (dict(seed="0"), r"seed='0' must be None"),
    (dict(seed=True), r"seed=True must be None"),
    (dict(ignore_eos="no"), r"ignore_eos='no' must be True or False"),  # was silently True
    (dict(ignore_eos=None), r"ignore_eos=None must be True or False"),
    (dict(ignore_eos=2), r"ignore_eos=2 must be True or False"),
    (dict(stop=""), r"stop='' must be None, a non-empty string, or a list of non-empty strings"),
    (dict(stop=[""]), r"stop=\[''\] must be None"),
    (dict(stop=[1]), r"stop=\[1\] must be None"),
    (dict(stop=5), r"stop=5 must be None"),
    (dict(stop={"a"}), r"stop=\{'a'\} must be None"),
    (dict(stop=b"x"), r"stop=b'x' must be None"),
    (dict(stop=["a", None]), r"stop=\['a', None\] must be None"),
]


@pytest.mark.parametrize("kwargs, message", BAD_KEYWORDS, ids=[repr(k) for k, _ in BAD_KEYWORDS])
def test_bad_keywords_are_generation_errors_before_any_engine_work(gen, kwargs, message):
    runs = []
    original = gen.lm.backend.run
    gen.lm.backend.run = lambda *a, **kw: runs.append(1) or original(*a, **kw)
    try:
        for call in (lambda: gen.generate(PROMPT, **{**SMALL, **kwargs}), lambda: gen.stream(PROMPT, **{**SMALL, **kwargs})):
            with pytest.raises(GenerationError, match=message):
                call()  # stream() checks at the call, before the first token is asked for
    finally:
        del gen.lm.backend.run
    assert not runs


@pytest.mark.parametrize("kwargs", [dict(k=np.int64(3)), dict(w=np.float32(0.5)), dict(w=-2.0), dict(max_new_tokens=10**20),
                                    dict(seed=None), dict(method="stochastic", seed=2**70), dict(stop=("a", "b")),
                                    dict(ignore_eos=np.bool_(True))], ids=repr)
def test_unusual_but_valid_values_are_accepted(gen, kwargs):
    prompt = list(range(100, 600))  # 500 of the 512 context tokens: a huge max_new_tokens ends at the context
    res = gen.generate(prompt, **{**SMALL, **kwargs})
    assert res.token_ids and res.finish_reason in ("length", "context", "stop")
    assert kwargs.get("max_new_tokens", 0) < 10**20 or (res.finish_reason == "context" and len(res.token_ids) == 12)


def test_unknown_keywords_are_type_errors_naming_the_keywords(gen):
    with pytest.raises(TypeError, match=r"generate\(\) got an unexpected keyword argument 'top_p'; its keywords are k, w, max_new_tokens"):
        gen.generate(PROMPT, top_p=0.9)
    with pytest.raises(TypeError, match=r"generate\(\) got an unexpected keyword argument 'caller'"):
        gen.generate(PROMPT, caller="x")
    with pytest.raises(TypeError, match=r"sample\(\) got an unexpected keyword argument 'method'"):
        gen.sample(PROMPT, method="greedy")  # was "settings() got multiple values for keyword argument 'method'"
    with pytest.raises(TypeError, match=r"sample\(\) got an unexpected keyword argument 'w'"):
        gen.sample(PROMPT, w=1.0)
    with pytest.raises(TypeError, match=r"greedy\(\) got an unexpected keyword argument 'k'"):
        gen.greedy(PROMPT, k=3)
    with pytest.raises(TypeError):
        gen.generate(PROMPT, 3)


FORMS = r"a prompt is text, a list of token ids, or a list of chat messages"
BAD_PROMPTS = [
    ("", r"the prompt is empty: give at least one token"),
    ([], r"the prompt is empty"),
    ([[]], r"prompt 0 of the batch is empty"),
    (["a", ""], r"prompt 1 of the batch is empty"),
    ([49152], r"the prompt has token id 49152 at position 0, outside this bundle's vocabulary: token ids are 0 … 49151"),  # was ORT's Gather error
    ([5, 10**6], r"token id 1000000 at position 1"),
    ([-1], r"the prompt has token id -1 at position 0"),  # was silently the last row of the embedding
    ([2**63], r"token id 9223372036854775808"),  # was an OverflowError
    (["a", [49999]], r"prompt 1 of the batch has token id 49999"),
    ([True, False], r"the prompt, element 0, is a bool \(True\): " + FORMS),  # was silently ids 1, 0
    ([1.0, 2.0], r"the prompt, element 0, is a float \(1.0\)"),
    (np.array([1, 2]), r"the prompt is a ndarray .*pass token ids as a list, ids.tolist\(\)"),
    ((1, 2, 3), r"the prompt is a tuple .*pass a list, not a tuple"),
    (None, r"the prompt is a NoneType \(None\): " + FORMS),
    (b"hi", r"the prompt is a bytes .*decode bytes to text first"),
    (3.5, r"the prompt is a float \(3.5\)"),
    ({"role": "user", "content": "hi"}, r"wrap one chat message in a list"),
    ([1, "a"], r"prompt 0 of the batch is an int \(1\)"),
    (["a", [1, 2], 5], r"prompt 2 of the batch is an int \(5\)"),
    ([["a"]], r"prompt 0 of the batch is a list of prompts: batches do not nest"),
    ("\ud800", r"the prompt is not valid Unicode: surrogates not allowed at character 0"),  # was tokenizers' TypeError
    ([{"role": "user"}], r"the prompt, message 0, has no 'content'"),  # was jinja2's UndefinedError
    ([{"content": "hi"}], r"message 0, has no 'role'"),
    ([{}], r"has no 'role' and no 'content'"),
    ([{"role": "user", "content": 5}], r"message 0, has content of type int: content must be a string"),  # was a TypeError
    ([{"role": "user", "content": None}], r"content of type NoneType"),
    ([{"role": "user", "content": [{"type": "text", "text": "hi"}]}], r"OpenAI-style content parts: join their text"),
    ([{"role": "robot", "content": "hi"}], r"message 0, has role 'robot': roles are system, developer, user, assistant, tool"),  # was silently rendered
    ([{"role": 5, "content": "hi"}], r"has role 5"),
    ([{"role": "user", "content": "hi", "name": "x"}], r"has keys \['name'\] that the chat template would ignore"),  # was silently dropped
    ([{"role": "user", "content": "hi"}, "x"], r"the prompt mixes chat messages with other values"),
    ([{"role": "user", "content": "\ud800"}], r"message 0's content, is not valid Unicode"),
    ("x " * 600, r"the prompt has 601 tokens, but the bundle's context is 512 tokens .*shorten the prompt or re-export with a larger --max-context"),
]


@pytest.mark.parametrize("prompt, message", BAD_PROMPTS, ids=[repr(p)[:40] for p, _ in BAD_PROMPTS])
def test_bad_prompts_are_generation_errors(gen, prompt, message):
    with pytest.raises(GenerationError, match=message):
        gen.generate(prompt, **SMALL)


def test_every_prompt_form_is_accepted(gen):
    ids = gen.tokenizer.encode(PROMPT)
    by_text = gen.generate(PROMPT, **SMALL).token_ids
    assert gen.generate(ids, **SMALL).token_ids == by_text
    assert gen.generate([np.int64(i) for i in ids], **SMALL).token_ids == by_text
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    batch = gen.generate([PROMPT, ids, chat], **SMALL)
    assert [r.token_ids for r in batch[:2]] == [by_text, by_text] and batch[2].token_ids == gen.generate(chat, **SMALL).token_ids


def test_stream_checks_its_prompt_at_the_call(gen):
    with pytest.raises(GenerationError, match="stream\\(\\) takes one prompt, not a batch"):
        gen.stream(["a", "b"], **SMALL)
    with pytest.raises(GenerationError, match="token id 49152"):
        gen.stream([49152], **SMALL)


def test_check_messages_is_shared(gen):
    """The server and RM training call the same check (one home)."""
    assert check_messages([{"role": "user", "content": "hi"}])
    with pytest.raises(GenerationError, match="request, message 0, has role 'bot'"):
        check_messages([{"role": "bot", "content": "hi"}], "request")


# ---------------------------------------------------------------------------------------------- from_bundle


@pytest.mark.parametrize("path, kwargs, error, message", [
    (None, {}, BundleError, r"bundle path None is not a folder path: pass a str or pathlib.Path"),  # was a TypeError
    (3, {}, BundleError, r"bundle path 3 is not a folder path"),
    ("manifest", {}, BundleError, r"manifest.json is a file, not a bundle folder"),
    ("bundle", dict(device="gpu"), GenerationError, r"device 'gpu' is not one of 'cpu', 'cuda', 'cuda:N'"),
    ("bundle", dict(device="cuda:x"), GenerationError, r"device 'cuda:x' is not one of"),
    ("bundle", dict(device=None), GenerationError, r"device None is not one of"),
    ("bundle", dict(device="CPU"), GenerationError, r"device 'CPU' is not one of"),
    ("bundle", dict(lm_device="tpu"), GenerationError, r"device 'tpu' is not one of"),
    ("bundle", dict(backend="ort"), GenerationError, r"backend='ort' is not one of \['onnxruntime'"),
    ("bundle", dict(backend=["onnxruntime"]), GenerationError, r"backend=\['onnxruntime'\] is not one of"),  # was unhashable TypeError
    ("bundle", dict(threads=0), GenerationError, r"threads=0 must be None \(the engine's default\) or an integer from 1 to 1024"),
    ("bundle", dict(threads="2"), GenerationError, r"threads='2' must be None"),
    ("bundle", dict(threads=True), GenerationError, r"threads=True must be None"),
    ("bundle", dict(threads=2**40), GenerationError, r"threads=1099511627776 must be None"),  # was a pybind11 TypeError from ORT
    ("bundle", dict(verify_checksums="no"), GenerationError, r"verify_checksums='no' must be True or False"),  # was silently True
    ("bundle", dict(cuda_graph="yes"), GenerationError, r"cuda_graph='yes' must be True or False"),
    ("bundle", dict(cuda_graph=True), BundleError, r"cuda_graph=True needs fixed shapes, i.e. a static-cache bundle"),
    ("bundle", dict(loop="rust"), GenerationError, r"loop='rust' is not one of \('python', 'cpp'\)"),
    ("bundle", dict(loop=""), GenerationError, r"loop='' is not one of"),
    ("bundle", dict(choice="gpu"), GenerationError, r"choice='gpu' is not one of \('auto', 'host', 'device'\)"),
    ("bundle", dict(device="cuda"), MissingDependencyError, r"needs CUDAExecutionProvider, which this onnxruntime lacks"),
    ("bundle", dict(backend="tensorrt"), BundleError, r"has no TensorRT engine for the LM: build them with `args-export --tensorrt-only"),
])
def test_bad_from_bundle_arguments(tiny_pairs, path, kwargs, error, message):
    import onnxruntime

    if kwargs.get("device") == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has CUDA")
    bundle = tiny_pairs["llama"].bundle
    where = {"bundle": bundle, "manifest": bundle / "manifest.json"}.get(path, path)
    with pytest.raises(error, match=message):
        ArgsGenerator.from_bundle(where, **kwargs)


def test_from_bundle_unknown_keyword_and_valid_numpy_threads(tiny_pairs):
    with pytest.raises(TypeError, match=r"from_bundle\(\) got an unexpected keyword argument 'thread'; its keywords are device"):
        ArgsGenerator.from_bundle(tiny_pairs["llama"].bundle, thread=2)
    gen = ArgsGenerator.from_bundle(tiny_pairs["llama"].bundle, threads=np.int64(1))
    assert gen.options.threads == 1 and type(gen.options.threads) is int


# ---------------------------------------------------------------------------------------------- damaged bundles


@pytest.fixture
def bundle_copy(tmp_path, tiny_pairs):
    """A copy to damage; the weights (*.data, most of the bytes) are hard links, so a damage replaces them (_replace)."""
    dst = tmp_path / "bundle"
    shutil.copytree(tiny_pairs["llama"].bundle, dst, copy_function=_link_weights)
    return dst


def _link_weights(src, dst):
    return os.link(src, dst) if str(src).endswith(".data") else shutil.copy2(src, dst)


def _replace(path, data: bytes) -> None:
    """New contents in a new file (never through a hard link into the fixture's bundle)."""
    path.unlink()
    path.write_bytes(data)


def _edit_manifest(bundle, edit, fix_checksums=False):
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    if fix_checksums:
        manifest["files"] = {name: sha256_file(bundle / name) for name in manifest["files"]}
    path.write_text(json.dumps(manifest))


def _set(*path_value):
    *path, value = path_value

    def edit(m):
        for key in path[:-1]:
            m = m[key]
        m[path[-1]] = value
    return edit


MALFORMED = "is missing or has malformed fields: "
CANNOT_DRIVE = "does not describe a bundle this runtime can drive: "
BAD_MANIFESTS = [
    (_set("max_k", "10"), MALFORMED + r"max_k = '10' must be an integer"),  # was a TypeError inside generate()
    (_set("max_k", 0), CANNOT_DRIVE + r"max_k = 0 \(it must be 1 … the vocabulary size 49152\)"),
    (_set("max_k", 10**6), CANNOT_DRIVE + r"max_k = 1000000"),  # was accepted, k > vocab then failed in the graph
    (_set("max_context", "x"), MALFORMED + r"max_context = 'x' must be an integer"),
    (_set("max_context", 1), CANNOT_DRIVE + r"max_context = 1 \(at least 2"),
    (_set("lm", "x"), MALFORMED + r"lm must be an object, not str"),  # was a ValueError from dict()
    (_set("files", []), MALFORMED + r"files must be an object, not list"),  # was an AttributeError
    (_set("files", {"lm.onnx": 3}), MALFORMED + r"files\['lm.onnx'\] = 3 must be a str"),
    (_set("engines", []), MALFORMED + r"engines must be an object, not list"),
    (_set("extra_field", 1), MALFORMED + r"extra_field is not a field this args-rt knows"),
    (_set("choice_file", 5), MALFORMED + r"choice_file = 5 must be a str"),
    (_set("lm", "num_kv_heads", "2"), MALFORMED + r"lm.num_kv_heads = '2' must be an integer"),
    (_set("lm", "num_kv_heads", 3), CANNOT_DRIVE + r"lm cache tensor past_key_values.0.key has shape .* num_kv_heads = 3"),  # was ORT's dims error
    (_set("lm", "head_dim", 0), CANNOT_DRIVE + r"lm.head_dim = 0 \(at least 1\)"),
    (_set("lm", "num_layers", 5), CANNOT_DRIVE + r"the lm graph has 4 past and 4 present cache tensors for num_layers = 5"),
    (_set("lm", "cache", "weird"), CANNOT_DRIVE + r"lm.cache = 'weird' \(one of \('dynamic', 'static'\)\)"),  # was silently dynamic
    (_set("rm", "dtype", "float17"), CANNOT_DRIVE + r"rm.dtype = 'float17'"),  # was a KeyError
    (_set("lm", "inputs", "x"), MALFORMED + r"lm.inputs must be a list, not str"),
    (_set("lm", "inputs", 0, "dtype", "complex"), CANNOT_DRIVE + r"lm tensor input_ids: complex"),
    (_set("rm", "outputs", 0, "name", "scores"), CANNOT_DRIVE + r"the rm graph has no \['rewards'\]"),
    (_set("tokenizer", "eos_token_ids", "2"), MALFORMED + r"tokenizer.eos_token_ids must be a list, not str"),  # was a pybind11 TypeError
    (_set("tokenizer", "pad_token_id", None), MALFORMED + r"tokenizer.pad_token_id = None must be an integer"),
    (_set("tokenizer", "pad_token_id", 10**6), CANNOT_DRIVE + r"tokenizer ids \[1000000\] \(pad and EOS ids must be token ids"),
    (_set("tokenizer", "chat_template_file", "missing.jinja"), r"names \['missing.jinja'\] but has no checksum for them"),  # was FileNotFoundError
    (_set("lm", "file", "../other/lm.onnx"), r"names the file '../other/lm.onnx', which is not a plain file name inside the bundle"),
    (_set("lm", "file", "/etc/passwd"), r"names the file '/etc/passwd', which is not a plain file name"),
    (_set("lm", "file", "rm.onnx"), r"rm.onnx is not the lm graph the manifest describes \(missing inputs \['candidate_slots'\]; "
                                    r"unexpected inputs \['candidate_ids'\]\)"),  # was ORT's "Failed to find NodeArg"
]


@pytest.mark.parametrize("edit, message", BAD_MANIFESTS, ids=range(len(BAD_MANIFESTS)))
def test_malformed_manifests_are_bundle_errors(bundle_copy, edit, message):
    _edit_manifest(bundle_copy, edit)
    with pytest.raises(BundleError, match=message):
        ArgsGenerator.from_bundle(bundle_copy)
    with pytest.raises(BundleError, match=message):
        ArgsGenerator.from_bundle(bundle_copy, verify_checksums=False)


@pytest.mark.parametrize("damage, message", [
    (lambda b: (b / "manifest.json").write_bytes(b"\xff\xfe\x00"), r"manifest.json is not valid JSON \('utf-8' codec"),  # was UnicodeDecodeError
    (lambda b: (b / "manifest.json").write_text("[]"), r"is not an args-rt manifest"),
    (lambda b: (b / "lm.onnx").unlink(), r"bundle file .*lm.onnx is missing"),
    (lambda b: (b / "tokenizer.json").unlink(), r"tokenizer.json is missing"),
    (lambda b: (b / "chat_template.jinja").unlink(), r"chat_template.jinja is missing"),  # verify off: was FileNotFoundError
    (lambda b: (b / "chat_template.jinja").write_text("{% for %}"), r"the chat template .*chat_template.jinja does not compile"),  # was accepted
    (lambda b: _replace(b / "lm.onnx.data", b"\0" * 100), r"ONNX Runtime cannot load .*lm.onnx"),
    (lambda b: (b / "tokenizer.json").write_text("{}"), r"cannot read tokenizer .*tokenizer.json"),
    (lambda b: shutil.copy(b / "lm.onnx", b / "rm.onnx"), r"rm.onnx is not the rm graph the manifest describes \(missing inputs \['candidate_ids'\]"),
])
def test_damaged_files_are_bundle_errors_even_without_checksums(bundle_copy, damage, message):
    damage(bundle_copy)
    with pytest.raises(BundleError, match=message):
        ArgsGenerator.from_bundle(bundle_copy, verify_checksums=False)


def test_a_graph_from_another_layout_is_refused_when_it_opens(bundle_copy, static_bundles):
    """lm.onnx of a static-cache bundle dropped into a dynamic one, checksums updated: its inputs give it away
    (today: ORT's 'invalid dimensions for input: attention_mask' at the first step)."""
    for name in ("lm.onnx", "lm.onnx.data"):
        shutil.copy(static_bundles["llama"] / name, bundle_copy / name)
    _edit_manifest(bundle_copy, lambda m: None, fix_checksums=True)
    with pytest.raises(BundleError, match=r"lm.onnx is not the lm graph the manifest describes \(unexpected inputs \['cache_position'\]\)"):
        ArgsGenerator.from_bundle(bundle_copy)


def test_a_foreign_choice_graph_is_refused_when_it_opens(bundle_copy):
    shutil.copy(bundle_copy / "lm.onnx", bundle_copy / "choose.onnx")  # was ORT's "Failed to find input name" at the first step
    with pytest.raises(BundleError, match=r"choose.onnx is not the choose graph the manifest describes \(missing inputs \['topk_values'"):
        ArgsGenerator.from_bundle(bundle_copy, verify_checksums=False, choice="device")


# ---------------------------------------------------------------------------------------------- command lines


def _run_main(main, argv, capsys):
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own usage errors exit 2 from main()
        code = e.code
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out


@pytest.mark.parametrize("extra, message", [
    (["--k", "0"], "k=0 is out of range"),
    (["--threads", "0"], "threads=0 must be None"),
    (["--device", "gpu"], "device 'gpu' is not one of"),
    (["--method", "stochastic", "--seed", "-1"], "seed=-1 must be None"),
    (["--temperature", "nan"], "temperature=nan must be"),
    (["--stop", ""], r"stop=\[''\] must be None"),
    (["--prompt", "a\udcffb"], "the prompt is not valid Unicode"),  # undecodable bytes in argv (surrogateescape); was a traceback
    (["--prompt", ""], "the prompt is empty"),
])
def test_generate_cli_bad_input_exits_2_with_the_message(tiny_pairs, capsys, extra, message):
    from args_runtime.cli import main

    argv = [str(tiny_pairs["llama"].bundle), "--max-new-tokens", "2", *([] if "--prompt" in extra else ["--prompt", "Hi"]), *extra]
    code, out = _run_main(main, argv, capsys)
    assert code == 2
    assert "args-generate: error: " in out.err and re.search(message, out.err), out.err


def test_generate_cli_takes_threads(tiny_pairs, capsys):
    from args_runtime.cli import main

    code, out = _run_main(main, [str(tiny_pairs["llama"].bundle), "--prompt", "Hi", "--threads", "1", "--max-new-tokens", "2", "--json"], capsys)
    assert code == 0 and len(json.loads(out.out)["token_ids"]) == 2


@pytest.mark.parametrize("extra, message", [
    (["--max-k", "0"], r"--max-k 0 is out of range: it must be an integer >= 1"),
    (["--max-context", "1"], r"--max-context 1 is out of range: it must be an integer >= 2"),
    (["--out", "OUT_UNDER_A_FILE"], r"cannot write --out .*manifest.json/x: .*manifest.json is a file"),  # was FileExistsError
    (["--tensorrt", "--trt-workspace-gib", "-1"], r"--trt-workspace-gib -1.0: must be a number of GiB > 0"),
])
def test_export_cli_checks_options_before_any_work(tiny_pairs, tmp_path, capsys, extra, message):
    from args_export.cli import main

    pair = tiny_pairs["llama"]
    extra = [str(pair.bundle / "manifest.json" / "x") if a == "OUT_UNDER_A_FILE" else a for a in extra]
    argv = ["--lm", str(pair.lm_dir), "--rm", str(pair.rm_dir), "--quiet", *extra] + ([] if "--out" in extra else ["--out", str(tmp_path / "out")])
    code, streams = _run_main(main, argv, capsys)
    assert code == 2 and re.search(message, streams.err), streams.err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))


@pytest.fixture
def pairs_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": f"p{i}", "chosen": "good", "rejected": "bad"}) for i in range(6)))
    return path


@pytest.mark.parametrize("extra, message", [
    (["--lr", "-1"], r"--lr must be a finite learning rate > 0; got -1.0"),  # was torch's ValueError, after loading the model
    (["--lr", "nan"], r"--lr must be a finite learning rate > 0; got nan"),
    (["--weight-decay", "-1"], r"--weight-decay must be a finite number ≥ 0; got -1.0"),
    (["--held-out-fraction", "1.5"], r"--held-out-fraction must be in \[0, 1\); got 1.5"),
    (["--head-out", "TMP"], r"--head-out .* is a folder: give the JSON file to write"),  # was IsADirectoryError after training
    (["--pairs", "BAD_CHAT"], r"bad.jsonl:2: the prompt, message 0, has no 'content'"),  # was jinja2's UndefinedError
])
def test_train_rm_cli_checks_options_before_any_work(tiny_pairs, tmp_path, pairs_file, capsys, extra, message):
    from args_export.rewards.train import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n"
                   + json.dumps({"prompt": [{"role": "user"}], "chosen": "a", "rejected": "b"}) + "\n")
    extra = [str(tmp_path) if a == "TMP" else str(bad) if a == "BAD_CHAT" else a for a in extra]
    argv = ["--backbone", str(tiny_pairs["llama"].lm_dir), "--out", str(tmp_path / "rm"), "--epochs", "1"]
    argv += extra if "--pairs" in extra else ["--pairs", str(pairs_file), *extra]
    code, streams = _run_main(main, argv, capsys)
    assert code == 2 and re.search(message, streams.err), streams.err
    assert not (tmp_path / "rm").exists()
