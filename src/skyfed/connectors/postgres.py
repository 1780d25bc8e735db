"""PostgreSQL (Cloud SQL) as Arrow record batches.

How it reads (chosen by bench/bench_pg_read.py, see docs/connectors.md): the SQL is
built here (projection, the filter transpiled to PostgreSQL by sqlglot, the cursor
bounds), and DuckDB's postgres extension runs it through `postgres_query`, which
streams it as `COPY (...) TO STDOUT (FORMAT binary)` and decodes the binary rows in
C++ straight into Arrow. Every predicate therefore runs on the server, where its
indexes are. Large tables are split into ctid (block) ranges read by parallel
connections that share one exported snapshot, so the parts form one consistent read.

Types: the Arrow schema comes from pg_catalog, not from the driver, so an empty read
still has the right schema. numeric(p,s) with p <= 38 becomes decimal128(p,s);
unconstrained numeric (and any wider one) is read as its exact text, never a float.
timestamp is timestamp[us] (no zone), timestamptz is timestamp[us, UTC]. json, uuid,
arrays, enums and types Arrow has no match for are read as text.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import duckdb
import psycopg
import pyarrow as pa
from psycopg import sql

from skyfed.connectors import duck
from skyfed.connectors.base import (
    ReadPosition,
    ReadRequest,
    Reject,
    TableInfo,
    check_columns,
    source_error,
    transpile_filter,
)
from skyfed.errors import SkyfedError
from skyfed.spec.models import PostgresSource

KIND = "postgres"
CONNECT_TIMEOUT = 5
# Tables below this many 8 KiB pages (~80 MB) are read by one connection: splitting
# small tables costs more in connection setup than it gains.
PARALLEL_MIN_PAGES = 10_000

_SIMPLE: dict[str, pa.DataType] = {
    "int2": pa.int16(),
    "int4": pa.int32(),
    "int8": pa.int64(),
    "oid": pa.int64(),
    "float4": pa.float32(),
    "float8": pa.float64(),
    "bool": pa.bool_(),
    "text": pa.string(),
    "varchar": pa.string(),
    "bpchar": pa.string(),
    "name": pa.string(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("us"),
    "timestamptz": pa.timestamp("us", tz="UTC"),
    "time": pa.time64("us"),
    "bytea": pa.binary(),
}


def arrow_type(typname: str, typmod: int, typtype: str = "b") -> tuple[pa.DataType, bool]:
    """(Arrow type, read-as-text?) for a PostgreSQL column type."""
    if typtype == "b" and typname in _SIMPLE:
        return _SIMPLE[typname], False
    if typname == "numeric":
        if typmod >= 4:
            precision, scale = ((typmod - 4) >> 16) & 0xFFFF, (typmod - 4) & 0xFFFF
            if 0 < precision <= 38 and scale <= precision:
                return pa.decimal128(precision, scale), False
        return pa.string(), True  # exact digits; a float would silently round
    return pa.string(), True


@dataclass(frozen=True)
class _Column:
    name: str
    type: pa.DataType
    as_text: bool
    nullable: bool


@dataclass(frozen=True)
class _Table:
    info: TableInfo
    columns: dict[str, _Column]
    pages: int
    kind: str  # pg_class.relkind


_CATALOG = """
select c.relname, c.relkind, greatest(c.reltuples, 0)::bigint, pg_total_relation_size(c.oid), c.relpages,
       a.attname, t.typname, a.atttypmod, t.typtype, a.attnotnull
from pg_class c
join pg_namespace n on n.oid = c.relnamespace
join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
join pg_type t on t.oid = a.atttypid
where n.nspname = %(schema)s and c.relkind in ('r', 'p', 'v', 'm', 'f')
  and (%(table)s::text is null or c.relname = %(table)s::text)
order by c.relname, a.attnum
"""


# unique indexes (the primary key among them) whose columns are all plain and NOT NULL
_UNIQUE_KEYS = """
select array_agg(a.attname::text order by k.ord)
from pg_index i
join pg_class c on c.oid = i.indrelid
join pg_namespace n on n.oid = c.relnamespace
cross join lateral unnest(i.indkey::int2[]) with ordinality as k(attnum, ord)
join pg_attribute a on a.attrelid = c.oid and a.attnum = k.attnum
where n.nspname = %(schema)s and c.relname = %(table)s
  and i.indisunique and i.indisvalid and i.indpred is null and i.indexprs is null
