"""A slot whose consumer is gone for long: `max_slot_wal_keep_size` lets PostgreSQL invalidate it.

The streamer is stopped, the server is told to keep at most 1 MB of WAL for slots
(ALTER SYSTEM + pg_reload_conf: a sighup setting), and WAL is generated well past that
(segment switches and a checkpoint). `skyfed stream status` then reports the slot's
wal_status `lost`; `skyfed stream` refuses to resume with what to do; `skyfed stream reset`
and a new snapshot bring the curated table back to the source (checksums).
"""

from __future__ import annotations

import time

import pytest
from stream_kit import (
    cdc_home,
    curated,
    expected_items,
    pg,
)

from skyfed.ingest.stores import table_checksum
from skyfed.stream import runner
from skyfed.stream.postgres import slot_name

pytestmark = pytest.mark.services

DB = "skyfed_stream_slot"


@pytest.fixture(scope="module")
def setup(federation, tmp_path_factory):
    home = tmp_path_factory.mktemp("stream-slot-home")
    seed = "INSERT INTO items (id, qty, note) SELECT g, g, 'seed' FROM generate_series(1, 50) g"
    with cdc_home(home, DB, "slottest", seed=seed) as (path, spec):
        try:
            yield home, path, spec
        finally:
            with pg() as con:  # the server is shared by the session: back to no limit
                con.execute("ALTER SYSTEM RESET max_slot_wal_keep_size")
                con.execute("SELECT pg_reload_conf()")


def _wal_status(slot: str) -> str | None:
    with pg(DB) as con:
        row = con.execute("SELECT wal_status FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
    return row[0] if row else None


def test_invalidated_slot_is_reported_refused_and_recovered_by_reset(setup, run_cli):
    home, path, spec = setup
    runner.run(spec, ["latam.ops"], until_idle=True, idle_seconds=0.5)  # the snapshot, then the streamer stops
    slot = slot_name(spec, "latam.ops")
    assert _wal_status(slot) == "reserved"

    with pg(DB) as con:  # the consumer is gone; the source keeps changing and writes WAL
        con.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
        con.execute("SELECT pg_reload_conf()")
        con.execute("UPDATE items SET note = 'changed while the streamer was away' WHERE id <= 10")
        con.execute("DELETE FROM items WHERE id > 45")
        con.execute("CREATE TABLE filler (x text)")
        deadline = time.time() + 30
        while _wal_status(slot) != "lost":
            assert time.time() < deadline, f"the slot was not invalidated: wal_status {_wal_status(slot)}"
            for _ in range(3):
                con.execute("INSERT INTO filler SELECT repeat('w', 100) FROM generate_series(1, 2000)")
                con.execute("SELECT pg_switch_wal()")
            con.execute("CHECKPOINT")

    (row,) = runner.status(spec, ["latam.ops"])  # what `skyfed stream status --json` prints
    assert row["wal_status"] == "lost" and row["slot_exists"] is True
    res = run_cli("stream", "status", "latam.ops", "--spec", str(path))
    assert res.code == 0 and "lost" in res.stdout, res.stdout
    assert "invalidated" in res.stderr and "skyfed stream reset latam.ops" in res.stderr, res.stderr

    res = run_cli("stream", "latam.ops", "--spec", str(path), "--until-idle", "--idle-seconds", "0.5")
    assert res.code == 1
    assert "was invalidated" in res.stderr and "max_slot_wal_keep_size" in res.stderr, res.stderr
    assert "skyfed stream reset latam.ops" in res.stderr and "fresh snapshot" in res.stderr, res.stderr
    assert table_checksum(curated(spec)) != table_checksum(expected_items(DB))  # the changes did not arrive

    assert runner.reset(spec, ["latam.ops"])[0]["slot_dropped"] is True  # `skyfed stream reset latam.ops`
    runner.run(spec, ["latam.ops"], until_idle=True, idle_seconds=0.5)
    got, want = curated(spec), expected_items(DB)
    assert got.num_rows == want.num_rows == 45
    assert table_checksum(got) == table_checksum(want)
    assert _wal_status(slot) == "reserved"
