"""Drift state in the metadata database: each mapping's accepted source schema and every drift decision.

Two small tables beside the registry (skyfed.catalog.metadata gives the URL):
- `skyfed_drift_schemas`: per mapping, the source schema the mapping accepts (what
  it was last allowed to be), as JSON [{name, arrow, duckdb}];
- `skyfed_drift_decisions`: one row per distinct decision (mapping, column, change,
  old and new type, mode, decision), with when it was first and last taken. The id
  is a hash of those fields, so a rerun after a crash updates `last_*` and never
  doubles a row.
A check writes both in one transaction, so a crash leaves either all or none of it.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from skyfed.catalog.metadata import engine_for
from skyfed.errors import SkyfedError

_meta = sa.MetaData()
schemas = sa.Table(
    "skyfed_drift_schemas",
    _meta,
    sa.Column("mapping", sa.String(200), primary_key=True),
    sa.Column("source", sa.String(200), nullable=False),
    sa.Column("source_table", sa.Text, nullable=False),
    sa.Column("columns", sa.Text, nullable=False),  # JSON list of {name, arrow, duckdb}
    sa.Column("run_id", sa.String(64)),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)
decisions = sa.Table(
    "skyfed_drift_decisions",
    _meta,
    sa.Column("decision_id", sa.String(64), primary_key=True),
    sa.Column("mapping", sa.String(200), nullable=False, index=True),
    sa.Column("source", sa.String(200), nullable=False),
    sa.Column("source_table", sa.Text, nullable=False),
    sa.Column("column", sa.String(300), nullable=False),
    sa.Column("change", sa.String(30), nullable=False),  # new_column | type_change | removed_column
    sa.Column("old_type", sa.String(200)),
    sa.Column("new_type", sa.String(200)),
    sa.Column("mode", sa.String(20), nullable=False),
    sa.Column("decision", sa.String(30), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("run_id", sa.String(64)),  # the run that first took it
    sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_run_id", sa.String(64)),
    sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
)

_KEY = ("mapping", "column", "change", "old_type", "new_type", "mode", "decision")


def engine() -> sa.Engine:
    return engine_for(_meta)


def accepted_schema(mapping: str) -> list[dict[str, str]] | None:
    """The source columns `mapping` accepts (in source order), or None before its first check."""
    with engine().connect() as con:
        row = con.execute(sa.select(schemas.c.columns).where(schemas.c.mapping == mapping)).first()
    return json.loads(row[0]) if row else None


def decision_id(row: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps([row.get(k) for k in _KEY]).encode()).hexdigest()[:64]


def save(
    mapping: str,
    source: str,
    table: str,
    columns: list[dict[str, str]] | None,
    rows: list[dict[str, Any]],
    run_id: str | None,
) -> None:
    """Record decisions (idempotently) and, unless `columns` is None, the accepted schema: one transaction."""
    now = datetime.now(UTC)
    for _ in range(5):
        try:
            with engine().begin() as con:
                for row in rows:
                    did = decision_id({"mapping": mapping, **row})
                    hit = con.execute(sa.select(decisions.c.decision_id).where(decisions.c.decision_id == did)).first()
                    if hit:
                        con.execute(decisions.update().where(decisions.c.decision_id == did)
                                    .values(last_run_id=run_id, last_seen_at=now))
                    else:
                        con.execute(decisions.insert().values(
                            decision_id=did, mapping=mapping, source=source, source_table=table, run_id=run_id,
                            decided_at=now, last_run_id=run_id, last_seen_at=now,
                            **{k: row.get(k) for k in ("column", "change", "old_type", "new_type", "mode", "decision", "detail")},
                        ))
                if columns is not None:
                    values = {"source": source, "source_table": table, "columns": json.dumps(columns),
                              "run_id": run_id, "updated_at": now}
                    done = con.execute(schemas.update().where(schemas.c.mapping == mapping).values(**values))
                    if not done.rowcount:
                        con.execute(schemas.insert().values(mapping=mapping, **values))
            return
        except IntegrityError:
            continue  # another process inserted the same row first: the retry updates it instead
    raise SkyfedError(f"could not record the drift decisions of mapping {mapping}: concurrent writers",
                      "run the ingest again")


def listed(mapping: str | None = None) -> list[dict[str, Any]]:
    """Recorded decisions, oldest first, of one mapping or all."""
    q = sa.select(decisions).order_by(decisions.c.decided_at, decisions.c.column)
    if mapping:
        q = q.where(decisions.c.mapping == mapping)
    with engine().connect() as con:
        return [dict(r._mapping) for r in con.execute(q)]
