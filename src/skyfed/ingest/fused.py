"""Fused PostgreSQL ingest: DuckDB reads (committed, upto] and harmonizes it in one statement.

The batch path moves every row PostgreSQL -> DuckDB (the connector's scan) -> Arrow ->
DuckDB (harmonize) -> Arrow (split) -> DuckDB (staging). On two cores those hand-overs
and the Python between them cost more than the read itself. Here the region's staging
DuckDB attaches the source (postgres extension, loaded offline), and one
`CREATE TABLE harmonized AS WITH __batch AS (<scan>) <compiled mapping>` runs the
scanner (binary COPY over parallel ctid ranges, cursor bounds pushed down) and the
mapping's compiled SELECT together. Each row keeps a flag (no quarantine reason) and,
only if it has any reason, its reason lists and raw record as one JSON text; quarantine
rows, fail rows and warnings are read out of it by SQL afterwards (they are few), and
the good rows are the `stage` view the de-dup + commit step reads, as in the batch path.

Used only where it gives what the batch path gives (`eligible`): a PostgreSQL table
whose columns DuckDB's scanner delivers with the types the connector would, a mapping
with a source key (quarantine locations) and no filter (rows read are the rows
harmonized), and no drift rule that rewrites rows. Everything else keeps the batch
path; `SKYFED_INGEST_FUSED=0` forces it.

Arrival order (`__seq`, the de-dup tie-break after the cursor, and "row N of this run"
in messages): a read the connector would do with one connection (a small table, an
incremental range) is one COPY here too, numbered in the server's order, exactly as
the batch path numbers it. A full read of a large table runs in parallel ctid ranges,
which have no order (the batch path's arrival order is a race too); `__seq` is then a
hash of the whole record, so a rerun after a crash picks the same winner of a tie, and
two records that tie on key, cursor and hash are the same record.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa

from skyfed.connectors.base import ReadPosition, ReadRequest
from skyfed.contracts.harmonize import CURSOR, FAIL, QUARANTINE, RAW, SEQ, WARN, q
from skyfed.contracts.types import duckdb_types_of
from skyfed.spec.models import Mapping

FUSED_ENV = "SKYFED_INGEST_FUSED"
ALIAS = "__pgsrc"
HARMONIZED = "harmonized"
POLL_SECONDS = 0.5
OK, WHY = "__ok", "__why"  # harmonized: no quarantine reason; reasons + raw record as JSON (NULL: none)
_KEYS = {QUARANTINE: "q", FAIL: "f", WARN: "w"}

ProgressFn = Callable[[int, int | None], None]
CrashFn = Callable[[str], None]


@dataclass(frozen=True)
class FusedScan:
    """The scan's SELECT, and whether its rows arrive in one ordered stream."""

    sql: str
    ordinal: bool  # one COPY: `__seq` is the arrival number, as in the batch path; else a record hash


def wanted(mapping: Mapping, connector: Any, drift: Any) -> bool:
    """Whether the fused path may apply, judged before any DuckDB work (see `scan` for the rest)."""
    if os.environ.get(FUSED_ENV, "1").strip() == "0":
        return False
    return (
        getattr(connector, "kind", None) == "postgres"
        and hasattr(connector, "scan_sql")
        and bool(mapping.key)
        and not mapping.filter
        and not drift.rules()
    )


# cursor types whose order and Python value are the same in DuckDB and PostgreSQL (not text:
# collations order it differently; not numeric/float: their Python values print differently)
_POSITION_TYPES = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "DATE", "TIMESTAMP", "TIMESTAMP WITH TIME ZONE"}


def position_from_read(request: ReadRequest, schema: pa.Schema) -> bool:
    """Whether this read's position can be the greatest cursor among the rows it read.

    The scan reads one snapshot, so "every row with a cursor up to the greatest one read"
    is what it saw, the same as asking max(cursor) first and reading up to it, without a
    second pass over the table (a third of a second per 5M rows, seconds when cold)."""
    if not request.cursor:
        return False
    return duckdb_types_of(schema).get(request.cursor, "").upper() in _POSITION_TYPES


