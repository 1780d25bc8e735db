"""A compatible contract change evolves a real Iceberg table in place, keeping its data."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from pyiceberg.catalog.sql import SqlCatalog

from skyfed.catalog import registry
from skyfed.errors import SkyfedError
from skyfed.governance.config import load_governance
from skyfed.governance.evolution import evolve_iceberg, iceberg_type, plan
from skyfed.governance.versioning import check_spec
from tests.governance.conftest import booking, make_spec


def test_evolve_in_place_renames_by_field_id(home: Path, tmp_path: Path) -> None:
    from pyiceberg.schema import Schema
    from pyiceberg.types import NestedField

    assert check_spec(make_spec(booking=booking()), load_governance(None)).ok
    v1 = registry.history("booking")[0]["body"]
    cat = SqlCatalog("t", uri=f"sqlite:///{tmp_path / 'ice.db'}", warehouse=f"file://{tmp_path / 'wh'}")
    cat.create_namespace("eu")
    fields = [
        NestedField(c["id"], n, iceberg_type(c["type"]), required=not c["nullable"]) for n, c in v1["columns"].items()
    ]
    table = cat.create_table(("eu", "booking"), schema=Schema(*fields))
    arrow = table.schema().as_arrow()
    data = {
        "booking_id": ["EU-1"], "region": ["eu"], "passenger_name": ["Ana Lima"], "email": ["a@x"],
        "phone": [None], "seats": [2], "fare": [None],
    }
    table.append(pa.Table.from_pydict(data, schema=arrow))
    stored_id = table.schema().find_field("passenger_name").field_id

    doc = booking(version=2, columns={"seats": {"type": "int64", "nullable": False}, "tier": {"type": "string"}})
    doc["columns"]["full_name"] = doc["columns"].pop("passenger_name")
    gov = tmp_path / "gov.yaml"
    gov.write_text("contracts:\n  booking:\n    renames: {full_name: passenger_name}\n")
    assert check_spec(make_spec(booking=doc), load_governance(gov)).ok
    v2 = registry.history("booking")[1]["body"]

    ops = evolve_iceberg(table, v1, v2)
    assert {(o.action, o.column) for o in ops} == {("rename", "passenger_name"), ("promote", "seats"), ("add", "tier")}
    reloaded = cat.load_table(("eu", "booking"))
    assert len(reloaded.snapshots()) == 1, "schema evolution must not write data"
    rows = reloaded.scan().to_arrow()
    assert rows.column("full_name").to_pylist() == ["Ana Lima"]
    assert rows.schema.field("seats").type == pa.int64() and rows.column("tier").to_pylist() == [None]
    assert reloaded.schema().find_field("full_name").field_id == stored_id
    assert v2["columns"]["full_name"]["id"] == v1["columns"]["passenger_name"]["id"]


def test_plan_refuses_a_type_iceberg_cannot_promote(home: Path) -> None:
    old = {"columns": {"a": {"id": 1, "type": "int64", "nullable": True}}}
    new = {"columns": {"a": {"id": 1, "type": "string", "nullable": True}}}
    with pytest.raises(SkyfedError, match="cannot be changed in place"):
        plan(old, new)
    dropped = plan(old, {"columns": {}})
    assert [(o.action, o.column) for o in dropped] == [("keep_dropped", "a")]
