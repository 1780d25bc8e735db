"""The fused PostgreSQL path (skyfed.ingest.fused) gives what the batch path gives.

One PostgreSQL table with good rows, rows every kind of quality rule quarantines, a
warning, keys that repeat with later cursors and a tie on key and cursor. Each scenario
runs twice, in two homes of its own: once with the batch path forced
(SKYFED_INGEST_FUSED=0) and once by default (fused). The curated tables (checksums,
positions), the quarantine tables (without the per-run columns) and the run reports
(counters, reasons, warnings) must be equal, for a first run and for an incremental
run after some rows changed. The fused run must say it ran fused (its note), so the
comparison can fail. Also: sources the fused path cannot reproduce exactly keep the
batch path, and progress reaches the rows read.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from envkit import env_vars
from ingest_kit import (
    accounts,
    load,
    local_world,
    need_env,
    pg_connect,
    pg_fresh_database,
    reference_contracts,
    reference_section,
    store_state,
    write_spec,
)

from skyfed.connectors.postgres import PARALLEL_MIN_PAGES
from skyfed.ingest.batch import ingest
from skyfed.ingest.fused import FUSED_ENV
from skyfed.ingest.runner import POSITION_FROM_READ_NOTE, MappingResult, run_mapping
from skyfed.spec import PlatformSpec

pytestmark = pytest.mark.services

DATABASE = "skyfed_fused"
CONTRACT = "leg"
FUSED_NOTE = "fused PostgreSQL path"
T0 = datetime(2024, 3, 1, 6, 0, tzinfo=UTC)

LEG = {
    "version": 1,
    "key": ["flight_id"],
    "partition_by": "month(dep_time_utc)",
    "columns": {
        "flight_id": {"type": "string", "nullable": False},
        "dep_airport": {"type": "string", "nullable": False, "checks": {"references": "airport.iata"}},
        "dep_time_utc": {"type": "timestamptz", "nullable": False},
        "seats": {"type": "int32", "nullable": False, "checks": {"min": 1, "max": 1000}},
        "passengers": {"type": "int32", "checks": {"max": 500}, "severity": "warn"},
        "fare": {"type": "decimal(10,2)"},
        "updated_at_utc": {"type": "timestamptz", "nullable": False},
    },
}

COLUMNS = {
    # ids 51.. repeat the keys of ids 1.. (later cursors win; id 61 ties with id 11)
    "flight_id": "'FU-' || CAST(id % 50 AS VARCHAR)",
    "dep_airport": "trim(origin)",
    "dep_time_utc": "departure",
    "seats": "seats",
    "passengers": "passengers",
    "fare": "fare",
    "updated_at_utc": "updated_at",
}

TABLE = """id bigint PRIMARY KEY, origin char(3), departure timestamptz, seats integer, passengers integer,
  fare numeric(10,2), updated_at timestamptz NOT NULL"""

OPEN_TABLE = """id bigint PRIMARY KEY, origin char(3), departure timestamptz, seats integer, passengers integer,
  fare numeric(10,2), updated_at timestamptz, code text NOT NULL UNIQUE"""
UNIQUE_NOTE = "search for repeated keys was skipped"
OWN_CONTRACTS = ("leg_by_id", "leg_by_code", "leg_big_repeating", "leg_big_unique")
BIG_ROWS = PARALLEL_MIN_PAGES + 300


def rows() -> list[tuple[Any, ...]]:
    out = []
    for i in range(1, 61):
        origin = "ZZZ" if i == 5 else "GRU"  # 5: unknown airport
        seats = 0 if i == 9 else 150 + i  # 9: below the minimum
        departure = None if i == 12 else T0 + timedelta(hours=i)  # 12: required value missing
        passengers = 900 if i == 15 else 100 + i  # 15: a warning only
        out.append((i, origin, departure, seats, passengers, round(99.5 + i, 2), T0 + timedelta(days=1, minutes=i)))
    # the same key and cursor as id 11, other values: arrival order decides, in both paths
    out.append((61, "GRU", T0, 161, 61, 10.25, T0 + timedelta(days=1, minutes=11)))
    return out


def spec_doc(world_home: Path) -> dict[str, Any]:
    pg = {"kind": "postgres", "host": "${SKYFED_PG_HOST}", "port": "${SKYFED_PG_PORT}", "database": DATABASE,
          "user": "${SKYFED_PG_USER}", "password": "${SKYFED_PG_PASSWORD}"}  # fmt: skip
    mapping = {"source": "latam.ops", "contract": CONTRACT, "key": ["id"], "cursor": "updated_at", "columns": COLUMNS}
    return {
        "skyfed": 1,
        "name": "fused",
        "regions": {
            "latam": {
                "project": "skyfed-latam",
                "location": "southamerica-east1",
                "store": {"kind": "iceberg", "warehouse": "${SKYFED_HOME}/warehouse/latam"},
                "sources": {"ops": pg},
            }
        },
        "reference": reference_section(world_home),
        "contracts": {CONTRACT: LEG, **{c: LEG for c in OWN_CONTRACTS}, **reference_contracts()},
        "mappings": [
            {"name": "legs", "table": "legs", **mapping},
            # a filter: rows read would not be rows harmonized, so the batch path runs
            {"name": "legs_filtered", "table": "legs", **mapping, "filter": "seats > 0"},
            # a uuid column the connector reads as text: the batch path runs
            {"name": "legs_uuid", "table": "legs_uuid", **mapping},
            # the contract key follows the primary key one to one: no key can repeat in a read
            {"name": "legs_by_id", "table": "legs_open", **mapping, "contract": "leg_by_id",
             "columns": {**COLUMNS, "flight_id": "'FU-' || CAST(id AS VARCHAR)"}},
            # a unique source key the contract key does not follow one to one ('ab' and 'AB' collide)
            {"name": "legs_by_code", "table": "legs_open", **mapping, "contract": "leg_by_code",
             "columns": {**COLUMNS, "flight_id": "upper(code)"}},
            # a table large enough for parallel ctid ranges: keys repeating with later cursors, and unique keys
            {"name": "big_repeating", "table": "legs_big", **mapping, "contract": "leg_big_repeating",
             "columns": {**COLUMNS, "flight_id": "'FU-' || CAST(id % 4000 AS VARCHAR)"}},
            {"name": "big_unique", "table": "legs_big", **mapping, "contract": "leg_big_unique",
             "columns": {**COLUMNS, "flight_id": "'FU-' || CAST(id AS VARCHAR)"}},
        ],
    }


class Home:
    """One SKYFED_HOME with the spec; runs either path."""

    def __init__(self, path: Path, doc: dict[str, Any], fused: bool):
        self.path, self.fused = path, fused
        self.spec_path = write_spec(path / "skyfed.yaml", doc)

    @contextmanager
    def active(self) -> Iterator[PlatformSpec]:
        with env_vars(SKYFED_HOME=str(self.path), SKYFED_METADATA_URL=None, **{FUSED_ENV: None if self.fused else "0"}):
            yield load(self.spec_path)

    def run(self, mapping: str) -> MappingResult:
        with self.active() as spec:
            _, results, failures = ingest(spec, [mapping])
        assert not failures, [(m.name, e.message) for m, e in failures]
        accounts(results[0])
        return results[0]

    def state(self, contract: str = CONTRACT) -> dict[str, Any]:
        with self.active() as spec:
            return store_state(spec, "latam", [contract], [m.name for m in spec.mappings])


def report(r: MappingResult) -> dict[str, Any]:
    keys = ("rows_read", "rows_loaded", "rows_quarantined", "rows_filtered", "rows_superseded", "rows_committed",
            "quarantine_reasons", "warnings", "position_from", "position_to", "status")  # fmt: skip
    return {k: getattr(r, k) for k in keys}


def without_snapshot(state: dict[str, Any]) -> dict[str, Any]:
    return {k: ({kk: vv for kk, vv in v.items() if kk != "snapshot_id"} if isinstance(v, dict) and k == CONTRACT else v)
            for k, v in state.items()}  # fmt: skip


@pytest.fixture(scope="module")
def homes(federation, tmp_path_factory) -> tuple[Home, Home]:
    need_env("SKYFED_PG_PORT")
    world_home = tmp_path_factory.mktemp("fused-world")
    local_world(world_home, flights=30)  # its reference files (airports, FX)
    pg_fresh_database(DATABASE)
    with pg_connect(DATABASE) as con:
        con.execute(f"CREATE TABLE legs ({TABLE})")
        con.execute(f"CREATE TABLE legs_uuid ({TABLE}, tag uuid)")
        with con.cursor() as cur:
            cur.executemany("INSERT INTO legs VALUES (%s, %s, %s, %s, %s, %s, %s)", rows())
            cur.execute("INSERT INTO legs_uuid SELECT *, gen_random_uuid() FROM legs")
            # a nullable cursor (id 3 has none: no read takes it) and a unique code ('ab'/'AB' for ids 1, 2)
            cur.execute(f"CREATE TABLE legs_open ({OPEN_TABLE})")
            cur.execute("INSERT INTO legs_open SELECT *, CASE id WHEN 1 THEN 'ab' WHEN 2 THEN 'AB' "
                        "ELSE 'c' || id END FROM legs WHERE id <= 50")
            cur.execute("UPDATE legs_open SET updated_at = NULL WHERE id = 3")
            # one row per page (fillfactor 10, ~700-byte rows): past the connector's parallel-read threshold
            cur.execute(f"CREATE TABLE legs_big ({TABLE}, filler text) WITH (fillfactor = 10)")
            cur.execute(
                "INSERT INTO legs_big SELECT i, CASE WHEN i %% 1000 = 7 THEN 'ZZZ' ELSE 'GRU' END, "
                "%s + i * interval '1 minute', 150, 100, 10.5, %s + i * interval '1 second', repeat('x', 650) "
                f"FROM generate_series(1, {BIG_ROWS}) i", [T0, T0 + timedelta(days=1)])
        con.execute("VACUUM ANALYZE legs_big")  # relpages: what the connector splits by
    doc = spec_doc(world_home)
    return (Home(tmp_path_factory.mktemp("batch-home"), doc, fused=False),
            Home(tmp_path_factory.mktemp("fused-home"), doc, fused=True))  # fmt: skip


def test_first_run_fused_equals_batch(homes: tuple[Home, Home]) -> None:
    batch, fused = homes
    rb, rf = batch.run("legs"), fused.run("legs")
    assert not any(FUSED_NOTE in n for n in rb.notes), rb.notes
    assert any(FUSED_NOTE in n for n in rf.notes), f"the fused path did not run: {rf.notes}"
    assert POSITION_FROM_READ_NOTE in rf.notes and POSITION_FROM_READ_NOTE not in rb.notes, rf.notes
    assert rf.rows_read == 61 and rf.rows_quarantined == 3, report(rf)
    # ids 51..61 repeat the keys of ids 1..11 (id 61 ties with id 11); ids 5 and 9 are quarantined
    assert rf.rows_superseded == 9, report(rf)
    assert report(rf) == report(rb)
    sb, sf = batch.state(), fused.state()
    assert sf[CONTRACT]["rows"] == 61 - 3 - 9
    assert sf["quarantine"]["rows"] == 3
    assert without_snapshot(sf) == without_snapshot(sb)


def test_incremental_run_fused_equals_batch(homes: tuple[Home, Home]) -> None:
    batch, fused = homes
    for home in homes:  # first runs (again if this test runs alone: a no-op then)
        home.run("legs")
    with pg_connect(DATABASE) as con:
        top = con.execute("SELECT max(updated_at) FROM legs").fetchone()[0]
        con.execute("UPDATE legs SET seats = 99, updated_at = %s WHERE id IN (20, 21)", [top + timedelta(hours=1)])
        con.execute("UPDATE legs SET origin = 'QQQ', updated_at = %s WHERE id = 22", [top + timedelta(hours=1)])
        con.execute("INSERT INTO legs VALUES (70, 'GRU', %s, 170, 70, 1.5, %s)", [T0, top + timedelta(hours=2)])
    try:
        rb, rf = batch.run("legs"), fused.run("legs")
        assert any(FUSED_NOTE in n for n in rf.notes), rf.notes
        assert rf.rows_read == 4 and rf.rows_quarantined == 1, report(rf)
        assert report(rf) == report(rb)
        assert without_snapshot(fused.state()) == without_snapshot(batch.state())
        # nothing new: both say so
        rb2, rf2 = batch.run("legs"), fused.run("legs")
        assert rf2.status == rb2.status == "no_new_data" and rf2.rows_read == 0
    finally:
        with pg_connect(DATABASE) as con:
            con.execute("DELETE FROM legs WHERE id = 70")


@pytest.mark.parametrize("mapping", ["legs_filtered", "legs_uuid"])
def test_sources_the_fused_path_cannot_reproduce_keep_the_batch_path(homes: tuple[Home, Home], mapping: str) -> None:
    _, fused = homes
    r = fused.run(mapping)
    assert r.rows_read > 0
    assert not any(FUSED_NOTE in n for n in r.notes), f"{mapping} must run the batch path: {r.notes}"


def test_fused_progress_reaches_the_rows_read(homes: tuple[Home, Home]) -> None:
    _, fused = homes
    seen: list[tuple[int, int | None]] = []
    with fused.active() as spec:
        mapping = next(m for m in spec.mappings if m.name == "legs")
        result = run_mapping(spec, mapping, full_refresh=True, on_progress=lambda n, total: seen.append((n, total)))
    assert any(FUSED_NOTE in n for n in result.notes), result.notes
    assert seen, "no progress was reported"
    assert seen[-1][0] == result.rows_read > 0
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(seen)), seen


def contract_state(home: Home, contract: str) -> dict[str, Any]:
    """Rows, checksum and positions of one contract's table."""
    return {k: v for k, v in home.state(contract)[contract].items() if k != "snapshot_id"}