def read_position(con: duckdb.DuckDBPyConnection, after: ReadPosition | None) -> ReadPosition:
    """The greatest cursor read into `harmonized` (rows of every fate), else the previous position."""
    (value,) = con.execute(f"SELECT max({CURSOR}) FROM {HARMONIZED}").fetchone()  # type: ignore[misc]
    if value is None:
        return ReadPosition(cursor_value=after.cursor_value if after is not None else None)
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        value = value.astimezone(dt.UTC)  # DuckDB hands out its session zone's tzinfo class
    return ReadPosition(cursor_value=value)


def scan(
    con: duckdb.DuckDBPyConnection,
    connector: Any,
    request: ReadRequest,
    upto: ReadPosition | None,
    after: ReadPosition | None,
    schema: pa.Schema,
) -> FusedScan | None:
    """The DuckDB scan of the attached source, or None when the batch path must run.

    `schema` is the connector's `table_info` schema: the scan must have exactly its
    columns and DuckDB types, or the compiled mapping would see other values. `upto`
    None: no upper cursor bound (the position is read off the rows, `read_position`);
    rows with a NULL cursor are still left out, as a bounded read leaves them out.
    """
    if request.cursor and upto is not None and upto.cursor_value is None:
        return None  # empty when the position was taken: the batch path reads nothing
    sql = connector.scan_sql(request, upto, after, ALIAS)
    if sql is None:
        return None
    if upto is None and request.cursor and schema.field(request.cursor).nullable:
        sql = f"SELECT * FROM ({sql}) WHERE {q(request.cursor)} IS NOT NULL"
    connector.attach(con, ALIAS)
    parallel = connector.splits(request, after)
    if not parallel:
        # Read as the connector reads it: one COPY (an incremental range can use the
        # cursor's index, not scan every ctid range), rows in the server's order.
        con.execute("SET pg_use_ctid_scan = false")
    got = {r[0]: r[1] for r in con.execute(f"DESCRIBE {sql}").fetchall()}
    if list(got.items()) != list(duckdb_types_of(schema).items()):
        con.execute(f"DETACH {ALIAS}")
        return None
    return FusedScan(sql, ordinal=not parallel)


def batch_types(schema: pa.Schema) -> dict[str, str]:
    """The columns the compiled mapping is compiled for: the source's, plus the arrival order."""
    return {**duckdb_types_of(schema), SEQ: "BIGINT"}


