"""Start, stop and report the local federation: records, ports, readiness, clear errors."""

from __future__ import annotations

import os
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil

from skyfed.errors import SkyfedError
from skyfed.localenv.base import Missing, Service
from skyfed.localenv.bigquery import BigQuery
from skyfed.localenv.gcs import Gcs
from skyfed.localenv.ports import pick_port, release
from skyfed.localenv.postgres import Postgres
from skyfed.localenv.pubsub import PubSub
from skyfed.localenv.state import (
    Paths,
    ServiceRecord,
    create_time_of,
    find_process,
    load_record,
    log_tail,
    now_iso,
    save_record,
    terminate,
)

SERVICES: tuple[Service, ...] = (Postgres(), BigQuery(), Gcs(), PubSub())
Home = str | os.PathLike[str] | None

_PORT_IN_USE = re.compile(r"address already in use|could not bind|failed to bind|BindException", re.IGNORECASE)


@dataclass
class ServiceStatus:
    """What `skyfed status` shows for one service."""

    name: str
    title: str
    state: str  # running | stopped | missing | failed
    pid: int | None = None
    endpoints: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    log: str | None = None
    version: str | None = None
    persists_data: bool = False
    optional: bool = False
    started_at: str | None = None
    detail: str | None = None  # why missing/failed
    hint: str | None = None  # what to do about it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FederationStatus:
    """The state of every local service under one home."""

    home: str
    services: list[ServiceStatus]

    def __getitem__(self, name: str) -> ServiceStatus:
        for svc in self.services:
            if svc.name == name:
                return svc
        raise KeyError(name)

    @property
    def running(self) -> list[str]:
        return [s.name for s in self.services if s.state == "running"]

    def to_dict(self) -> dict[str, Any]:
        return {"home": self.home, "services": [s.to_dict() for s in self.services]}


class _StartError(Exception):
    def __init__(self, message: str, hint: str, port_in_use: bool = False):
        super().__init__(message)
        self.message, self.hint, self.port_in_use = message, hint, port_in_use


def _alive(svc: Service, paths: Paths, rec: ServiceRecord | None) -> psutil.Process | None:
    if rec is None or rec.pid is None:
        return None
    return find_process(rec.pid, rec.create_time, svc.markers(paths, rec.ports))


def _status_of(svc: Service, paths: Paths) -> ServiceStatus:
    rec = load_record(paths, svc.name)
    st = ServiceStatus(
        name=svc.name,
        title=svc.title,
        state="stopped",
        log=str(paths.log(svc.name)),
        persists_data=svc.persists,
        optional=svc.optional,
        ports=dict(rec.ports) if rec else {},
    )
    proc = _alive(svc, paths, rec)
    if proc is not None and rec is not None:
        st.state, st.pid, st.started_at = "running", rec.pid, rec.started_at
        st.endpoints = svc.endpoints(rec.ports)
    else:
        try:
            svc.locate()
        except Missing as exc:
            st.state, st.detail, st.hint = "missing", exc.message, exc.hint
        else:
            if rec is not None and rec.state == "failed":
                st.state, st.detail = "failed", rec.error
                st.hint = f"see {st.log}; `skyfed up` retries"
            elif rec is not None and rec.state in ("running", "starting"):
                st.state = "failed"
                st.detail = f"exited unexpectedly (pid {rec.pid} is gone or is no longer ours)"
                st.hint = f"`skyfed up` restarts it; see {st.log}"
    st.version = svc.version() if st.state != "missing" else None
    return st


def status(home: Home = None) -> FederationStatus:
    """The state of each local service under `home` (default: skyfed.home.state_dir())."""
    paths = Paths.of(home)
    with ThreadPoolExecutor(max_workers=len(SERVICES)) as pool:
        services = list(pool.map(lambda s: _status_of(s, paths), SERVICES))
    return FederationStatus(home=str(paths.home), services=services)


def _timeout(svc: Service, timeout: float | None) -> float:
    if timeout is not None:
        return timeout
    if env := os.environ.get("SKYFED_LOCALENV_TIMEOUT"):
        return float(env)
    return svc.ready_timeout


def _wait_ready(svc: Service, paths: Paths, ports: dict[str, int], pid: int, ct: float | None, log_start: int, timeout: float) -> None:
    log = paths.log(svc.name)
    deadline = time.monotonic() + timeout
    while True:
        if find_process(pid, ct, []) is None:
            tail = log_tail(log, start=log_start)
            in_use = bool(_PORT_IN_USE.search(tail))
            what = f"could not listen on 127.0.0.1 port(s) {ports}: the port is in use" if in_use else "exited while starting"
            raise _StartError(f"{svc.name} ({svc.title} stand-in) {what}", f"see {log}; its last lines:\n{tail}", in_use)
        if svc.probe(paths, ports):
            return
        if time.monotonic() > deadline:
            tail = log_tail(log, start=log_start)
            raise _StartError(
                f"{svc.name} ({svc.title} stand-in) did not become ready within {timeout:.0f} s",
                f"see {log} (raise SKYFED_LOCALENV_TIMEOUT on a slow machine); its last lines:\n{tail}",
            )
        time.sleep(0.1)


