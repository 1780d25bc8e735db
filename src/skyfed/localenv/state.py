"""On-disk state of the local federation: one JSON record per service, plus process identity.

Layout below the state folder (``skyfed.home.state_dir()`` or an explicit home):

    services/<name>.json   pid, create_time, ports, started_at, command, log path, state
    services/<name>/       the service's own data (PostgreSQL data dir, DuckDB file, ...)
    logs/<name>.log        everything the service writes

A record outlives `down` (state "stopped") so a restart reuses its ports. A pid alone
never proves a process is ours: pids are reused, so identity is pid + psutil create
time + words that must appear in the command line.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from skyfed.home import state_dir


@dataclass
class Paths:
    """Where one home keeps records, data and logs."""

    home: Path

    @classmethod
    def of(cls, home: str | os.PathLike[str] | None) -> Paths:
        if home is None:
            return cls(state_dir())
        path = Path(home).expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        return cls(path)

    @property
    def services(self) -> Path:
        path = self.home / "services"
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def logs(self) -> Path:
        path = self.home / "logs"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def record(self, name: str) -> Path:
        return self.services / f"{name}.json"

    def data(self, name: str) -> Path:
        path = self.services / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Serialise `up`/`down` on one home across processes (two shells, make + pytest)."""
        with open(self.services / ".lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


@dataclass
class ServiceRecord:
    """What `up` remembers about one service it started."""

    name: str
    state: str = "stopped"  # running | stopped | failed (as last written; liveness is checked)
    pid: int | None = None
    create_time: float | None = None
    ports: dict[str, int] = field(default_factory=dict)
    started_at: str | None = None
    stopped_at: str | None = None
    command: list[str] = field(default_factory=list)
    log: str | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def load_record(paths: Paths, name: str) -> ServiceRecord | None:
    """The record for `name`, or None when absent or unreadable (a damaged record is treated as absent)."""
    path = paths.record(name)
    try:
        raw = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    known = set(ServiceRecord.__dataclass_fields__)
    try:
        rec = ServiceRecord(**{k: v for k, v in raw.items() if k in known})
        rec.ports = {str(k): int(v) for k, v in (rec.ports or {}).items()}
        rec.pid = int(rec.pid) if rec.pid is not None else None
        rec.create_time = float(rec.create_time) if rec.create_time is not None else None
    except (TypeError, ValueError):
        return None
    return rec


def save_record(paths: Paths, rec: ServiceRecord) -> None:
    """Write atomically so a crash mid-write never leaves half a record."""
    path = paths.record(rec.name)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rec.to_json(), indent=2) + "\n")
    os.replace(tmp, path)


def _reap(pid: int) -> None:
    """Collect a zombie child of this process (services started in-process by tests)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def find_process(pid: int | None, create_time: float | None, markers: Sequence[str]) -> psutil.Process | None:
    """The live process with this pid *and* create time whose command line holds every marker."""
    if not pid or create_time is None:
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            _reap(pid)
            return None
        if abs(proc.create_time() - create_time) > 0.05:
            return None
        cmdline = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    if not all(marker in cmdline for marker in markers):
        return None
    return proc


def create_time_of(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def terminate(proc: psutil.Process, timeout: float = 10.0) -> None:
    """SIGTERM the process (and its session group when it leads one), SIGKILL after `timeout`."""
    pid = proc.pid
    try:
        leads_group = os.getpgid(pid) == pid
    except ProcessLookupError:
        return
    try:
        if leads_group:
            os.killpg(pid, 15)
        else:
            proc.terminate()
    except (ProcessLookupError, psutil.NoSuchProcess):
        return
    if not wait_gone(proc, timeout):
        with contextlib.suppress(ProcessLookupError, psutil.NoSuchProcess):
            if leads_group:
                os.killpg(pid, 9)
            else:
                proc.kill()
        wait_gone(proc, 5.0)


def wait_gone(proc: psutil.Process, timeout: float) -> bool:
    """Wait until `proc` has exited (reaping it when it is our child)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                _reap(proc.pid)
                return True
        except psutil.NoSuchProcess:
            return True
        _reap(proc.pid)
        time.sleep(0.05)
    return not proc.is_running()


def log_tail(path: str | os.PathLike[str] | None, lines: int = 15, start: int = 0) -> str:
    """The last lines of a log (from byte offset `start`), for error messages."""
    if not path:
        return ""
    try:
        with open(path, "rb") as fh:
            fh.seek(start)
            data = fh.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace").rstrip()
    return "\n".join(text.splitlines()[-lines:])
