"""The federated query API: plan, run each region's part in parallel, merge in DuckDB.

    fed = skyfed.connect("examples/airline/skyfed.yaml")
    result = fed.query("SELECT region, count(*) FROM flight_leg GROUP BY region")
    result.arrow(); result.df(); result.pl(); result.report

The coordinator is an in-process DuckDB. Its region (for egress prices) is the
`coordinator` argument, else the first region of the spec (the spec has no hub field
yet; see docs/query.md).
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from skyfed.contracts.types import contract_schema
from skyfed.errors import SkyfedError
from skyfed.query.cache import DEFAULT_TTL, ResultCache, cache_key, normalize_sql
from skyfed.query.catalog import Catalog, region_alias_name
from skyfed.query.executors import (
    RegionRun,
    duckdb_session,
    executor_for,
    table_versions,
)
from skyfed.query.guard import check_read_only
from skyfed.query.plan_cache import PLANS, normalized
from skyfed.query.planner import Fragment, Plan, plan_query
from skyfed.spec import PlatformSpec, load_spec

DEFAULT_TIMEOUT = float(os.environ.get("SKYFED_QUERY_TIMEOUT", "300"))
# semi-join key shipping: at most this many distinct keys are shipped (else the reduced rows cross instead);
# BigQuery regions get them inline in the SQL text, at most SEMI_JOIN_MAX_INLINE (query text is capped at 1 MB)
SEMI_JOIN_MAX_KEYS = int(os.environ.get("SKYFED_SEMI_JOIN_MAX_KEYS", "200000"))
SEMI_JOIN_MAX_INLINE = 20_000
GB = 1e9
_THREE_PART = re.compile(r'[\w"`]\s*\.\s*[\w"`]+\s*\.\s*[\w"`]')  # region.source.table, maybe quoted


@dataclass
class RegionReport:
    region: str
    engine: str
    status: str  # ok | failed | timeout
    rows: int = 0  # rows shipped across the region boundary
    bytes: int = 0  # Arrow bytes shipped
    seconds: float = 0.0
    bytes_scanned: int | None = None
    egress_usd: float | None = None
    fragments: int = 0
    broadcast_bytes: int = 0  # reference-table bytes copied into the region (into it, not out of it)
    semi_join_key_bytes: int = 0  # join keys shipped into the region to filter a table there
    error: str | None = None
    snapshots: dict[str, Any] = field(default_factory=dict)
    # seconds per phase in this region (the slowest fragment's run when several ran; see executors.RegionRun)
    phases: dict[str, float] = field(default_factory=dict)
    # the region scan cache per table read (executors.RegionRun.scan_cache): hit | fill | miss | bypass[: why]
    scan_cache: dict[str, str] = field(default_factory=dict)


@dataclass
class QueryReport:
    strategy: str
    coordinator_region: str
    plan_ms: float
    regions: list[RegionReport]
    pruned: dict[str, str]
    rows_shipped: int
    bytes_shipped: int
    egress_usd: float
    merge_seconds: float
    total_seconds: float
    result_rows: int
    partial: bool = False
    missing: list[dict[str, str]] = field(default_factory=list)
    # status: hit | miss (computed, stored) | not_stored | not_cacheable | off; on a hit: age_seconds
    cache: dict[str, Any] = field(default_factory=lambda: {"status": "off"})
    # semi-join key shipping per probe fragment: build fragment, columns, keys, decision (shipped or why not)
    semi_joins: list[dict[str, Any]] = field(default_factory=list)
    broadcast_bytes: int = 0  # reference-table bytes copied into regions
    semi_join_key_bytes: int = 0  # join keys shipped into regions
    # wall seconds per phase at the coordinator: plan, cache_lookup, bind (coordinator DuckDB, empty tables,
    # binding and fragment types), regions (all regions, in parallel), merge, audit (set by Federation.query)
    phases: dict[str, float] = field(default_factory=dict)
    plan_cache: str = "off"  # hit | miss | off: whether the plan came from the plan cache (plan_cache.py)

    @property
    def from_cache(self) -> bool:
        return self.cache.get("status") == "hit"

    @property
    def from_materialization(self) -> bool:
        return self.cache.get("status") == "materialization"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Result:
    """A federated query's answer (Arrow) with its report."""

    def __init__(self, table: pa.Table, report: QueryReport, plan: Plan):
        self._table = table
        self.report = report
        self.plan = plan

    @property
    def partial(self) -> bool:
        return self.report.partial

    @property
    def missing(self) -> list[dict[str, str]]:
        return self.report.missing

    @property
    def stale(self) -> bool:
        """Answered from the last good materialization because a region failed (report.cache has its age)."""
        return bool(self.report.cache.get("stale"))

    def arrow(self) -> pa.Table:
        return self._table

    def df(self) -> Any:
        return self._table.to_pandas()

    def pl(self) -> Any:
        import polars as pl

        return pl.from_arrow(self._table)

    def __repr__(self) -> str:
        flag = f", partial: missing {[m['region'] for m in self.missing]}" if self.partial else ""
        return f"Result({self._table.num_rows} rows{flag})"


