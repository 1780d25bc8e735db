"""Curated store behaviour, the same for Iceberg and BigQuery: tables, upserts, positions, quarantine."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from skyfed.contracts.types import contract_schema
from skyfed.errors import SkyfedError
from skyfed.ingest.stores import CuratedStore, table_checksum
from skyfed.spec.models import Contract
from stores_testdata import CONTRACT, FX, flights, fx_rows, quarantine

KEY = ["flight_id"]


def expected(*batches: pa.Table) -> pa.Table:
    """What upserting the batches in order must give: the last row per key wins."""
    rows: dict[str, dict] = {}
    for batch in batches:
        for row in batch.to_pylist():
            rows[row["flight_id"]] = row
    return pa.Table.from_pylist([rows[k] for k in sorted(rows)], schema=contract_schema(CONTRACT))


def test_create_is_idempotent_and_schema_is_the_contract(store: CuratedStore) -> None:
    store.ensure_table("flight_leg", CONTRACT)
    store.ensure_table("flight_leg", CONTRACT)
    assert store.table_names() == ["flight_leg"]
    assert store.snapshot_id("flight_leg") is None
    assert store.row_count("flight_leg") == 0
    assert store.committed_position("flight_leg", "ops") is None
    store.commit("flight_leg", flights(range(50)), key=KEY, mapping="ops", position={"c": 1}, run_id="r1")
    got = store.read("flight_leg")
    assert got.schema == contract_schema(CONTRACT)  # timestamptz UTC us, decimal(18,2), int32, date, nullability
    assert table_checksum(got) == table_checksum(expected(flights(range(50))))
    assert got.column("flight_id").to_pylist() == sorted(got.column("flight_id").to_pylist())


def test_evolve_adds_new_nullable_columns(store: CuratedStore) -> None:
    store.ensure_table("flight_leg", CONTRACT)
    store.commit("flight_leg", flights(range(10)), key=KEY, mapping="ops", position={"c": 1}, run_id="r1")
    data = CONTRACT.model_dump(by_alias=True)
    data["version"] = 2
    data["columns"]["tail_number"] = {"type": "string"}
    data["columns"]["delay_min"] = {"type": "int32"}
    v2 = Contract.model_validate(data)
    store.ensure_table("flight_leg", v2)
    store.ensure_table("flight_leg", v2)  # no-op the second time
    old = store.read("flight_leg")
    assert old.schema == contract_schema(v2)
    assert old.column("tail_number").null_count == 10
    more = flights(range(5, 15), 1)
    more = more.append_column("tail_number", pa.array([f"PR-{i}" for i in range(10)])).append_column(
        "delay_min", pa.array(range(10), pa.int32())
    )
    store.commit("flight_leg", more, key=KEY, mapping="ops", position={"c": 2}, run_id="r2")
    got = store.read("flight_leg")
    assert got.num_rows == 15
    assert got.column("tail_number").null_count == 5
    assert got.filter(pc.equal(got["flight_id"], "LA-0000014")).column("delay_min").to_pylist() == [9]


def test_upsert_replaces_updated_keys_adds_new_and_keeps_the_rest(store: CuratedStore) -> None:
    store.ensure_table("flight_leg", CONTRACT)
    first = flights(range(0, 100), 0)
    r1 = store.commit("flight_leg", first, key=KEY, mapping="ops", position={"c": 1}, run_id="r1")
    assert (r1.rows_written, r1.rows_deleted) == (100, 0)
    second = flights(range(90, 130), 1)  # 10 updated, 30 new
    r2 = store.commit("flight_leg", second, key=KEY, mapping="ops", position={"c": 2}, run_id="r2")
    assert (r2.rows_written, r2.rows_deleted) == (40, 10)
    assert r1.snapshot_id != r2.snapshot_id
    got = store.read("flight_leg")
    assert got.num_rows == 130 == store.row_count("flight_leg")
    assert table_checksum(got) == table_checksum(expected(first, second))
    # untouched keys keep generation 0, updated ones are generation 1
    status = dict(zip(got["flight_id"].to_pylist(), got["status"].to_pylist()))
    assert status["LA-0000001"] == "s0" and status["LA-0000091"] == "s1" and status["LA-0000129"] == "s1"


def test_reapplying_the_same_range_is_idempotent(store: CuratedStore) -> None:
    store.ensure_table("flight_leg", CONTRACT)
    batch = flights(range(60), 2)
    store.commit("flight_leg", batch, key=KEY, mapping="ops", position={"c": 1}, run_id="r1")
    once = table_checksum(store.read("flight_leg"))
    r = store.commit("flight_leg", batch, key=KEY, mapping="ops", position={"c": 1}, run_id="r2")
    assert r.rows_deleted == 60
    assert table_checksum(store.read("flight_leg")) == once


def test_position_round_trip_per_mapping(store: CuratedStore) -> None:
    store.ensure_table("flight_leg", CONTRACT)
    pos_a = {"cursor": "2024-01-02T03:04:05.123456+00:00", "files": {"gs://b/o'1.csv": 17}, "n": 3}
    store.commit("flight_leg", flights(range(5)), key=KEY, mapping="a", position=pos_a, run_id="r1")
    store.commit("flight_leg", flights(range(5, 9)), key=KEY, mapping="b", position={"lsn": 42}, run_id="r2")
    assert store.committed_position("flight_leg", "a") == pos_a
    assert store.committed_position("flight_leg", "b") == {"lsn": 42}
    assert store.committed_position("flight_leg", "c") is None
    # An empty commit still advances the position (a run with no new rows), with a new snapshot.
    before = store.snapshot_id("flight_leg")
    r = store.commit("flight_leg", flights([]), key=KEY, mapping="a", position={"cursor": "later"}, run_id="r3")
    assert r.rows_written == 0 and r.snapshot_id != before
    assert store.snapshot_id("flight_leg") == r.snapshot_id
    assert store.committed_position("flight_leg", "a") == {"cursor": "later"}
    assert store.committed_position("flight_leg", "b") == {"lsn": 42}
    assert store.row_count("flight_leg") == 9


def test_replace_is_a_full_refresh(store: CuratedStore) -> None:
    store.ensure_table("flight_leg", CONTRACT)
    store.commit("flight_leg", flights(range(100)), key=KEY, mapping="a", position={"c": 1}, run_id="r1")
    store.commit("flight_leg", flights(range(100, 120)), key=KEY, mapping="b", position={"c": 7}, run_id="r2")
    fresh = flights(range(10, 30), 5)
    r = store.commit("flight_leg", fresh, key=KEY, mapping="a", position={"c": 2}, run_id="r3", replace=True)
    assert (r.rows_written, r.rows_deleted) == (20, 120)
    assert table_checksum(store.read("flight_leg")) == table_checksum(expected(fresh))
    assert store.committed_position("flight_leg", "a") == {"c": 2}
    # the other mapping's rows went with the refresh, so its position is forgotten: it reloads fully
    assert store.committed_position("flight_leg", "b") is None
    store.commit("flight_leg", flights(range(100, 120)), key=KEY, mapping="b", position={"c": 8}, run_id="r4")
    assert store.committed_position("flight_leg", "b") == {"c": 8}
    assert store.row_count("flight_leg") == 40


def test_composite_key_upsert(store: CuratedStore) -> None:
    store.ensure_table("fx_rate", FX)
    store.commit("fx_rate", fx_rows(["BRL", "EUR"], 30, "0.5"), key=FX.key, mapping="fx", position={"d": 1}, run_id="r1")
    r = store.commit(
        "fx_rate", fx_rows(["EUR", "USD"], 40, "1.25"), key=FX.key, mapping="fx", position={"d": 2}, run_id="r2"
    )
    assert r.rows_deleted == 30
    got = store.read("fx_rate")
    assert got.num_rows == 30 + 40 + 40
    assert got.schema == contract_schema(FX)
    rates = {(c, str(d)): str(v) for c, d, v in zip(*(got[n].to_pylist() for n in ("currency", "rate_date", "usd_per_unit")))}
    assert rates[("BRL", "2024-01-05")] == "0.500000" and rates[("EUR", "2024-01-05")] == "1.250000"


def test_record_batch_reader_input(store: CuratedStore) -> None:
    store.ensure_table("flight_leg", CONTRACT)
    table = flights(range(300), 1)
    reader = pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=64))
    r = store.commit("flight_leg", reader, key=KEY, mapping="ops", position={"c": 1}, run_id="r1")
    assert r.rows_written == 300
    assert table_checksum(store.read("flight_leg")) == table_checksum(expected(table))


def test_duplicate_keys_and_bad_columns_are_clear_errors(store: CuratedStore) -> None:
    store.ensure_table("flight_leg", CONTRACT)
    dup = pa.concat_tables([flights([1, 2]), flights([2])])
    with pytest.raises(SkyfedError, match="repeat a key"):
        store.commit("flight_leg", dup, key=KEY, mapping="ops", position={"c": 1}, run_id="r1")
    with pytest.raises(SkyfedError, match="not in the contract"):
        store.commit("flight_leg", flights([1]).append_column("oops", pa.array([1])), key=KEY, mapping="ops",
                     position={"c": 1}, run_id="r1")  # fmt: skip
    with pytest.raises(SkyfedError, match="required column seats"):
        store.commit("flight_leg", flights([1]).drop_columns(["seats"]), key=KEY, mapping="ops",
                     position={"c": 1}, run_id="r1")  # fmt: skip
    assert store.snapshot_id("flight_leg") is None and store.committed_position("flight_leg", "ops") is None
    with pytest.raises(SkyfedError, match="reserved"):
        store.ensure_table("quarantine", CONTRACT)


def test_quarantine_is_idempotent_by_mapping_and_location(store: CuratedStore) -> None:
    recs = quarantine([f"flights/2024-01.csv:{i}" for i in range(1, 21)])
    assert store.commit_quarantine(recs, run_id="r1") == 20
    assert store.commit_quarantine(recs, run_id="r1-retry") == 20  # the retry after a crash
    got = store.read("quarantine")
    assert got.num_rows == 20
    assert set(got["run_id"].to_pylist()) == {"r1-retry"}
    assert got["reason"][0].as_py() == "seats: below min 1; status: not allowed"
    assert got["reasons"][0].as_py() == ["seats: below min 1", "status: not allowed"]
    assert got["region"][0].as_py() == store.region
    # same locations from another mapping are other records; new locations add up
    assert store.commit_quarantine(quarantine(["flights/2024-01.csv:1"], mapping="other"), run_id="r2") == 1
    assert store.commit_quarantine(quarantine([f"flights/2024-02.csv:{i}" for i in range(5)]), run_id="r3") == 5
    assert store.read("quarantine").num_rows == 26
    assert store.commit_quarantine(quarantine([])[:0], run_id="r4") == 0
    assert "quarantine" not in store.table_names()


def test_reading_an_earlier_snapshot(store: CuratedStore) -> None:
    store.ensure_table("flight_leg", CONTRACT)
    r1 = store.commit("flight_leg", flights(range(10)), key=KEY, mapping="ops", position={"c": 1}, run_id="r1")
    store.commit("flight_leg", flights(range(10, 20)), key=KEY, mapping="ops", position={"c": 2}, run_id="r2")
    if store.kind == "iceberg":
        assert store.read("flight_leg", r1.snapshot_id).num_rows == 10
    else:
        with pytest.raises(SkyfedError, match="not supported"):
            store.read("flight_leg", r1.snapshot_id)
    assert store.read("flight_leg", store.snapshot_id("flight_leg")).num_rows == 20


def test_many_rows_with_overlap(store: CuratedStore) -> None:
    store.ensure_table("flight_leg", CONTRACT)
    first = flights(np.arange(20_000), 0)
    store.commit("flight_leg", first, key=KEY, mapping="ops", position={"c": 1}, run_id="r1")
    second = flights(np.concatenate([np.arange(0, 20_000, 40), np.arange(20_000, 25_000)]), 1)
    r = store.commit("flight_leg", second, key=KEY, mapping="ops", position={"c": 2}, run_id="r2")
    assert (r.rows_written, r.rows_deleted) == (5_500, 500)
    assert store.row_count("flight_leg") == 25_000
    got = store.read("flight_leg")
    assert pc.sum(pc.equal(got["status"], "s1")).as_py() == second.filter(pc.is_valid(second["status"])).num_rows
