"""The acceptance run's machinery: stages with time budgets, child processes with logs and timeouts, and a status
file rewritten after every stage, so a run cut off at its limit still leaves what it finished. Standard library
only: it runs before anything is installed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

PASSED, FAILED, SKIPPED, TIMED_OUT = "passed", "failed", "skipped", "timed out"


@dataclass
class StageResult:
    """What one stage did: its verdict, why, how long it took against its budget, and the facts it measured."""

    name: str
    status: str = SKIPPED
    detail: str = ""
    seconds: float = 0.0
    budget_s: float = 0.0
    data: dict = field(default_factory=dict)


@dataclass
class Context:
    """Everything the stages share: where things go, the child processes' environment, and the clock."""

    repo: Path
    out: Path  # the full results folder
    work: Path  # big and temporary things: installed packages, caches, bundles
    wheels: Path | None
    dry_run: bool
    quick: bool
    deadline: float  # time.monotonic() by which the whole run must be done
    python: str = sys.executable
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    facts: dict = field(default_factory=dict)  # what earlier stages found out (cuda works, SmolLM2 at hand, ...)
    background: dict[str, "Child"] = field(default_factory=dict)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def say(self, line: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        print(f"[{stamp}] {line}", flush=True)
        with open(self.out / "run.log", "a") as f:
            f.write(f"[{stamp}] {line}\n")


@dataclass
class Child:
    """A child process whose output goes to a log file; it is killed (with its process group) at its deadline."""

    argv: list[str]
    log: Path
    deadline: float
    process: subprocess.Popen | None = None
    started: float = 0.0

    def start(self, env: dict[str, str], cwd: Path) -> "Child":
        self.log.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.log, "ab")
        handle.write(f"$ {' '.join(self.argv)}\n".encode())
        handle.flush()
        self.started = time.monotonic()
        self.process = subprocess.Popen(self.argv, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=str(cwd),
                                        start_new_session=True)
        handle.close()
        return self

    def wait(self, until: float | None = None) -> int | None:
        """The exit status, or None if it was still running at `until` (or its own deadline) and was killed."""
        limit = min(self.deadline, until) if until is not None else self.deadline
        try:
            return self.process.wait(timeout=max(0.0, limit - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()

    @property
    def seconds(self) -> float:
        return round(time.monotonic() - self.started, 1)

    def tail(self, lines: int = 12) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def run_child(ctx: Context, argv: list[str], log: Path, budget_s: float, env: dict[str, str] | None = None) -> tuple[int | None, float]:
    """Run `argv` to completion within min(budget, time left); (exit status or None when killed, seconds)."""
    child = Child(argv, log, time.monotonic() + max(1.0, min(budget_s, ctx.left())))
    child.start(env or ctx.env, ctx.repo)
    status = child.wait()
    return status, child.seconds


@dataclass
class Stage:
    """One step of the run: a name, a time budget, and the function that does it (returns its StageResult)."""

    name: str
    budget_s: float
    run: Callable[[Context, "Stage"], StageResult]
    why: str = ""  # one line for --help and the summary
    kept_s: float = 0.0  # seconds the stages before it leave to it (the 7B bench after its background export)


def run_stages(ctx: Context, stages: list[Stage], after_each: Callable[[list[StageResult]], None]) -> list[StageResult]:
    """Every stage in order, each within its budget and the run's deadline; a stage that fails or raises is reported
    and the next one runs. `after_each` writes the results so far (the summary) after every stage."""
    results: list[StageResult] = []
    for index, stage in enumerate(stages):
        budget = min(stage.budget_s, max(0.0, ctx.left() - sum(later.kept_s for later in stages[index + 1:])))
        ctx.say(f"stage {stage.name}: starting (budget {budget:.0f} s, {ctx.left():.0f} s left in the run)")
        started = time.monotonic()
        if budget < 5:
            result = StageResult(stage.name, SKIPPED, "no time left in the run's budget")
        else:
            try:
                result = stage.run(ctx, Stage(stage.name, budget, stage.run, stage.why, stage.kept_s))
            except Exception as e:  # a bug in one stage must not stop the others
                result = StageResult(stage.name, FAILED, f"{type(e).__name__}: {e}")
        result.name, result.budget_s = stage.name, round(budget, 1)
        result.seconds = round(time.monotonic() - started, 1)
        ctx.say(f"stage {stage.name}: {result.status} in {result.seconds:.0f} s — {result.detail}")
        results.append(result)
        after_each(results)
    for child in ctx.background.values():
        child.kill()
    return results


def write_json(path: Path, doc) -> None:
    """Write JSON atomically (a run cut off mid-write leaves the previous version)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str))
    tmp.replace(path)


def as_dicts(results: list[StageResult]) -> list[dict]:
    return [asdict(r) for r in results]
