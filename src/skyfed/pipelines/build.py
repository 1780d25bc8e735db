"""Building one model: decide what to rebuild, run its SQL where the data is, keep the result.

Per part (`all` for a global model, one per region for a regional one):
- **keep** when the SQL hash and every input version (Iceberg snapshot, BigQuery commit id,
  reference file, upstream build) are unchanged (a materialized_view is then re-checked, so
  its freshness clock restarts);
- **full** rebuild when new, when the SQL or config changed, or with --full-refresh;
- **incremental**: by time range (recompute from the last period on, `lookback` periods
  earlier, filter pushed into the regions) or by key (rows whose `updated_column` passed
  the watermark, merged by unique_key);
- **backfill**: recompute [from, to), aligned to the model's period.

A region that fails is handled by the model's `on_region_failure`: `stale` keeps the last
good materialization (flagged with its age), `partial` keeps going without it (flagged),
`fail` fails the model and leaves the previous materialization current.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sqlglot
from sqlglot import exp

from skyfed.errors import SkyfedError
from skyfed.ingest.stores.base import crash_point
from skyfed.pipelines import periods, state, warehouse
from skyfed.pipelines.project import Model, Project, table_refs

GLOBAL = "all"


@dataclass
class Context:
    """What every build in one run shares."""

    spec: Any  # PlatformSpec
    fed: Any  # skyfed.query.Federation
    project: Project
    run_id: str
    trigger: str = "run"
    clock: Any = time.time
    attempt: int = 1
    version_timeout: float = 10.0
    governance: Any = None  # skyfed.pipelines.governed.Policies: the role each model reads as
    _versions: dict[str, Any] = field(default_factory=dict)  # region -> {table: version} cache for this run

    @property
    def catalog(self) -> Any:
        return self.fed.catalog

    def fed_for(self, model: Model, region: str | None = None) -> Any:
        """The federation as `model`'s role sees it, coordinated in `region` for a regional part
        (the run's own when nothing is governed)."""
        return self.governance.federation(self.fed, model, region) if self.governance is not None else self.fed


# ----------------------------------------------------------------------------- SQL resolution


def inline_views(tree: exp.Expression, project: Project, seen: tuple[str, ...] = ()) -> exp.Expression:
    """Replace references to `view` models by their SQL as a subquery (recursively)."""
    tree = tree.copy()
    for t in table_refs(tree):
        if t.db or t.name not in project.models:
            continue
        m = project.models[t.name]
        if m.config.materialization != "view":
            continue
        if m.name in seen:
            raise SkyfedError(f"views form a cycle: {' -> '.join((*seen, m.name))}")
        body = inline_views(m.tree(), project, (*seen, m.name))
        t.replace(exp.Subquery(this=body, alias=exp.TableAlias(this=exp.to_identifier(t.alias_or_name))))
    return tree


def split_refs(tree: exp.Expression, project: Project, catalog: Any) -> tuple[set[str], set[str]]:
    """(materialized models read, federation tables read, references excluded from both)."""
    models, fed = set(), set()
    for t in table_refs(tree):
        if not t.db and t.name in project.models:
            models.add(t.name)
        elif not t.db and t.name in catalog.reference:
            continue
        else:
            fed.add(".".join(p for p in (t.catalog, t.db, t.name) if p))
    return models, fed


def execute(ctx: Context, tree: exp.Expression, allow_partial: bool,
            model: Model | None = None, region: str | None = None) -> tuple[pa.Table, list[dict[str, str]], dict[str, Any]]:  # fmt: skip
    """Run resolved SQL: over materialized models in the local warehouse, else federated (as `model`'s
    role, coordinated in `region` for a regional part).

    Returns (table, missing regions, info). Mixing models and federation tables is refused.
    """
    models, fed_tables = split_refs(tree, ctx.project, ctx.catalog)
    sql = tree.sql(dialect="duckdb")
    if models and fed_tables:
        raise SkyfedError(
            f"the SQL reads both models ({', '.join(sorted(models))}) and federation tables ({', '.join(sorted(fed_tables))})",
            "split it: aggregate the federation tables in one model, then combine models in another",
        )
    if models:
        current = state.all_current()
        missing = [m for m in models if m not in current]
        if missing:
            raise SkyfedError(f"model {', '.join(sorted(missing))} has no materialization yet",
                              f"run `skyfed run +{min(missing)}` first")  # fmt: skip
        refs = {n: pq.read_table(ctx.catalog.reference_paths[n]) for n in ctx.catalog.reference
                if Path(ctx.catalog.reference_paths[n]).exists()}  # fmt: skip
        con = warehouse.session({m: current[m] for m in models}, refs)
        try:
            table = con.execute(sql).to_arrow_table()
        except Exception as exc:  # noqa: BLE001 - a DuckDB error in the user's SQL
            raise SkyfedError(f"the model's SQL failed in the warehouse: {str(exc).splitlines()[0]}") from None
        finally:
            con.close()
        return table, [], {"engine": "warehouse", "models": sorted(models)}
    fed = ctx.fed_for(model, region) if model is not None else ctx.fed
    result = fed.query(sql, allow_partial=allow_partial, use_cache=False)
    rep = result.report
    info = {"engine": "federated", "strategy": rep.strategy, "bytes_shipped": rep.bytes_shipped,
            "rows_shipped": rep.rows_shipped}  # fmt: skip
    if getattr(fed, "role", None):
        info["role"] = fed.role
        info["policy"] = fed.governor.fingerprint()  # serving checks the caller has the same role and policies
    return result.arrow(), list(result.missing), info


def regionalize(tree: exp.Expression, region: str, catalog: Any) -> exp.Expression:
    """The model's SQL over one region's tables (`flight_leg` -> `<region>.flight_leg`)."""
    tree = tree.copy()
    for t in table_refs(tree):
        if not t.db and t.name in catalog.contracts:
            alias = t.alias_or_name
            t.set("db", exp.to_identifier(region))
            if not t.alias:
                t.set("alias", exp.TableAlias(this=exp.to_identifier(alias)))
    return tree


def with_filter(tree: exp.Expression, condition: str) -> exp.Expression:
    if not isinstance(tree, exp.Select):
        raise SkyfedError("an incremental model must be one SELECT (optionally WITH ...)",
                          "the time/updated filter is added to its WHERE")  # fmt: skip
    return tree.copy().where(sqlglot.parse_one(condition, read="duckdb"), copy=False)


# ----------------------------------------------------------------------------- input versions


def model_regions(ctx: Context, model: Model) -> list[str]:
    """Regions a regional model is built in: those holding every canonical table it reads."""
    tree = inline_views(model.tree(), ctx.project)
    canon = {t.name for t in table_refs(tree) if not t.db and t.name in ctx.catalog.contracts}
    if not canon:
        raise SkyfedError(f"model {model.name} is placement: regional but reads no canonical table",
                          "use placement: global for models over other models")  # fmt: skip
    qualified = [t for t in table_refs(tree) if t.db]
    if qualified:
        raise SkyfedError(f"model {model.name} is placement: regional but names a region's table ({qualified[0].sql()})",
                          "a regional model reads canonical tables; skyfed runs it once per region")  # fmt: skip
    return [r for r in ctx.catalog.regions if all(r in ctx.catalog.regions_of(t) for t in canon)]


def _region_versions(ctx: Context, region: str, tables: list[str]) -> dict[str, Any]:
    from skyfed.query.executors import table_versions

    have = ctx._versions.setdefault(region, {})
    todo = [t for t in tables if t not in have]
    if todo:
        try:
            have.update(table_versions(region, ctx.spec.regions[region], todo, ctx.version_timeout))
        except Exception as exc:  # noqa: BLE001 - an unreachable region has no version: it counts as changed
            for t in todo:
                have[t] = f"error: {type(exc).__name__}"
    return {t: have[t] for t in tables}


def input_versions(ctx: Context, model: Model, region: str | None) -> tuple[dict[str, Any], bool]:
    """The versions of everything `model` reads (in `region` only, for a regional part) and whether
    any input has no version (live source tables: always rebuilt)."""
    tree = inline_views(model.tree(), ctx.project)
    per_region: dict[str, set[str]] = {}
    out: dict[str, Any] = {}
    volatile = False
    for t in table_refs(tree):
        name = t.name
        if not t.db and name in ctx.project.models:
            cur = state.current(name)
            out[f"model:{name}"] = cur["build_id"] if cur else None
        elif not t.db and name in ctx.catalog.reference:
            p = Path(ctx.catalog.reference_paths[name])
            out[f"reference:{name}"] = f"{p.stat().st_size}-{p.stat().st_mtime_ns}" if p.exists() else None
        elif not t.db and name in ctx.catalog.contracts:
            for r in [region] if region else ctx.catalog.regions_of(name):
                per_region.setdefault(r, set()).add(name)
        elif t.db and not t.catalog and t.db in ctx.catalog.regions and name in ctx.catalog.contracts:
            per_region.setdefault(t.db, set()).add(name)
        else:
            volatile = True
            out[f"live:{'.'.join(p for p in (t.catalog, t.db, name) if p)}"] = None
    for r, tables in sorted(per_region.items()):
        for tname, v in _region_versions(ctx, r, sorted(tables)).items():
            out[f"{r}.{tname}"] = v
    if any(isinstance(v, str) and v.startswith("error:") for v in out.values()):
        volatile = True
    return out, volatile


# ----------------------------------------------------------------------------- merging


def _max(table: pa.Table, column: str) -> Any:
    if column not in table.column_names:
        raise SkyfedError(f"the model's output has no column {column!r}", "time_column/updated_column name output columns")
    return pc.max(table[column]).as_py()


def _merge_range(old: pa.Table, new: pa.Table, column: str, start: Any, end: Any | None) -> pa.Table:
    import duckdb

    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.register("old_part", old)
        con.register("new_part", new)
        cond = f'CAST("{column}" AS TIMESTAMPTZ) >= {periods.sql_literal(start)}'
        if end is not None:
            cond += f' AND CAST("{column}" AS TIMESTAMPTZ) < {periods.sql_literal(end)}'
        return con.execute(f"SELECT * FROM old_part WHERE NOT ({cond}) UNION ALL BY NAME SELECT * FROM new_part").to_arrow_table()
    finally:
        con.close()


def _merge_keys(old: pa.Table, new: pa.Table, key: list[str]) -> pa.Table:
    import duckdb

    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.register("old_part", old)
        con.register("new_part", new)
        on = " AND ".join(f'o."{k}" IS NOT DISTINCT FROM n."{k}"' for k in key)
        return con.execute(f"SELECT o.* FROM old_part o ANTI JOIN new_part n ON {on} "
                           f"UNION ALL BY NAME SELECT * FROM new_part").to_arrow_table()  # fmt: skip
    finally:
        con.close()


def check_unique(table: pa.Table, key: list[str], model: str) -> None:
    if not key or table.num_rows == 0:
        return
    missing = [k for k in key if k not in table.column_names]
    if missing:
        raise SkyfedError(f"model {model}: unique_key column {missing[0]!r} is not in its output")
    groups = table.group_by(key).aggregate([([], "count_all")])
    dup = pc.sum(pc.greater(groups["count_all"], 1)).as_py() or 0
    if dup:
        raise SkyfedError(f"model {model}: unique_key ({', '.join(key)}) is not unique: {dup} keys repeat",
                          "fix the model's GROUP BY or its unique_key")  # fmt: skip


def _conform_to(new: pa.Table, old: pa.Table | None) -> pa.Table:
    if old is None or new.schema.equals(old.schema):
        return new
    try:
        return new.select(old.schema.names).cast(old.schema)
    except (KeyError, pa.ArrowException):
        return new


# ----------------------------------------------------------------------------- one model


def build_model(ctx: Context, model: Model, *, full_refresh: bool = False,
                backfill: tuple[Any, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """Build `model` and record the run; returns the run record (status ok|skipped|stale|partial|failed)."""
    started, t0 = state.now(), time.perf_counter()
    row: dict[str, Any] = {"run_id": ctx.run_id, "model": model.name, "attempt": ctx.attempt, "trigger": ctx.trigger,
                           "started_at": started, "sql_hash": model.sql_hash, "rows": 0}  # fmt: skip
    try:
        outcome = _build(ctx, model, full_refresh=full_refresh, backfill=backfill)
    except SkyfedError as exc:
        row.update(status="failed", action=None, finished_at=state.now(), seconds=time.perf_counter() - t0,
                   detail={"error": exc.message, "hint": exc.hint})  # fmt: skip
        state.record_run(row)
        return row
    row.update(status=outcome["status"], action=outcome["action"], rows=outcome.get("rows", 0),
               build_id=outcome.get("build_id"), finished_at=state.now(), seconds=time.perf_counter() - t0,
               detail=outcome["detail"])  # fmt: skip
    if outcome.get("build") is not None:
        state.commit_build(model.name, outcome["build"], row)
        crash_point("pipelines.committed")
        keep = {Path(p["path"]).parent.name for p in outcome["build"]["parts"].values() if p.get("path")}
        warehouse.cleanup(model.name, keep)
    else:
        state.record_run(row)
    return row


def _build(ctx: Context, model: Model, *, full_refresh: bool, backfill: tuple[Any, Any] | None) -> dict[str, Any]:
    cfg = model.config
    now = ctx.clock()
    if cfg.materialization == "view":
        tree = inline_views(model.tree(), ctx.project)
        models, fed_tables = split_refs(tree, ctx.project, ctx.catalog)
        if models and fed_tables:
            raise SkyfedError(f"view {model.name} reads both models and federation tables",
                              "split it into two models")  # fmt: skip
        return {"status": "ok", "action": "view", "detail": {"note": "a view is computed when read; nothing stored"}}
    if backfill is not None and not cfg.time_column:
        raise SkyfedError(f"model {model.name} has no time_column, so it cannot be backfilled by range",
                          "backfill needs an incremental model by time range (time_column, period, source_time_column)")  # fmt: skip
    prev = state.current(model.name)
    regional = cfg.placement == "regional"
    parts_wanted = model_regions(ctx, model) if regional else [GLOBAL]
    rebuild_all = (full_refresh or prev is None or prev["sql_hash"] != model.sql_hash
                   or prev["materialization"] != cfg.materialization)  # fmt: skip
    base_tree = inline_views(model.tree(), ctx.project)
    new_parts: dict[str, dict[str, Any]] = {}
    detail: dict[str, Any] = {"parts": {}}
    build_id = warehouse.new_build_id()
    changed = False
    problems: list[str] = []  # stale | partial flags
    for part in parts_wanted:
        old = None if rebuild_all or prev is None else prev["parts"].get(part)
        versions, volatile = input_versions(ctx, model, part if regional else None)
        pdetail: dict[str, Any] = {"versions": versions}
        detail["parts"][part] = pdetail
        if (backfill is None and old is not None and not volatile and old.get("versions") == versions
                and old.get("sql_hash") == model.sql_hash):  # fmt: skip
            kept = dict(old, checked_at=now, stale=False)  # inputs verified unchanged: current again
            new_parts[part] = kept
            pdetail["action"] = "keep"
            continue
        old_table = pq.read_table(old["path"]) if old is not None and old.get("path") else None
        tree = regionalize(base_tree, part, ctx.catalog) if regional else base_tree
        action, start, end = "full", None, None
        if backfill is not None and old_table is not None:
            action = "backfill"
            start, end = periods.floor(backfill[0], cfg.period), periods.ceil(backfill[1], cfg.period)
        elif backfill is not None:
            action = "full"  # nothing built yet: a backfill is a full build
        elif cfg.materialization == "incremental" and old_table is not None:
            action = "incremental"
            if cfg.time_column:
                last = _max(old_table, cfg.time_column)
                start = periods.add(periods.floor(last, cfg.period), cfg.period, -cfg.lookback) if last is not None else None
        if action in ("incremental", "backfill") and cfg.time_column and start is not None:
            cond = f"{cfg.source_time_column} >= {periods.sql_literal(start)}"
            if end is not None:
                cond += f" AND {cfg.source_time_column} < {periods.sql_literal(end)}"
            tree = with_filter(tree, cond)
            pdetail["range"] = [start.isoformat(), end.isoformat() if end else None]
        elif action == "incremental" and cfg.updated_column:
            mark = _max(old_table, cfg.updated_column)
            if mark is not None:
                lit = periods.sql_literal(periods.to_utc(mark)) if hasattr(mark, "year") else repr(mark)
                tree = with_filter(tree, f"{cfg.updated_column} > {lit}")
                pdetail["watermark"] = str(mark)
        pdetail["action"] = action
        table, missing, info = execute(ctx, tree, allow_partial=True, model=model, region=part if regional else None)
        pdetail.update(info)
        if missing:
            what = "; ".join(f"{m['region']}: {m['error']}" for m in missing)
            pdetail["missing"] = missing
            if cfg.on_region_failure == "fail":
                raise SkyfedError(f"model {model.name}: region {what}",
                                  "the model has on_region_failure: fail; its previous materialization stays current")  # fmt: skip
            if cfg.on_region_failure == "stale":
                last_good = prev["parts"].get(part) if prev is not None else None
                if last_good is None:
                    raise SkyfedError(f"model {model.name}: region {what}, and there is no earlier materialization to fall back to",
                                      "bring the region back, or set on_region_failure: partial")  # fmt: skip
                age = now - float(last_good["built_at"])
                new_parts[part] = dict(last_good, stale=True, stale_reason=what)
                pdetail.update(action="stale", stale_age_seconds=round(age, 1))
                problems.append("stale")
                continue
            problems.append("partial")
            if regional:  # the region's own part is empty without it: dropped, flagged
                pdetail["action"] = "dropped"
                changed = True
                continue
        if action in ("incremental", "backfill") and old_table is not None:
            table = _conform_to(table, old_table)
            if cfg.time_column and start is not None:
                merged = _merge_range(old_table, table, cfg.time_column, start, end)
            elif cfg.updated_column:
                merged = _merge_keys(old_table, table, cfg.unique_key) if cfg.unique_key else table
            else:
                merged = table
            pdetail["rows_recomputed"] = table.num_rows
            table = _conform_to(merged, table)
        check_unique(table, cfg.unique_key, model.name)
        path = warehouse.write_part(model.name, build_id, part, table)
        crash_point("pipelines.part_written")
        new_parts[part] = {"path": path, "rows": table.num_rows, "built_at": now, "checked_at": now,
                           "versions": versions, "sql_hash": model.sql_hash, "stale": False,
                           "missing": [m["region"] for m in missing],
                           "role": info.get("role"), "policy": info.get("policy")}  # fmt: skip
        changed = True
    actions = {p["action"] for p in detail["parts"].values()}
    status = "stale" if "stale" in problems else "partial" if "partial" in problems else "ok"
    if actions == {"keep"} or (not changed and status == "ok"):
        action = "up_to_date"
    elif actions <= {"keep", "stale"} and not changed:
        action = "stale"
    else:
        action = min(actions - {"keep", "stale", "dropped"} or {"keep"})
    if status == "ok" and action == "up_to_date":
        status = "skipped"
    stale_ages = {p: d["stale_age_seconds"] for p, d in detail["parts"].items() if "stale_age_seconds" in d}
    if stale_ages:
        detail["stale_age_seconds"] = max(stale_ages.values())
    rows = sum(int(p.get("rows") or 0) for p in new_parts.values())
    build = {
        "build_id": build_id if changed or prev is None else prev["build_id"],
        "materialization": cfg.materialization,
        "sql_hash": model.sql_hash,
        "built_at": min((float(p["built_at"]) for p in new_parts.values()), default=now),
        "parts": new_parts,
        "inputs": {p: d["versions"] for p, d in detail["parts"].items()},
    }
    return {"status": status, "action": action, "rows": rows, "build_id": build_id if changed else (prev or {}).get("build_id"),
            "detail": detail, "build": build}  # fmt: skip
