"""Canonical column types and their Arrow and DuckDB spellings.

One table of truth so that the store schema, the harmonization casts and the
query planner agree on what `timestamptz` or `decimal(18,2)` means.
"""

from __future__ import annotations

import re

import duckdb
import pyarrow as pa

from skyfed.spec.models import Contract

_DECIMAL = re.compile(r"^decimal\((\d+),(\d+)\)$")

ARROW_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "double": pa.float64(),
    "bool": pa.bool_(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("us"),
    "timestamptz": pa.timestamp("us", tz="UTC"),
}

_DUCKDB: dict[str, str] = {
    "string": "VARCHAR",
    "int32": "INTEGER",
    "int64": "BIGINT",
    "double": "DOUBLE",
    "bool": "BOOLEAN",
    "date": "DATE",
    "timestamp": "TIMESTAMP",
    "timestamptz": "TIMESTAMPTZ",
}


def arrow_type(type_name: str) -> pa.DataType:
    m = _DECIMAL.match(type_name)
    if m:
        return pa.decimal128(int(m.group(1)), int(m.group(2)))
    return ARROW_TYPES[type_name]


def duckdb_type(type_name: str) -> str:
    m = _DECIMAL.match(type_name)
    if m:
        return f"DECIMAL({m.group(1)},{m.group(2)})"
    return _DUCKDB[type_name]


def is_numeric(type_name: str) -> bool:
    return type_name in ("int32", "int64", "double") or bool(_DECIMAL.match(type_name))


def contract_schema(contract: Contract) -> pa.Schema:
    """The Arrow schema of a contract's canonical table, in declaration order."""
    return pa.schema(
        [
            pa.field(name, arrow_type(col.type), nullable=col.nullable, metadata=_field_metadata(col))
            for name, col in contract.columns.items()
        ]
    )


def _field_metadata(col: object) -> dict[bytes, bytes] | None:
    meta = {}
    if getattr(col, "description", None):
        meta[b"description"] = col.description.encode()  # type: ignore[attr-defined]
    if getattr(col, "classification", None):
        meta[b"classification"] = col.classification.encode()  # type: ignore[attr-defined]
    return meta or None


def duckdb_types_of(schema: pa.Schema) -> dict[str, str]:
    """DuckDB's name for each column type of an Arrow schema (as DESCRIBE reports it)."""
    con = duckdb.connect()
    try:
        con.register("__t", schema.empty_table())
        return {r[0]: r[1] for r in con.execute("DESCRIBE SELECT * FROM __t").fetchall()}
    finally:
        con.close()
