"""The OpenAI request bodies args-serve accepts (pydantic models mirroring the API), and the one function that turns
a request into generation settings.

A field args-serve does not honour is refused with HTTP 400 naming it whenever its value would change the result
(`top_p=0.9`, `logprobs=true`, `n=2`, tools, ...); fields that cannot change the result (`user`, `metadata`, ...)
are accepted. Fields outside the OpenAI API are refused as unknown. ARGS's own settings travel in one object,
`"args": {"k", "w", "method", "return_rewards", "ignore_eos"}`, which OpenAI SDKs send through `extra_body`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from ..errors import ContextLengthError, GenerationError, SettingError
from ..requests import Request
from ..settings import Settings, check_settings

DEFAULT_TEMPERATURE = 0.7  # the paper's (and the runtime's) sampling temperature, when a stochastic request gives none
MAX_STOP = 4  # stop strings per request, as the OpenAI API allows


class InvalidRequest(GenerationError):
    """A request the server refuses with HTTP 400: `param` names the field, the message names the value and the fix."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.param, self.code = param, code


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ArgsOptions(_Strict):
    """ARGS's parameters (`"args": {...}`, through `extra_body` in OpenAI SDKs); left out: the server's defaults."""

    k: Any = None  # candidates per step, 1..max_k (default: the server's --k)
    w: Any = None  # reward weight in logit + w * reward (default: the server's --w)
    method: Any = None  # "greedy" (default) or "stochastic"
    return_rewards: bool = False  # add the chosen tokens' ids, LM logits and rewards to the response
    ignore_eos: bool = False  # keep generating past end-of-sequence tokens (benchmarks: a fixed token count)


class StreamOptions(_Strict):
    include_usage: bool = False


class ContentPart(BaseModel):
    """One part of a message's content; only text parts are served (see chat_prompt)."""

    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart]
    name: str | None = None


class _Sampling(_Strict):
    """The fields both endpoints share."""

    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = None
    args: ArgsOptions | None = None
    user: str | None = None  # no effect on the result: accepted
    # Fields args-serve does not honour; refused unless at their neutral value (see UNHONOURED).
    top_p: Any = None
    frequency_penalty: Any = None
    presence_penalty: Any = None
    logit_bias: Any = None
    logprobs: Any = None


class ChatCompletionRequest(_Sampling):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    metadata: dict[str, str] | None = None  # no effect on the result: accepted
    store: bool | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    parallel_tool_calls: bool | None = None
    top_logprobs: Any = None
    response_format: Any = None
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    reasoning_effort: Any = None
    modalities: Any = None
    audio: Any = None
    prediction: Any = None
    web_search_options: Any = None
    verbosity: Any = None


class CompletionRequest(_Sampling):
    """POST /v1/completions."""

    prompt: str | list[int] | list[str] | list[list[int]]
    best_of: Any = None
    echo: Any = None
    suffix: Any = None


class PoolingRequest(_Strict):
    """POST /pooling (vLLM's pooling API): the reward model's reward of each text of `input`, or of one conversation
    (`messages`, usually ending with the assistant's reply)."""

    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]] | None = None  # texts, or the RM's token ids
    messages: list[ChatMessage] | None = None
    user: str | None = None  # no effect on the result: accepted


class ClassificationRequest(_Strict):
    """POST /classify (vLLM's classification API): the reward of each text of `input`, as one class's score."""

    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]]
    user: str | None = None  # no effect on the result: accepted


def scoring_inputs(req: PoolingRequest | ClassificationRequest, limits: Limits) -> tuple[list[Any], list[str]]:
    """The request's scoring inputs (texts, token-id lists, or one conversation) and the field each one came from (for
    a 400 naming it)."""
    check_model(req.model, limits)
    messages = getattr(req, "messages", None)
    if messages is not None:
        if req.input is not None:
            raise InvalidRequest("give input (texts) or messages (one conversation), not both", "messages")
        return [chat_prompt(req)], ["messages"]
    if req.input is None:
        raise InvalidRequest("input is required: give a text or a list of texts to score (or messages: one conversation)",
                             "input", "missing_parameter")
    if isinstance(req.input, str):
        return [req.input], ["input"]
    if not req.input:
        raise InvalidRequest("input is an empty list: give at least one text (or token-id list) to score", "input")
    if isinstance(req.input[0], int):  # one sequence of the RM's token ids
        return [list(req.input)], ["input"]
    return list(req.input), [f"input[{i}]" for i in range(len(req.input))]


