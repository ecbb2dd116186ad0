"""The FastAPI app factory: OpenAI routes (chat and text completions, models), Server-Sent Events, OpenAI-style errors,
/health and /metrics, behind the API-key check (security.py) and the limits (limits.py). The same app runs under
uvicorn (args-serve) and as a Ray Serve ingress (ray_app.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from .. import __version__
from ..errors import ArgsError, GenerationError, RequestCancelled
from ..scoring import rm_ids
from .config import ServeConfig
from .limits import Admission, BodyLimit, ScoringJob, Ticket, check_limits
from .protocol import (
    ChatCompletionRequest,
    ClassificationRequest,
    CompletionRequest,
    InvalidRequest,
    PoolingRequest,
    RequestPlan,
    chat_prompt,
    check_common,
    completion_prompt,
    generation_settings,
    prompt_ids,
    scoring_inputs,
)
from .refusals import Refused, error_json, error_response
from .responses import ChatResponseWriter, ModelCard, ModelList, ResponseWriter, scoring_response
from ..requests import Request as ArgsRequest, RequestHandle
from ..tokenizer import is_chat
from .security import SCORING_ROUTES, log_exposure, require_keys
from .state import ServerState
from .validation import validation_message

log = logging.getLogger("args_runtime.serve")
DONE = b"data: [DONE]\n\n"


class Unavailable(ArgsError):
    """The model is not loaded (yet, or it failed to load): HTTP 503."""


def create_app(config: ServeConfig, on_load_error: Callable[[BaseException], None] | None = None) -> FastAPI:
    """The args-serve app for one bundle. Its lifespan loads the bundle (in the background when
    `config.load_in_background`, so /health says 503 until it is ready) and stops the engine at shutdown."""
    app = FastAPI(title="args-serve", version=__version__, lifespan=_lifespan(config, on_load_error),
                  description="OpenAI-compatible ARGS (reward-guided search) decoding. ARGS's settings: `\"args\": {\"k\", \"w\", "
                              "\"method\", \"return_rewards\", \"ignore_eos\"}` in the body (OpenAI SDKs: `extra_body`).")
    check_limits(config.max_body_bytes, config.max_queue, config.request_timeout_s)
    _add_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    require_keys(app, config.api_keys, config.metrics_need_key)  # added last: it runs first, before a body is read

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        state = _state(request)
        body = {"status": state.status, "model": config.served_name, "replica": state.replica}
        if state.engine is not None:
            body["batching"] = state.engine.batching
        if state.error:
            body["error"] = state.error
        return JSONResponse(body, status_code=200 if state.healthy() else 503)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        return Response(_state(request).metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", response_model=ModelList)
    async def models(request: Request) -> ModelList:
        return ModelList(data=[ModelCard(id=name, created=_state(request).created) for name in config.listed_names])

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        state = _ready(request)
        plan = _plan(state, body, chat_prompt(body), "messages")
        return await _answer(request, state, plan, ChatResponseWriter(state.limits.model_name, plan.return_rewards))

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        state = _ready(request)
        plan = _plan(state, body, completion_prompt(body), "prompt")
        return await _answer(request, state, plan, ResponseWriter(state.limits.model_name, plan.return_rewards))

    # The reward model as a scoring endpoint, in vLLM's shape (its routes sit at the root, as vLLM's do; the API-key
    # middleware guards them as it guards /v1/*).
    @app.post("/pooling")
    async def pooling(body: PoolingRequest, request: Request) -> Response:
        return await _score(request, body, "pooling")

    @app.post("/classify")
    async def classify(body: ClassificationRequest, request: Request) -> Response:
        return await _score(request, body, "classify")

    return app


async def _score(request: Request, body: PoolingRequest | ClassificationRequest, kind: str) -> Response:
    """Each input's reward: checked here (400 naming the field), admitted as a generation is (503 when the queue is
    full), scored on the engine's thread between two steps."""
    state = _ready(request)
    items, fields = scoring_inputs(body, state.limits)
    sequences = []
    for item, field in zip(items, fields):
        try:
            sequences.append(rm_ids(state.bundle, item, field))
        except GenerationError as e:
            raise InvalidRequest(str(e), field) from e
    ticket = request.app.state.admission.admit(lambda: ScoringJob(state.engine.submit_scoring(sequences)))
    try:  # its deadline (--request-timeout) is Admission's, as a generation's
        rewards = await ticket.handle.wait()
    except RequestCancelled:
        if ticket.timeout is not None:
            raise ticket.timeout from None
        raise
    state.metrics.requests.labels(request.url.path, "ok").inc()
    state.metrics.prompt_tokens.inc(sum(map(len, sequences)))
    response = scoring_response(kind, state.limits.model_name, rewards, sum(map(len, sequences)))
    return Response(response.model_dump_json(), media_type="application/json", headers={"x-args-replica": state.replica})


