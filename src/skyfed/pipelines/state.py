"""Model runs and materialization state in the metadata database (SQLite locally, Cloud SQL on GCP).

`skyfed_model_runs`: one row per model per attempt (status, rows, seconds, input versions,
per-region outcome, error). `skyfed_model_state`: per model, the current materialization
(its Parquet parts per region or `all`, when each part was built, the SQL hash and input
versions it was built from). A build becomes current only when its state row commits, so
a crash before that leaves the previous materialization in place (its files are orphans).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from skyfed.catalog.metadata import engine_for

_meta = sa.MetaData()
model_runs = sa.Table(
    "skyfed_model_runs",
    _meta,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("model", sa.String(200), primary_key=True),
    sa.Column("attempt", sa.Integer, primary_key=True, default=1),
    sa.Column("trigger", sa.String(20), nullable=False),  # run | backfill | schedule
    sa.Column("status", sa.String(20), nullable=False),  # ok | skipped | stale | partial | failed | upstream_failed
    sa.Column("action", sa.String(30)),  # full | incremental | backfill | up_to_date | view
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("seconds", sa.Float, default=0.0),
    sa.Column("rows", sa.BigInteger, default=0),
    sa.Column("build_id", sa.String(64)),
    sa.Column("sql_hash", sa.String(64)),
    sa.Column("detail", sa.Text),  # JSON: input versions, regions, range, error, stale ages
)
model_state = sa.Table(
    "skyfed_model_state",
    _meta,
    sa.Column("model", sa.String(200), primary_key=True),
    sa.Column("build_id", sa.String(64), nullable=False),
    sa.Column("materialization", sa.String(30), nullable=False),
    sa.Column("sql_hash", sa.String(64), nullable=False),
    sa.Column("built_at", sa.Float, nullable=False),  # epoch seconds of the oldest part (freshness)
    sa.Column("parts", sa.Text, nullable=False),  # JSON {part: {path, rows, built_at, versions, status}}
    sa.Column("inputs", sa.Text, nullable=False),  # JSON input versions of the build
)


def engine() -> sa.Engine:
    return engine_for(_meta)


def now() -> datetime:
    return datetime.now(UTC)


def record_run(row: dict[str, Any]) -> None:
    data = {c.name: row.get(c.name) for c in model_runs.columns if c.name != "detail"}
    data["attempt"] = data.get("attempt") or 1
    data["detail"] = json.dumps(row.get("detail") or {}, default=str)
    with engine().begin() as con:
        con.execute(model_runs.delete().where((model_runs.c.run_id == data["run_id"]) & (model_runs.c.model == data["model"])
                                              & (model_runs.c.attempt == data["attempt"])))  # fmt: skip
        con.execute(model_runs.insert().values(**data))


def commit_build(model: str, build: dict[str, Any], run_row: dict[str, Any]) -> None:
    """Make `build` the model's current materialization and record the run, in one transaction."""
    data = {
        "model": model,
        "build_id": build["build_id"],
        "materialization": build["materialization"],
        "sql_hash": build["sql_hash"],
        "built_at": float(build["built_at"]),
        "parts": json.dumps(build["parts"], default=str),
        "inputs": json.dumps(build["inputs"], default=str),
    }
    run = {c.name: run_row.get(c.name) for c in model_runs.columns if c.name != "detail"}
    run["attempt"] = run.get("attempt") or 1
    run["detail"] = json.dumps(run_row.get("detail") or {}, default=str)
    with engine().begin() as con:
        con.execute(model_state.delete().where(model_state.c.model == model))
        con.execute(model_state.insert().values(**data))
        con.execute(model_runs.delete().where((model_runs.c.run_id == run["run_id"]) & (model_runs.c.model == model)
                                              & (model_runs.c.attempt == run["attempt"])))  # fmt: skip
        con.execute(model_runs.insert().values(**run))


def current(model: str) -> dict[str, Any] | None:
    with engine().connect() as con:
        row = con.execute(sa.select(model_state).where(model_state.c.model == model)).first()
    if row is None:
        return None
    out = dict(row._mapping)
    out["parts"] = json.loads(out["parts"])
    out["inputs"] = json.loads(out["inputs"])
    return out


def all_current() -> dict[str, dict[str, Any]]:
    with engine().connect() as con:
        rows = [dict(r._mapping) for r in con.execute(sa.select(model_state))]
    for r in rows:
        r["parts"] = json.loads(r["parts"])
        r["inputs"] = json.loads(r["inputs"])
    return {r["model"]: r for r in rows}


def runs(model: str | None = None, run_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Recorded runs, newest first."""
    q = sa.select(model_runs).order_by(model_runs.c.started_at.desc(), model_runs.c.attempt.desc()).limit(limit)
    if model:
        q = q.where(model_runs.c.model == model)
    if run_id:
        q = q.where(model_runs.c.run_id == run_id)
    with engine().connect() as con:
        rows = [dict(r._mapping) for r in con.execute(q)]
    for r in rows:
        r["detail"] = json.loads(r["detail"] or "{}")
    return rows