class Federation:
    """A connection to a federation described by a platform spec."""

    def __init__(self, spec: PlatformSpec, *, coordinator: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 cache: bool = True, cache_ttl: float = DEFAULT_TTL, cache_dir: str | os.PathLike[str] | None = None,
                 clock: Any = time.time, pushdown: bool = True, role: str | None = None,
                 governance: Any = None, spec_path: str | os.PathLike[str] | None = None):  # fmt: skip
        from skyfed.query.governed import build_governor

        self.spec = spec
        # pushdown=False: only the general strategy (every needed row crosses to the
        # coordinator): the "naive federation" baseline of bench/bench_query.py
        self.pushdown = pushdown
        # the result cache (cache.py); off with cache=False or a TTL <= 0
        self.cache = ResultCache(cache_dir, ttl=cache_ttl, clock=clock) if cache and cache_ttl > 0 else None
        self.catalog = Catalog.from_spec(spec)
        self.coordinator = coordinator or next(iter(spec.regions))
        if self.coordinator not in spec.regions:
            raise SkyfedError(f"coordinator region {self.coordinator!r} is not in the spec", f"use one of {', '.join(spec.regions)}")
        self.timeout = timeout
        # the caller's policies (governed.py): None when no governance file applies
        self.governor = build_governor(spec, role=role, coordinator=self.coordinator, governance=governance,
                                       spec_path=spec_path)  # fmt: skip
        self.catalog.governor = self.governor
        # the coordinator's DuckDB database, opened once; each query works in its own cursor (connection)
        self._coord_db: Any = None
        self._coord_lock = threading.Lock()
        self._empty: dict[str, pa.Table] = {}  # empty Arrow tables per contract (for binding), built once
        # bind step results (the answer's schema, each fragment's column types) by statement shape: the
        # same SQL over the same catalog and reference-file versions binds to the same types (bind_key)
        self._binds: dict[tuple[Any, ...], tuple[pa.Schema, dict[str, list[tuple]]]] = {}
        # registered from above (skyfed.pipelines.serve.attach): `answer(sql, stale=False) -> (table, info) | None`;
        # info names model, build_id, age_seconds and the role (and policy fingerprint) it was built as
        self.answerers: list[Callable[..., tuple[pa.Table, dict[str, Any]] | None]] = []
        self._read_only: set[str] = set()  # SQL texts that passed the read-only guard

    @property
    def role(self) -> str | None:
        return self.governor.role if self.governor is not None else None

    # ----------------------------------------------------------------- planning

    def plan(self, sql: str) -> Plan:
        """The plan for `sql`: from the plan cache when every input it depends on is unchanged (_plan_key)."""
        from skyfed.query.broadcast import broadcastable
        from skyfed.query.pinning import pin_versions

        started = time.perf_counter()
        original = sql
        self._refresh_governor()
        sql = pin_versions(sql, _pinned_select)
        # which reference tables are small enough to copy to every region (their Parquet footers, read once per version)
        self.catalog.broadcast = broadcastable(self.catalog.reference_paths) if self.pushdown else {}
        key = self._plan_key(sql)
        plan = PLANS.get(key) if key is not None else None
        if plan is None:
            self._resolve_live(sql)  # may add live tables to the catalog: part of the key
            key = self._plan_key(sql)
            plan = PLANS.get(key) if key is not None else None
        if plan is not None:
            plan.plan_cache = "hit"
        else:
            plan = plan_query(sql, self.catalog, pushdown=self.pushdown)
            plan.plan_cache = "off" if key is None else "miss"
            if key is not None:
                PLANS.put(key, plan)
        plan.sql = original
        plan.plan_seconds = time.perf_counter() - started
        return plan

    def _plan_key(self, sql: str) -> tuple[Any, ...] | None:
        """Everything a plan depends on (plan_cache.py); None when the plan cache is off. Snapshot ids are not
        in it: a commit changes what the regions' SQL returns, not the SQL."""
        if PLANS.max_entries <= 0:
            return None
        live = tuple(sorted((n, tuple(t.columns.items()), t.kind, t.engine, t.ref) for n, t in self.catalog.live.items()))
        refs = tuple(sorted((n, b.version, b.path) for n, b in self.catalog.broadcast.items()))
        policy = (self.governor.role, self.governor.fingerprint(), self.governor.coordinator) if self.governor else None
        return (normalized(sql), self.catalog.fingerprint, live, refs, policy, self.pushdown, self.coordinator)

    def _refresh_governor(self) -> None:
        """Reload the caller's policies when the governance file changed since they were read (a long-lived
        Federation, e.g. the shell or a dashboard server, applies an edited file from its next query)."""
        from skyfed.query.governed import build_governor, file_version

        gv = self.governor
        if gv is None or gv.path is None or file_version(gv.path) == gv.file_version:
            return
        self.governor = build_governor(self.spec, role=gv.role, coordinator=self.coordinator, governance=gv.path)
        self.catalog.governor = self.governor

    def _coordinator(self) -> Any:
        """A fresh connection (cursor) to this Federation's coordinator database: opening a DuckDB database
        costs ~20 ms, a cursor ~0.1 ms. Relations a query registers or creates are temporary, so they stay
        in its own cursor. External access (files, URLs) is off for the whole database."""
        import duckdb

        with self._coord_lock:
            if self._coord_db is None:
                from skyfed.home import sub_dir

                self._coord_db = duckdb.connect(":memory:", config={
                    "autoinstall_known_extensions": False, "autoload_known_extensions": False,
                    "extension_directory": str(sub_dir("duckdb", "extensions")), "enable_external_access": False,
                })  # fmt: skip
            con = self._coord_db.cursor()
        duckdb_session(con)
        return con

    def close(self) -> None:
        """Close the coordinator database (a Federation also works again after this: it is reopened)."""
        with self._coord_lock:
            if self._coord_db is not None:
                self._coord_db.close()
                self._coord_db = None

    def _resolve_live(self, sql: str) -> None:
        """Add the live source tables (`region.source.table`) the SQL names to the catalog (their
        columns come from the source's connector, once per Federation)."""
        from sqlglot import exp

        from skyfed.query.catalog import live_name
        from skyfed.query.live import resolve_live

        if not _THREE_PART.search(sql):  # no `a.b.c` name anywhere: no live table (and no second parse)
            return
        tree = check_read_only(sql)
        for t in tree.find_all(exp.Table):
            if not t.catalog or not isinstance(t.this, exp.Identifier):
                continue
            region, source, table = t.catalog.lower(), t.db.lower(), t.name
            if live_name(region, source, table) in self.catalog.live:
                continue
            self.catalog.add_live(resolve_live(self.spec, region, source, table))

    def explain(self, sql: str) -> dict[str, Any]:
        """The plan without running it: per region SQL in its dialect and what crosses each boundary."""
        plan = self.plan(sql)
        return {
            "strategy": plan.strategy,
            "plan_ms": round(plan.plan_seconds * 1000, 2),
            "coordinator_region": self.coordinator,
            "policy": self._policy_summary(plan),
            "fragments": [
                {
                    "name": f.name,
                    "strategy": f.strategy,
                    "tables": f.tables,
                    "crosses_boundary": f"columns {', '.join(f.columns)}"
                    + (" (one row per group per region)" if f.strategy == "partial_aggregate" else "")
                    + (f" ({f.notes[0]})" if f.strategy == "top_n" and f.notes else ""),
                    "pushed_filters": f.pushed_filters,
                    "regions": [
                        {"region": rq.region, "engine": rq.engine, "sql": self._redact(rq.sql),
                         "egress_usd_per_gb": self._price(rq.region), "broadcast_in": rq.broadcast,
                         **({"policy": rq.policy} if rq.policy else {}),
                         **({"file_reads": rq.file_reads} if rq.file_reads else {})}  # fmt: skip
                        for rq in f.regions
                    ],
                    "pruned": f.pruned,
                    "semi_join": f.semi_join,
                    "notes": f.notes,
                }
                for f in plan.fragments
            ],
            "coordinator_sql": plan.coordinator_sql,
            "reference_tables": plan.reference_tables,
            "notes": plan.notes,
        }

    def estimate(self, sql: str) -> dict[str, Any]:
        """`--dry-run`: per region bytes scanned, bytes crossing the boundary and egress cost, before running.

        Runs no region query: Iceberg numbers come from the manifests, BigQuery ones from a
        dry-run job (or table metadata), live sources from their connectors' size estimates.
        The heuristics are in estimate.py and docs/query.md.
        """
        from skyfed.query.estimate import (
            _Fragment,
            account_transfers,
            estimate_region,
            type_width,
        )

        started = time.perf_counter()
        plan = self.plan(sql)
        con = self._coordinator()
        try:
            self._register_tables(con, plan)
            widths = {f.name: sum(type_width(t) for _, t, *_ in con.execute(f"DESCRIBE {f.duckdb_sql}").fetchall())
                      for f in plan.fragments}  # fmt: skip
        finally:
            con.close()
        tasks = [(f, rq) for f in plan.fragments for rq in f.regions]
        iceberg_tables: dict[tuple[str, str], Any] = {}
        infos = {f.name: _Fragment(f, self.catalog) for f in plan.fragments}
        rows: list[dict[str, Any]] = []
        if tasks:
            with cf.ThreadPoolExecutor(max_workers=min(8, len(tasks)), thread_name_prefix="skyfed-estimate") as pool:
                futures = [pool.submit(estimate_region, self, plan, f, infos[f.name], rq, widths[f.name], iceberg_tables)
                           for f, rq in tasks]  # fmt: skip
                rows = [fut.result() for fut in futures]
        assumptions = account_transfers(self, plan, rows)  # semi-join keys and broadcast copies into regions
        pruned = [{"region": r, "fragment": f.name, "reason": why, "bytes_scanned": 0, "boundary_bytes": 0, "egress_usd": 0.0}
                  for f in plan.fragments for r, why in f.pruned.items()]  # fmt: skip
        ok = [r for r in rows if r.get("error") is None]
        return {
            "strategy": plan.strategy,
            "coordinator_region": self.coordinator,
            "plan_ms": round(plan.plan_seconds * 1000, 2),
            "regions": rows,
            "pruned": pruned,
            "bytes_scanned": sum(r["bytes_scanned"] for r in ok),
            "boundary_bytes": sum(r["boundary_bytes"] for r in ok),
            "egress_usd": sum(r["egress_usd"] for r in ok),
            "semi_join_key_bytes": sum(r["semi_join_key_bytes"] for r in ok),
            "broadcast_bytes": sum(r["broadcast_bytes"] for r in ok),
            "inbound_egress_usd": sum(r["inbound_egress_usd"] for r in ok),
            "assumptions": assumptions,
            "complete": len(ok) == len(rows),
            "estimate_seconds": round(time.perf_counter() - started, 4),
            "region_queries_run": 0,
        }

    def _live_size(self, live: Any) -> dict[str, Any]:
        from skyfed.query.live import live_size

        return live_size(self.spec, live)

    def _price(self, region: str) -> float:
        if region == self.coordinator:
            return 0.0
        return float(self.spec.regions[region].egress_usd_per_gb.get(self.coordinator, 0.0))

    # ----------------------------------------------------------------- running

    def _redact(self, text: str) -> str:
        """Region SQL as shown to people: the hash masks' salt is a secret."""
        salt = self.governor.gov.salt() if self.governor is not None else ""
        return text.replace(salt, "<salt>") if salt else text

    def _policy_summary(self, plan: Plan) -> dict[str, Any]:
        if self.governor is None:
            return {"governed": False}
        return {"governed": True, "role": self.governor.role, "governance_file": self.governor.path,
                "decisions": [d for f in plan.fragments for rq in f.regions for d in rq.policy]}  # fmt: skip

    def query(self, sql: str, allow_partial: bool = False, timeout: float | None = None,
              use_cache: bool = True) -> Result:  # fmt: skip
        """Run `sql` and record it in the audit log (original SQL, role, decisions, rows, ok/failed/refused)."""
        from skyfed.governance.audit import record_query
        from skyfed.governance.policy import PolicyRefusal

        schema = {n: list(c.columns) for n, c in self.spec.contracts.items()}
        base = {"actor": None, "role": self.role, "schema": schema}
        try:
            result = self._query(sql, allow_partial, timeout, use_cache)
        except PolicyRefusal as exc:
            record_query(sql, status="refused", decisions=[{"policy": exc.policy, "decision": "refused",
                                                            "detail": exc.message}], **base)  # fmt: skip
            raise
        except BaseException as exc:
            record_query(sql, status="failed", detail={"error": _first_line(exc)}, **base)
            raise
        audit_started = time.perf_counter()
        decisions = self._policy_summary(result.plan).get("decisions", [])
        record_query(sql, status="ok", rows=result.report.result_rows, decisions=decisions,
                     detail={"strategy": result.plan.strategy, "cache": result.report.cache.get("status"),
                             "rows_shipped": result.report.rows_shipped, "bytes_shipped": result.report.bytes_shipped},
                     **base)  # fmt: skip
        result.report.phases["audit"] = round(time.perf_counter() - audit_started, 4)
        return result

    def _query(self, sql: str, allow_partial: bool = False, timeout: float | None = None,
               use_cache: bool = True) -> Result:  # fmt: skip
        """Run `sql` across the regions. A failing or slow region raises, unless `allow_partial`.

        With the result cache on (the default), an answer computed earlier from the same
        table versions within the TTL is returned without contacting the regions' engines
        (only their version lookups); `result.report.cache` says so and how old it is.
        """
        started = time.perf_counter()
        timeout = self.timeout if timeout is None else timeout
        if use_cache and self.answerers:  # use_cache=False (model builds, --no-cache) always computes live
            if sql not in self._read_only:  # the guard is a function of the text: a dashboard's repeats skip it
                check_read_only(sql)
                if len(self._read_only) >= 1024:
                    self._read_only.clear()
                self._read_only.add(sql)
            served = self._materialized(sql, started)
            if served is not None:
                return served
        plan = self.plan(sql)
        phases: dict[str, float] = {"plan": time.perf_counter() - started}
        key: str | None = None
        versions: dict[str, Any] | None = None
        cache_info: dict[str, Any] = {"status": "off"}
        if self.cache is not None and use_cache:
            lookup_started = time.perf_counter()
            versions, why = self._versions(plan, min(timeout, 5.0))
            phases["cache_lookup"] = time.perf_counter() - lookup_started
            cache_info = {"ttl_seconds": self.cache.ttl, "lookup_ms": round(phases["cache_lookup"] * 1000, 2)}
            if versions is None:
                cache_info["status"], cache_info["reason"] = "not_cacheable", why
            else:
                # the role (and its policies) is part of the key: a masked answer is never served to another role
                policy = self.governor.fingerprint() if self.governor is not None else None
                key = cache_key(normalize_sql(sql), versions, {"allow_partial": allow_partial, "policy": policy})
                cache_info["key"] = key
                hit = self.cache.get(key)
                if hit is not None:
                    cache_info.update(status="hit", age_seconds=round(hit.age_seconds, 3), created=hit.created)
                    report = self._hit_report(plan, hit.table, cache_info, started)
                    report.phases = {k: round(v, 4) for k, v in phases.items()}
                    report.plan_cache = plan.plan_cache
                    return Result(hit.table, report, plan)
                cache_info["status"] = "miss"
        bind_started = time.perf_counter()
        con = self._coordinator()
        try:
            bind_key = self._bind_key(plan)
            if bind_key in self._binds:  # types known: only the reference tables the coordinator reads are needed
                bound_schema, frag_types = self._binds[bind_key]
                self._register_tables(con, plan, only_read=True)
            else:
                self._register_tables(con, plan)
                try:
                    bound_schema = con.execute(plan.bind_sql).to_arrow_table().schema
                except Exception as exc:  # duckdb binder errors: the user's SQL is wrong
                    raise SkyfedError(f"the query is not valid: {_first_line(exc)}") from None
                frag_types = {f.name: con.execute(f"DESCRIBE {f.duckdb_sql}").fetchall() for f in plan.fragments}
                if bind_key is not None:
                    if len(self._binds) >= 256:  # bounded: a long-lived Federation sees many statements
                        self._binds.clear()
                    self._binds[bind_key] = (bound_schema, frag_types)
            regions_started = time.perf_counter()
            phases["bind"] = regions_started - bind_started
            runs, reports = self._run_regions(plan, timeout)
            phases["regions"] = time.perf_counter() - regions_started
            failed = [r for r in reports.values() if r.status != "ok"]
            if failed and not allow_partial:
                what = "; ".join(f"region {r.region} {'timed out' if r.status == 'timeout' else 'failed'}: {r.error}" for r in failed)
                served = self._materialized(sql, started, stale_reason=what) if use_cache and self.answerers else None
                if served is not None:  # the last good materialization, flagged stale with its age
                    return served
                raise SkyfedError(
                    what,
                    "check the region's store and service, raise the timeout, or pass allow_partial=True "
                    "(--allow-partial) to answer from the other regions",
                )
            merge_started = time.perf_counter()
            for frag in plan.fragments:
                self._load_fragment(con, plan, frag, frag_types[frag.name], runs)
            try:
                table = con.execute(plan.coordinator_sql).to_arrow_table()
            except Exception as exc:
                raise SkyfedError(f"the coordinator could not merge the regions' results: {_first_line(exc)}") from None
            table = _conform(table, bound_schema)
            merge_seconds = time.perf_counter() - merge_started
            phases["merge"] = merge_seconds
        finally:
            con.close()
        region_reports = list(reports.values())
        missing = [{"region": r.region, "error": r.error or r.status} for r in failed]
        report = QueryReport(
            strategy=plan.strategy,
            coordinator_region=self.coordinator,
            plan_ms=round(plan.plan_seconds * 1000, 3),
            regions=region_reports,
            pruned={r: why for f in plan.fragments for r, why in f.pruned.items()},
            rows_shipped=sum(r.rows for r in region_reports),
            bytes_shipped=sum(r.bytes for r in region_reports),
            egress_usd=sum(r.egress_usd or 0.0 for r in region_reports),
            merge_seconds=round(merge_seconds, 4),
            total_seconds=round(time.perf_counter() - started, 4),
            result_rows=table.num_rows,
            partial=bool(failed),
            missing=missing,
            cache=cache_info,
            semi_joins=[{"fragment": f.name, **f.semi_join} for f in plan.fragments if f.semi_join is not None],
            broadcast_bytes=sum(r.broadcast_bytes for r in region_reports),
            semi_join_key_bytes=sum(r.semi_join_key_bytes for r in region_reports),
            phases={k: round(v, 4) for k, v in phases.items()},
            plan_cache=plan.plan_cache,
        )
        if key is not None and versions is not None:
            if failed:
                cache_info.update(status="not_stored", reason="a partial answer is never cached")
            elif not self._unchanged(plan, versions, reports):
                cache_info.update(status="not_stored", reason="a table read got a new commit during the query")
            else:
                self.cache.put(key, table, {"sql": normalize_sql(sql), "versions": versions,  # type: ignore[union-attr]
                                            "strategy": plan.strategy, "bytes_shipped": report.bytes_shipped})  # fmt: skip
                cache_info["stored"] = True
        return Result(table, report, plan)

    def _materialized(self, sql: str, started: float, stale_reason: str | None = None) -> Result | None:
        """The first registered answerer's hit, as a Result (None: plan and run). Only a materialization
        built as the caller's role under the same policies answers (ungoverned builds: ungoverned callers)."""
        stale = stale_reason is not None
        policy = self.governor.fingerprint() if self.governor is not None else None
        for answer in self.answerers:
            got = answer(sql, stale=stale)
            if got is None:
                continue
            table, info = got
            if info.get("role") != self.role or info.get("policy") != policy:
                continue  # another role's masks and row filters: fall through to the federated answer
            cache = {"status": "materialization", "model": info.get("model"), "build_id": info.get("build_id"),
                     "age_seconds": info.get("age_seconds"), "built_at": info.get("built_at"), "role": self.role,
                     "stale": stale, **({"stale_reason": stale_reason} if stale else {})}  # fmt: skip
            plan = Plan(sql=sql, strategy="materialization", fragments=[], coordinator_sql="", bind_sql="",
                        reference_tables=[], notes=[f"answered from the materialization of model {info.get('model')}"])  # fmt: skip
            report = QueryReport(strategy="materialization", coordinator_region=self.coordinator, plan_ms=0.0,
                                 regions=[], pruned={}, rows_shipped=0, bytes_shipped=0, egress_usd=0.0,
                                 merge_seconds=0.0, total_seconds=round(time.perf_counter() - started, 4),
                                 result_rows=table.num_rows, cache=cache)  # fmt: skip
            return Result(table, report, plan)
        return None

    # ----------------------------------------------------------------- cache helpers

    def _tables_read(self, plan: Plan) -> dict[str, list[str]]:
        out: dict[str, set[str]] = {}
        for f in plan.fragments:
            for rq in f.regions:
                out.setdefault(rq.region, set()).update(rq.tables)
        return {r: sorted(t) for r, t in out.items()}

    def _versions(self, plan: Plan, timeout: float) -> tuple[dict[str, Any] | None, str]:
        """Every table's version the plan reads (None and why when the answer cannot be keyed)."""
        read = self._tables_read(plan)
        live = [self.catalog.live[t].dotted for ts in read.values() for t in ts if t in self.catalog.live]
        if live:
            return None, f"reads live source tables ({', '.join(sorted(live))}), which have no snapshot id"
        versions: dict[str, Any] = {}
        if read:
            pool = cf.ThreadPoolExecutor(max_workers=len(read), thread_name_prefix="skyfed-version")
            try:
                futures = {r: pool.submit(table_versions, r, self.spec.regions[r], ts, timeout) for r, ts in read.items()}
                for r, fut in futures.items():
                    try:
                        versions[r] = fut.result(timeout=timeout + 5)
                    except Exception as exc:  # noqa: BLE001 - no version, no cache; the run reports the failure
                        return None, f"region {r}: cannot look up table versions ({_first_line(exc)})"
            finally:
                pool.shutdown(wait=False, cancel_futures=True)
        refs = {}
        for name in plan.reference_tables:
            path = Path(self.catalog.reference_paths[name])
            try:
                st = path.stat()
            except OSError:
                return None, f"reference table {name} is missing ({path})"
            refs[name] = f"{st.st_size}-{st.st_mtime_ns}"
        if refs:
            versions["_reference"] = refs
        return versions, ""

    def _unchanged(self, plan: Plan, versions: dict[str, Any], reports: dict[str, RegionReport]) -> bool:
        """True if the run read the versions the key names (else a commit landed in between)."""
        for region, tables in self._tables_read(plan).items():
            rep = reports.get(region)
            if rep is None:
                return False
            if rep.snapshots:  # Iceberg: the executor reports the snapshot each table was read at
                if any(rep.snapshots.get(t) != versions[region].get(t) for t in tables):
                    return False
            else:  # BigQuery: the job read the current state; is it still the version looked up before?
                try:
                    if table_versions(region, self.spec.regions[region], tables, 10.0) != versions[region]:
                        return False
                except Exception:  # noqa: BLE001
                    return False
        return True

    def _hit_report(self, plan: Plan, table: pa.Table, cache_info: dict[str, Any], started: float) -> QueryReport:
        return QueryReport(
            strategy=plan.strategy,
            coordinator_region=self.coordinator,
            plan_ms=round(plan.plan_seconds * 1000, 3),
            regions=[],
            pruned={r: why for f in plan.fragments for r, why in f.pruned.items()},
            rows_shipped=0,
            bytes_shipped=0,
            egress_usd=0.0,
            merge_seconds=0.0,
            total_seconds=round(time.perf_counter() - started, 4),
            result_rows=table.num_rows,
            cache=cache_info,
        )

    def _bind_key(self, plan: Plan) -> tuple[Any, ...] | None:
        """What the bind step's types depend on: the statement, its fragments, the reference files read
        (their rows are registered with their own types) and the live tables known; None: do not cache."""
        refs = []
        for name in sorted(plan.reference_tables):
            try:
                st = Path(self.catalog.reference_paths[name]).stat()
            except (KeyError, OSError):
                return None
            refs.append((name, st.st_size, st.st_mtime_ns))
        frags = tuple((f.name, f.duckdb_sql) for f in plan.fragments)
        return (plan.bind_sql, frags, tuple(refs), tuple(sorted(self.catalog.live)))

    def _empty_table(self, name: str, contract: Any) -> pa.Table:
        if name not in self._empty:
            self._empty[name] = contract_schema(contract).empty_table()
        return self._empty[name]

    def _register_tables(self, con: Any, plan: Plan, only_read: bool = False) -> None:
        """Empty canonical tables (for binding and types) and the reference tables (real rows);
        `only_read`: just the reference tables the plan reads (binding was done before: each register costs ~1 ms)."""
        if only_read:
            for name in plan.reference_tables:
                self._register_reference(con, plan, name)
            return
        for name, contract in self.catalog.contracts.items():
            empty = self._empty_table(name, contract)
            con.register(name, empty)
            for region in self.catalog.regions_of(name):
                con.register(region_alias_name(region, name), empty)
        for name, live in self.catalog.live.items():
            cols = ", ".join(f'"{c}" {t}' for c, t in live.columns.items())
            con.execute(f'CREATE OR REPLACE TEMP TABLE "{name}" ({cols})')
        for name in self.catalog.reference:
            self._register_reference(con, plan, name)

    def _register_reference(self, con: Any, plan: Plan, name: str) -> None:
        contract = self.catalog.reference[name]
        path = Path(self.catalog.reference_paths[name])
        if name not in plan.reference_tables:  # not read by this query: its shape is enough to bind
            con.register(name, self._empty_table(name, contract))
        elif name in self.catalog.broadcast:  # read once per process and file version
            from skyfed.query.broadcast import arrow_of

            con.register(name, arrow_of(self.catalog.broadcast[name]))
        elif path.exists():
            con.register(name, pq.read_table(path))
        else:
            raise SkyfedError(
                f"the reference table {name} is missing at the coordinator ({path})",
                "run `skyfed demo seed` or fix its path under `reference:` in the spec",
            )

    def _run_regions(self, plan: Plan, timeout: float) -> tuple[dict[tuple[str, str], RegionRun], dict[str, RegionReport]]:
        """Every fragment in every region, in parallel; fragments that wait for semi-join keys run second."""
        reports: dict[str, RegionReport] = {}
        runs: dict[tuple[str, str], RegionRun] = {}
        deadline = time.perf_counter() + timeout
        first = [f for f in plan.fragments if f.semi_join is None]
        second = [f for f in plan.fragments if f.semi_join is not None]
        self._run_fragments(first, {}, runs, reports, deadline, timeout)
        if second:
            keys = {f.name: self._semi_keys(plan, f, runs) for f in second}
            self._run_fragments(second, keys, runs, reports, deadline, timeout)
        for rep in reports.values():
            rep.seconds = round(rep.seconds, 4)
            rep.egress_usd = rep.bytes / GB * self._price(rep.region)
        return runs, reports

    def _semi_keys(self, plan: Plan, frag: Fragment, runs: dict[tuple[str, str], RegionRun]) -> pa.Array | None:
        """The build fragment's distinct non-null join keys, or None (and why, in frag.semi_join) if not shipped."""
        import pyarrow.compute as pc

        sj = frag.semi_join
        assert sj is not None
        build = next(f for f in plan.fragments if f.name == sj["build"])
        parts = []
        for rq in build.regions:
            run = runs.get((build.name, rq.region))
            if run is None:
                sj["decision"] = f"not shipped: region {rq.region} of {build.name} has no answer"
                return None
            parts.append(run.table.column(sj["build_column"]).combine_chunks())
        if not parts:
            sj["decision"] = "shipped: the build side is empty"
            return pa.array([], pa.string())
        keys = pc.unique(pa.chunked_array(parts).combine_chunks()).drop_null()
        sj["keys"] = str(len(keys))
        if len(keys) > SEMI_JOIN_MAX_KEYS:
            sj["decision"] = f"not shipped: {len(keys)} keys > {SEMI_JOIN_MAX_KEYS} (the reduced rows are shipped instead)"
            return None
        sj["decision"] = f"shipped {len(keys)} keys"
        return keys

    def _run_fragments(self, frags: list[Fragment], keys: dict[str, Any], runs: dict[tuple[str, str], RegionRun],
                       reports: dict[str, RegionReport], deadline: float, timeout: float) -> None:  # fmt: skip
        tasks: list[tuple[Fragment, Any, Any, str, int]] = []
        for frag in frags:
            for rq in frag.regions:
                reports.setdefault(rq.region, RegionReport(rq.region, rq.engine, "ok"))
                ex = executor_for(rq.region, self.spec.regions[rq.region], rq.engine, self.spec, self.catalog.live)
                ex.broadcast = {n: (self.catalog.broadcast[n], self.catalog.reference[n]) for n in rq.broadcast}  # type: ignore[attr-defined]
                ex.file_reads = rq.file_reads  # type: ignore[attr-defined]
                sql, key_bytes = rq.sql, 0
                frag_keys = keys.get(frag.name)
                if frag_keys is not None and frag.semi_join is not None:
                    sql, key_bytes = _with_keys(ex, rq, frag, frag_keys)
                tasks.append((frag, rq, ex, sql, key_bytes))
        if not tasks:
            return
        pool = cf.ThreadPoolExecutor(max_workers=min(16, len(tasks)), thread_name_prefix="skyfed-region")
        try:
            futures = {pool.submit(ex.run, sql, rq.tables, max(0.1, deadline - time.perf_counter())): (frag, rq, ex, kb)
                       for frag, rq, ex, sql, kb in tasks}  # fmt: skip
            for fut, (frag, rq, ex, key_bytes) in futures.items():
                rep = reports[rq.region]
                try:
                    run = fut.result(timeout=max(0.0, deadline - time.perf_counter()))
                except cf.TimeoutError:
                    ex.cancel()
                    rep.status, rep.error = "timeout", f"no answer within {timeout:g} s"
                    continue
                except Exception as exc:  # noqa: BLE001 - every region failure is reported with its cause
                    if rep.status == "ok":
                        rep.status = "failed"
                        rep.error = self._redact(exc.message if isinstance(exc, SkyfedError)
                                                 else f"{type(exc).__name__}: {_first_line(exc)}")
                    continue
                runs[(frag.name, rq.region)] = run
                rep.fragments += 1
                rep.rows += run.table.num_rows
                rep.bytes += run.table.nbytes
                rep.broadcast_bytes += run.broadcast_bytes
                rep.semi_join_key_bytes += key_bytes
                if run.seconds >= rep.seconds:  # the slowest fragment's phases explain the region's time
                    rep.phases = {k: round(v, 4) for k, v in run.phases.items()}
                rep.seconds = max(rep.seconds, run.seconds)
                if run.bytes_scanned is not None:
                    rep.bytes_scanned = (rep.bytes_scanned or 0) + run.bytes_scanned
                rep.snapshots.update(run.snapshots)
                rep.scan_cache.update(run.scan_cache)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _load_fragment(self, con: Any, plan: Plan, frag: Fragment, types: list[tuple],
                       runs: dict[tuple[str, str], RegionRun]) -> None:  # fmt: skip
        """Create the fragment's relation: every region's rows cast to the types DuckDB gives the fragment SQL."""
        parts = []
        for rq in frag.regions:
            run = runs.get((frag.name, rq.region))
            if run is None:
                continue  # failed region under allow_partial
            rel = f"{frag.name}__{rq.region}"
            con.register(rel, run.table)
            have = set(run.table.column_names)
            cols = ", ".join(
                f'CAST("{name}" AS {typ}) AS "{name}"' if name in have else f'CAST(NULL AS {typ}) AS "{name}"'
                for name, typ, *_ in types
            )
            parts.append(f'SELECT {cols} FROM "{rel}"')
        if not parts:  # no region answered (pruned, or failed under allow_partial): the empty tables give the shape
            self._register_tables(con, plan)
        body = " UNION ALL ".join(parts) if parts else frag.duckdb_sql
        con.execute(f'CREATE TEMP VIEW "{frag.name}" AS {body}')


