"""Deletes by key in the same atomic commit as the upsert and the position (for CDC streaming), both store kinds."""

from __future__ import annotations

import signal

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from stores_testdata import CONTRACT, FX, flights, fx_rows
from test_stores_crash import _child

from skyfed.contracts.types import contract_schema
from skyfed.errors import SkyfedError
from skyfed.ingest.stores import CuratedStore, table_checksum

KEY = ["flight_id"]


def keys_of(ids: range | list[int]) -> pa.Table:
    return flights(list(ids)).select(KEY)


def without(table: pa.Table, ids: range | list[int]) -> pa.Table:
    """`table` minus the rows of the flight ids `ids` (computed from the test data, not by a store)."""
    drop = keys_of(ids)["flight_id"]
    return table.filter(pc.invert(pc.is_in(table["flight_id"], value_set=drop.combine_chunks())))


def same(got: pa.Table, *parts: pa.Table) -> bool:
    want = pa.concat_tables([p.cast(contract_schema(CONTRACT)) for p in parts])
    return table_checksum(got) == table_checksum(want)


def test_delete_existing_and_absent_keys_advances_the_position(store: CuratedStore) -> None:
    store.ensure_table("flight_leg", CONTRACT)
    store.commit("flight_leg", flights(range(100)), key=KEY, mapping="cdc", position={"lsn": 1}, run_id="r1")
    before = store.snapshot_id("flight_leg")

    result = store.commit(
        "flight_leg", flights([]), key=KEY, mapping="cdc", position={"lsn": 2}, run_id="r2",
        deletes=pa.concat_tables([keys_of(range(10, 20)), keys_of([500, 501, 10])]),
    )  # fmt: skip
    assert result.rows_deleted == 10
    assert same(store.read("flight_leg"), without(flights(range(100)), range(10, 20)))
    assert store.committed_position("flight_leg", "cdc") == {"lsn": 2}
    assert store.snapshot_id("flight_leg") != before

    # only absent keys: nothing removed, the position still advances
    result = store.commit("flight_leg", flights([]), key=KEY, mapping="cdc", position={"lsn": 3}, run_id="r3",
                          deletes=keys_of([900, 901]))  # fmt: skip
    assert result.rows_deleted == 0
    assert store.row_count("flight_leg") == 90
    assert store.committed_position("flight_leg", "cdc") == {"lsn": 3}

    # into an empty table: nothing to remove, the rows land
    store.ensure_table("empty", CONTRACT)
    store.commit("empty", flights(range(5)), key=KEY, mapping="cdc", position={"lsn": 1}, run_id="r4",
                 deletes=keys_of([1, 2]))  # fmt: skip
    assert same(store.read("empty"), flights(range(5)))


def test_delete_and_upsert_in_one_commit_rows_win(store: CuratedStore) -> None:
    store.ensure_table("flight_leg", CONTRACT)
    store.commit("flight_leg", flights(range(100)), key=KEY, mapping="cdc", position={"lsn": 1}, run_id="r1")
    rows = flights(range(90, 110), generation=1)  # 10 updates, 10 new
    gone = keys_of([*range(10), *range(95, 98)])  # 95..97 are also in rows: rows win
    result = store.commit("flight_leg", rows, key=KEY, mapping="cdc", position={"lsn": 2}, run_id="r2", deletes=gone)
    assert result.rows_written == 20
    assert result.rows_deleted == 20  # 10 deleted + 10 replaced, each existing row counted once
    assert same(store.read("flight_leg"), flights(range(10, 90)), rows)
    assert store.committed_position("flight_leg", "cdc") == {"lsn": 2}


def test_composite_key_deletes_and_bad_deletes(store: CuratedStore) -> None:
    store.ensure_table("fx_rate", FX)
    key = list(FX.key)
    store.commit("fx_rate", fx_rows(["EUR", "BRL"], 5, "1.1"), key=key, mapping="fx", position={"d": 1}, run_id="r1")
    gone = fx_rows(["EUR"], 2, "0").select(key)  # EUR on the first two days only
    store.commit("fx_rate", fx_rows(["BRL"], 1, "2.5"), key=key, mapping="fx",
                 position={"d": 2}, run_id="r2", deletes=gone)  # fmt: skip
    got = store.read("fx_rate")
    assert got.num_rows == 10 - 2
    pairs = set(zip(got["currency"].to_pylist(), [d.isoformat() for d in got["rate_date"].to_pylist()]))
    assert ("EUR", "2024-01-01") not in pairs and ("EUR", "2024-01-02") not in pairs
    assert ("EUR", "2024-01-03") in pairs
    assert str(got.filter(pc.equal(got["currency"], "BRL"))["usd_per_unit"][0].as_py()) == "2.500000"

    with pytest.raises(SkyfedError, match="deletes must hold exactly the key column"):
        store.commit("fx_rate", fx_rows(["BRL"], 1, "3"), key=key, mapping="fx", position={"d": 3}, run_id="r3",
                     deletes=fx_rows(["EUR"], 1, "0"))  # fmt: skip
    with pytest.raises(SkyfedError, match="missing rate_date"):
        store.commit("fx_rate", fx_rows(["BRL"], 1, "3"), key=key, mapping="fx", position={"d": 3}, run_id="r3",
                     deletes=fx_rows(["EUR"], 1, "0").select(["currency"]))  # fmt: skip
    assert store.committed_position("fx_rate", "fx") == {"d": 2}  # the refused commits changed nothing
    assert store.read("fx_rate").num_rows == 8


# point -> does the new state survive?
DELETE_POINTS = {
    "iceberg": {
        "iceberg.before_write": False,
        "iceberg.after_deletes": False,  # the delete snapshot staged, files written, nothing committed
        "iceberg.after_data_files": False,
        "iceberg.after_metadata": False,
        "iceberg.after_commit": True,
    },
    "bigquery": {
        "bigquery.before_write": False,
        "bigquery.after_stage": False,  # rows and keys staged, no transaction yet
        "bigquery.after_commit": True,
    },
}


def test_kill_minus_nine_during_a_commit_with_deletes(store: CuratedStore) -> None:
    first = flights(range(200))
    ids, generation, position, deleted = (150, 250), 1, {"cursor": 2}, [0, 50]
    old = table_checksum(first)
    new_rows = flights(range(*ids), generation)
    new = table_checksum(pa.concat_tables([without(first, [*range(*deleted), *range(*ids)]), new_rows]))

    for i, (point, survives) in enumerate(DELETE_POINTS[store.kind].items()):
        table = f"del_crash{i}"
        store.ensure_table(table, CONTRACT)
        store.commit(table, first, key=KEY, mapping="ops", position={"cursor": 1}, run_id="before")
        snap_before = store.snapshot_id(table)
        batch = (ids, generation, position)
        proc = _child(store, table, batch, "crashed", point, deletes=deleted)
        assert proc.returncode == -signal.SIGKILL, f"{point}: child was not killed: {proc.returncode} {proc.stderr[-2000:]}"
        state = table_checksum(store.read(table))
        if survives:
            assert state == new, f"{point}: expected the new state"
            assert store.committed_position(table, "ops") == position
        else:
            assert state == old, f"{point}: expected the old state (deletes half applied?)"
            assert store.committed_position(table, "ops") == {"cursor": 1}
            assert store.snapshot_id(table) == snap_before
            store.commit(table, new_rows, key=KEY, mapping="ops", position=position, run_id="rerun",
                         deletes=keys_of(range(*deleted)))  # fmt: skip
        assert table_checksum(store.read(table)) == new, f"{point}: rerun differs from an uninterrupted run"
        assert store.committed_position(table, "ops") == position
