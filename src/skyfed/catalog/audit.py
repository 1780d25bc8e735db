"""The audit trail in the metadata database: one row per query and per run.

Who, when, what SQL, which tables and columns it touched, each policy decision,
rows returned, status. Rows are only ever inserted: an audit trail is not edited.
What to record is decided in skyfed.governance.audit; this module stores and filters.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from skyfed.catalog.metadata import engine_for

_meta = sa.MetaData()
audit_log = sa.Table(
    "skyfed_audit",
    _meta,
    sa.Column("event_id", sa.String(36), primary_key=True),
    sa.Column("kind", sa.String(20), nullable=False),  # query | run
    sa.Column("at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("actor", sa.String(200), nullable=False, index=True),
    sa.Column("role", sa.String(100)),
    sa.Column("sql", sa.Text),
    sa.Column("tables", sa.Text, nullable=False),  # JSON list
    sa.Column("columns", sa.Text, nullable=False),  # JSON list of table.column
    sa.Column("decisions", sa.Text, nullable=False),  # JSON list of {policy, decision, detail}
    sa.Column("rows", sa.BigInteger),
    sa.Column("status", sa.String(20), nullable=False),  # ok | refused | failed
    sa.Column("detail", sa.Text),  # JSON: run id, error, region...
)

_JSON = ("tables", "columns", "decisions", "detail")


def engine() -> sa.Engine:
    return engine_for(_meta)


def insert(row: dict[str, Any]) -> None:
    """Insert one event; an event id already present is left as it was (retries are safe)."""
    values = {k: (json.dumps(row.get(k), default=str) if k in _JSON else row.get(k)) for k in audit_log.c.keys()}  # noqa: SIM118 (column names, not Column objects)
    with engine().begin() as con:
        exists = con.execute(sa.select(audit_log.c.event_id).where(audit_log.c.event_id == values["event_id"])).first()
        if not exists:
            con.execute(audit_log.insert().values(**values))


def search(
    since: datetime | None = None,
    actor: str | None = None,
    table: str | None = None,
    kind: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Events newest first; `table` matches a touched table by name (with or without region)."""
    q = sa.select(audit_log).order_by(audit_log.c.at.desc())
    if since is not None:
        q = q.where(audit_log.c.at >= since)
    if actor:
        q = q.where(audit_log.c.actor == actor)
    if kind in ("model", "ingest"):  # runs keep their kind in the detail JSON
        q = q.where(audit_log.c.kind == "run").where(audit_log.c.detail.like(f'%"run_kind": "{kind}"%'))
    elif kind:
        q = q.where(audit_log.c.kind == kind)
    if table:
        q = q.where(audit_log.c.tables.like(f'%{table}"%'))
    with engine().connect() as con:
        rows = [dict(r._mapping) for r in con.execute(q.limit(limit * 4 if table else limit))]
    for r in rows:
        for k in _JSON:
            r[k] = json.loads(r[k]) if r[k] else None
    if table:
        rows = [r for r in rows if any(t == table or t.endswith("." + table) for t in r["tables"])]
    return rows[:limit]


# ------------------------------------------------------------------ lineage edges recorded by runs

lineage = sa.Table(
    "skyfed_lineage_edges",
    _meta,
    sa.Column("job", sa.String(200), nullable=False, index=True),
    sa.Column("src_table", sa.String(300), nullable=False),
    sa.Column("src_column", sa.String(200)),
    sa.Column("dst_table", sa.String(300), nullable=False),
    sa.Column("dst_column", sa.String(200)),
    sa.Column("via", sa.Text),
)


def replace_lineage(job: str, edges: list[dict[str, Any]]) -> None:
    """Replace the edges a job (model or mapping) produced: its latest successful run wins."""
    with engine().begin() as con:
        con.execute(lineage.delete().where(lineage.c.job == job))
        if edges:
            con.execute(lineage.insert(), [{"job": job, **e} for e in edges])


def lineage_edges() -> list[dict[str, Any]]:
    with engine().connect() as con:
        return [
            {k: v for k, v in dict(r._mapping).items() if k != "job"}
            for r in con.execute(sa.select(lineage))
        ]
