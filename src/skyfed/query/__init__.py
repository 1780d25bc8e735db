"""Federated SQL: one statement over canonical tables that span every region.

`connect(spec).query(sql)` plans the statement (planner.py, pure sqlglot), runs each
region's part where its data lives (executors.py: DuckDB over Iceberg, BigQuery jobs),
and merges the small results in an in-process DuckDB (engine.py). Only read-only
queries pass the guard (guard.py). Answers are cached per table version (cache.py);
`estimate` (estimate.py) prices a query without running it; live source tables are
resolved and read in their region (live.py). See docs/query.md.
"""

from skyfed.query.engine import Federation, QueryReport, RegionReport, Result, connect
from skyfed.query.guard import check_read_only
from skyfed.query.planner import Fragment, Plan, RegionQuery, plan_query

__all__ = [
    "Federation",
    "Fragment",
    "Plan",
    "QueryReport",
    "RegionQuery",
    "RegionReport",
    "Result",
    "check_read_only",
    "connect",
    "plan_query",
]