def _lifespan(config: ServeConfig, on_load_error: Callable[[BaseException], None] | None):
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = ServerState(config)
        app.state.args = state
        app.state.admission = admission = Admission(config.max_batch, config.max_queue, config.request_timeout_s)
        log_exposure(config.api_keys, config.metrics_need_key)
        loading = None
        if config.load_in_background:
            loading = asyncio.create_task(_load(state, on_load_error))
        else:
            await asyncio.to_thread(state.load)
        try:
            yield
        finally:
            state.close()
            admission.close()
            if loading is not None and not loading.done():
                loading.cancel()

    return lifespan


async def _load(state: ServerState, on_load_error: Callable[[BaseException], None] | None) -> None:
    try:
        await asyncio.to_thread(state.load)
    except Exception as e:  # reported by /health; the CLI stops the server
        if on_load_error is not None:
            on_load_error(e)


def _state(request: Request) -> ServerState:
    return request.app.state.args


def _ready(request: Request) -> ServerState:
    state = _state(request)
    if not state.ready:
        raise Unavailable("the model failed to load: " + state.error if state.error else "the model is still loading: retry shortly")
    return state


def _plan(state: ServerState, body: Any, prompt: Any, param: str) -> RequestPlan:
    """Check a request and turn it into what the engine runs (400 naming the field on any bad value)."""
    limits = state.limits
    check_common(body, limits)
    if body.stream_options is not None and not body.stream:
        raise InvalidRequest("stream_options is only allowed with stream=true", "stream_options")
    ids = prompt_ids(state.bundle, prompt, param)
    settings = generation_settings(body, len(ids), limits)
    options = body.args
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    chat = prompt if is_chat(prompt) else None  # an RM that reads text renders the conversation in its own template
    return RequestPlan(ArgsRequest(ids, settings, body.stream, chat), include_usage, bool(options and options.return_rewards))


async def _answer(request: Request, state: ServerState, plan: RequestPlan, writer: ResponseWriter) -> Response:
    """Admit the request (503 when the queue is full), submit it, and answer it whole or as a stream."""
    endpoint = request.url.path
    admission: Admission = request.app.state.admission
    ticket = admission.admit(lambda: state.engine.submit(plan.request))
    handle = ticket.handle
    headers = {"x-args-replica": state.replica}
    if plan.stream:
        events = _sse(state, endpoint, ticket, writer, plan.include_usage)
        return StreamingResponse(events, media_type="text/event-stream", headers={**headers, "cache-control": "no-cache"})
    try:
        result = await _result_unless_disconnected(request, handle)
    except RequestCancelled:
        if ticket.timeout is not None:
            raise ticket.timeout from None
        raise
    state.metrics.finished(endpoint, result, handle.submitted_at, handle.first_token_at)
    return Response(writer.response(result).model_dump_json(), media_type="application/json", headers=headers)


