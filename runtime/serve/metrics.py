"""Prometheus metrics of one server (or one Ray replica): requests, refusals by reason, tokens, queue depth, time to
first token, time per output token, and the LM's and RM's step times, in a registry of its own (GET /metrics). No
label ever holds what a client sent (a key, a path of its choosing): only route paths and our own error codes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ..engine import EngineHooks

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class ServeMetrics:
    """The server's metrics; `hooks()` feeds the engine's, `instrument()` times each model run of a bundle."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("args_requests", "Requests answered, by endpoint and outcome (ok, invalid, cancelled, error, "
                                "unavailable, refused, timeout)", ["endpoint", "outcome"], registry=r)
        self.refusals = Counter("args_refusals", "Requests turned away or ended by a rule, by reason: the error code they were "
                                "answered with (invalid_api_key, request_too_large, queue_full, request_timeout, "
                                "too_many_stop_sequences, context_length_exceeded, invalid_value, ...)", ["reason"], registry=r)
        self.prompt_tokens = Counter("args_prompt_tokens", "Prompt tokens of finished requests", registry=r)
        self.generation_tokens = Counter("args_generation_tokens", "Tokens generated for finished requests", registry=r)
        self.queue_depth = Gauge("args_queue_depth", "Requests waiting for the model", registry=r)
        self.running = Gauge("args_running_requests", "Requests in the model's current run", registry=r)
        self.batch_size = Histogram("args_batch_size", "Requests decoded together in one run", buckets=(1, 2, 4, 8, 16, 32, 64),
                                    registry=r)
        self.ttft = Histogram("args_time_to_first_token_seconds", "From arrival to the first generated token (queueing included)",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.per_token = Histogram("args_time_per_output_token_seconds", "Decode time per token after the first",
                                   buckets=STEP_BUCKETS, registry=r)
        self.latency = Histogram("args_request_latency_seconds", "From arrival to the last token", buckets=LATENCY_BUCKETS,
                                 registry=r)
        self.model_step = Histogram("args_model_step_seconds", "One run of a model graph: prefill (the prompt) or decode (one token)",
                                    ["model", "phase"], buckets=STEP_BUCKETS, registry=r)

    def hooks(self) -> EngineHooks:
        return EngineHooks(queue_depth=self.queue_depth.set, running=self.running.set, batch=self.batch_size.observe)

    def instrument(self, bundle: Any) -> None:
        """Time every run of the bundle's LM and RM graphs (each model's `run` is the one door its work goes through)."""
        for name, model in (("lm", bundle.lm), ("rm", bundle.rm)):
            model.run = self._timed(model.run, name)

    def _timed(self, run: Callable[[dict], dict], model: str) -> Callable[[dict], dict]:
        prefill, decode = self.model_step.labels(model, "prefill"), self.model_step.labels(model, "decode")

        def timed_run(feeds: dict, *rest: Any) -> dict:
            start = time.perf_counter()
            out = run(feeds, *rest)
            (decode if feeds["input_ids"].shape[1] == 1 else prefill).observe(time.perf_counter() - start)
            return out

        return timed_run

    def finished(self, endpoint: str, result: Any, submitted_at: float, first_token_at: float | None) -> None:
        """Record one request that got its full answer."""
        self.requests.labels(endpoint, "ok").inc()
        self.prompt_tokens.inc(result.prompt_tokens)
        self.generation_tokens.inc(len(result.token_ids))
        self.latency.observe(time.perf_counter() - submitted_at)
        if first_token_at is not None:
            self.ttft.observe(first_token_at - submitted_at)
        if len(result.token_ids) > 1:
            self.per_token.observe(result.timings["decode_ms_per_token"] / 1e3)

    def refused(self, endpoint: str | None, outcome: str, reason: str | None = None) -> None:
        """Record an answer that is not a result: by endpoint (a route's path; None for a refusal before routing) and
        outcome, and, when a rule refused it, by reason."""
        if endpoint is not None:
            self.requests.labels(endpoint, outcome).inc()
        if reason is not None:
            self.refusals.labels(reason).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
