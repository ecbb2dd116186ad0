"""The OpenAI response bodies and stream chunks args-serve sends (pydantic models mirroring the API), built from the
runtime's GenerationResult and TokenEvent. With `args.return_rewards` each choice (or chunk) also carries `args`:
the chosen tokens' ids, LM logits and rewards."""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, Field

from ..generator import GenerationResult, TokenEvent

FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length", "context": "length"}  # runtime → OpenAI


def _omit_none(value: object) -> bool:
    return value is None


class ArgsTrace(BaseModel):
    """What ARGS chose: per token, its id, the LM's logit and the reward model's reward."""

    token_ids: list[int]
    logits: list[float]
    rewards: list[float]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str
    logprobs: None = None
    args: ArgsTrace | None = Field(default=None, exclude_if=_omit_none)


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = Field(default=None, exclude_if=_omit_none)
    content: str | None = Field(default=None, exclude_if=_omit_none)


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None
    logprobs: None = None
    args: ArgsTrace | None = Field(default=None, exclude_if=_omit_none)


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = Field(default=None, exclude_if=_omit_none)


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: str | None
    logprobs: None = None
    args: ArgsTrace | None = Field(default=None, exclude_if=_omit_none)


class Completion(BaseModel):
    """A completion, or (object "text_completion" too, as OpenAI sends it) one chunk of a streamed completion."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = Field(default=None, exclude_if=_omit_none)


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "args-rt"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def usage_of(result: GenerationResult) -> Usage:
    n = len(result.token_ids)
    return Usage(prompt_tokens=result.prompt_tokens, completion_tokens=n, total_tokens=result.prompt_tokens + n)


def trace_of(result: GenerationResult) -> ArgsTrace:
    return ArgsTrace(token_ids=result.token_ids, logits=result.chosen_logits, rewards=result.rewards)


class ResponseWriter:
    """Builds one request's answer: the whole response, or its stream chunks (first, one per token, last, usage)."""

    prefix = "cmpl"

    def __init__(self, model: str, return_rewards: bool) -> None:
        self.model, self.return_rewards = model, return_rewards
        self.id = f"{self.prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def response(self, result: GenerationResult) -> BaseModel:
        trace = trace_of(result) if self.return_rewards else None
        choice = CompletionChoice(text=result.text, finish_reason=FINISH_REASONS[result.finish_reason], args=trace)
        return Completion(id=self.id, created=self.created, model=self.model, choices=[choice], usage=usage_of(result))

    def opening(self) -> BaseModel | None:
        """A chunk sent before the first token, if the API has one."""
        return None

    def token(self, event: TokenEvent) -> BaseModel | None:
        """The chunk of one token: its text (may be empty while a possible stop string is held back) and, asked for,
        its id, logit and reward; None when there is nothing to send."""
        trace = ArgsTrace(token_ids=[event.token_id], logits=[event.logit], rewards=[event.reward]) if self.return_rewards else None
        if not event.text and trace is None:
            return None
        return self._chunk(event.text, None, trace)

    def closing(self, result: GenerationResult) -> BaseModel:
        return self._chunk("", FINISH_REASONS[result.finish_reason], None)

    def usage(self, result: GenerationResult) -> BaseModel:
        return Completion(id=self.id, created=self.created, model=self.model, choices=[], usage=usage_of(result))

    def _chunk(self, text: str, finish_reason: str | None, trace: ArgsTrace | None) -> BaseModel:
        choice = CompletionChoice(text=text, finish_reason=finish_reason, args=trace)
        return Completion(id=self.id, created=self.created, model=self.model, choices=[choice])


class ChatResponseWriter(ResponseWriter):
    prefix = "chatcmpl"

    def response(self, result: GenerationResult) -> BaseModel:
        trace = trace_of(result) if self.return_rewards else None
        choice = ChatChoice(message=AssistantMessage(content=result.text), finish_reason=FINISH_REASONS[result.finish_reason], args=trace)
        return ChatCompletion(id=self.id, created=self.created, model=self.model, choices=[choice], usage=usage_of(result))

    def opening(self) -> BaseModel:
        return self._delta(Delta(role="assistant", content=""), None, None)

    def closing(self, result: GenerationResult) -> BaseModel:
        return self._delta(Delta(), FINISH_REASONS[result.finish_reason], None)

    def usage(self, result: GenerationResult) -> BaseModel:
        return ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=[], usage=usage_of(result))

    def _chunk(self, text: str, finish_reason: str | None, trace: ArgsTrace | None) -> BaseModel:
        return self._delta(Delta(content=text), finish_reason, trace)

    def _delta(self, delta: Delta, finish_reason: str | None, trace: ArgsTrace | None) -> BaseModel:
        choice = ChatChunkChoice(delta=delta, finish_reason=finish_reason, args=trace)
        return ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=[choice])


class PoolingData(BaseModel):
    index: int
    object: Literal["pooling"] = "pooling"
    data: list[float]  # [reward]


class PoolingResponse(BaseModel):
    """POST /pooling's answer, as vLLM's pooling response: one `data` entry per input, holding its reward."""

    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[PoolingData]
    usage: Usage


class ClassificationData(BaseModel):
    index: int
    label: str = "reward"
    probs: list[float]  # [reward]: the RM's raw score (no softmax: one class)
    num_classes: int = 1


class ClassificationResponse(BaseModel):
    """POST /classify's answer, as vLLM's classification response, one class: the reward."""

    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[ClassificationData]
    usage: Usage


def scoring_response(kind: str, model: str, rewards: list[float], prompt_tokens: int) -> BaseModel:
    """/pooling's (`kind` "pooling") or /classify's ("classify") answer: each input's reward, and the RM tokens read."""
    usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=0, total_tokens=prompt_tokens)
    created, tag = int(time.time()), uuid.uuid4().hex
    if kind == "pooling":
        return PoolingResponse(id=f"pool-{tag}", created=created, model=model, usage=usage,
                               data=[PoolingData(index=i, data=[r]) for i, r in enumerate(rewards)])
    return ClassificationResponse(id=f"classify-{tag}", created=created, model=model, usage=usage,
                                  data=[ClassificationData(index=i, probs=[r]) for i, r in enumerate(rewards)])