def _start(svc: Service, paths: Paths, timeout: float | None) -> str:
    """Start one service unless it already runs; returns what happened."""
    rec = load_record(paths, svc.name) or ServiceRecord(name=svc.name)
    if _alive(svc, paths, rec) is not None:
        return "running"
    svc.locate()  # Missing propagates
    log = paths.log(svc.name)
    wait = _timeout(svc, timeout)
    preferred = dict(rec.ports)
    for attempt in (1, 2):
        ports = {pn: pick_port(preferred.get(pn)) for pn in svc.port_names}
        pid: int | None = None
        ct: float | None = None
        try:
            svc.prepare(paths, ports)
            log_start = log.stat().st_size if log.exists() else 0
            try:
                pid, cmd = svc.launch(paths, ports, log)
            except RuntimeError as exc:
                tail = log_tail(log, start=log_start)
                raise _StartError(
                    f"{svc.name} ({svc.title} stand-in) failed to start: {exc}",
                    f"see {log}; its last lines:\n{tail}",
                    bool(_PORT_IN_USE.search(tail)),
                ) from None
            ct = create_time_of(pid)
            rec = ServiceRecord(
                name=svc.name, state="starting", pid=pid, create_time=ct, ports=ports,
                started_at=now_iso(), command=cmd, log=str(log),
            )  # fmt: skip
            save_record(paths, rec)
            _wait_ready(svc, paths, ports, pid, ct, log_start, wait)
            svc.after_ready(paths, ports)
            rec.state = "running"
            save_record(paths, rec)
            return "started"
        except _StartError as exc:
            if pid is not None and (proc := find_process(pid, ct, [])) is not None:
                terminate(proc, timeout=5)  # ours and half-started: do not leave it behind
            if exc.port_in_use and attempt == 1:
                preferred = {}  # somebody took the port between our check and the bind: new ports
                continue
            rec = ServiceRecord(name=svc.name, state="failed", ports=ports, log=str(log), error=exc.message)
            save_record(paths, rec)
            raise SkyfedError(exc.message, exc.hint) from None
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:  # prepare: initdb, useradd, files
            rec = ServiceRecord(name=svc.name, state="failed", ports=ports, log=str(log), error=str(exc))
            save_record(paths, rec)
            tail = log_tail(log)
            raise SkyfedError(
                f"{svc.name} ({svc.title} stand-in) failed to start: {exc}",
                f"see {log}" + (f"; its last lines:\n{tail}" if tail else ""),
            ) from None
        finally:
            release(*ports.values())
    raise AssertionError("unreachable")


def up(home: Home = None, *, timeout: float | None = None) -> FederationStatus:
    """Start every local service that is not running, concurrently, and wait until each answers.

    Idempotent: running services are left alone; dead ones (killed, stale pid) are restarted
    on their recorded ports when those are still free. A missing optional service (Pub/Sub)
    shows as "missing" without failing; any other failure raises SkyfedError naming the
    service and its log, after the other services have been started.
    """
    paths = Paths.of(home)
    errors: list[SkyfedError] = []
    with paths.lock():
        with ThreadPoolExecutor(max_workers=len(SERVICES)) as pool:
            futures = {svc.name: (svc, pool.submit(_start, svc, paths, timeout)) for svc in SERVICES}
            for svc, fut in futures.values():
                try:
                    fut.result()
                except Missing as exc:
                    if not svc.optional:
                        errors.append(SkyfedError(f"{svc.name} ({svc.title} stand-in): {exc.message}", exc.hint))
                except SkyfedError as exc:
                    errors.append(exc)
    result = status(paths.home)
    if len(errors) == 1:
        raise SkyfedError(errors[0].message, errors[0].hint, details=result)
    if errors:
        raise SkyfedError(
            f"{len(errors)} local services failed to start: " + "; ".join(e.message for e in errors),
            "\n".join(e.hint or "" for e in errors),
            details=result,
        )
    return result


def _stop(svc: Service, paths: Paths) -> str:
    rec = load_record(paths, svc.name)
    if rec is None:
        return "absent"
    proc = _alive(svc, paths, rec)
    action = "not running"
    if proc is not None:
        svc.stop(paths, rec, proc)
        action = "stopped"
    # Keep the ports for the next start; forget a pid that is not (or no longer) ours.
    rec.state, rec.pid, rec.create_time, rec.error, rec.stopped_at = "stopped", None, None, None, now_iso()
    save_record(paths, rec)
    return action


def down(home: Home = None) -> FederationStatus:
    """Stop the services this home started (identity checked first; PostgreSQL via pg_ctl stop -m fast).

    Idempotent. A recorded pid that now belongs to another process is never signalled.
    """
    paths = Paths.of(home)
    with paths.lock(), ThreadPoolExecutor(max_workers=len(SERVICES)) as pool:
        list(pool.map(lambda s: _stop(s, paths), SERVICES))
    return status(paths.home)


def service_env(home: Home = None) -> dict[str, str]:
    """Environment variables (see docs/dev/conventions.md) for the services running under `home`."""
    paths = Paths.of(home)
    env: dict[str, str] = {}
    for svc in SERVICES:
        rec = load_record(paths, svc.name)
        if rec is not None and _alive(svc, paths, rec) is not None:
            env.update(svc.env(paths, rec.ports))
    return env


def apply_service_env(home: Home = None, *, override: bool = True) -> dict[str, str]:
    """Put `service_env(home)` into os.environ and return what was set.

    Overrides existing values by default: the federation's values describe what is
    actually running under this home, while a value left in the shell from another
    home or an earlier session points at a dead port and fails confusingly later.
    Pass override=False to keep values the user exported on purpose (e.g. their own
    STORAGE_EMULATOR_HOST). Variables of services that are not running are left as is.
    """
    applied = {}
    for key, value in service_env(home).items():
        if override or key not in os.environ:
            os.environ[key] = value
            applied[key] = value
    return applied
