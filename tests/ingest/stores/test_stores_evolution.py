"""A compatible contract change evolves the curated table in place (metadata only, no data rewrite).

Iceberg: add a column, widen types, relax required to optional, rename by field id
(declared in the governance file: the data stays, under the new name, and earlier
snapshots read the same values); a change no table can take in place is refused
naming the column and the rule. BigQuery: new columns are added as NULLABLE and
REQUIRED is relaxed, with the rows kept.
"""

from __future__ import annotations

from decimal import Decimal

import pyarrow as pa
import pytest
from stores_testdata import CONTRACT, flights, store_spec

from skyfed.errors import SkyfedError
from skyfed.ingest.stores import CuratedStore, open_store
from skyfed.spec.models import Contract

KEY = ["flight_id"]


def changed(**columns: dict | None) -> Contract:
    """CONTRACT at version 2 with `columns` set (None removes one; a dict under a new name adds it)."""
    data = CONTRACT.model_dump(by_alias=True, exclude_none=True)
    data["version"] = 2
    for name, col in columns.items():
        if col is None:
            data["columns"].pop(name)
        else:
            data["columns"][name] = col
    return Contract.model_validate(data)


def renamed(old: str, new: str) -> Contract:
    data = CONTRACT.model_dump(by_alias=True, exclude_none=True)
    data["version"] = 2
    data["columns"] = {(new if n == old else n): c for n, c in data["columns"].items()}
    return Contract.model_validate(data)


def iceberg(tmp_path) -> CuratedStore:
    return open_store("latam", store_spec("iceberg", str(tmp_path)))


def loaded(store: CuratedStore) -> pa.Table:
    store.ensure_table("flight_leg", CONTRACT)
    rows = flights(range(6))
    store.commit("flight_leg", rows, key=KEY, mapping="ops", position={"c": 1}, run_id="r1")
    return rows


def snapshots(store: CuratedStore) -> int:
    return len(store.catalog.load_table(("latam", "flight_leg")).snapshots())  # type: ignore[attr-defined]


def test_iceberg_add_and_widen_in_place_without_rewriting_data(tmp_path, iceberg_env) -> None:
    store = iceberg(tmp_path)
    rows = loaded(store)
    before = snapshots(store)
    v2 = changed(
        seats={"type": "int64", "nullable": False},
        revenue_usd={"type": "decimal(20,2)"},
        dep_time_utc={"type": "timestamptz", "nullable": True},
        tail_number={"type": "string"},
    )
    store.ensure_table("flight_leg", v2)
    assert snapshots(store) == before, "schema evolution must not write a data snapshot"
    got = store.read("flight_leg")
    assert got.schema.field("seats").type == pa.int64()
    assert got.schema.field("revenue_usd").type == pa.decimal128(20, 2)
    assert got.column("seats").to_pylist() == rows.column("seats").to_pylist()
    assert got.column("revenue_usd").to_pylist() == rows.column("revenue_usd").to_pylist()
    assert got.column("tail_number").null_count == rows.num_rows
    ice = store.catalog.load_table(("latam", "flight_leg")).schema()  # type: ignore[attr-defined]
    assert not ice.find_field("dep_time_utc").required, "required -> optional relaxes the stored column"
    more = flights([100]).cast(pa.schema([f.with_type(pa.int64()) if f.name == "seats" else f for f in flights([0]).schema]))
    more = more.set_column(more.schema.get_field_index("revenue_usd"), "revenue_usd",
                           pa.array([Decimal("123456789012345678.25")], pa.decimal128(20, 2)))
    more = more.append_column("tail_number", pa.array(["PR-XYZ"]))
    store.commit("flight_leg", more, key=KEY, mapping="ops", position={"c": 2}, run_id="r2")
    after = store.read("flight_leg")
    assert after.num_rows == rows.num_rows + 1
    assert Decimal("123456789012345678.25") in after.column("revenue_usd").to_pylist()


def test_iceberg_rename_keeps_the_data_under_the_new_name(tmp_path, iceberg_env, monkeypatch) -> None:
    store = iceberg(tmp_path)
    rows = loaded(store)
    old_snap = store.snapshot_id("flight_leg")
    gov = tmp_path / "skyfed.governance.yaml"
    gov.write_text("contracts:\n  flight_leg:\n    renames: {flight_status: status}\n")
    monkeypatch.setenv("SKYFED_GOVERNANCE", str(gov))
    store.ensure_table("flight_leg", renamed("status", "flight_status"))
    table = store.catalog.load_table(("latam", "flight_leg"))  # type: ignore[attr-defined]
    names = [f.name for f in table.schema().fields]
    assert "flight_status" in names and "status" not in names, names
    assert len(table.snapshots()) == 1, "a rename is metadata only"
    now = store.read("flight_leg")
    assert now.column("flight_status").to_pylist() == rows.column("status").to_pylist()
    assert now.column("flight_status").null_count < rows.num_rows
    earlier = store.read("flight_leg", old_snap)
    assert earlier.column("flight_status").to_pylist() == rows.column("status").to_pylist()
    # the next ensure with the same contract is a no-op, and the store keeps loading
    store.ensure_table("flight_leg", renamed("status", "flight_status"))
    assert len(store.catalog.load_table(("latam", "flight_leg")).snapshots()) == 1  # type: ignore[attr-defined]


