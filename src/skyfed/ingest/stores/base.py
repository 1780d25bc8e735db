"""The curated store interface: one regional store of canonical tables, written exactly once.

A store holds one table per contract plus the region's `quarantine` table. Every
write goes through `commit`, which upserts rows by key AND records the source
position of the mapping that produced them in one atomic step, so that a crash at
any point leaves either the old table with the old position or the new table with
the new position. A rerun resumes from `committed_position` and re-applies
whatever was not committed; upsert by key makes re-applying idempotent.

Order for the runner: commit quarantine rows first (`commit_quarantine`, idempotent
by (mapping, location)), then the data with its position (`commit`). A crash between
the two re-reads the same range and re-quarantines the same records without doubling.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol, runtime_checkable

import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

from skyfed.contracts.types import contract_schema
from skyfed.errors import SkyfedError
from skyfed.spec.models import Contract

QUARANTINE_TABLE = "quarantine"

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), False),
        pa.field("region", pa.string(), False),
        pa.field("mapping", pa.string(), False),
        pa.field("contract", pa.string(), False),
        pa.field("source", pa.string(), False),
        pa.field("source_table", pa.string(), False),
        pa.field("location", pa.string(), False),  # "object:line" or "key=..."
        pa.field("cursor", pa.string(), True),
        pa.field("reasons", pa.list_(pa.field("item", pa.string(), True)), True),
        pa.field("reason", pa.string(), True),
        pa.field("raw", pa.string(), True),  # JSON of the raw source record
        pa.field("quarantined_at", pa.timestamp("us", tz="UTC"), False),
    ]
)
QUARANTINE_KEY = ["mapping", "location"]
QUARANTINE_PARTITION = "month(quarantined_at)"

PARTITION_TRANSFORMS = ("year", "month", "day", "hour")

# Tests kill a committing process at these points (see `crash_point`).
CRASH_ENV = "SKYFED_STORE_CRASH_AT"


@dataclass(frozen=True)
class CommitResult:
    """What one commit did. `snapshot_id` identifies the new table state."""

    snapshot_id: int | str | None
    rows_written: int
    rows_deleted: int  # existing rows replaced (upsert) or removed (replace)
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "snapshot_id": self.snapshot_id,
            "rows_written": self.rows_written,
            "rows_deleted": self.rows_deleted,
            "seconds": round(self.seconds, 3),
        }


@runtime_checkable
class CuratedStore(Protocol):
    """A region's curated store. Implementations: iceberg.IcebergCuratedStore, bigquery.BigQueryCuratedStore."""

    region: str
    kind: str  # "iceberg" | "bigquery"

    def ensure_table(self, contract_name: str, contract: Contract) -> None:
        """Create the contract's table if missing (partitioned by contract.partition_by), else add new columns."""
        ...

    def committed_position(self, contract_name: str, mapping: str) -> dict[str, Any] | None:
        """The source position last committed together with data by `mapping`; None if never (or reset by a replace)."""
        ...

    def commit(
        self,
        contract_name: str,
        rows: pa.Table | pa.RecordBatchReader,
        *,
        key: list[str],
        mapping: str,
        position: dict[str, Any],
        run_id: str,
        replace: bool = False,
        deletes: pa.Table | None = None,
    ) -> CommitResult:
        """Upsert `rows` by `key`, remove the rows whose keys are in `deletes`, and record
        `position` for `mapping`, all in one atomic step.

        `replace=True` (full refresh) makes `rows` the whole table content and forgets
        the positions of the contract's other mappings, so they reload fully next time.
        Rows must be unique by key (the harmonizer de-duplicates); always commits, also
        with zero rows, so that the position advances.

        `deletes` (CDC streaming) is a table of the key columns only; keys that are not in
        the table are ignored. Deletes are applied before the upsert, so a key that is both
        in `deletes` and in `rows` ends up with its row from `rows` (rows win). With
        `replace=True` the deletes have nothing left to remove.
        """
        ...

    def commit_query(
        self,
        contract_name: str,
        con: Any,
        query: str,
        *,
        key: list[str],
        mapping: str,
        position: dict[str, Any],
        run_id: str,
        replace: bool = False,
    ) -> CommitResult:
        """`commit` of the rows of a DuckDB `query` on connection `con` (rows unique by key).

        Lets a store write from DuckDB without pulling rows into Python where it can
        (Iceberg: DuckDB writes the data files of an append into an empty table or a
        full refresh); the atomicity and position rules are `commit`'s.
        """
        ...

    def commit_quarantine(self, rows: pa.Table, *, run_id: str) -> int:
        """Upsert quarantine records by (mapping, location); returns the number of records written."""
        ...

    def clear_quarantine(self, mapping: str, *, run_id: str, locations: list[str] | None = None) -> None:
        """Remove `mapping`'s quarantine records (all, or those at `locations`): a full
        refresh judges every record again, and a replay removes what it resolved."""
        ...

    def read(self, contract_name: str, snapshot_id: int | str | None = None) -> pa.Table:
        """The table (at `snapshot_id`, default current) as contract_schema, sorted by key."""
        ...

    def snapshot_id(self, contract_name: str) -> int | str | None:
        """An id of the current table state; changes on every commit. None before the first commit."""
        ...

    def table_names(self) -> list[str]:
        """The contract tables in this store (not quarantine, not internal tables), sorted."""
        ...

    def row_count(self, contract_name: str) -> int:
        ...


