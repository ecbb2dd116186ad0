"""What a generation returns, and the per-prompt books behind it: tokens so far, stop strings matched on the decoded
text, why a row finished, and the timings each result carries."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .books import EOS, LIMIT, Step


@dataclass
class GenerationResult:
    """What one prompt produced: new tokens only, their text, and why generation stopped."""

    token_ids: list[int]
    text: str
    chosen_logits: list[float]
    rewards: list[float]
    finish_reason: str  # "eos" | "stop" | "length" | "context"
    prompt_tokens: int
    timings: dict[str, Any] = field(default_factory=dict)


@dataclass
class TokenEvent:
    """One streamed token: its id, the text it adds, its logit and reward; `result` is set on the last one."""

    token_id: int
    text: str
    logit: float
    reward: float
    result: GenerationResult | None = None


class Row:
    """One prompt's books: tokens so far and whether (and why) it has finished. Rows of a batch share one left-padded
    cache, so the longest prompt's positions bound everyone's context (`context_budget`)."""

    def __init__(self, prompt_len: int, budget: int, context_budget: int, decode: Callable[[list[int]], str]) -> None:
        self.prompt_len, self.ids, self.logits, self.rewards = prompt_len, [], [], []
        self.limit, self.limit_reason = (budget, "length") if budget <= context_budget else (context_budget, "context")
        self.finish_reason: str | None = None
        self.stop_text = ""  # the text cut before a stop string, when one ended the row
        self.decode = decode

    @property
    def text(self) -> str:
        return self.stop_text if self.finish_reason == "stop" else self.decode(self.ids)

    def record(self, step: Step, i: int, stops: list[str]) -> None:
        """Record row i's token; the books flagged EOS and the token limit, stop strings are matched on text here."""
        finish = step.finish[i]
        self.ids.append(int(step.tokens[i]))
        self.logits.append(float(step.logits[i]))
        self.rewards.append(float(step.rewards[i]))
        if finish == EOS:
            self.finish_reason = "eos"
        elif stops:
            text = self.decode(self.ids)
            hits = [text.find(stop) for stop in stops if stop in text]
            if hits:
                self.finish_reason, self.stop_text = "stop", text[: min(hits)]
        if self.finish_reason is None and finish == LIMIT:
            self.finish_reason = self.limit_reason

    def result(self, clock: list[float], engine: dict[str, Any]) -> GenerationResult:
        """`clock[i]`: seconds from the start until step i's token was chosen (the batch shares the steps)."""
        n = len(self.ids)
        mine = clock[:n]
        timings = {
            "time_to_first_token_ms": mine[0] * 1e3,
            "decode_ms_per_token": (mine[-1] - mine[0]) * 1e3 / (n - 1) if n > 1 else 0.0,
            "total_ms": mine[-1] * 1e3,
            "step_ms": [round((b - a) * 1e3, 4) for a, b in zip(mine, mine[1:])],  # decode steps, after the first token
            **engine,
        }
        return GenerationResult(self.ids, self.text, self.logits, self.rewards, self.finish_reason or "length", self.prompt_len, timings)


Drive = Iterator[tuple[list[Row], float]]  # after every step: the rows and the seconds since the start


def collect(drive: Drive, engine: dict[str, Any]) -> list[GenerationResult]:
    """Run a drive to its end; one result per row."""
    clock: list[float] = []
    rows: list[Row] = []
    for rows, elapsed in drive:
        clock.append(elapsed)
    return [r.result(clock, engine) for r in rows]


def stream_events(drive: Drive, stops: list[str], engine: dict[str, Any]) -> Iterator[TokenEvent]:
    """One event per token of a single-row drive (see TokenStream); the last event carries the result."""
    events = TokenStream(stops, engine)
    for rows, elapsed in drive:
        yield events.next(rows[0], elapsed)


class TokenStream:
    """Turns one row's growth into token events, one per step. Text that could still begin a stop string is held back
    until it is known not to be one; the event of the row's last token carries its result."""

    def __init__(self, stops: list[str], engine: dict[str, Any]) -> None:
        self.stops, self.engine = stops, engine
        self.clock: list[float] = []  # seconds from the start until each token was chosen
        self.shown = ""

    def next(self, row: Row, elapsed: float) -> TokenEvent:
        """The event of the token `row` just recorded, `elapsed` seconds after the start."""
        self.clock.append(elapsed)
        done = row.finish_reason is not None
        text = row.text
        visible = text if done else text[: safe_length(text, self.stops)]
        delta = visible[len(self.shown) :]
        self.shown += delta
        return TokenEvent(row.ids[-1], delta, row.logits[-1], row.rewards[-1], row.result(self.clock, self.engine) if done else None)


def safe_length(text: str, stops: list[str]) -> int:
    """How much of a growing text can be shown: not a partial UTF-8 character, nor a tail that may begin a stop string."""
    end = len(text) - 1 if text.endswith("\ufffd") else len(text)
    for cut in range(max(0, end - max((len(s) for s in stops), default=0) + 1), end):
        if any(stop.startswith(text[cut:end]) for stop in stops):
            return cut
    return end