def stage(
    con: duckdb.DuckDBPyConnection,
    scan: FusedScan,
    harmonize_sql: str,
    columns: list[str],
    *,
    total: int | None,
    on_progress: ProgressFn | None,
    activity: Callable[[], tuple[bool, float | None]],
    crash: CrashFn,
) -> int:
    """Run the one statement: scan + harmonize into table `harmonized`; returns rows read.

    `columns`: what the arrival order of a parallel read hashes (the whole record, or a
    unique key of the source when no key can repeat in the read).

    Progress: DuckDB reports none to Python while a statement runs (`query_progress()`
    stays 0 or -1), so a thread asks `activity()` every POLL_SECONDS (the connector
    reads from `pg_stat_activity` how far the scanner's ctid ranges got) and reports the
    share as rows, scaled by the table's row estimate; the exact count follows the
    statement. A read in one COPY (incremental, small table) reports only at its end.
    """
    if scan.ordinal:  # one stream in the server's order: a streaming row_number, no sort
        order = "row_number() OVER () - 1"
    else:  # parallel ranges have no order; a numbering would serialize the scan
        order = f"CAST(hash({', '.join(q(c) for c in columns)}) >> 1 AS BIGINT)"
    body = harmonize_sql.removeprefix("WITH ")
    inner = f"WITH __batch AS (SELECT *, {order} AS {SEQ} FROM ({scan.sql})), {body}"
    # Reason lists and the raw record are kept as one JSON text, only for rows that have
    # a reason: three list columns for every row were a quarter of the table (more spill).
    lists = ", ".join(f"{key} := {col}" for col, key in _KEYS.items())
    why = (
        f"CASE WHEN len({QUARANTINE}) + len({FAIL}) + len({WARN}) > 0 "
        f"THEN CAST(to_json(struct_pack({lists}, raw := {RAW})) AS VARCHAR) END"
    )
    sql = (
        f"CREATE OR REPLACE TABLE {HARMONIZED} AS SELECT * EXCLUDE ({RAW}, {QUARANTINE}, {FAIL}, {WARN}), "
        f"len({QUARANTINE}) = 0 AS {OK}, {why} AS {WHY} FROM ({inner})"
    )
    done = threading.Event()
    running = threading.Event()

    def poll() -> None:
        running.wait()
        if os.environ.get("SKYFED_CRASH_AT") == "fused:scan":
            # test hook: kill -9 once the scanner's COPY runs on the server (nothing is on disk yet)
            while not (done.is_set() or activity()[0]):
                done.wait(0.005)
            crash("fused:scan")
        best = 0.0
        while not done.wait(POLL_SECONDS):
            if not (on_progress and total):
                continue
            try:
                share = activity()[1]
            except Exception:  # noqa: BLE001 - progress is a display; the statement reports real errors
                continue
            if share and share > best:  # ranges finish out of order: never step back
                best = share
                on_progress(int(total * share), total)

    poller = threading.Thread(target=poll, daemon=True, name="skyfed-fused-progress")
    poller.start()
    try:
        running.set()
        con.execute(sql)
    finally:
        done.set()
        running.set()
        poller.join()
    (rows,) = con.execute(f"SELECT count(*) FROM {HARMONIZED}").fetchone()  # type: ignore[misc]
    if on_progress:
        on_progress(rows, total)
    return int(rows)


def create_stage_view(con: duckdb.DuckDBPyConnection, contract_columns: tuple[str, ...]) -> None:
    """`stage`: the harmonized rows without a quarantine reason, in the batch path's staging shape."""
    cols = ", ".join(q(c) for c in [*contract_columns, CURSOR, SEQ])
    con.execute(f"CREATE OR REPLACE VIEW stage AS SELECT {cols} FROM {HARMONIZED} WHERE {OK}")


def _has(reasons: str) -> str:
    return f"{WHY} IS NOT NULL AND json_array_length({WHY}, '$.{_KEYS[reasons]}') > 0"


def rows_with(con: duckdb.DuckDBPyConnection, reasons: str) -> pa.Table:
    """The harmonized rows with a reason in `reasons` (QUARANTINE, FAIL or WARN), in arrival
    order, with the batch path's columns (reason lists and raw record restored)."""
    shape = "{" + ", ".join(f'"{k}": "VARCHAR[]"' for k in _KEYS.values()) + ', "raw": "VARCHAR"}'
    restored = ", ".join(f"__w.{key} AS {col}" for col, key in _KEYS.items())
    return con.sql(
        f"SELECT * EXCLUDE ({OK}, {WHY}, __w), __w.raw AS {RAW}, {restored} FROM "
        f"(SELECT *, from_json({WHY}, '{shape}') AS __w FROM {HARMONIZED} WHERE {_has(reasons)}) ORDER BY {SEQ}"
    ).to_arrow_table()


def count_with(con: duckdb.DuckDBPyConnection, reasons: str) -> int:
    (n,) = con.execute(f"SELECT count(*) FROM {HARMONIZED} WHERE {_has(reasons)}").fetchone()  # type: ignore[misc]
    return int(n)


def reason_counts(con: duckdb.DuckDBPyConnection, reasons: str) -> list[tuple[str, int]]:
    """(reason, rows) over the whole table: counted in DuckDB, never per row in Python."""
    items = f"from_json(json_extract({WHY}, '$.{_KEYS[reasons]}'), '[\"VARCHAR\"]')"
    return con.execute(
        f"SELECT r, count(*) FROM (SELECT unnest({items}) AS r FROM {HARMONIZED} WHERE {_has(reasons)}) GROUP BY r"
    ).fetchall()