# --------------------------------------------------------------------------- shared helpers


def crash_point(name: str) -> None:
    """Kill this process with SIGKILL if `name` is listed in $SKYFED_STORE_CRASH_AT (crash tests only)."""
    wanted = os.environ.get(CRASH_ENV)
    if wanted and name in {w.strip() for w in wanted.split(",")}:
        os.kill(os.getpid(), signal.SIGKILL)


def position_json(position: dict[str, Any]) -> str:
    """A canonical JSON text of a position (sorted keys, no spaces) so that equal positions compare equal."""
    try:
        return json.dumps(position, sort_keys=True, separators=(",", ":"), default=str)
    except (TypeError, ValueError) as exc:
        raise SkyfedError(f"the source position {position!r} cannot be stored as JSON: {exc}") from None


def conform(rows: pa.Table | pa.RecordBatch, schema: pa.Schema, what: str) -> pa.Table:
    """`rows` with exactly `schema`'s columns, order and types.

    Missing nullable columns become nulls; a missing required column, an extra column
    or a cast that would lose information is an error naming the column.
    """
    if isinstance(rows, pa.RecordBatch):
        rows = pa.Table.from_batches([rows])
    extra = [n for n in rows.column_names if schema.get_field_index(n) < 0]
    if extra:
        raise SkyfedError(
            f"{what}: column(s) {', '.join(extra)} are not in the contract",
            "add them to the contract or drop them in the mapping",
        )
    arrays = []
    for field in schema:
        if field.name in rows.column_names:
            col = rows.column(field.name)
            if not col.type.equals(field.type):
                try:
                    col = col.cast(field.type, safe=True)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise SkyfedError(
                        f"{what}: column {field.name} has type {col.type}, which does not convert to {field.type}: {exc}"
                    ) from None
            if not field.nullable and col.null_count:
                raise SkyfedError(f"{what}: required column {field.name} has {col.null_count} null value(s)")
        elif field.nullable:
            col = pa.nulls(rows.num_rows, field.type)
        else:
            raise SkyfedError(f"{what}: required column {field.name} is missing")
        arrays.append(col)
    return pa.Table.from_arrays(arrays, schema=schema)


def check_unique(rows: pa.Table, key: list[str], what: str) -> None:
    """Raise if two rows share a key: an upsert with duplicate keys has no single right answer."""
    if not key or rows.num_rows == 0:
        return
    missing = [k for k in key if k not in rows.column_names]
    if missing:
        raise SkyfedError(f"{what}: key column(s) {', '.join(missing)} are missing")
    groups = rows.select(key).group_by(key).aggregate([([], "count_all")])
    if groups.num_rows != rows.num_rows:
        dup = groups.filter(pa.compute.greater(groups["count_all"], 1)).slice(0, 3).select(key).to_pylist()
        raise SkyfedError(
            f"{what}: {rows.num_rows - groups.num_rows} row(s) repeat a key ({', '.join(key)}), e.g. {dup}",
            "de-duplicate by key before committing (the latest record wins)",
        )


def delete_keys(deletes: pa.Table | None, schema: pa.Schema, key: list[str], what: str) -> pa.Table | None:
    """The keys to delete, typed as the table's key columns, without nulls and repeats; None if none.

    `deletes` must hold exactly the key columns: another column would suggest the caller
    meant an upsert.
    """
    if deletes is None:
        return None
    if isinstance(deletes, pa.RecordBatch):
        deletes = pa.Table.from_batches([deletes])
    if not isinstance(deletes, pa.Table):
        raise SkyfedError(f"{what}: deletes must be an Arrow table of the key columns, not {type(deletes).__name__}")
    missing = [k for k in key if k not in deletes.column_names]
    extra = [c for c in deletes.column_names if c not in key]
    if missing or extra:
        raise SkyfedError(
            f"{what}: deletes must hold exactly the key column(s) {', '.join(key)}"
            + (f"; missing {', '.join(missing)}" if missing else "")
            + (f"; not key columns: {', '.join(extra)}" if extra else ""),
            "pass a table of the deleted rows' key values only",
        )
    keys = conform(deletes.select(key), pa.schema([pa.field(k, schema.field(k).type, True) for k in key]), what)
    for k in key:
        keys = keys.filter(pa.compute.is_valid(keys[k]))
    if keys.num_rows == 0:
        return None
    return keys.group_by(key, use_threads=False).aggregate([]).select(key)