def test_iceberg_undeclared_rename_is_a_drop_plus_an_add(tmp_path, iceberg_env, monkeypatch) -> None:
    monkeypatch.delenv("SKYFED_GOVERNANCE", raising=False)
    monkeypatch.delenv("SKYFED_SPEC", raising=False)
    store = iceberg(tmp_path)
    loaded(store)
    store.ensure_table("flight_leg", renamed("status", "flight_status"))
    got = store.read("flight_leg")
    assert got.column("flight_status").null_count == got.num_rows
    stored = {f.name for f in store.catalog.load_table(("latam", "flight_leg")).schema().fields}  # type: ignore[attr-defined]
    assert "status" in stored, "a dropped column stays in storage for earlier snapshots"


@pytest.mark.parametrize(
    ("column", "new", "rule"),
    [
        ("seats", {"type": "string", "nullable": False}, "incompatible type change"),
        ("fuel_kg", {"type": "int64"}, "incompatible type change"),
        ("revenue_usd", {"type": "decimal(10,2)"}, "narrow type"),
    ],
)
def test_iceberg_refuses_what_cannot_change_in_place(tmp_path, iceberg_env, column, new, rule) -> None:
    store = iceberg(tmp_path)
    loaded(store)
    with pytest.raises(SkyfedError, match=f"column {column}: {rule}"):
        store.ensure_table("flight_leg", changed(**{column: new}))
    assert store.read("flight_leg").schema.field(column).type == flights([0]).schema.field(column).type


def test_iceberg_refuses_a_key_change(tmp_path, iceberg_env) -> None:
    store = iceberg(tmp_path)
    loaded(store)
    data = CONTRACT.model_dump(by_alias=True, exclude_none=True)
    data["key"] = ["flight_id", "dep_time_utc"]
    with pytest.raises(SkyfedError, match="key changed"):
        store.ensure_table("flight_leg", Contract.model_validate(data))


def test_bigquery_adds_nullable_columns_and_relaxes_required(federation, tmp_path, iceberg_env) -> None:
    store = open_store("eu", store_spec("bigquery", str(tmp_path)))
    rows = loaded(store)
    v2 = changed(tail_number={"type": "string"}, dep_time_utc={"type": "timestamptz", "nullable": True})
    store.ensure_table("flight_leg", v2)
    table = store.client.get_table(store._ref("flight_leg"))  # type: ignore[attr-defined]
    modes = {f.name: f.mode for f in table.schema}
    assert modes["tail_number"] == "NULLABLE" and modes["dep_time_utc"] == "NULLABLE", modes
    got = store.read("flight_leg")
    assert got.num_rows == rows.num_rows and got.column("tail_number").null_count == rows.num_rows
    more = flights([50]).append_column("tail_number", pa.array(["PR-ABC"]))
    more = more.set_column(1, "dep_time_utc", pa.nulls(1, pa.timestamp("us", tz="UTC")))
    store.commit("flight_leg", more, key=KEY, mapping="ops", position={"c": 2}, run_id="r2")
    after = store.read("flight_leg")
    assert after.num_rows == rows.num_rows + 1
    assert after.column("tail_number").to_pylist().count("PR-ABC") == 1
    assert after.column("dep_time_utc").null_count == 1


def test_iceberg_rename_from_the_registry_without_the_governance_file(tmp_path, iceberg_env, monkeypatch) -> None:
    """`skyfed contracts check` registered the rename; the store finds it there (ids carried by the registry)."""
    from skyfed.catalog import registry
    from skyfed.governance.canonical import body_hash, canonical

    monkeypatch.delenv("SKYFED_GOVERNANCE", raising=False)
    monkeypatch.delenv("SKYFED_SPEC", raising=False)
    v1 = canonical(CONTRACT)
    registry.register("flight_leg", body_hash(v1), v1, declared_version=1)
    store = iceberg(tmp_path)
    rows = loaded(store)
    v2 = canonical(renamed("status", "flight_status"), v1, {"flight_status": "status"})
    registry.register("flight_leg", body_hash(v2), v2, declared_version=2)
    store.ensure_table("flight_leg", renamed("status", "flight_status"))
    got = store.read("flight_leg")
    assert got.column("flight_status").to_pylist() == rows.column("status").to_pylist()
    props = store.catalog.load_table(("latam", "flight_leg")).properties  # type: ignore[attr-defined]
    assert props["skyfed.contract_version"] == "2"


def test_bigquery_rename_keeps_the_data_and_refuses_a_narrowing(federation, tmp_path, iceberg_env, monkeypatch) -> None:
    spec = store_spec("bigquery", str(tmp_path))
    store = open_store("eu", spec)
    rows = loaded(store)
    gov = tmp_path / "skyfed.governance.yaml"
    gov.write_text("contracts:\n  flight_leg:\n    renames: {flight_status: status}\n")
    monkeypatch.setenv("SKYFED_GOVERNANCE", str(gov))
    store.ensure_table("flight_leg", renamed("status", "flight_status"))
    names = [f.name for f in store.client.get_table(store._ref("flight_leg")).schema]  # type: ignore[attr-defined]
    assert "flight_status" in names and "status" not in names, names
    fresh = open_store("eu", spec)  # no cached schema: reads what is stored
    got = fresh.read("flight_leg")
    assert got.column("flight_status").to_pylist() == rows.column("status").to_pylist()
    with pytest.raises(SkyfedError, match="column revenue_usd: narrow type"):
        fresh.ensure_table("flight_leg", changed(status=None, flight_status={"type": "string"},
                                                 revenue_usd={"type": "decimal(10,2)"}))
