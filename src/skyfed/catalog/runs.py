"""Ingest runs recorded in the metadata database (SQLite locally, Cloud SQL on GCP).

One row per mapping per run, with the counts that prove nothing was lost or
doubled (read = loaded + quarantined + filtered), so `skyfed ingest --json` and
later audits read the same facts.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from skyfed.catalog.metadata import engine_for

_meta = sa.MetaData()
ingest_results = sa.Table(
    "skyfed_ingest_results",
    _meta,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("mapping", sa.String(200), primary_key=True),
    sa.Column("region", sa.String(100), nullable=False),
    sa.Column("source", sa.String(200), nullable=False),
    sa.Column("source_table", sa.String(300), nullable=False),
    sa.Column("contract", sa.String(200), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),  # ok | no_new_data | failed
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("rows_read", sa.BigInteger, default=0),
    sa.Column("rows_loaded", sa.BigInteger, default=0),
    sa.Column("rows_quarantined", sa.BigInteger, default=0),
    sa.Column("rows_filtered", sa.BigInteger, default=0),
    sa.Column("rows_superseded", sa.BigInteger, default=0),
    sa.Column("bytes_read", sa.BigInteger, default=0),
    sa.Column("seconds", sa.Float, default=0.0),
    sa.Column("snapshot_id", sa.String(64)),
    sa.Column("detail", sa.Text),  # JSON: positions, reasons, warnings, error
)


def engine() -> sa.Engine:
    return engine_for(_meta)


def record(result: dict[str, Any]) -> None:
    """Insert or replace one mapping's result of a run."""
    row = {c.name: result.get(c.name) for c in ingest_results.columns if c.name != "detail"}
    row["detail"] = json.dumps(result.get("detail") or {}, default=str)
    with engine().begin() as con:
        con.execute(
            ingest_results.delete().where(
                (ingest_results.c.run_id == row["run_id"]) & (ingest_results.c.mapping == row["mapping"])
            )
        )
        con.execute(ingest_results.insert().values(**row))


def recent(limit: int = 20, mapping: str | None = None) -> list[dict[str, Any]]:
    """The newest results first."""
    query = sa.select(ingest_results).order_by(ingest_results.c.started_at.desc()).limit(limit)
    if mapping:
        query = query.where(ingest_results.c.mapping == mapping)
    with engine().connect() as con:
        rows = [dict(r._mapping) for r in con.execute(query)]
    for r in rows:
        r["detail"] = json.loads(r["detail"] or "{}")
    return rows


def now() -> datetime:
    return datetime.now(UTC)