def sort_by_key(table: pa.Table, key: list[str]) -> pa.Table:
    """Deterministic order for comparisons: by key, else by every sortable column."""
    cols = key or [f.name for f in table.schema if not pa.types.is_nested(f.type)]
    if not cols or table.num_rows == 0:
        return table
    return table.sort_by([(c, "ascending") for c in cols])


def table_schema(contract: Contract) -> pa.Schema:
    """The stored schema of a contract's table (contract_schema without field metadata noise)."""
    return contract_schema(contract)


def check_contract_name(contract_name: str) -> None:
    if contract_name == QUARANTINE_TABLE or contract_name.startswith("_"):
        raise SkyfedError(
            f"the contract name {contract_name!r} is reserved by the curated store",
            "rename the contract",
        )


def quarantine_records(
    mapping: Any,
    region: str,
    run_id: str,
    *,
    location: Any,
    reasons: Any,
    raw: Any,
    n: int,
    cursor: Any = None,
) -> pa.Table:
    """Quarantine (dead-letter) records of `mapping`: where, why and the raw record.

    The one builder of the record shape for batch rows, connector rejects and streamed
    messages; `reasons` is a list-of-strings array (or a Python list of lists).
    """
    reasons = pa.array(reasons, pa.list_(pa.string())) if isinstance(reasons, list) else reasons
    return pa.table(
        {
            "run_id": pa.array([run_id] * n, pa.string()),
            "region": pa.array([region] * n, pa.string()),
            "mapping": pa.array([mapping.name] * n, pa.string()),
            "contract": pa.array([mapping.contract] * n, pa.string()),
            "source": pa.array([mapping.source] * n, pa.string()),
            "source_table": pa.array([mapping.table] * n, pa.string()),
            "location": location,
            "cursor": pa.nulls(n, pa.string()) if cursor is None else cursor,
            "reasons": reasons,
            "reason": pa.compute.binary_join(reasons, "; "),
            "raw": raw,
            "quarantined_at": pa.array([datetime.now(timezone.utc)] * n, pa.timestamp("us", tz="UTC")),
        },
        schema=QUARANTINE_SCHEMA,
    )


def quarantine_rows(rows: pa.Table, *, run_id: str, region: str, now: Any) -> pa.Table:
    """Quarantine records completed (run_id, region, reason, quarantined_at) and de-duplicated by key, last wins."""
    n = rows.num_rows
    cols = {name: rows.column(name) for name in rows.column_names}
    cols["run_id"] = pa.array([run_id] * n, pa.string())
    if "region" not in cols:
        cols["region"] = pa.array([region] * n, pa.string())
    if "reason" not in cols and "reasons" in cols:
        cols["reason"] = pa.compute.binary_join(cols["reasons"], "; ")
    if "quarantined_at" not in cols:
        cols["quarantined_at"] = pa.array([now] * n, pa.timestamp("us", tz="UTC"))
    table = conform(pa.table(cols), QUARANTINE_SCHEMA, "quarantine")
    if n:
        idx = pa.array(range(n), pa.int64())
        last = (
            table.select(QUARANTINE_KEY)
            .append_column("__i", idx)
            .group_by(QUARANTINE_KEY, use_threads=False)
            .aggregate([("__i", "max")])
        )
        if last.num_rows != n:
            keep = last["__i_max"].take(pa.compute.sort_indices(last["__i_max"]))
            table = table.take(keep)
    return table


def parse_partition(partition_by: str | None, columns: list[str]) -> tuple[str, str] | None:
    """`month(dep_time_utc)` -> ("month", "dep_time_utc"); `region` -> ("identity", "region"); None -> None."""
    if not partition_by:
        return None
    text = partition_by.strip()
    transform, column = "identity", text
    if "(" in text and text.endswith(")"):
        transform, column = text[:-1].split("(", 1)
        transform, column = transform.strip().lower(), column.strip()
        if transform not in PARTITION_TRANSFORMS:
            raise SkyfedError(
                f"partition_by {partition_by!r}: unknown transform {transform!r}",
                "use year(col), month(col), day(col), hour(col) or a plain column name",
            )
    if column not in columns:
        raise SkyfedError(f"partition_by {partition_by!r}: column {column!r} is not in the contract")
    return transform, column


def chunks(rows: pa.Table | pa.RecordBatchReader, size: int) -> Iterator[pa.Table]:
    if isinstance(rows, pa.Table):
        for offset in range(0, rows.num_rows, size):
            yield rows.slice(offset, size)
        return
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in rows:
        if batch.num_rows == 0:
            continue
        pending.append(batch)
        count += batch.num_rows
        if count >= size:
            yield pa.Table.from_batches(pending)
            pending, count = [], 0
    if pending:
        yield pa.Table.from_batches(pending)
