"""Mapping compilation: parse, map and check in one DuckDB statement, reasons per row."""

from __future__ import annotations

import json

import duckdb
import pyarrow as pa
import yaml

from skyfed.contracts.harmonize import FAIL, QUARANTINE, RAW, WARN, compile_mapping
from skyfed.contracts.types import contract_schema
from skyfed.spec.models import Contract, Mapping

CONTRACT = Contract.model_validate(
    yaml.safe_load(
        """
version: 1
key: [flight_id]
columns:
  flight_id: {type: string, nullable: false}
  dep_airport: {type: string, checks: {references: airport.iata}}
  fuel_kg: {type: double, checks: {min: 0, max: 400000}}
  status: {type: string, checks: {allowed: [arrived, cancelled]}, severity: warn}
  seats: {type: int32}
  tail: {type: string, checks: {pattern: "^[A-Z]{2}-[A-Z0-9]+$"}, severity: fail}
"""
    )
)
MAPPING = Mapping.model_validate(
    yaml.safe_load(
        """
name: na_flights
source: na.exports
table: flights
contract: flight_leg
cursor: dt
filter: "origin <> 'ZZZ'"
columns:
  flight_id: "'NA-' || id"
  dep_airport: origin
  fuel_kg: fuel_gal * 3.785411784 * 0.8
  status: st
  seats: seats
  tail: tail
"""
    )
)


def run(batch: pa.Table) -> list[dict]:
    batch_types = {n: ("BIGINT" if n == "_source_row" else "VARCHAR") for n in batch.column_names}
    sql = compile_mapping(
        MAPPING, CONTRACT, {"id": "BIGINT", "fuel_gal": "DOUBLE", "seats": "BIGINT", "dt": "DATE"}, batch_types, {"airport": "ref_airport"}
    )
    con = duckdb.connect()
    con.execute("CREATE TABLE ref_airport AS SELECT * FROM (VALUES ('JFK'), ('LAX')) t(iata)")
    con.register("__batch", batch)
    return con.sql(sql.select).to_arrow_table().to_pylist()


def test_each_rule_gives_a_readable_reason_in_its_severity_list() -> None:
    batch = pa.table(
        {
            "id": ["1", "2", "3", None, "5"],
            "origin": ["JFK", "XXX", "LAX", "JFK", "ZZZ"],
            "fuel_gal": ["100", "abc", "-5", "1", "1"],
            "st": ["arrived", "weird", "arrived", "cancelled", "arrived"],
            "seats": ["180", "180", "99999999999", "1", "1"],
            "tail": ["PR-ABC", "PR-ABC", "PR-ABC", "bad tail", "PR-X"],
            "dt": ["2024-01-01"] * 5,
            "_source_object": ["flights/dt=2024-01-01/flights.csv"] * 5,
            "_source_row": [1, 2, 3, 4, 5],
        }
    )
    rows = run(batch)
    assert [r["_source_row"] for r in rows] == [1, 2, 3, 4], "the mapping filter drops origin ZZZ"
    good, bad_type, out_of_range, missing_key = rows
    assert good[QUARANTINE] == [] and good[FAIL] == [] and good[WARN] == []
    assert good["fuel_kg"] == 100 * 3.785411784 * 0.8 and good["seats"] == 180
    assert bad_type[QUARANTINE] == [
        "source column fuel_gal: abc is not a valid double",
        "dep_airport: XXX is not a known airport.iata",
    ]
    assert bad_type[WARN] == ["status: weird is not one of arrived, cancelled"]
    assert set(out_of_range[QUARANTINE]) == {
        "fuel_kg: -15.141647136000001 is below the minimum 0",
        "seats: 99999999999 is not a valid int32",
    }
    assert missing_key[QUARANTINE] == ["flight_id: required value is missing"]
    assert missing_key[FAIL] == ["tail: bad tail does not match ^[A-Z]{2}-[A-Z0-9]+$"]
    assert json.loads(bad_type[RAW])["fuel_gal"] == "abc", "the raw record travels with the row for quarantine"


def test_output_columns_have_the_contract_types() -> None:
    batch = pa.table({"id": ["1"], "origin": ["JFK"], "fuel_gal": ["1.5"], "st": ["arrived"], "seats": ["3"], "tail": ["PR-A"], "dt": ["2024-01-02"]})
    batch_types = {n: "VARCHAR" for n in batch.column_names}
    sql = compile_mapping(MAPPING, CONTRACT, {"fuel_gal": "DOUBLE", "seats": "BIGINT"}, batch_types, {})
    con = duckdb.connect()
    con.register("__batch", batch)
    out = con.sql(sql.select).to_arrow_table()
    expected = contract_schema(CONTRACT)
    for field in expected:
        assert out.schema.field(field.name).type == field.type, field.name
