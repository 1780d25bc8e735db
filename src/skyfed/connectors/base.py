"""The one small interface every source connector implements.

A connector knows one system (PostgreSQL, BigQuery, Cloud Storage files, ...):
what tables it has, how big they are, and how to stream them as Arrow record
batches with projection, filter and cursor pushdown. It knows nothing about
contracts, quality or stores: those are the ingestion layer's job.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import datetime as dt
from decimal import Decimal

import pyarrow as pa

from skyfed.errors import SkyfedError

# Provenance columns the file connector adds to every batch (quarantine points at them).
SOURCE_OBJECT = "_source_object"
SOURCE_ROW = "_source_row"


@dataclass(frozen=True)
class TableInfo:
    """A table (or a logical table of files) as the source sees it."""

    name: str
    schema: pa.Schema
    rows: int | None = None  # estimate; None when unknown without a scan
    bytes: int | None = None  # estimate
    partitions: tuple[str, ...] = ()  # hive partition columns, for files


@dataclass(frozen=True)
class ReadRequest:
    """What to read. `filter` is a SQL predicate in DuckDB's dialect over source
    columns; each connector transpiles it (sqlglot) into its own dialect."""

    table: str
    columns: tuple[str, ...] | None = None  # None: every column
    filter: str | None = None
    cursor: str | None = None  # incremental cursor column
    batch_rows: int = 100_000


@dataclass
class ReadPosition:
    """Where a read got to, committed with the data so a restart resumes exactly.

    For tables: the greatest cursor value read. For files: each object's
    generation (or mtime+size for local files), so new and replaced objects are
    read once.
    """

    cursor_value: Any = None
    objects: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe form (datetimes and decimals tagged with their type), for snapshot properties."""
        value = self.cursor_value
        if isinstance(value, (dt.datetime, dt.date, dt.time)):
            value = {"type": type(value).__name__, "value": value.isoformat()}
        elif isinstance(value, Decimal):
            value = {"type": "Decimal", "value": str(value)}
        return {"cursor_value": value, "objects": dict(self.objects)}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> ReadPosition:
        """The inverse of to_json: typed cursor values come back as the same Python type."""
        if not data:
            return cls()
        value = data.get("cursor_value")
        if isinstance(value, dict) and "type" in value:
            kind, text = value["type"], value["value"]
            parse = {
                "datetime": dt.datetime.fromisoformat,
                "date": dt.date.fromisoformat,
                "time": dt.time.fromisoformat,
                "Decimal": Decimal,
            }.get(kind)
            if parse is None:
                raise SkyfedError(f"a stored read position has a cursor value of unknown type {kind!r}")
            value = parse(text)
        return cls(cursor_value=value, objects=dict(data.get("objects") or {}))


@dataclass(frozen=True)
class Reject:
    """A record the connector could not turn into a row (malformed CSV line,
    invalid UTF-8, unparsable JSON): it goes to quarantine, never silently away."""

    table: str
    location: str  # object/file name and line, or key
    raw: str  # the raw record, truncated to a sane size
    reason: str


@runtime_checkable
class Connector(Protocol):
    """Read-only access to one source.

    Build one with `skyfed.connectors.registry.connector_for(spec, name)`; `name`
    ("region.source") is only used in messages. Every failure a user can fix
    (unreachable host, wrong credentials, missing table or column, bad filter) is a
    SkyfedError naming the source kind, the source, the table and what to do.
    """

    kind: str
    name: str

    def discover(self) -> list[TableInfo]:
        """Every table the source exposes, with its Arrow schema and size estimates."""
        ...

    def table_info(self, table: str) -> TableInfo:
        """One table; a SkyfedError naming the source and table when it does not exist."""
        ...

    def position(self, request: ReadRequest) -> ReadPosition:
        """The upper bound a read started now will stop at (max cursor, or the current
        object generations). Taken before reading, so rows that arrive during the read
        are left for the next run instead of being half-seen."""
        ...

    def read(
        self,
        request: ReadRequest,
        upto: ReadPosition,
        after: ReadPosition | None = None,
        rejects: Callable[[Reject], None] | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """Stream rows in (after, upto] as record batches, pushing projection, filter
        and cursor down; records that cannot be parsed go to `rejects`.

        Every batch of one read has the same schema (the projected columns in request
        order; file connectors add `_source_object` and `_source_row`). Without
        `rejects`, a record that cannot be parsed is a SkyfedError, never dropped.
        `batch_rows` is a target, not a promise. Batches are streamed: a read never
        holds the whole table in memory.
        """
        ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------- helpers shared by connectors


def source_error(kind: str, source: str, what: str, hint: str | None = None, *, table: str | None = None) -> SkyfedError:
    """A SkyfedError that names the source kind, the source and (when known) the table."""
    where = f"{kind} source {source}" + (f", table {table}" if table else "")
    return SkyfedError(f"{where}: {what}", hint=hint)


def check_columns(kind: str, source: str, table: str, schema: pa.Schema, columns: tuple[str, ...] | None) -> list[str]:
    """The projected column names, or a SkyfedError naming the first missing one and its nearest match."""
    import difflib

    names = list(schema.names)
    if columns is None:
        return names
    for col in columns:
        if col not in names:
            near = difflib.get_close_matches(col, names, n=1)
            hint = f"did you mean {near[0]!r}?" if near else f"the table has: {', '.join(names)}"
            raise source_error(kind, source, f"column {col!r} does not exist", hint, table=table)
    return list(columns)


def transpile_filter(kind: str, source: str, table: str, predicate: str | None, dialect: str) -> str | None:
    """The DuckDB-dialect predicate rewritten for `dialect` by sqlglot; a SkyfedError when it does not parse."""
    if not predicate or not predicate.strip():
        return None
    import sqlglot
    from sqlglot.errors import ParseError

    try:
        out = sqlglot.transpile(predicate, read="duckdb", write=dialect)
    except ParseError as exc:
        raise source_error(
            kind, source, f"the filter {predicate!r} is not valid SQL: {exc}", "fix the mapping's filter", table=table
        ) from None
    if len(out) != 1:
        raise source_error(kind, source, f"the filter {predicate!r} must be one predicate", table=table)
    return out[0]