group by i.indexrelid
having bool_and(a.attnotnull)
"""


def _conn_value(value: str) -> str:
    """A libpq key=value value, quoted."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class PostgresConnector:
    """Reads tables of one PostgreSQL schema."""

    kind = KIND

    def __init__(self, spec: PostgresSource, name: str | None = None, *, parallel: int | None = None):
        self.spec = spec
        self.name = name or f"{spec.host}:{spec.port}/{spec.database}"
        # parallel connections for large tables; None: one per core, at most 4
        self.parallel = max(1, parallel if parallel is not None else min(4, os.cpu_count() or 1))
        self._pg: psycopg.Connection[Any] | None = None
        self._duck: duckdb.DuckDBPyConnection | None = None
        self.last_sql: str | None = None  # the statement the last read sent (for tests and --explain)

    # ------------------------------------------------------------------ connections
    def _conninfo(self) -> str:
        parts = {
            "host": self.spec.host,
            "port": str(self.spec.port),
            "dbname": self.spec.database,
            "user": self.spec.user,
            "sslmode": self.spec.sslmode,
            "connect_timeout": str(CONNECT_TIMEOUT),
            "application_name": "skyfed",
        }
        if self.spec.password is not None:
            parts["password"] = self.spec.password.reveal()
        return " ".join(f"{k}={_conn_value(v)}" for k, v in parts.items())

    def _error(self, exc: BaseException, table: str | None = None) -> SkyfedError:
        """A SkyfedError for a driver error: unreachable, wrong credentials, missing objects."""
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        low = str(exc).lower()
        where = f"{self.spec.host}:{self.spec.port}"
        if "password authentication failed" in low or "no password supplied" in low or "authentication failed" in low:
            return source_error(
                KIND, self.name, f"the server at {where} rejected user {self.spec.user!r}: {text}",
                "check the user and the password variable the spec names", table=table,
            )  # fmt: skip
        if "database" in low and "does not exist" in low:
            return source_error(
                KIND, self.name, f"database {self.spec.database!r} does not exist on {where}",
                "check `database` in the spec", table=table,
            )  # fmt: skip
        if any(w in low for w in ("connection refused", "could not connect", "timeout expired", "could not translate",
                                  "no route to host", "connection to server", "server closed the connection")):
            return source_error(
                KIND, self.name, f"cannot reach PostgreSQL at {where}: {text}",
                "check host and port, and that the server runs (locally: `skyfed up`)", table=table,
            )  # fmt: skip
        if "does not exist" in low:
            return source_error(KIND, self.name, text, "check the table, column and filter names", table=table)
        return source_error(KIND, self.name, text, table=table)

    def _catalog_conn(self) -> psycopg.Connection[Any]:
        if self._pg is None or self._pg.closed:
            try:
                self._pg = psycopg.connect(self._conninfo(), autocommit=True)
            except psycopg.Error as exc:
                raise self._error(exc) from None
        return self._pg

    def _duckdb(self) -> duckdb.DuckDBPyConnection:
        if self._duck is None:
            con = duck.connect(["postgres"])
            con.execute("SET TimeZone = 'UTC'")
            dsn = self._conninfo().replace("'", "''")
            try:
                con.execute(f"ATTACH '{dsn}' AS src (TYPE postgres, READ_ONLY)")
            except duckdb.Error as exc:
                con.close()
                raise self._error(exc) from None
            self._duck = con
        return self._duck

    def close(self) -> None:
        if self._pg is not None:
            with contextlib.suppress(Exception):
                self._pg.close()
            self._pg = None
        if self._duck is not None:
            with contextlib.suppress(Exception):
                self._duck.close()
            self._duck = None

    def __enter__(self) -> PostgresConnector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ catalog
    def _tables(self, table: str | None = None) -> dict[str, _Table]:
        try:
            rows = self._catalog_conn().execute(_CATALOG, {"schema": self.spec.schema_, "table": table}).fetchall()
        except psycopg.Error as exc:
            raise self._error(exc, table) from None
        grouped: dict[str, list[tuple[Any, ...]]] = {}
        for row in rows:
            grouped.setdefault(row[0], []).append(row)
        out: dict[str, _Table] = {}
        for relname, cols in grouped.items():
            _, relkind, tuples, size, pages = cols[0][:5]
            columns = {}
            for *_, attname, typname, typmod, typtype, notnull in cols:
                atype, as_text = arrow_type(typname, typmod, typtype)
                columns[attname] = _Column(attname, atype, as_text, not notnull)
            schema = pa.schema([pa.field(c.name, c.type, c.nullable) for c in columns.values()])
            rows_est = int(tuples) if relkind in ("r", "m", "p") else None
            info = TableInfo(name=relname, schema=schema, rows=rows_est, bytes=int(size) if size else None)
            out[relname] = _Table(info, columns, int(pages or 0), relkind)
        return out

    def discover(self) -> list[TableInfo]:
        return [t.info for t in self._tables().values()]

    def _table(self, table: str) -> _Table:
        found = self._tables(table).get(table)
        if found is None:
            raise source_error(
                KIND, self.name, f"table {self.spec.schema_}.{table} does not exist",
                "check the table name (and `schema` in the spec); `skyfed discover` lists the tables", table=table,
            )  # fmt: skip
        return found

    def table_info(self, table: str) -> TableInfo:
        return self._table(table).info

    # ------------------------------------------------------------------ SQL
    def _literal(self, value: Any) -> str:
        return sql.Literal(value).as_string(self._catalog_conn())

    def _where(self, request: ReadRequest, upto: ReadPosition | None, after: ReadPosition | None) -> list[str]:
        conds = []
        pushed = transpile_filter(KIND, self.name, request.table, request.filter, "postgres")
        if pushed:
            conds.append(f"({pushed})")
        if request.cursor:
            cur = sql.Identifier(request.cursor).as_string(self._catalog_conn())
            if after is not None and after.cursor_value is not None:
                conds.append(f"{cur} > {self._literal(after.cursor_value)}")
            if upto is not None and upto.cursor_value is not None:
                conds.append(f"{cur} <= {self._literal(upto.cursor_value)}")
        return conds

    def build_sql(
        self,
        request: ReadRequest,
        upto: ReadPosition | None = None,
        after: ReadPosition | None = None,
        ctid_range: tuple[int, int | None] | None = None,
    ) -> str:
        """The SELECT the server runs for `request` (inside COPY ... TO STDOUT binary)."""
        tbl = self._table(request.table)
        return self._sql(tbl, request, upto, after, ctid_range)

    def _sql(
        self,
        tbl: _Table,
        request: ReadRequest,
        upto: ReadPosition | None,
        after: ReadPosition | None,
        ctid_range: tuple[int, int | None] | None = None,
    ) -> str:
        conn = self._catalog_conn()
        names = check_columns(KIND, self.name, request.table, tbl.info.schema, request.columns)
        if request.cursor:
            check_columns(KIND, self.name, request.table, tbl.info.schema, (request.cursor,))
        exprs = []
        for n in names:
            ident = sql.Identifier(n).as_string(conn)
            exprs.append(f"{ident}::text AS {ident}" if tbl.columns[n].as_text else ident)
        conds = self._where(request, upto, after)
        if ctid_range is not None:
            lo, hi = ctid_range
            conds.append(f"ctid >= '({lo},0)'::tid")
            if hi is not None:
                conds.append(f"ctid < '({hi},0)'::tid")
        target = sql.Identifier(self.spec.schema_, request.table).as_string(conn)
        text = f"SELECT {', '.join(exprs)} FROM {target}"
        if conds:
            text += " WHERE " + " AND ".join(conds)
        return text

    # ------------------------------------------------------------------ fused reads (DuckDB scans the table itself)
    def attach(self, con: duckdb.DuckDBPyConnection, alias: str) -> None:
        """Attach this source, read-only, to `con` (which has the postgres extension loaded) as `alias`."""
        dsn = self._conninfo().replace("'", "''")
        try:
            con.execute(f"ATTACH '{dsn}' AS {alias} (TYPE postgres, READ_ONLY)")
        except duckdb.Error as exc:
            raise self._error(exc) from None

    def splits(self, request: ReadRequest, after: ReadPosition | None) -> bool:
        """Whether `read` splits this read into parallel ctid ranges (a full read of a large table)."""
        first = after is None or after.cursor_value is None
        return first and bool(self._ranges(self._table(request.table), self.parallel))

    def unique_keys(self, table: str) -> list[tuple[str, ...]]:
        """Column sets no two rows of `table` share: its primary key and every unique index
        over plain NOT NULL columns (no expressions, no predicate). The fused path reads
        one snapshot, so a contract key that determines one of these repeats in no read."""
        try:
            rows = self._catalog_conn().execute(_UNIQUE_KEYS, {"schema": self.spec.schema_, "table": table}).fetchall()
        except psycopg.Error as exc:
            raise self._error(exc, table) from None
        return [tuple(cols) for (cols,) in rows]

    def scan_activity(self, table: str) -> tuple[bool, float | None]:
        """(a COPY of `table` runs now, share 0-1 of its pages behind the ranged COPYs running now).

        For the progress of a DuckDB scan of the attached table, which reports none to
        Python: its tasks take 1000-page ctid ranges in order, so the highest range start
        in `pg_stat_activity` tells how far it got (None: no ranged COPY runs).
        """
        tbl = self._table(table)
        conn = self._catalog_conn()
        running, block = conn.execute(
            "SELECT count(*), max(substring(query from 'ctid BETWEEN ''\\((\\d+),')::bigint) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() AND state = 'active' "
            "AND query LIKE 'COPY (SELECT %%' AND position(%(t)s in query) > 0",
            {"t": sql.Identifier(self.spec.schema_, table).as_string(conn)},
        ).fetchone()  # type: ignore[misc]
        share = None if block is None or not tbl.pages else min(1.0, int(block) / tbl.pages)
        return bool(running), share

    def scan_sql(
        self, request: ReadRequest, upto: ReadPosition | None, after: ReadPosition | None, alias: str
    ) -> str | None:
        """DuckDB SELECT of every column of (after, upto] through the attached `alias`, or None
        (`upto` None: no upper bound).

        None when DuckDB's scanner would not deliver what `read` delivers: a view or
        partitioned table (no ctid ranges), a column `read` takes as text (json, uuid,
        unconstrained numeric...), a cursor value with no exact DuckDB literal. The
        cursor bounds are plain comparisons, which the scanner pushes down into its
        COPY statements. Callers compare the scan's types with `table_info` themselves.
        """
        tbl = self._table(request.table)
        if tbl.kind != "r" or request.columns is not None or request.filter:
            return None
        if any(c.as_text for c in tbl.columns.values()):
            return None
        target = ".".join(_duck_ident(p) for p in (alias, self.spec.schema_, request.table))
        text = f"SELECT * FROM {target}"
        if not request.cursor:
            return text
        check_columns(KIND, self.name, request.table, tbl.info.schema, (request.cursor,))
        cur = _duck_ident(request.cursor)
        conds = []
        for op, pos in ((">", after), ("<=", upto)):
            if pos is None or pos.cursor_value is None:
                continue
            value = _duck_literal(pos.cursor_value)
            if value is None:
                return None
            conds.append(f"{cur} {op} {value}")
        return text + (" WHERE " + " AND ".join(conds) if conds else "")

    # ------------------------------------------------------------------ reading
    def position(self, request: ReadRequest) -> ReadPosition:
        if not request.cursor:
            return ReadPosition()
        tbl = self._table(request.table)
        check_columns(KIND, self.name, request.table, tbl.info.schema, (request.cursor,))
        conn = self._catalog_conn()
        cur = sql.Identifier(request.cursor).as_string(conn)
        target = sql.Identifier(self.spec.schema_, request.table).as_string(conn)
        conds = self._where(ReadRequest(request.table, filter=request.filter), None, None)
        text = f"SELECT max({cur}) FROM {target}" + (" WHERE " + " AND ".join(conds) if conds else "")
        try:
            value = conn.execute(text).fetchone()[0]  # type: ignore[index]
        except psycopg.Error as exc:
            raise self._error(exc, request.table) from None
        return ReadPosition(cursor_value=value)

    def _ranges(self, tbl: _Table, parallel: int) -> list[tuple[int, int | None]]:
        if parallel <= 1 or tbl.kind != "r" or tbl.pages < PARALLEL_MIN_PAGES:
            return []
        step = -(-tbl.pages // parallel)
        bounds = [i * step for i in range(parallel)]
        return [(lo, bounds[i + 1] if i + 1 < len(bounds) else None) for i, lo in enumerate(bounds)]

    def read(
        self,
        request: ReadRequest,
        upto: ReadPosition,
        after: ReadPosition | None = None,
        rejects: Callable[[Reject], None] | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """Stream (after, upto]; a table without a cursor is read whole (upto is ignored)."""
        tbl = self._table(request.table)
        if request.cursor and upto.cursor_value is None:
            return  # the table was empty when the position was taken
        names = check_columns(KIND, self.name, request.table, tbl.info.schema, request.columns)
        schema = pa.schema([tbl.info.schema.field(n) for n in names])
        # Split only full reads: an incremental read is small and its cursor bound can use an index.
        first = after is None or after.cursor_value is None
        ranges = self._ranges(tbl, self.parallel) if first else []
        con = self._duckdb()
        if not ranges:
            text = self._sql(tbl, request, upto, after)
            self.last_sql = text
            yield from self._stream(con.cursor(), text, schema, request, None)
            return
        texts = [self._sql(tbl, request, upto, after, r) for r in ranges]
        self.last_sql = texts[0]
        yield from self._parallel(con, texts, schema, request)

    def _stream(
        self,
        con: duckdb.DuckDBPyConnection,
        text: str,
        schema: pa.Schema,
        request: ReadRequest,
        snapshot: str | None,
        stop: threading.Event | None = None,
    ) -> Iterator[pa.RecordBatch]:
        quoted = text.replace("'", "''")
        try:
            if snapshot:
                con.execute("BEGIN")
                con.execute(f"CALL postgres_execute('src', 'SET TRANSACTION SNAPSHOT ''{snapshot}''')")
            reader = con.execute(f"SELECT * FROM postgres_query('src', '{quoted}')").to_arrow_reader(request.batch_rows)
            for batch in reader:
                if stop is not None and stop.is_set():
                    break
                if batch.num_rows == 0:
                    continue
                yield batch if batch.schema.equals(schema) else _conform(batch, schema)
        except duckdb.Error as exc:
            raise self._error(exc, request.table) from None
        finally:
            if snapshot:
                with contextlib.suppress(duckdb.Error):
                    con.execute("COMMIT")
            con.close()

    def _parallel(
        self, con: duckdb.DuckDBPyConnection, texts: list[str], schema: pa.Schema, request: ReadRequest
    ) -> Iterator[pa.RecordBatch]:
        """Read ctid ranges on parallel connections sharing one exported snapshot."""
        try:
            holder = psycopg.connect(self._conninfo())
            holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            snapshot = holder.execute("SELECT pg_export_snapshot()").fetchone()[0]  # type: ignore[index]
        except psycopg.Error as exc:
            raise self._error(exc, request.table) from None
        out: queue.Queue[Any] = queue.Queue(maxsize=2 * len(texts))  # bounded: memory stays flat
        stop = threading.Event()
        done = object()

        def work(text: str) -> None:
            try:
                for batch in self._stream(con.cursor(), text, schema, request, snapshot, stop):
                    while not stop.is_set():
                        try:
                            out.put(batch, timeout=0.2)
                            break
                        except queue.Full:
                            continue
            except BaseException as exc:  # noqa: BLE001 - handed to the reading thread
                out.put(exc)
            finally:
                out.put(done)

        threads = [threading.Thread(target=work, args=(t,), daemon=True) for t in texts]
        for t in threads:
            t.start()
        try:
            remaining = len(threads)
            while remaining:
                item = out.get()
                if item is done:
                    remaining -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            stop.set()
            while any(t.is_alive() for t in threads):
                with contextlib.suppress(queue.Empty):
                    out.get(timeout=0.05)
            with contextlib.suppress(Exception):
                holder.close()


def _duck_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _duck_literal(value: Any) -> str | None:
    """An exact DuckDB literal for a cursor value, or None when there is none."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Decimal):
        return f"{value}::DECIMAL(38,{max(0, -value.as_tuple().exponent)})" if value.is_finite() else None  # type: ignore[operator]
    if isinstance(value, datetime):
        kind = "TIMESTAMPTZ" if value.tzinfo is not None else "TIMESTAMP"
        return f"{kind} '{value.isoformat(sep=' ')}'"
    if isinstance(value, date):
        return f"DATE '{value.isoformat()}'"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return None


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """Cast a batch to the catalog's schema (vectorized; e.g. DuckDB's names for the same types)."""
    arrays = [batch.column(i).cast(field.type) for i, field in enumerate(schema)]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
