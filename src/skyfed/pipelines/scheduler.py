"""`skyfed schedule`: run each model at its cron times (croniter), retry failures with backoff.

Long-running and interruptible: `stop()` (wired to SIGTERM/SIGINT by the CLI) ends the loop
after the build in progress, never in the middle of a commit. Time comes from an
injectable clock and sleep, so tests drive hours of schedule in milliseconds.

Semantics: at start, each model's next fire time is the first cron time after "now" (a
missed time while the scheduler was down is not replayed: the next run rebuilds whatever
changed anyway). When several models are due together they run as one `skyfed run`
(dependency order, parallel where independent). A model whose build fails is retried
after `backoff * 2**(attempt-1)` seconds, up to its `retries`; every attempt is recorded.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from croniter import croniter

from skyfed.errors import SkyfedError
from skyfed.pipelines.project import Project
from skyfed.pipelines.runner import BAD

RunFn = Callable[..., dict[str, Any]]


@dataclass
class _Retry:
    attempt: int
    due: float
    run_id: str


@dataclass
class Scheduler:
    project: Project
    run_models: RunFn  # (names, *, trigger, attempt, run_id) -> run result, e.g. functools.partial(runner.run, spec, project)
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], Any] | None = None  # default: wait on the stop event
    backoff: float = 30.0
    max_sleep: float = 60.0
    on_event: Callable[[dict[str, Any]], None] | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    next_due: dict[str, float] = field(default_factory=dict)
    retries: dict[str, _Retry] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.scheduled = [n for n in self.project.order if self.project.models[n].config.schedule]
        if not self.scheduled:
            raise SkyfedError("no model has a schedule", "add `schedule: \"<cron>\"` to a model's config block")
        now = self.clock()
        for name in self.scheduled:
            self.next_due[name] = self._next(name, now)

    def _next(self, name: str, after: float) -> float:
        cron = croniter(self.project.models[name].config.schedule, datetime.fromtimestamp(after, UTC))
        return float(cron.get_next(float))

    def stop(self) -> None:
        """Ask the loop to end after the current build (signal-safe)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _emit(self, event: dict[str, Any]) -> None:
        self.history.append(event)
        if self.on_event:
            self.on_event(event)

    def tick(self) -> list[dict[str, Any]]:
        """Run whatever is due now (cron fires and retries); returns the run records of this tick."""
        now = self.clock()
        due = [n for n in self.scheduled if self.next_due[n] <= now]
        for n in due:
            self.next_due[n] = self._next(n, now)
        retry_due = [n for n, r in self.retries.items() if r.due <= now and n not in due]
        records: list[dict[str, Any]] = []
        if due:
            self._emit({"event": "fire", "at": now, "models": due})
            out = self.run_models(due, trigger="schedule", attempt=1, run_id=uuid.uuid4().hex[:16])
            records += self._after(out, now, attempt_of={n: 1 for n in due})
        for n in retry_due:
            r = self.retries.pop(n)
            self._emit({"event": "retry", "at": now, "model": n, "attempt": r.attempt})
            out = self.run_models([n], trigger="schedule", attempt=r.attempt, run_id=r.run_id)
            records += self._after(out, now, attempt_of={n: r.attempt}, run_id=r.run_id)
        return records

    def _after(self, out: dict[str, Any], now: float, attempt_of: dict[str, int], run_id: str | None = None) -> list[dict[str, Any]]:
        for row in out["results"]:
            name = row["model"]
            if name not in attempt_of:
                continue
            if row["status"] not in BAD:
                self.retries.pop(name, None)
                continue
            attempt = attempt_of[name]
            limit = self.project.models[name].config.retries
            if row["status"] == "failed" and attempt <= limit:
                wait = self.backoff * 2 ** (attempt - 1)
                self.retries[name] = _Retry(attempt + 1, now + wait, run_id or out["run_id"])
                self._emit({"event": "retry_scheduled", "at": now, "model": name, "attempt": attempt + 1, "in_seconds": wait})
            else:
                self._emit({"event": "gave_up", "at": now, "model": name, "attempts": attempt})
        return list(out["results"])

    def next_wake(self) -> float:
        times = list(self.next_due.values()) + [r.due for r in self.retries.values()]
        return min(times)

    def run_forever(self, until: float | None = None) -> None:
        """Loop until stop() (or the clock passes `until`, for tests)."""
        self._emit({"event": "start", "at": self.clock(), "models": self.scheduled})
        while not self._stop.is_set():
            now = self.clock()
            if until is not None and now >= until:
                break
            wake = self.next_wake()
            if until is not None:
                wake = min(wake, until)
            if wake > now:
                wait = min(wake - now, self.max_sleep)
                if self.sleep is not None:
                    self.sleep(wait)
                else:
                    self._stop.wait(wait)
                continue
            self.tick()
        self._emit({"event": "stop", "at": self.clock()})
