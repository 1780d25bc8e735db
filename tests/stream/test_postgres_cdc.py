"""PostgreSQL change capture end to end: snapshot, stream, deletes, TOAST, restart, reset, the CLI.

Each test compares the curated table with what PostgreSQL itself computes from the
source table (stream_kit.expected_items), via table checksums.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from stream_kit import (
    cdc_home,
    committed_position,
    curated,
    expected_items,
    load,
    pg,
    slot_confirmed,
    spec_doc,
    write_spec,
)

from skyfed.errors import SkyfedError
from skyfed.ingest.stores import table_checksum
from skyfed.stream import runner
from skyfed.stream.postgres import PostgresCDC, slot_name

pytestmark = pytest.mark.services

DB = "skyfed_stream_cdc"


@pytest.fixture(scope="module")
def setup(federation, tmp_path_factory):
    home = tmp_path_factory.mktemp("stream-home")
    with cdc_home(home, DB, "cdctest") as (path, spec):
        yield home, path, spec


def _same(spec) -> None:
    got, want = curated(spec), expected_items(DB)
    assert got.num_rows == want.num_rows, f"curated has {got.num_rows} rows, the source {want.num_rows}"
    assert table_checksum(got) == table_checksum(want)


def _stream(run_cli, path, *extra, cli=False):
    """Stream until idle: in this process (fast), or through the CLI."""
    if cli:
        res = run_cli("stream", "latam.ops", "--spec", str(path), "--until-idle", "--idle-seconds", "0.5", "--json", *extra)
        assert res.code == 0, res.stderr
        return json.loads(res.stdout)
    opts = dict(zip(extra[::2], extra[1::2]))
    stats = runner.run(load(path), ["latam.ops"], until_idle=True, idle_seconds=0.5,
                       max_rows=int(opts.get("--max-rows", 50_000)))  # fmt: skip
    return {k: v.to_dict() for k, v in stats.items()}


def test_snapshot_while_writing_then_stream_no_gap(setup, run_cli):
    home, path, spec = setup
    with pg(DB) as con:
        con.execute("INSERT INTO items (id, qty, note, price) SELECT g, g, 'n' || g, g * 1.25 FROM generate_series(1, 300) g")
    stop = threading.Event()

    def writer() -> None:  # commits all through the snapshot hand-over
        i = 1000
        with pg(DB) as con:
            while not stop.is_set():
                con.execute("INSERT INTO items (id, qty, note) VALUES (%s, 1, 'w')", (i,))
                con.execute("UPDATE items SET qty = qty + 1 WHERE id = %s", (i % 300 + 1,))
                i += 1
                time.sleep(0.005)

    t = threading.Thread(target=writer)
    t.start()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "skyfed", "stream", "latam.ops", "--spec", str(path)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy())  # fmt: skip
        deadline = time.time() + 60
        while committed_position(spec) is None or committed_position(spec).get("snapshot"):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline, "the streamer did not commit a streamed batch after its snapshot in 60 s"
            time.sleep(0.2)
    finally:
        stop.set()
        t.join()
    time.sleep(1.5)
    proc.send_signal(signal.SIGTERM)
    _, errtext = proc.communicate(timeout=60)
    assert proc.returncode == 0, errtext.decode()
    _stream(run_cli, path, cli=True)  # whatever came after the SIGTERM
    _same(spec)
    pos = committed_position(spec)
    assert pos["kind"] == "pg_lsn" and pos["ordinal"] is None
    assert slot_confirmed(DB, slot_name(spec, "latam.ops")) >= pos["ack_lsn"]  # acked what is committed (and idle WAL)


def test_updates_deletes_and_quarantine(setup, run_cli):
    home, path, spec = setup
    with pg(DB) as con:
        con.execute("UPDATE items SET note = 'u1' WHERE id <= 20")
        con.execute("UPDATE items SET note = 'u2' WHERE id <= 10")  # last change of a key wins
        con.execute("DELETE FROM items WHERE id BETWEEN 30 AND 39")
        con.execute("INSERT INTO items (id, qty, note) VALUES (5000, 1, 'gone soon')")
        con.execute("DELETE FROM items WHERE id = 5000")  # insert then delete inside one micro-batch
        con.execute("DELETE FROM items WHERE id = 40")
        con.execute("INSERT INTO items (id, qty, note) VALUES (40, 4, 'back')")  # delete then re-insert
    report = _stream(run_cli, path)
    assert report["latam.ops"]["deleted"] >= 10
    _same(spec)
    with pg(DB) as con:
        con.execute("UPDATE items SET qty = -5 WHERE id = 50")  # breaks the contract's min 0
    before = [r for r in curated(spec).to_pylist() if r["item_id"] == "IT-50"]
    report = _stream(run_cli, path)
    assert report["latam.ops"]["quarantined"] == 1
    after = [r for r in curated(spec).to_pylist() if r["item_id"] == "IT-50"]
    assert after == before  # the stored row stays; the bad version waits in quarantine
    res = run_cli("quarantine", "list", "--spec", str(path), "--json")
    assert res.code == 0, res.stderr
    assert "below the minimum" in res.stdout
    with pg(DB) as con:
        con.execute("UPDATE items SET qty = 5 WHERE id = 50")
    _stream(run_cli, path)
    _same(spec)


def test_unchanged_toast_values_are_kept(setup, run_cli):
    home, path, spec = setup
    with pg(DB) as con:
        con.execute("ALTER TABLE items ALTER COLUMN big SET STORAGE EXTERNAL")
        con.execute("UPDATE items SET big = repeat(md5(id::text), 200) WHERE id BETWEEN 60 AND 69")
    _stream(run_cli, path)
    with pg(DB) as con:
        # default identity: 'u' without an old row; one key changes twice in the batch
        con.execute("UPDATE items SET qty = qty + 100 WHERE id BETWEEN 60 AND 64")
        con.execute("UPDATE items SET note = 'again' WHERE id = 60")
    _stream(run_cli, path)
    _same(spec)
    with pg(DB) as con:
        con.execute("ALTER TABLE items REPLICA IDENTITY FULL")  # now the old row carries the value
        con.execute("UPDATE items SET qty = qty + 100 WHERE id BETWEEN 65 AND 69")
    _stream(run_cli, path)
    _same(spec)
    rows = {r["item_id"]: r for r in curated(spec).to_pylist()}
    assert rows["IT-65"]["big_len"] == 6400 and rows["IT-60"]["big_len"] == 6400
    with pg(DB) as con:
        con.execute("ALTER TABLE items REPLICA IDENTITY DEFAULT")


def test_large_transaction_split_across_micro_batches(setup, run_cli):
    home, path, spec = setup
    with pg(DB) as con:
        con.execute("INSERT INTO items (id, qty, note) SELECT g, 2, 'bulk' FROM generate_series(10000, 10999) g")
    report = _stream(run_cli, path, "--max-rows", "150")
    assert report["latam.ops"]["batches"] >= 6
    _same(spec)
    assert committed_position(spec)["ordinal"] is None


def test_restart_resumes_from_our_lsn_and_status(setup, run_cli):
    home, path, spec = setup
    before = committed_position(spec)
    with pg(DB) as con:
        changed = con.execute("UPDATE items SET note = 'while stopped' WHERE id BETWEEN 1 AND 50").rowcount
    res = run_cli("stream", "status", "latam.ops", "--spec", str(path), "--json")
    assert res.code == 0, res.stderr
    (row,) = json.loads(res.stdout)
    assert row["lag_bytes"] > 0 and row["slot_exists"]
    confirmed_before = _lsn(row["confirmed_flush_lsn"])
    report = _stream(run_cli, path)
    assert report["latam.ops"]["changes"] == changed  # only what is new: no second snapshot
    assert committed_position(spec)["lsn"] > before["lsn"]
    _same(spec)
    res = run_cli("stream", "status", "--spec", str(path), "--json")
    (row,) = json.loads(res.stdout)
    # the slot moved past the update; lag_bytes itself is measured against the server's WAL head, which
    # WAL written meanwhile by others (autovacuum, checkpoints) can move further than we caught up
    assert _lsn(row["confirmed_flush_lsn"]) > confirmed_before, (row, confirmed_before)
    assert row["lag_bytes"] is not None and row["last_commit_at"] and row["changes"] >= changed


def _lsn(text: str) -> int:
    """A PostgreSQL LSN ('16/B374D848') as a number."""
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def test_truncate_empties_the_table(setup, run_cli):
    home, path, spec = setup
    with pg(DB) as con:
        con.execute("TRUNCATE items")
        con.execute("INSERT INTO items (id, qty, note) VALUES (1, 1, 'after truncate')")
    _stream(run_cli, path)
    _same(spec)
    assert curated(spec).num_rows == 1


def test_reset_drops_slot_and_snapshots_again(setup, run_cli):
    home, path, spec = setup
    res = run_cli("stream", "reset", "latam.ops", "--spec", str(path), "--json")
    assert res.code == 0, res.stderr
    assert json.loads(res.stdout)[0]["slot_dropped"] is True
    assert slot_confirmed(DB, slot_name(spec, "latam.ops")) is None
    with pg(DB) as con:
        con.execute("INSERT INTO items (id, qty, note) VALUES (2, 2, 'after reset')")
    _stream(run_cli, path)
    assert committed_position(spec)["snapshot"] is True
    _same(spec)


def test_table_without_primary_key_is_refused(setup):
    home, path, spec = setup
    with pg(DB) as con:
        con.execute("CREATE TABLE IF NOT EXISTS nokey (id integer, qty integer, note text, big text, price numeric(12,2), updated_at timestamptz)")
    doc = spec_doc(DB, "nokeytest")
    doc["mappings"][0]["table"] = "nokey"
    bad = load(write_spec(home / "nokey.yaml", doc))
    with pytest.raises(SkyfedError) as info:
        PostgresCDC(bad, "latam.ops", bad.mappings).start()
    assert "no primary key" in info.value.message
    assert "REPLICA IDENTITY FULL" in info.value.hint


def test_nothing_streamable_is_a_clear_error(setup, run_cli):
    home, path, spec = setup
    res = run_cli("stream", "nosuch", "--spec", str(path))
    assert res.code == 1 and "nothing to ingest matches 'nosuch'" in res.stderr