# field → (values that change nothing, what to do instead)
UNHONOURED: dict[str, tuple[tuple[Any, ...], str]] = {
    "top_p": ((1, 1.0), "ARGS chooses among the LM's top-k: set args.k instead, or leave top_p out"),
    "frequency_penalty": ((0, 0.0), "leave it out"),
    "presence_penalty": ((0, 0.0), "leave it out"),
    "logit_bias": (({},), "leave it out"),
    "logprobs": ((False, 0), "set args.return_rewards=true for the chosen tokens' LM logits and rewards"),
    "top_logprobs": ((0,), "set args.return_rewards=true for the chosen tokens' LM logits and rewards"),
    "best_of": ((1,), "send separate requests with different seeds and args.method='stochastic'"),
    "echo": ((False,), "leave it out (the prompt is not repeated)"),
    "suffix": (("",), "leave it out (no insertion mode)"),
    "response_format": (({"type": "text"},), "leave it out (no JSON mode)"),
    "tools": (([],), "leave it out (no tool calls)"),
    "tool_choice": (("none",), "leave it out (no tool calls)"),
    "functions": (([],), "leave it out (no function calls)"),
    "function_call": (("none",), "leave it out (no function calls)"),
    "reasoning_effort": ((), "leave it out"),
    "modalities": ((["text"],), "leave it out (text only)"),
    "audio": ((), "leave it out (text only)"),
    "prediction": ((), "leave it out (no predicted outputs)"),
    "web_search_options": ((), "leave it out"),
    "verbosity": ((), "leave it out"),
}


@dataclass(frozen=True)
class Limits:
    """What the translation needs to know of the served bundle and the server's defaults."""

    model_name: str  # the name responses carry
    max_context: int
    max_k: int
    default_k: int
    default_w: float
    model_names: tuple[str, ...] = ()  # every name a request may give as `model` (default: model_name only)


@dataclass(frozen=True)
class RequestPlan:
    """A checked request: what the engine runs (prompt ids and settings, checked once, here), and how to answer."""

    request: Request
    include_usage: bool
    return_rewards: bool

    @property
    def stream(self) -> bool:
        return self.request.stream


def check_common(req: _Sampling, limits: Limits) -> None:
    """Refuse what this server cannot do exactly, or will not take: another model, more than MAX_STOP stop strings,
    n > 1, fields that would change the result."""
    check_model(req.model, limits)
    stops = [req.stop] if isinstance(req.stop, str) else req.stop or []
    if len(stops) > MAX_STOP:
        raise InvalidRequest(f"stop holds {len(stops)} strings: at most {MAX_STOP} are allowed (as in the OpenAI API); "
                             "keep the ones that matter", "stop", "too_many_stop_sequences")
    if req.n is not None and req.n != 1:
        raise InvalidRequest(f"n={req.n} is not supported: args-serve returns one choice per request; send {req.n} requests "
                             "(with different seeds and args.method='stochastic' for different samples)", "n")
    for name, (neutral, fix) in UNHONOURED.items():
        value = getattr(req, name, None)
        if value is not None and not _is_neutral(value, neutral):
            raise InvalidRequest(f"{name}={value!r} is not supported by args-serve and would change the result: {fix}", name,
                                 "unsupported_parameter")


def check_model(model: str | None, limits: Limits) -> None:
    """Refuse a `model` this server does not serve (left out: the served one)."""
    names = limits.model_names or (limits.model_name,)
    if model is not None and model not in names:
        raise InvalidRequest(f"model {model!r} is not served here: this server serves {' or '.join(map(repr, names))} "
                             "(see GET /v1/models)", "model", "model_not_found")


def _is_neutral(value: Any, neutral: tuple[Any, ...]) -> bool:
    """`value` equals one of the values that change nothing (True is not 1 here: `top_p=true` is refused)."""
    return any(value == v and isinstance(value, bool) == isinstance(v, bool) for v in neutral)


def chat_prompt(req: "ChatCompletionRequest | PoolingRequest") -> list[dict[str, str]]:
    """The messages as the runtime's chat template takes them (text parts joined)."""
    if not req.messages:
        raise InvalidRequest("messages is empty: give at least one message", "messages")
    for i, message in enumerate(req.messages):
        if message.name is not None:  # chat templates may render it; ours are not given it, so refuse rather than drop it
            raise InvalidRequest(f"messages[{i}].name is not supported by args-serve: put the name in the content",
                                 f"messages[{i}].name", "unsupported_parameter")
        for j, part in enumerate(message.content if isinstance(message.content, list) else []):
            if part.type != "text" or part.text is None:
                raise InvalidRequest(f"messages[{i}].content[{j}] is a {part.type!r} part: args-serve serves text only "
                                     "(parts of type 'text' with a 'text' field)", f"messages[{i}].content[{j}]")
    return [{"role": m.role, "content": m.content if isinstance(m.content, str) else "".join(p.text for p in m.content)}
            for m in req.messages]


