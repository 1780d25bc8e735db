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

import pyarrow as pa


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
        value = self.cursor_value
        if hasattr(value, "isoformat"):
            value = {"type": type(value).__name__, "value": value.isoformat()}
        return {"cursor_value": value, "objects": dict(self.objects)}


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
    """Read-only access to one source."""

    kind: str

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
        and cursor down; records that cannot be parsed go to `rejects`."""
        ...

    def close(self) -> None: ...
