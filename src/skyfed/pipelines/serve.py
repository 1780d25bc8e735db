"""Answering federated queries from materializations (the matching logic behind the planner hook).

`Server.answer(sql)` returns a result when a **fresh** materialized model can answer the
query without contacting any region: the query is the model's SQL (normalized by sqlglot:
whitespace, keyword and identifier case do not matter), optionally followed by ORDER BY on
output columns and/or LIMIT. Fresh means: a `materialized_view` checked against its inputs
within its freshness target (a run that finds its inputs unchanged restarts the clock).

`Server.query(sql)` is what a dashboard calls: a fresh materialization if one matches, else
the live federated answer; and when a region is down, the last good materialization of a
matching model (any age), flagged `stale` with its age. Queries that name models directly
(`SELECT ... FROM route_profitability`) run in the local warehouse.

`attach(fed, models)` registers `Server.answerer` on a Federation (`fed.answerers`), so that
`fed.query(sql)` itself answers from a fresh materialization and falls back to a stale one
when a region fails (the query layer cannot import this one: the hook is a plain callable).
A materialization answers only a caller with the role (and policies) it was built as.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import sqlglot
from sqlglot import exp

from skyfed.errors import SkyfedError
from skyfed.pipelines import state
from skyfed.pipelines.project import Project, load_project


def normalize(tree: exp.Expression) -> str:
    return tree.sql(dialect="duckdb", normalize=True, comments=False)


@dataclass
class Served:
    """A result in the shape of skyfed.query's Result: .arrow(), .df(), .pl(), .report (a dict here)."""

    table: pa.Table
    report: dict[str, Any]

    def arrow(self) -> pa.Table:
        return self.table

    def df(self) -> Any:
        return self.table.to_pandas()

    def pl(self) -> Any:
        import polars as pl

        return pl.from_arrow(self.table)

    @property
    def stale(self) -> bool:
        return bool(self.report.get("stale"))


@dataclass
class Server:
    project: Project
    fed: Any = None  # a skyfed.query Federation, for answers no materialization gives
    clock: Any = time.time
    _shapes: dict[str, str] = field(default_factory=dict)
    _tables: dict[str, tuple[str, pa.Table]] = field(default_factory=dict)  # model -> (build id, table)
    _matches: dict[str, Any] = field(default_factory=dict)  # raw SQL -> match (dashboards repeat their SQL)

    def __post_init__(self) -> None:
        for name, m in self.project.models.items():
            if m.config.materialized:
                self._shapes[normalize(m.tree())] = name

    def match(self, sql: str) -> tuple[str, exp.Expression | None, exp.Expression | None] | None:
        """(model, ORDER BY, LIMIT) if `sql` is a materialized model's SQL (+ ORDER BY / LIMIT)."""
        if sql in self._matches:
            return self._matches[sql]
        found = self._match(sql)
        if len(self._matches) >= 1024:
            self._matches.clear()
        self._matches[sql] = found
        return found

    def _match(self, sql: str) -> tuple[str, exp.Expression | None, exp.Expression | None] | None:
        try:
            tree = sqlglot.parse_one(sql, read="duckdb")
        except sqlglot.errors.ParseError:
            return None
        order, limit = tree.args.get("order"), tree.args.get("limit")
        core = tree.copy()
        core.set("order", None)
        core.set("limit", None)
        name = self._shapes.get(normalize(core))
        if name is None:
            return None
        outputs = set(core.named_selects) if isinstance(core, exp.Select) else set()
        if order is not None:
            for o in order.expressions:
                col = o.this
                if not isinstance(col, exp.Column) or col.table or col.name not in outputs:
                    return None  # ORDER BY an expression: let the federation answer
        return name, order, limit

    def _table(self, name: str, cur: dict[str, Any]) -> pa.Table:
        cached = self._tables.get(name)
        if cached and cached[0] == cur["build_id"]:
            return cached[1]
        parts = [pq.read_table(p["path"]) for p in cur["parts"].values() if p.get("path")]
        table = pa.concat_tables(parts, promote_options="permissive") if len(parts) > 1 else parts[0]
        self._tables[name] = (cur["build_id"], table)
        return table

    def _serve(self, name: str, cur: dict[str, Any], order: Any, limit: Any, started: float, **flags: Any) -> Served:
        table = self._table(name, cur)
        fast = _order_limit(table, order, limit)
        if fast is not None:
            table = fast
        elif order is not None or limit is not None:
            import duckdb

            con = duckdb.connect()
            try:
                con.register("mv", table)
                q = exp.select("*").from_("mv")
                if order is not None:
                    q.set("order", order.copy())
                if limit is not None:
                    q.set("limit", limit.copy())
                table = con.execute(q.sql(dialect="duckdb")).to_arrow_table()
            finally:
                con.close()
        now = self.clock()
        checked = min(float(p.get("checked_at") or p["built_at"]) for p in cur["parts"].values())
        report = {"served_from": "materialization", "model": name, "build_id": cur["build_id"],
                  "age_seconds": round(now - checked, 3), "built_at": cur["built_at"],
                  "stale_parts": sorted(k for k, p in cur["parts"].items() if p.get("stale")),
                  "regions_contacted": 0, "bytes_shipped": 0, "result_rows": table.num_rows,
                  "total_seconds": round(time.perf_counter() - started, 6), **_built_as(cur), **flags}  # fmt: skip
        return Served(table, report)

    def answer(self, sql: str) -> Served | None:
        """A fresh materialization's answer to `sql`, or None."""
        started = time.perf_counter()
        hit = self.match(sql)
        if hit is None:
            return None
        name, order, limit = hit
        model = self.project.models[name]
        fresh_for = model.config.freshness_seconds
        cur = state.current(name)
        if cur is None or fresh_for is None:
            return None
        checked = min(float(p.get("checked_at") or p["built_at"]) for p in cur["parts"].values())
        if self.clock() - checked > fresh_for or any(p.get("stale") for p in cur["parts"].values()):
            return None
        return self._serve(name, cur, order, limit, started, stale=False, freshness_seconds=fresh_for)

    def answerer(self, sql: str, stale: bool = False) -> tuple[pa.Table, dict[str, Any]] | None:
        """The Federation hook: a fresh materialization's (table, info), or with `stale` the last good one of
        any age; info names the model, build, age and the role and policy fingerprint the parts were built as."""
        if not stale:
            served = self.answer(sql)
        else:
            hit = self.match(sql)
            cur = state.current(hit[0]) if hit else None
            served = self._serve(hit[0], cur, hit[1], hit[2], time.perf_counter(), stale=True) if hit and cur else None
        if served is None:
            return None
        return served.table, served.report

    def _role_ok(self, report: dict[str, Any]) -> bool:
        """The federation's caller has the role and policies the materialization was built as."""
        gov = getattr(self.fed, "governor", None)
        policy = gov.fingerprint() if gov is not None else None
        return report.get("role") == getattr(self.fed, "role", None) and report.get("policy") == policy

    def query(self, sql: str, allow_stale: bool = True) -> Any:
        """Fresh materialization, else federated; on a region failure the last good materialization, flagged stale."""
        served = self.answer(sql)
        if served is not None and (self.fed is None or self._role_ok(served.report)):
            return served
        if self.fed is None:
            raise SkyfedError("no fresh materialization answers this query and no federation is connected")
        try:
            return self.fed.query(sql)
        except SkyfedError as exc:
            hit = self.match(sql) if allow_stale else None
            cur = state.current(hit[0]) if hit else None
            if hit is None or cur is None or "region" not in exc.message:
                raise
            started = time.perf_counter()
            served = self._serve(hit[0], cur, hit[1], hit[2], started, stale=True, stale_reason=exc.message)
            if not self._role_ok(served.report):
                raise
            return served