def completion_prompt(req: CompletionRequest) -> str | list[int]:
    """The prompt as text or token ids; a list of several prompts is refused (one request, one prompt)."""
    prompt = req.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        if len(prompt) != 1:
            raise InvalidRequest(f"prompt holds {len(prompt)} prompts: args-serve takes one prompt per request; send one request each",
                                 "prompt")
        prompt = prompt[0]
    return prompt


# generate()'s keywords → the request fields that carry them (a SettingError names the keyword; the 400 names the field)
FIELDS = {"k": "args.k", "w": "args.w", "method": "args.method", "temperature": "temperature", "max_new_tokens": "max_tokens",
          "seed": "seed", "stop": "stop", "ignore_eos": "args.ignore_eos"}


def prompt_ids(bundle: Any, prompt: Any, param: str) -> list[int]:
    """The prompt as checked token ids, by the runtime's own door (Bundle.prompt_ids: its forms, chat messages, ids in
    the vocabulary, room in the context); its error becomes a 400 naming `param`."""
    try:
        return bundle.prompt_ids(prompt, param)
    except ContextLengthError as e:
        raise InvalidRequest(str(e), param, "context_length_exceeded") from e
    except GenerationError as e:
        raise InvalidRequest(str(e), param) from e


def generation_settings(req: _Sampling, prompt_tokens: int, limits: Limits) -> Settings:
    """The request's fields as the runtime's generate() keywords, checked by the runtime's own check_settings (one home
    for every range), so a bad one gets a 400 naming its field. What is particular to the OpenAI API stays here: the
    server's defaults, temperature 0 .. 2 meaning nothing to a greedy request, max_tokens against the room left."""
    options = req.args or ArgsOptions()
    method = "greedy" if options.method is None else options.method
    keywords = dict(k=limits.default_k if options.k is None else options.k, w=limits.default_w if options.w is None else options.w,
                    method=method, temperature=_temperature(req.temperature, method),
                    max_new_tokens=_max_new_tokens(req, prompt_tokens, limits), seed=req.seed if method == "stochastic" else 0,
                    stop=req.stop, ignore_eos=options.ignore_eos)  # greedy never draws: the seed cannot change its tokens
    try:
        s = check_settings(limits.max_k, "generate", **keywords)
    except SettingError as e:
        field = FIELDS[e.keyword]
        raise InvalidRequest(str(e).replace(f"{e.keyword}=", f"{field}=", 1), field) from e
    return s


def _temperature(value: float | None, method: Any) -> Any:
    """The OpenAI field (0 .. 2; 0 is the argmax) as the runtime's temperature: a greedy request's is not used."""
    if value is not None and (not math.isfinite(value) or value < 0):
        raise InvalidRequest(f"temperature={value!r} must be a finite number >= 0", "temperature")
    if method == "greedy" or value is None:
        return DEFAULT_TEMPERATURE  # greedy takes the argmax: the temperature cannot change its tokens
    return value  # stochastic: the runtime refuses 0 (use args.method='greedy' for the argmax)


def _max_new_tokens(req: _Sampling, prompt_tokens: int, limits: Limits) -> int:
    """max_tokens (or max_completion_tokens); left out: the room left in the context."""
    room = limits.max_context - prompt_tokens
    requested = req.max_tokens
    param = "max_tokens"
    extra = getattr(req, "max_completion_tokens", None)
    if extra is not None:
        if requested is not None and requested != extra:
            raise InvalidRequest(f"max_tokens={requested} and max_completion_tokens={extra} disagree: give one of them",
                                 "max_completion_tokens")
        requested, param = extra, "max_completion_tokens"
    if requested is None:
        return room
    if requested < 1:
        raise InvalidRequest(f"{param}={requested} must be >= 1", param)
    if requested > room:
        raise InvalidRequest(f"the prompt ({prompt_tokens} tokens) + {param} ({requested}) exceed the model's context of "
                             f"{limits.max_context} tokens: lower {param} to at most {room} or shorten the prompt", param,
                             "context_length_exceeded")
    return requested
