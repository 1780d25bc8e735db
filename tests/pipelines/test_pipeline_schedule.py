"""`skyfed schedule` driven by a controllable clock: cron fires, retries with backoff, graceful stop.

The models run through the real runner and record their runs in a real metadata database
(a temporary SKYFED_HOME). No region is needed: `ok_view` is a view (validated, nothing
stored) and `broken` reads a table the federation does not have, so each of its builds
fails for real at planning time.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from pathlib import Path

import pytest

from skyfed.errors import SkyfedError
from skyfed.pipelines import state
from skyfed.pipelines.project import load_project
from skyfed.pipelines.runner import run
from skyfed.pipelines.scheduler import Scheduler
from skyfed.query import connect
from skyfed.spec import load_spec

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "airline" / "skyfed.yaml"
T0 = datetime(2026, 1, 1, 0, 59, tzinfo=UTC).timestamp()


class Clock:
    """Time that moves only when the scheduler sleeps."""

    def __init__(self, start: float):
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SKYFED_HOME", str(tmp_path / "home"))
    return tmp_path


def _project(folder: Path):
    folder.mkdir()
    (folder / "ok_view.sql").write_text('/* config\nmaterialization: view\nschedule: "0 * * * *"\n*/\n'
                                        "SELECT region, count(*) AS n FROM flight_leg GROUP BY region\n")  # fmt: skip
    (folder / "broken.sql").write_text('/* config\nschedule: "30 1 * * *"\nretries: 2\n*/\nSELECT * FROM no_such_table\n')
    return load_project(folder)


def test_cron_fires_and_failures_retry_with_backoff(home) -> None:
    spec = load_spec(EXAMPLE)
    project = _project(home / "models")
    clock = Clock(T0)
    sched = Scheduler(project, functools.partial(run, spec, project, fed=connect(spec, cache=False), clock=clock),
                      clock=clock, sleep=clock.sleep, backoff=10.0)  # fmt: skip
    sched.run_forever(until=T0 + 3 * 3600)
    at = lambda h, m=0, s=0: datetime(2026, 1, 1, h, m, s, tzinfo=UTC).timestamp()
    fires = [(e["at"], e["models"]) for e in sched.history if e["event"] == "fire"]
    assert fires == [(at(1), ["ok_view"]), (at(1, 30), ["broken"]), (at(2), ["ok_view"]), (at(3), ["ok_view"])]
    retries = [(e["at"], e["attempt"]) for e in sched.history if e["event"] == "retry"]
    assert retries == [(at(1, 30, 10), 2), (at(1, 30, 30), 3)]  # backoff 10 s, then 20 s
    assert [e for e in sched.history if e["event"] == "gave_up"] == [
        {"event": "gave_up", "at": at(1, 30, 30), "model": "broken", "attempts": 3}]
    # every attempt is recorded in the metadata database, under one run id
    broken = state.runs(model="broken")
    assert sorted(r["attempt"] for r in broken) == [1, 2, 3]
    assert {r["status"] for r in broken} == {"failed"} and len({r["run_id"] for r in broken}) == 1
    assert all("no_such_table" in r["detail"]["error"] for r in broken)
    assert all(r["trigger"] == "schedule" for r in broken)
    assert [r["status"] for r in state.runs(model="ok_view")] == ["ok", "ok", "ok"]
    assert max(clock.sleeps) <= sched.max_sleep


def test_stop_ends_the_loop_between_builds(home) -> None:
    spec = load_spec(EXAMPLE)
    project = _project(home / "models")
    clock = Clock(T0)
    sched: Scheduler

    def on_event(event: dict) -> None:
        if event["event"] == "fire":
            sched.stop()  # as the SIGTERM handler does, in the middle of a run

    sched = Scheduler(project, functools.partial(run, spec, project, fed=connect(spec, cache=False)),
                      clock=clock, sleep=clock.sleep, on_event=on_event)  # fmt: skip
    sched.run_forever(until=T0 + 24 * 3600)
    events = [e["event"] for e in sched.history]
    assert events == ["start", "fire", "stop"]
    assert [r["status"] for r in state.runs(model="ok_view")] == ["ok"]  # the build in progress finished


def test_no_schedule_is_an_error(home) -> None:
    folder = home / "m"
    folder.mkdir()
    (folder / "a.sql").write_text("SELECT 1 AS x")
    with pytest.raises(SkyfedError, match="no model has a schedule"):
        Scheduler(load_project(folder), lambda *a, **k: {})