def test_a_key_that_follows_the_primary_key_skips_the_repeat_search(homes: tuple[Home, Home]) -> None:
    batch, fused = homes
    rb, rf = batch.run("legs_by_id"), fused.run("legs_by_id")
    assert any(FUSED_NOTE in n for n in rf.notes), rf.notes
    assert any(UNIQUE_NOTE in n for n in rf.notes), f"the key follows the primary key: {rf.notes}"
    # 50 rows, id 3 has no cursor (read by neither path), ids 5, 9 and 12 are quarantined
    assert rf.rows_read == 49 and rf.rows_quarantined == 3 and rf.rows_superseded == 0, report(rf)
    assert report(rf) == report(rb)
    # their own contract (the quarantine table is the region's, shared with the other tests' runs)
    assert contract_state(fused, "leg_by_id") == contract_state(batch, "leg_by_id")


def test_a_key_that_merges_unique_values_is_still_deduplicated(homes: tuple[Home, Home]) -> None:
    batch, fused = homes
    rb, rf = batch.run("legs_by_code"), fused.run("legs_by_code")
    assert any(FUSED_NOTE in n for n in rf.notes), rf.notes
    assert not any(UNIQUE_NOTE in n for n in rf.notes), f"upper() can merge unique codes: {rf.notes}"
    assert rf.rows_superseded == 1, report(rf)  # 'ab' and 'AB' are one contract key
    assert report(rf) == report(rb)
    assert contract_state(fused, "leg_by_code") == contract_state(batch, "leg_by_code")