def _with_keys(ex: Any, rq: Any, frag: Fragment, keys: pa.Array) -> tuple[str, int]:
    """The region's fragment SQL filtered to the shipped keys, and the bytes of keys it carries.

    DuckDB regions get the keys as an Arrow relation (`IN (SELECT k ...)`, a hash semi-join);
    BigQuery regions as a literal list (at most SEMI_JOIN_MAX_INLINE keys; more: unfiltered).
    """
    from sqlglot import exp

    sj = frag.semi_join
    assert sj is not None
    col = sj["column"]
    if rq.engine == "bigquery":
        if len(keys) > SEMI_JOIN_MAX_INLINE:
            return rq.sql, 0
        if pa.types.is_string(keys.type) or pa.types.is_large_string(keys.type):
            items = [exp.Literal.string(v) for v in keys.to_pylist()]
        elif pa.types.is_date(keys.type):
            items = [exp.cast(exp.Literal.string(str(v)), "DATE") for v in keys.to_pylist()]
        else:
            items = [exp.Literal.number(v) for v in keys.to_pylist()]
        in_list = exp.In(this=exp.column(col), expressions=items).sql("bigquery") if items else "FALSE"
        return f"SELECT * FROM ({rq.sql}) AS _sf_s WHERE {in_list}", len(in_list)
    name = f"_sf_keys_{frag.name}"
    table = pa.table({"k": keys})
    ex.keys = {name: table}
    return f'SELECT * FROM ({rq.sql}) AS _sf_s WHERE "{col}" IN (SELECT k FROM "{name}")', table.nbytes


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """The coordinator's result with the names and types the same query has over co-located data."""
    if table.num_columns != len(schema):
        return table
    arrays = []
    for col, f in zip(table.columns, schema):
        if not col.type.equals(f.type):
            try:
                col = col.cast(f.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                return table.rename_columns(schema.names)
        arrays.append(col)
    return pa.Table.from_arrays(arrays, schema=pa.schema([pa.field(f.name, f.type) for f in schema]))


def _pinned_select(name: str, version: int, relation: str) -> str:
    from skyfed.governance.versioning import pinned_select

    return pinned_select(name, version, relation)


def _first_line(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc)
    return text.strip().splitlines()[0][:500] if text.strip() else type(exc).__name__


def connect(spec_or_path: PlatformSpec | str | os.PathLike[str] | None = None, *, coordinator: str | None = None,
            timeout: float = DEFAULT_TIMEOUT, cache: bool = True, cache_ttl: float = DEFAULT_TTL,
            cache_dir: str | os.PathLike[str] | None = None, clock: Any = time.time,
            pushdown: bool = True, role: str | None = None, governance: Any = None) -> Federation:  # fmt: skip
    """A Federation for a spec object, a spec path, or None ($SKYFED_SPEC, else ./skyfed.yaml).

    `role` (default $SKYFED_ROLE) is the caller's role in the governance file, found as
    `governance` (a path or a Governance), else $SKYFED_GOVERNANCE, else skyfed.governance.yaml
    beside the spec path (or $SKYFED_SPEC). No governance file: nothing is governed.
    With one and no role: the role `anonymous` (every classified column NULL). See governed.py.

    `cache` / `cache_ttl` (seconds) control the result cache under state_dir()/cache/query;
    `clock` (a time.time-like function) is injectable for tests of the TTL.
    """
    spec = spec_or_path if isinstance(spec_or_path, PlatformSpec) else load_spec(spec_or_path)
    spec_path = None if isinstance(spec_or_path, PlatformSpec) else (spec_or_path or os.environ.get("SKYFED_SPEC")
                                                                     or "skyfed.yaml")  # fmt: skip
    return Federation(spec, coordinator=coordinator, timeout=timeout, cache=cache, cache_ttl=cache_ttl,
                      cache_dir=cache_dir, clock=clock, pushdown=pushdown, role=role, governance=governance,
                      spec_path=spec_path)  # fmt: skip
