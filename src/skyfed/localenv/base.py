"""The one small interface every local stand-in implements, plus the shared spawn helper."""

from __future__ import annotations

import abc
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import psutil

from skyfed.localenv.state import Paths, ServiceRecord, now_iso, terminate

# Popen objects of services started by this process: kept so they are never garbage
# collected while running (no ResourceWarning) and so a killed child can be reaped.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class Missing(Exception):
    """The service's program is not installed here; `hint` says what installs it."""

    def __init__(self, message: str, hint: str):
        super().__init__(message)
        self.message = message
        self.hint = hint


class Service(abc.ABC):
    """A local stand-in for one Google Cloud service.

    Subclasses name their ports, build their command and say how to tell they are ready.
    The manager owns records, ports, waiting and error reporting.
    """

    name: str = ""
    title: str = ""  # what it stands in for, for people
    port_names: tuple[str, ...] = ("port",)
    persists: bool = False
    optional: bool = False  # a missing optional service does not make `up` fail
    ready_timeout: float = 60.0

    def locate(self) -> None:
        """Raise Missing when the program cannot run here."""

    def version(self) -> str | None:
        return None

    @abc.abstractmethod
    def markers(self, paths: Paths, ports: dict[str, int]) -> list[str]:
        """Words the service's command line must contain for a pid to be ours."""

    def prepare(self, paths: Paths, ports: dict[str, int]) -> None:
        """One-time setup and cleanup of leftovers before a start."""

    @abc.abstractmethod
    def launch(self, paths: Paths, ports: dict[str, int], log: Path) -> tuple[int, list[str]]:
        """Start the service detached from this process; return (pid, command)."""

    @abc.abstractmethod
    def probe(self, paths: Paths, ports: dict[str, int]) -> bool:
        """One readiness attempt: True when the service answers a real request."""

    def after_ready(self, paths: Paths, ports: dict[str, int]) -> None:
        """Setup that needs the running service (e.g. create a database)."""

    def stop(self, paths: Paths, rec: ServiceRecord, proc: psutil.Process) -> None:
        terminate(proc)

    def endpoints(self, ports: dict[str, int]) -> dict[str, str]:
        return {}

    def env(self, paths: Paths, ports: dict[str, int]) -> dict[str, str]:
        return {}


def spawn(cmd: list[str], log: Path, *, cwd: Path, env: dict[str, str] | None = None) -> int:
    """Start `cmd` in its own session (it outlives `skyfed up`), output appended to `log`.

    A log over LOG_ROTATE_BYTES is moved to `<log>.1` first (replacing the older one), so
    restarts never let a service's logs grow without bound.
    """
    rotate_log(log)
    with open(log, "ab") as fh:
        fh.write(f"\n=== skyfed: starting at {now_iso()}: {' '.join(cmd)}\n".encode())
        fh.flush()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env if env is not None else os.environ.copy(),
            start_new_session=True,
            close_fds=True,
        )
    _CHILDREN[proc.pid] = proc
    return proc.pid


LOG_ROTATE_BYTES = 20 * 1024 * 1024


def rotate_log(log: Path, limit: int = LOG_ROTATE_BYTES) -> bool:
    """Move `log` to `<log>.1` when it is larger than `limit`; True when it did."""
    try:
        if log.stat().st_size <= limit:
            return False
    except FileNotFoundError:
        return False
    log.replace(log.with_name(log.name + ".1"))
    return True


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True when GET `url` answers 200 (no proxies: the emulators are on 127.0.0.1)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False
