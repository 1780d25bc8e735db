"""Live source tables (`latam.ops.voos`): resolved through the source's connector, read in their region.

- PostgreSQL: the region's DuckDB ATTACHes the database READ_ONLY through the postgres
  extension (loaded offline, skyfed.connectors.duck); DuckDB's scanner pushes the
  projection and the filters into the SELECT it sends to PostgreSQL.
- BigQuery source datasets: the region's part runs as a query job in the source's
  location (the same BigQuery executor as a BigQuery store).
- Files (gcs sources): the files connector reads the table (same parsing and union by
  column name as ingestion; records it cannot parse are skipped and counted) into Arrow,
  which the region's DuckDB queries. The planner pushes down the referenced columns and
  the conjuncts that filter the table's rows: objects whose hive partition values
  (`dt=2024-03-01/`) fail a conjunct on partition columns are not read at all; the
  connector reads only the needed columns and filters the rest.

A live table has no snapshot id, so answers over live tables are not cached.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from skyfed.connectors import duck
from skyfed.connectors.base import SOURCE_OBJECT, SOURCE_ROW, ReadRequest
from skyfed.errors import SkyfedError
from skyfed.query.catalog import BIGQUERY, DUCKDB, LiveTable
from skyfed.spec.models import BigQuerySource, GcsSource, PlatformSpec, PostgresSource

_PROVENANCE = {SOURCE_OBJECT, SOURCE_ROW}


def _source(spec: PlatformSpec, region: str, source: str) -> Any:
    if region not in spec.regions:
        raise SkyfedError(f"{region}.{source}: there is no region {region!r}", f"regions: {', '.join(spec.regions)}")
    sources = spec.regions[region].sources
    if source not in sources:
        raise SkyfedError(
            f"{region}.{source}: region {region} has no source {source!r}",
            f"its sources: {', '.join(sources) or 'none'}",
        )
    return sources[source]


def _connector(spec: PlatformSpec, region: str, source: str) -> Any:
    from skyfed.connectors.registry import connector_for

    return connector_for(_source(spec, region, source), f"{region}.{source}")


def resolve_live(spec: PlatformSpec, region: str, source: str, table: str) -> LiveTable:
    """The live table's columns (DuckDB types) from its connector's schema; raises a SkyfedError if unknown."""
    src = _source(spec, region, source)
    if isinstance(src, PostgresSource):
        kind, engine = "postgres", DUCKDB
    elif isinstance(src, BigQuerySource):
        kind, engine = "bigquery", BIGQUERY
    elif isinstance(src, GcsSource):
        kind, engine = "gcs", DUCKDB
    else:
        raise SkyfedError(
            f"{region}.{source}.{table}: {getattr(src, 'kind', '?')} sources are not queryable live",
            "query its curated tables instead (pubsub is read by `skyfed stream`)",
        )
    conn = _connector(spec, region, source)
    try:
        info = conn.table_info(table)
    finally:
        close = getattr(conn, "close", None)
        if close is not None:
            close()
    schema = pa.schema([f for f in info.schema if f.name not in _PROVENANCE])
    if kind == "postgres":
        ref: tuple[str, ...] = (f"{region}__{source}", src.schema_, table)
    elif kind == "bigquery":
        ref = (src.project, src.dataset, table)
    else:
        ref = (f"{region}__{source}__{table}",)
    return LiveTable(region, source, table, kind, engine, duckdb_columns(schema), ref)


def duckdb_columns(schema: pa.Schema) -> dict[str, str]:
    """Column -> DuckDB type as DuckDB reads an Arrow table of `schema`."""
    con = duck.connect([])
    try:
        con.register("t", schema.empty_table())
        return {name: typ for name, typ, *_ in con.execute("DESCRIBE t").fetchall()}
    finally:
        con.close()


def live_size(spec: PlatformSpec, live: LiveTable) -> dict[str, Any]:
    """The connector's size estimate (rows, bytes) of a live table, without reading it."""
    conn = _connector(spec, live.region, live.source)
    try:
        info = conn.table_info(live.table)
    finally:
        close = getattr(conn, "close", None)
        if close is not None:
            close()
    return {"rows": info.rows, "bytes": info.bytes}


def postgres_dsn(spec: PlatformSpec, live: LiveTable) -> str:
    from skyfed.connectors.postgres import PostgresConnector

    return PostgresConnector(_source(spec, live.region, live.source))._conninfo()


def read_files_table(spec: PlatformSpec, live: LiveTable, columns: list[str] | None = None,
                     filters: list[str] | None = None) -> tuple[pa.Table, int]:  # fmt: skip
    """A files table as Arrow through the files connector, and how many records could not be parsed.

    `columns` (projection) and `filters` (DuckDB conjuncts over unqualified columns) are pushed
    down: objects whose hive partition values fail the conjuncts that mention only partition
    columns are skipped; the connector reads only `columns` (plus what the filters need) and
    applies the filters to every batch.
    """
    conn = _connector(spec, live.region, live.source)
    skipped: list[Any] = []
    try:
        wanted = None
        if columns is not None:
            import sqlglot
            from sqlglot import exp

            used = {c.name for f in filters or [] for c in sqlglot.parse_one(f, read="duckdb").find_all(exp.Column)}
            wanted = tuple(c for c in live.columns if c in set(columns) | used)
        request = ReadRequest(live.table, columns=wanted, filter=" AND ".join(f"({f})" for f in filters) if filters else None)
        upto = conn.position(request)
        table_spec = _source(spec, live.region, live.source).tables.get(live.table)
        if filters and table_spec is not None and table_spec.hive_partitioning:
            upto = prune_partitions(upto, filters)
        batches = list(conn.read(request, upto, rejects=skipped.append))
    finally:
        close = getattr(conn, "close", None)
        if close is not None:
            close()
    if batches:
        table = pa.Table.from_batches(batches)
    else:
        table = pa.schema([pa.field(c, pa.string()) for c in live.columns]).empty_table()
    keep = [c for c in table.column_names if c not in _PROVENANCE]
    return table.select(keep), len(skipped)


def prune_partitions(upto: Any, filters: list[str]) -> Any:
    """Keep the objects whose hive partition values (`key=value/` path parts) pass the conjuncts
    that mention only partition columns (evaluated by DuckDB over one row per object)."""
    import re

    import sqlglot
    from sqlglot import exp

    from skyfed.connectors.base import ReadPosition

    keys = list(upto.objects)
    parts = [dict(re.findall(r"([^/=]+)=([^/]*)/", k)) for k in keys]
    names = sorted({n for p in parts for n in p})
    usable = [f for f in filters
              if {c.name for c in sqlglot.parse_one(f, read="duckdb").find_all(exp.Column)} <= set(names)]  # fmt: skip
    if not keys or not usable:
        return upto
    table = pa.table({"_sf_i": list(range(len(keys))), **{n: [p.get(n) for p in parts] for n in names}})
    con = duck.connect([])
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.register("_sf_parts", table)
        try:
            kept = {r[0] for r in con.execute(f"SELECT _sf_i FROM _sf_parts WHERE {' AND '.join(usable)}").fetchall()}
        except Exception:  # noqa: BLE001 - a conjunct DuckDB cannot evaluate on the strings: read every object
            return upto
    finally:
        con.close()
    return ReadPosition(objects={k: upto.objects[k] for i, k in enumerate(keys) if i in kept})


def live_source_spec(spec: PlatformSpec, live: LiveTable) -> Any:
    return _source(spec, live.region, live.source)
