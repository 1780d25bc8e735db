"""Record who ran what: queries (with the tables and columns they touch) and runs.

`record_query` derives the tables and columns from the SQL with sqlglot, so the
audit does not depend on the planner telling it; with a schema (table -> columns)
`SELECT *` and unqualified columns are resolved too. Call sites (owned by others):
the query engine after a query finishes or is refused, the ingest runner and the
model runner after a run.
"""

from __future__ import annotations

import functools
import getpass
import os
import uuid
from datetime import UTC, datetime
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import OptimizeError, ParseError
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import traverse_scope

from skyfed.catalog import audit as store

ACTOR_ENV = "SKYFED_USER"


def current_actor() -> str:
    """$SKYFED_USER (set by the API from its token), else the OS user."""
    try:
        return os.environ.get(ACTOR_ENV) or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def touched(sql: str, schema: dict[str, list[str]] | None = None, dialect: str = "duckdb") -> tuple[list[str], list[str]]:
    """The base tables and `table.column`s a statement reads (sorted); `table.*` for an unresolved star.

    Memoized by statement, schema and dialect: a dashboard repeats the same statements and
    parsing + qualifying costs 4-6 ms of every audited query."""
    frozen = tuple(sorted((k, tuple(v)) for k, v in schema.items())) if schema else ()
    tables, columns = _touched(sql, frozen, dialect)
    return list(tables), list(columns)


@functools.lru_cache(maxsize=512)
def _touched(sql: str, frozen: tuple[tuple[str, tuple[str, ...]], ...], dialect: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    schema = {k: list(v) for k, v in frozen}
    try:
        tree = sqlglot.parse_one(sql, read=dialect)
    except ParseError:
        return (), ()
    ctes = {c.alias_or_name for c in tree.find_all(exp.CTE)}
    tables = sorted({_name(t) for t in tree.find_all(exp.Table) if t.name not in ctes})
    if schema:
        try:
            tree = qualify(tree, schema={k: {c: "VARCHAR" for c in v} for k, v in schema.items()}, dialect=dialect,
                           validate_qualify_columns=False, identify=False)
        except (OptimizeError, ValueError):
            pass
    columns: set[str] = set()
    for scope in traverse_scope(tree):
        for col in scope.columns:
            source = scope.sources.get(col.table) if col.table else None
            if source is None and not col.table and len(scope.selected_sources) == 1:
                source = next(iter(scope.selected_sources.values()))[1]
            if isinstance(source, exp.Table) and source.name not in ctes:
                columns.add(f"{_name(source)}.{col.name}")
        for star in scope.expression.find_all(exp.Star):
            if star.parent is scope.expression or isinstance(star.parent, exp.Column):
                for _, src in scope.selected_sources.values():
                    if isinstance(src, exp.Table) and src.name not in ctes:
                        columns.add(f"{_name(src)}.*")
    return tuple(tables), tuple(sorted(columns))


def _name(table: exp.Table) -> str:
    return ".".join(p for p in (table.db, table.name) if p)


def record_query(
    sql: str,
    *,
    actor: str | None = None,
    role: str | None = None,
    decisions: list[dict[str, Any]] | None = None,
    rows: int | None = None,
    status: str = "ok",
    schema: dict[str, list[str]] | None = None,
    detail: dict[str, Any] | None = None,
    event_id: str | None = None,
) -> str:
    """Record one query (ok, refused or failed); returns its event id."""
    tables, columns = touched(sql, schema)
    return _record("query", sql, tables, columns, actor, role, decisions, rows, status, detail, event_id)


def record_run(
    run_id: str,
    *,
    kind: str = "ingest",
    tables: list[str],
    columns: list[str] | None = None,
    actor: str | None = None,
    rows: int | None = None,
    status: str = "ok",
    decisions: list[dict[str, Any]] | None = None,
    detail: dict[str, Any] | None = None,
) -> str:
    """Record one ingest run or model build; the run id makes a retried record a no-op."""
    event_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"skyfed-run:{kind}:{run_id}:{status}"))
    detail = {"run_id": run_id, "run_kind": kind, **(detail or {})}
    return _record("run", None, sorted(tables), sorted(columns or []), actor, None, decisions, rows, status, detail, event_id)


def _record(kind: str, sql: str | None, tables: list[str], columns: list[str], actor: str | None, role: str | None,
            decisions: list[dict[str, Any]] | None, rows: int | None, status: str, detail: dict[str, Any] | None,
            event_id: str | None) -> str:
    eid = event_id or str(uuid.uuid4())
    store.insert(
        {
            "event_id": eid,
            "kind": kind,
            "at": datetime.now(UTC),
            "actor": actor or current_actor(),
            "role": role,
            "sql": sql,
            "tables": tables,
            "columns": columns,
            "decisions": decisions or [],
            "rows": rows,
            "status": status,
            "detail": detail or {},
        }
    )
    return eid
