"""After each model build: its OpenLineage event (with column lineage) and its audit record.

Column lineage is traced through the model's SQL with its `view` models inlined, so a model
column points at canonical columns (`flight_leg.revenue_usd`), other models' columns or
reference columns; `skyfed lineage` then continues from the canonical table through the
regions to the source columns (the spec's mappings). A lineage or audit failure never fails
the build: it is noted in the returned run record (`detail.record_error`).
"""

from __future__ import annotations

from typing import Any

from skyfed.errors import SkyfedError
from skyfed.pipelines.build import Context, inline_views
from skyfed.pipelines.project import Model, table_refs

COMPLETE = ("ok", "skipped", "stale", "partial")


def _schema(ctx: Context) -> dict[str, dict[str, str]]:
    """Columns of everything a model may read, so `SELECT *` and unqualified columns resolve."""
    schema = {name: {c: "VARCHAR" for c in contract.columns} for name, contract in ctx.spec.contracts.items()}
    from skyfed.pipelines import state

    for name, cur in state.all_current().items():
        if name in ctx.project.models:
            cols = _model_columns(cur)
            if cols:
                schema[name] = {c: "VARCHAR" for c in cols}
    return schema


def _model_columns(cur: Any) -> list[str]:
    import pyarrow.parquet as pq

    for part in (cur.get("parts") or {}).values() if isinstance(cur, dict) else []:
        if part.get("path"):
            try:
                return list(pq.read_schema(part["path"]).names)
            except OSError:
                return []
    return []


def tables_read(ctx: Context, model: Model, row: dict[str, Any]) -> list[str]:
    """Canonical, reference and model tables the SQL names, and each region table a part was built from."""
    tree = inline_views(model.tree(), ctx.project)
    names = {".".join(p for p in (t.catalog, t.db, t.name) if p) for t in table_refs(tree)}
    for d in ((row.get("detail") or {}).get("parts") or {}).values():
        names.update(k for k in d.get("versions") or {} if not k.startswith(("model:", "reference:", "live:")))  # region.contract
    return sorted(names)


def record_build(ctx: Context, model: Model, row: dict[str, Any]) -> None:
    """Emit the build's lineage event and audit record (idempotent per run id, model and status)."""
    from skyfed.governance.audit import record_run
    from skyfed.governance.lineage import model_lineage

    status = row.get("status") or "failed"
    problems: list[str] = []
    sql = model.sql
    try:
        sql = inline_views(model.tree(), ctx.project).sql(dialect="duckdb")
        model_lineage(model.name, sql, f"{row['run_id']}:{row.get('attempt', 1)}", schema=_schema(ctx),
                      status="ok" if status in COMPLETE else "failed")  # fmt: skip
    except SkyfedError as exc:
        problems.append(f"lineage: {exc.message}")
    role = ctx.governance.role_of(model) if ctx.governance is not None else None
    try:
        read = tables_read(ctx, model, row)
    except SkyfedError:
        read = sorted(model.sources + model.depends_on)
    try:
        record_run(f"{row['run_id']}:{model.name}:{row.get('attempt', 1)}", kind="model", tables=[*read, model.name],
                   rows=row.get("rows"), status=status,
                   detail={"model": model.name, "action": row.get("action"), "role": role, "trigger": row.get("trigger"),
                           "reads": read, "writes": [model.name], "sql": sql,
                           **({"error": row["detail"]["error"]} if (row.get("detail") or {}).get("error") else {})})  # fmt: skip
    except SkyfedError as exc:
        problems.append(f"audit: {exc.message}")
    if problems:
        row.setdefault("detail", {})["record_error"] = "; ".join(problems)
