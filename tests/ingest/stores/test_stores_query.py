"""`commit_query`: committing the rows of a DuckDB query (the runner's path), both store kinds.

Iceberg writes the data files with DuckDB into an empty table or on a full refresh
(no key matching) and falls back to the copy-on-write upsert otherwise; the result
must be the same table, readable by pyiceberg and by DuckDB's iceberg_scan alike.
"""

from __future__ import annotations

import signal
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from stores_testdata import CONTRACT, flights
from test_stores_behaviour import expected
from test_stores_crash import _child

from skyfed.connectors import duck
from skyfed.errors import SkyfedError
from skyfed.ingest.stores import CuratedStore, table_checksum

KEY = ["flight_id"]


def commit_rows(store: CuratedStore, table: str, rows: pa.Table, position: dict, replace: bool = False):
    con = duckdb.connect()
    con.register("rows", rows)
    return store.commit_query(table, con, "SELECT * FROM rows", key=KEY, mapping="ops", position=position,
                              run_id="q", replace=replace)  # fmt: skip


def test_query_commits_fresh_upsert_and_replace(store: CuratedStore) -> None:
    store.ensure_table("flight_leg", CONTRACT)
    first, second, third = flights(range(3000)), flights(range(2500, 4000), 1), flights(range(100, 900), 2)

    result = commit_rows(store, "flight_leg", first, {"c": 1})
    assert result.rows_written == 3000
    assert table_checksum(store.read("flight_leg")) == table_checksum(expected(first))
    assert store.committed_position("flight_leg", "ops") == {"c": 1}

    result = commit_rows(store, "flight_leg", second, {"c": 2})  # an upsert into a table with rows
    assert result.rows_deleted == 500
    assert table_checksum(store.read("flight_leg")) == table_checksum(expected(first, second))

    before = store.snapshot_id("flight_leg")
    result = commit_rows(store, "flight_leg", third, {"c": 3}, replace=True)
    assert result.rows_deleted == 4000 and result.rows_written == 800
    assert table_checksum(store.read("flight_leg")) == table_checksum(expected(third))
    assert store.committed_position("flight_leg", "ops") == {"c": 3}
    assert store.snapshot_id("flight_leg") != before
    if store.kind == "iceberg":
        assert store.read("flight_leg", before).num_rows == 4000  # the earlier state is still there

    empty = commit_rows(store, "flight_leg", flights([]), {"c": 4}, replace=True)
    assert empty.rows_written == 0 and store.row_count("flight_leg") == 0
    assert store.committed_position("flight_leg", "ops") == {"c": 4}


def test_iceberg_files_written_by_duckdb_read_back_everywhere(tmp_path, iceberg_env) -> None:
    from stores_testdata import store_spec

    from skyfed.ingest.stores import open_store

    store = open_store("latam", store_spec("iceberg", str(tmp_path)))
    store.ensure_table("flight_leg", CONTRACT)
    rows = flights(range(5000))
    commit_rows(store, "flight_leg", rows, {"c": 1})
    table = store.catalog.load_table(("latam", "flight_leg"))
    files = [t.file for t in table.scan().plan_files()]
    assert files and all("/data/skyfed-" in f.file_path for f in files), "the DuckDB write path was not taken"
    assert sum(f.record_count for f in files) == 5000
    # one file per month partition, with the Iceberg month values (months since 1970) as partitions
    months = sorted(f.partition[0] for f in files)
    assert months == sorted({(d.year - 1970) * 12 + d.month - 1 for d in rows["dep_time_utc"].to_pylist()})
    # partition pruning works on those values
    june = table.scan(row_filter="dep_time_utc >= '2024-06-01T00:00:00+00:00'")
    assert len(list(june.plan_files())) < len(files)
    assert june.to_arrow().num_rows == sum(1 for d in rows["dep_time_utc"].to_pylist() if d.month >= 6 or d.year > 2024)
    # DuckDB reads the files by Iceberg field id, with the contract's types
    con = duck.connect(["avro", "iceberg"])
    con.execute("SET TimeZone = 'UTC'")
    got = con.sql(f"SELECT * FROM iceberg_scan('{table.metadata_location}')").to_arrow_table()
    assert got.schema.field("dep_time_utc").type == pa.timestamp("us", tz="UTC")
    assert got.schema.field("revenue_usd").type == pa.decimal128(18, 2)
    assert table_checksum(got.cast(rows.schema)) == table_checksum(rows)


def test_iceberg_query_with_nulls_in_a_required_column_commits_nothing(tmp_path, iceberg_env) -> None:
    from stores_testdata import store_spec

    from skyfed.ingest.stores import open_store

    store = open_store("latam", store_spec("iceberg", str(tmp_path)))
    store.ensure_table("flight_leg", CONTRACT)
    con = duckdb.connect()
    con.register("rows", flights(range(10)))
    with pytest.raises(SkyfedError, match="required column seats has 10 null"):
        store.commit_query("flight_leg", con, "SELECT * REPLACE (CAST(NULL AS INTEGER) AS seats) FROM rows",
                           key=KEY, mapping="ops", position={"c": 1}, run_id="q")  # fmt: skip
    assert store.snapshot_id("flight_leg") is None
    assert store.committed_position("flight_leg", "ops") is None


QUERY_POINTS = {
    "iceberg": {
        "iceberg.before_write": False,
        "iceberg.after_data_files": False,  # DuckDB wrote the files, no snapshot lists them
        "iceberg.after_metadata": False,
        "iceberg.after_commit": True,
    },
    "bigquery": {"bigquery.after_stage": False, "bigquery.after_commit": True},
}


def test_kill_minus_nine_during_a_query_commit(store: CuratedStore) -> None:
    """A full refresh through the DuckDB write path (a first load into an empty table takes the same
    path: tests/ingest/test_ingest_crash.py kills those)."""
    replace = True
    first, batch = ((0, 3000), 0, {"cursor": 1}), ((1000, 1800), 2, {"cursor": 2})
    new = table_checksum(expected(flights(range(1000, 1800), 2)))
    for i, (point, survives) in enumerate(QUERY_POINTS[store.kind].items()):
        table = f"q_crash_{'r' if replace else 'e'}{i}"
        store.ensure_table(table, CONTRACT)
        if replace:
            commit_rows(store, table, flights(range(*first[0])), first[2])
        old = table_checksum(store.read(table))
        proc = _child(store, table, batch, "crashed", point, replace, query=True)
        assert proc.returncode == -signal.SIGKILL, f"{point}: child was not killed: {proc.returncode} {proc.stderr[-2000:]}"
        if survives:
            assert table_checksum(store.read(table)) == new, point
            assert store.committed_position(table, "ops") == {"cursor": 2}
        else:
            assert table_checksum(store.read(table)) == old, f"{point}: expected the old state"
            assert store.committed_position(table, "ops") == (first[2] if replace else None)
            commit_rows(store, table, flights(range(1000, 1800), 2), {"cursor": 2}, replace)
        assert table_checksum(store.read(table)) == new, f"{point}: rerun differs from an uninterrupted run"
    if store.kind == "iceberg":  # the crashed writes left files no snapshot references: invisible, as checked
        warehouse = Path(store.warehouse)  # type: ignore[attr-defined]
        assert any(warehouse.rglob("skyfed-*")), "the DuckDB write path was not taken"
