"""Shared fixtures: the local federation (once per session, on request) and a CLI runner.

`federation` starts PostgreSQL and the BigQuery, Cloud Storage and Pub/Sub emulators in
a fresh temporary SKYFED_HOME the first time a test asks for it, exports the service
environment variables (SKYFED_PG_*, SKYFED_BQ_*, STORAGE_EMULATOR_HOST,
PUBSUB_EMULATOR_HOST) into os.environ and stops everything at the end of the session,
also when a test or the start itself failed. Tests that do not request it start nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import pytest

if TYPE_CHECKING:
    from skyfed.localenv import FederationStatus


@pytest.fixture(scope="session")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FederationStatus]:
    """The running local federation (its status); env vars point clients at it."""
    from skyfed import localenv

    home = tmp_path_factory.mktemp("skyfed-home")
    patch = pytest.MonkeyPatch()
    patch.setenv("SKYFED_HOME", str(home))
    try:
        status = localenv.up(home)
        for key, value in localenv.service_env(home).items():
            patch.setenv(key, value)
        yield status
    finally:
        try:
            localenv.down(home)
        finally:
            patch.undo()


class CliResult(NamedTuple):
    code: int
    stdout: str
    stderr: str


CliRunner = Callable[..., CliResult]


@pytest.fixture
def run_cli() -> CliRunner:
    """Run `python -m skyfed ARGS...` in a subprocess; returns (code, stdout, stderr).

    `env` entries are added to (not replacing) the current environment; pass a value of
    None to remove a variable. `cwd` and `timeout` (seconds) are passed through.
    """

    def run(
        *args: str,
        env: dict[str, str | None] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        timeout: float = 300,
    ) -> CliResult:
        full_env = os.environ.copy()
        for key, value in (env or {}).items():
            if value is None:
                full_env.pop(key, None)
            else:
                full_env[key] = str(value)
        proc = subprocess.run(
            [sys.executable, "-m", "skyfed", *map(str, args)],
            env=full_env,
            cwd=Path(cwd) if cwd else None,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    return run
