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
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from skyfed.connectors import duck
from skyfed.contracts.types import contract_schema
from skyfed.errors import SkyfedError
from skyfed.query.catalog import Catalog, region_alias_name
from skyfed.query.executors import RegionRun, duckdb_session, executor_for
from skyfed.query.planner import Fragment, Plan, plan_query
from skyfed.spec import PlatformSpec, load_spec

DEFAULT_TIMEOUT = float(os.environ.get("SKYFED_QUERY_TIMEOUT", "300"))
GB = 1e9


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
    error: str | None = None
    snapshots: dict[str, Any] = field(default_factory=dict)


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

    def __init__(self, spec: PlatformSpec, *, coordinator: str | None = None, timeout: float = DEFAULT_TIMEOUT):
        self.spec = spec
        self.catalog = Catalog.from_spec(spec)
        self.coordinator = coordinator or next(iter(spec.regions))
        if self.coordinator not in spec.regions:
            raise SkyfedError(f"coordinator region {self.coordinator!r} is not in the spec", f"use one of {', '.join(spec.regions)}")
        self.timeout = timeout

    # ----------------------------------------------------------------- planning

    def plan(self, sql: str) -> Plan:
        return plan_query(sql, self.catalog)

    def explain(self, sql: str) -> dict[str, Any]:
        """The plan without running it: per region SQL in its dialect and what crosses each boundary."""
        plan = self.plan(sql)
        return {
            "strategy": plan.strategy,
            "plan_ms": round(plan.plan_seconds * 1000, 2),
            "coordinator_region": self.coordinator,
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
                        {"region": rq.region, "engine": rq.engine, "sql": rq.sql,
                         "egress_usd_per_gb": self._price(rq.region)}  # fmt: skip
                        for rq in f.regions
                    ],
                    "pruned": f.pruned,
                    "notes": f.notes,
                }
                for f in plan.fragments
            ],
            "coordinator_sql": plan.coordinator_sql,
            "reference_tables": plan.reference_tables,
            "notes": plan.notes,
        }

    def _price(self, region: str) -> float:
        if region == self.coordinator:
            return 0.0
        return float(self.spec.regions[region].egress_usd_per_gb.get(self.coordinator, 0.0))

    # ----------------------------------------------------------------- running

    def query(self, sql: str, allow_partial: bool = False, timeout: float | None = None) -> Result:
        """Run `sql` across the regions. A failing or slow region raises, unless `allow_partial`."""
        started = time.perf_counter()
        timeout = self.timeout if timeout is None else timeout
        plan = self.plan(sql)
        con = duck.connect([])
        try:
            duckdb_session(con)
            self._register_tables(con, plan)
            try:
                bound = con.execute(plan.bind_sql).to_arrow_table()
            except Exception as exc:  # duckdb binder errors: the user's SQL is wrong
                raise SkyfedError(f"the query is not valid: {_first_line(exc)}") from None
            frag_types = {f.name: con.execute(f"DESCRIBE {f.duckdb_sql}").fetchall() for f in plan.fragments}
            runs, reports = self._run_regions(plan, timeout)
            failed = [r for r in reports.values() if r.status != "ok"]
            if failed and not allow_partial:
                what = "; ".join(f"region {r.region} {'timed out' if r.status == 'timeout' else 'failed'}: {r.error}" for r in failed)
                raise SkyfedError(
                    what,
                    "check the region's store and service, raise the timeout, or pass allow_partial=True "
                    "(--allow-partial) to answer from the other regions",
                )
            merge_started = time.perf_counter()
            for frag in plan.fragments:
                self._load_fragment(con, frag, frag_types[frag.name], runs)
            con.execute("SET enable_external_access = false")
            try:
                table = con.execute(plan.coordinator_sql).to_arrow_table()
            except Exception as exc:
                raise SkyfedError(f"the coordinator could not merge the regions' results: {_first_line(exc)}") from None
            table = _conform(table, bound.schema)
            merge_seconds = time.perf_counter() - merge_started
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
        )
        return Result(table, report, plan)

    def _register_tables(self, con: Any, plan: Plan) -> None:
        """Empty canonical tables (for binding and types) and the reference tables (real rows)."""
        for name, contract in self.catalog.contracts.items():
            empty = contract_schema(contract).empty_table()
            con.register(name, empty)
            for region in self.catalog.regions_of(name):
                con.register(region_alias_name(region, name), empty)
        for name, contract in self.catalog.reference.items():
            path = Path(self.catalog.reference_paths[name])
            if path.exists():
                con.register(name, pq.read_table(path))
            else:
                con.register(name, contract_schema(contract).empty_table())
                if name in plan.reference_tables:
                    raise SkyfedError(
                        f"the reference table {name} is missing at the coordinator ({path})",
                        "run `skyfed demo seed` or fix its path under `reference:` in the spec",
                    )

    def _run_regions(self, plan: Plan, timeout: float) -> tuple[dict[tuple[str, str], RegionRun], dict[str, RegionReport]]:
        tasks: list[tuple[Fragment, Any, Any]] = []
        reports: dict[str, RegionReport] = {}
        for frag in plan.fragments:
            for rq in frag.regions:
                reports.setdefault(rq.region, RegionReport(rq.region, rq.engine, "ok"))
                tasks.append((frag, rq, executor_for(rq.region, self.spec.regions[rq.region])))
        runs: dict[tuple[str, str], RegionRun] = {}
        if not tasks:
            return runs, reports
        pool = cf.ThreadPoolExecutor(max_workers=min(16, len(tasks)), thread_name_prefix="skyfed-region")
        try:
            futures = {pool.submit(ex.run, rq.sql, rq.tables, timeout): (frag, rq, ex) for frag, rq, ex in tasks}
            deadline = time.perf_counter() + timeout
            for fut, (frag, rq, ex) in futures.items():
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
                        rep.error = exc.message if isinstance(exc, SkyfedError) else f"{type(exc).__name__}: {_first_line(exc)}"
                    continue
                runs[(frag.name, rq.region)] = run
                rep.fragments += 1
                rep.rows += run.table.num_rows
                rep.bytes += run.table.nbytes
                rep.seconds = max(rep.seconds, run.seconds)
                if run.bytes_scanned is not None:
                    rep.bytes_scanned = (rep.bytes_scanned or 0) + run.bytes_scanned
                rep.snapshots.update(run.snapshots)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        for rep in reports.values():
            rep.seconds = round(rep.seconds, 4)
            rep.egress_usd = rep.bytes / GB * self._price(rep.region)
        return runs, reports

    def _load_fragment(self, con: Any, frag: Fragment, types: list[tuple], runs: dict[tuple[str, str], RegionRun]) -> None:
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
        body = " UNION ALL ".join(parts) if parts else frag.duckdb_sql
        con.execute(f'CREATE VIEW "{frag.name}" AS {body}')


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


def _first_line(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc)
    return text.strip().splitlines()[0][:500] if text.strip() else type(exc).__name__


def connect(spec_or_path: PlatformSpec | str | os.PathLike[str] | None = None, *, coordinator: str | None = None,
            timeout: float = DEFAULT_TIMEOUT) -> Federation:  # fmt: skip
    """A Federation for a spec object, a spec path, or None ($SKYFED_SPEC, else ./skyfed.yaml)."""
    spec = spec_or_path if isinstance(spec_or_path, PlatformSpec) else load_spec(spec_or_path)
    return Federation(spec, coordinator=coordinator, timeout=timeout)