def _built_as(cur: dict[str, Any]) -> dict[str, Any]:
    """The role and policy fingerprint every part was built as; a marker that matches no caller when they differ."""
    roles = {(p.get("role"), p.get("policy")) for p in cur["parts"].values()}
    role, policy = roles.pop() if len(roles) == 1 else ("<mixed roles>", "<mixed>")
    return {"role": role, "policy": policy}


def attach(fed: Any, models: Project | str | Path | None = None, *, spec_path: str | Path | None = None,
           clock: Any = time.time) -> Server | None:
    """Register a Server for `models` (a Project or folder; default `models/` beside `spec_path`) as an
    answerer on `fed`; None (nothing registered) when no models folder exists."""
    if models is None:
        if spec_path is None:
            return None
        models = Path(spec_path).resolve().parent / "models"
    if not isinstance(models, Project):
        if not Path(models).is_dir():
            return None
        models = load_project(models)
    server = Server(models, fed, clock=clock)
    fed.answerers.append(server.answerer)
    return server


def connect(spec_path: Any = None, *, materializations: Project | str | Path | bool | None = None,
            **options: Any) -> Any:  # fmt: skip
    """`skyfed.query.connect(spec_path, **options)` whose queries are answered from fresh materializations
    (and stale ones when a region fails): `materializations` is the models folder or Project, default
    `models/` beside the spec when it exists; False: none."""
    from skyfed.query import connect as query_connect
    from skyfed.spec import PlatformSpec

    fed = query_connect(spec_path, **options)
    if materializations is not False:  # a PlatformSpec has no folder: only an explicit models folder is attached
        path = None if isinstance(spec_path, PlatformSpec) else (spec_path or os.environ.get("SKYFED_SPEC") or "skyfed.yaml")
        attach(fed, None if materializations in (None, True) else materializations, spec_path=path)  # type: ignore[arg-type]
    return fed


def _order_limit(table: pa.Table, order: Any, limit: Any) -> pa.Table | None:
    """ORDER BY columns / LIMIT n with pyarrow (no DuckDB start-up per query); None when it cannot."""
    keys: list[tuple[str, str, str]] = []
    if limit is not None and (limit.args.get("offset") or not isinstance(limit.expression, exp.Literal)):
        return None
    for o in order.expressions if order is not None else []:
        keys.append((o.this.name, "descending" if o.args.get("desc") else "ascending",
                     "at_start" if o.args.get("nulls_first") else "at_end"))  # fmt: skip
    if keys:
        table = table.sort_by(keys)
    if limit is not None:
        table = table.slice(0, int(limit.expression.name))
    return table