async def _result_unless_disconnected(request: Request, handle: RequestHandle):
    """The result, or RequestCancelled as soon as the client disconnects (which also cancels the generation)."""
    waiter = asyncio.ensure_future(handle.wait())
    watcher = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait({waiter, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if waiter.done():
            return waiter.result()
        raise RequestCancelled("the client disconnected")
    finally:
        watcher.cancel()
        if not waiter.done():
            handle.cancel()
            waiter.cancel()


async def _disconnect(request: Request) -> None:
    """Returns when the client goes away (the body has been read, so the next ASGI message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _sse(state: ServerState, endpoint: str, ticket: Ticket, writer: ResponseWriter, include_usage: bool) -> AsyncIterator[bytes]:
    """The OpenAI stream: chunks as Server-Sent Events, then `data: [DONE]`. A client that goes away cancels the
    generator (Starlette cancels the response), which cancels the generation; a request past its deadline ends with
    the timeout's error object."""
    handle = ticket.handle

    async def events() -> AsyncIterator[bytes]:
        try:
            if (first := writer.opening()) is not None:
                yield _event(first)
            async for event in handle:
                if (chunk := writer.token(event)) is not None:
                    yield _event(chunk)
            result = await handle.wait()
            yield _event(writer.closing(result))
            if include_usage:
                yield _event(writer.usage(result))
            state.metrics.finished(endpoint, result, handle.submitted_at, handle.first_token_at)
        except RequestCancelled:
            if ticket.timeout is None:
                state.metrics.refused(endpoint, "cancelled")
                return
            state.metrics.refused(endpoint, ticket.timeout.outcome, ticket.timeout.code)
            yield _sse_line(ticket.timeout.event_json())
        except (asyncio.CancelledError, GeneratorExit):
            state.metrics.refused(endpoint, "cancelled")
            raise
        except Exception as e:  # an error after the 200 went out: OpenAI's in-stream error object
            outcome, status = ("invalid", 400) if isinstance(e, ArgsError) else ("error", 500)
            if status == 500:
                log.exception("stream failed")
            state.metrics.refused(endpoint, outcome)
            yield _sse_line(error_json(e, status, None, None))
        finally:
            handle.cancel()  # no-op when finished; stops the generation when the client went away
        yield DONE

    return events()


def _event(chunk: BaseModel) -> bytes:
    return _sse_line(chunk.model_dump_json())


def _sse_line(data: str) -> bytes:
    """One Server-Sent Event (compact JSON holds no newline, so one `data:` line carries it)."""
    return b"data: " + data.encode() + b"\n\n"


# ---------------------------------------------------------------------- errors


def _add_error_handlers(app: FastAPI) -> None:
    def refused(request: Request, outcome: str, reason: str | None = None) -> None:
        """Count an answer that is not a result: by endpoint and outcome (routes under /v1/ and the scoring routes), and
        a refusal by reason."""
        state = getattr(request.app.state, "args", None)
        if state is not None:
            path = request.url.path
            state.metrics.refused(path if path.startswith("/v1/") or path in SCORING_ROUTES else None, outcome, reason)

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> Response:
        message, param, code = validation_message(exc.errors())
        refused(request, "invalid", code)
        return error_response(message, 400, param, code)

    @app.exception_handler(InvalidRequest)
    async def on_invalid(request: Request, exc: InvalidRequest) -> Response:
        refused(request, "invalid", exc.code)
        return error_response(str(exc), 400, exc.param, exc.code)

    @app.exception_handler(Unavailable)
    async def on_unavailable(request: Request, exc: Unavailable) -> Response:
        refused(request, "unavailable", "model_not_ready")
        return error_response(str(exc), 503, None, "model_not_ready")

    @app.exception_handler(RequestCancelled)
    async def on_cancelled(request: Request, exc: RequestCancelled) -> Response:
        refused(request, "cancelled")
        return error_response(str(exc), 499, None, "cancelled")

    @app.exception_handler(ArgsError)
    async def on_args_error(request: Request, exc: ArgsError) -> Response:  # the runtime refused a setting
        refused(request, "invalid", type(exc).__name__)
        return error_response(str(exc), 400, None, type(exc).__name__)

    @app.exception_handler(HTTPException)
    async def on_http(request: Request, exc: HTTPException) -> Response:  # Refused (limits.py) is one
        if isinstance(exc, Refused):
            refused(request, exc.outcome, exc.code)
            return exc.response()
        return error_response(str(exc.detail), exc.status_code)

    @app.exception_handler(Exception)
    async def on_crash(request: Request, exc: Exception) -> Response:
        log.error("args-serve: %s %s failed", request.method, request.url.path, exc_info=exc)
        refused(request, "error")
        return error_response(f"internal error: {type(exc).__name__}: {exc}", 500)
