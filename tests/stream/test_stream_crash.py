"""kill -9 of `skyfed stream` under load, again and again, then a restart: the curated table equals
the source (checksums), nothing lost, nothing doubled. Also PostgreSQL restarted mid-stream.

A load thread runs random transactions (inserts, updates, deletes; some of many rows)
against this module's own database the whole time. The streamer is killed at random
moments and at fixed points of its own (SKYFED_STREAM_CRASH_AT: after the snapshot
commit, between the store commit and the server acknowledgement; SKYFED_STORE_CRASH_AT:
inside an Iceberg commit), restarted each time. Finally the load stops, the streamer
runs until idle, and the curated table must equal what PostgreSQL computes from the
source table.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time

import psycopg
import pytest
from stream_kit import (
    cdc_home,
    committed_position,
    curated,
    expected_items,
    pg,
)

from skyfed.ingest.stores import table_checksum

pytestmark = pytest.mark.services

DB = "skyfed_stream_crash"


class Load:
    """Random transactions until stopped; counts what it did."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.transactions = 0
        self.error: BaseException | None = None
        self.paused = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        next_id = 100_000
        try:
            with pg(DB) as con:
                while not self.stop.is_set():
                    if self.paused.is_set():
                        time.sleep(0.05)
                        continue
                    r = self.rng.random()
                    try:
                        with con.transaction():
                            if r < 0.4:
                                n = self.rng.choice([1, 1, 5, 200])
                                con.execute("INSERT INTO items (id, qty, note, price) SELECT g, g %% 97, 'ins', (g %% 1000) / 4.0 "
                                            "FROM generate_series(%s::int, %s::int) g", (next_id, next_id + n - 1))  # fmt: skip
                                next_id += n
                            elif r < 0.8:
                                lo = self.rng.randrange(1, next_id)
                                con.execute("UPDATE items SET qty = (qty + 1) %% 1000, note = 'upd', updated_at = now() "
                                            "WHERE id BETWEEN %s AND %s", (lo, lo + self.rng.choice([0, 3, 50])))  # fmt: skip
                            else:
                                lo = self.rng.randrange(1, next_id)
                                con.execute("DELETE FROM items WHERE id BETWEEN %s AND %s", (lo, lo + self.rng.choice([0, 2, 20])))
                    except psycopg.OperationalError:  # the server restart test breaks the connection on purpose
                        if self.stop.is_set():
                            return
                        time.sleep(0.3)
                        con = pg(DB)
                        continue
                    self.transactions += 1
                    time.sleep(0.002)
        except BaseException as exc:  # noqa: BLE001
            self.error = exc


@pytest.fixture(scope="module")
def setup(federation, tmp_path_factory):
    home = tmp_path_factory.mktemp("stream-crash-home")
    seed = "INSERT INTO items (id, qty, note, price) SELECT g, g % 97, 'seed', g / 8.0 FROM generate_series(1, 3000) g"
    with cdc_home(home, DB, "crashtest", seed=seed) as (path, spec):
        yield federation, home, path, spec


def _streamer(path, env: dict[str, str] | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "skyfed", "stream", "latam.ops", "--spec", str(path), "--max-rows", "300", "--max-seconds", "0.3"]
    return subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _settle(path) -> None:
    cmd = [sys.executable, "-m", "skyfed", "stream", "latam.ops", "--spec", str(path), "--until-idle", "--idle-seconds", "1"]
    res = subprocess.run(cmd, env=os.environ.copy(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr


def _check(spec) -> None:
    got, want = curated(spec), expected_items(DB)
    assert got.num_rows == want.num_rows, f"curated has {got.num_rows} rows, the source {want.num_rows}"
    assert table_checksum(got) == table_checksum(want)


def test_kill_9_under_load_many_times(setup):
    federation, home, path, spec = setup
    load_ = Load(seed=11)
    load_.thread.start()
    rng = random.Random(5)
    kills = []
    try:
        # fixed points first: the very first run dies right after committing its snapshot
        points = [("SKYFED_STREAM_CRASH_AT", "after_snapshot_commit"), ("SKYFED_STREAM_CRASH_AT", "before_ack"),
                  ("SKYFED_STORE_CRASH_AT", "iceberg.after_data_files"), ("SKYFED_STREAM_CRASH_AT", "before_ack")]  # fmt: skip
        for var, point in points:
            proc = _streamer(path, {var: point})
            code = proc.wait(timeout=120)
            assert code == -signal.SIGKILL, f"{point}: exit {code}: {proc.stderr.read().decode()[-2000:]}"
            kills.append(point)
        for _ in range(6):  # random moments
            proc = _streamer(path)
            time.sleep(rng.uniform(1.0, 4.0))
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            proc.kill()
            proc.wait()
            kills.append("random")
    finally:
        load_.stop.set()
        load_.thread.join(timeout=30)
    assert load_.error is None, load_.error
    assert load_.transactions > 100, "the load made too few changes for the test to mean anything"
    _settle(path)
    _check(spec)
    assert committed_position(spec)["kind"] == "pg_lsn"
    assert len(kills) == 10


def test_postgres_restart_mid_stream(setup):
    from skyfed.localenv.manager import SERVICES, _stop, up
    from skyfed.localenv.state import Paths

    federation, home, path, spec = setup
    load_ = Load(seed=12)
    load_.thread.start()
    status_file = home / "stream" / "latam.ops.json"
    status_file.unlink(missing_ok=True)
    proc = _streamer(path)
    try:
        deadline = time.time() + 60
        while not status_file.exists():  # started (snapshot or resume done), now streaming
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()[-2000:]
            time.sleep(0.2)
        time.sleep(1)
        postgres = next(s for s in SERVICES if s.name == "postgres")
        load_.paused.set()
        _stop(postgres, Paths.of(federation.home))
        time.sleep(1)
        up(federation.home)  # same port, same data
        load_.paused.clear()
        time.sleep(4)
        assert proc.poll() is None, "the streamer died with the server: " + proc.stderr.read().decode()[-2000:]
    finally:
        load_.stop.set()
        load_.thread.join(timeout=30)
    proc.send_signal(signal.SIGTERM)
    _, errtext = proc.communicate(timeout=120)
    assert proc.returncode == 0, errtext.decode()[-2000:]
    assert "reconnecting" in errtext.decode()
    _settle(path)
    _check(spec)