@pytest.mark.parametrize(("mapping", "unique"), [("big_repeating", False), ("big_unique", True)])
def test_a_parallel_read_equals_the_batch_path(homes: tuple[Home, Home], mapping: str, unique: bool) -> None:
    batch, fused = homes
    with pg_connect(DATABASE) as con:
        pages = con.execute("SELECT relpages FROM pg_class WHERE relname = 'legs_big'").fetchone()[0]
    assert pages >= PARALLEL_MIN_PAGES, f"legs_big has {pages} pages: too few for a parallel read, the test proves nothing"
    rb, rf = batch.run(mapping), fused.run(mapping)
    assert any(FUSED_NOTE in n for n in rf.notes), rf.notes
    assert any(UNIQUE_NOTE in n for n in rf.notes) == unique, rf.notes
    bad = len(range(7, BIG_ROWS + 1, 1000))  # ids 7, 1007, ...: an unknown airport
    assert rf.rows_read == BIG_ROWS and rf.rows_quarantined == bad, report(rf)
    good = [i for i in range(1, BIG_ROWS + 1) if i % 1000 != 7]
    keys = {i % 4000 for i in good} if not unique else set(good)  # one row per key stays, the others are superseded
    assert rf.rows_superseded == len(good) - len(keys) and (unique or rf.rows_superseded > 0), report(rf)
    assert report(rf) == report(rb)
    contract = f"leg_{mapping}"
    assert contract_state(fused, contract) == contract_state(batch, contract)
