"""`skyfed query "SQL"`: federated SQL over canonical tables, with --explain and --report."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer
from rich.table import Table

from skyfed.cli import app
from skyfed.cli.common import emit, err, out
from skyfed.cli.specopt import SpecOption, load
from skyfed.errors import SkyfedError

FORMATS = ("table", "json", "csv", "parquet")


@app.command()
def query(
    sql: str = typer.Argument(..., help="One SELECT (or WITH ... SELECT) over canonical tables, e.g. flight_leg or eu.flight_leg."),
    spec: str = SpecOption,
    fmt: str = typer.Option("table", "--format", "-f", help="table | json | csv | parquet (parquet needs --out)."),
    out_path: str = typer.Option(None, "--out", "-o", help="Write the result to this file instead of stdout."),
    explain: bool = typer.Option(False, "--explain", help="Print the plan (per-region SQL, what crosses each boundary) without running."),
    report: bool = typer.Option(False, "--report", help="After the result, print per region rows, bytes, seconds and egress cost (stderr)."),
    allow_partial: bool = typer.Option(False, "--allow-partial", help="Answer from the regions that respond; flag what is missing."),
    timeout: float = typer.Option(None, "--timeout", help="Seconds each region may take (default 300)."),
    coordinator: str = typer.Option(None, "--coordinator", help="Region the merge runs in, for egress prices (default: the spec's first region)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write the result cache."),
    cache_ttl: float = typer.Option(None, "--cache-ttl", help="Seconds a cached answer stays valid (default 300, $SKYFED_QUERY_CACHE_TTL)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Estimate bytes scanned and shipped per region and the egress cost; run nothing."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output (plan, or result rows plus report)."),
    role: str = typer.Option(None, "--role", help="Your role in the governance file (default $SKYFED_ROLE; none: "
                             "'anonymous', every classified column NULL)."),
    governance: str = typer.Option(None, "--governance", help="Governance file (default $SKYFED_GOVERNANCE or "
                                   "skyfed.governance.yaml beside the spec)."),
) -> None:
    """Run SQL across every region: work is pushed to the data, only small results move."""
    from skyfed.query import connect

    if fmt not in FORMATS:
        raise SkyfedError(f"unknown --format {fmt!r}", f"use one of {', '.join(FORMATS)}")
    if fmt == "parquet" and not out_path:
        raise SkyfedError("--format parquet needs --out PATH", "parquet is binary; write it to a file")
    options: dict[str, Any] = {"cache": not no_cache}
    if timeout:
        options["timeout"] = timeout
    if cache_ttl is not None:
        options["cache_ttl"] = cache_ttl
    import os

    from skyfed.governance.config import governance_path

    gov_path = governance_path(spec or os.environ.get("SKYFED_SPEC") or "skyfed.yaml", governance)
    fed = connect(load(spec), coordinator=coordinator, role=role, governance=gov_path, **options)
    if not no_cache:  # fresh materialized views (models/ beside the spec) answer first; stale ones when a region fails
        from skyfed.pipelines.serve import attach

        attach(fed, spec_path=os.environ.get("SKYFED_SPEC") or spec or "skyfed.yaml")
    if explain:
        emit(fed.explain(sql), as_json, _render_plan)
        return
    if dry_run:
        emit(fed.estimate(sql), as_json, _render_estimate)
        return
    result = fed.query(sql, allow_partial=allow_partial)
    table = result.arrow()
    rep = result.report.to_dict()
    if as_json:
        fmt = "json"
    if out_path:
        _write(table, fmt if fmt != "table" else "csv", out_path)
        err.print(f"wrote {table.num_rows:,} rows to {out_path}")
    elif fmt == "json":
        payload: Any = {"columns": table.column_names, "rows": table.to_pylist()}
        if report or as_json:
            payload["report"] = rep
        sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
    elif fmt == "csv":
        import pyarrow.csv as pacsv

        sink = sys.stdout.buffer
        pacsv.write_csv(table, sink)
        sink.flush()
    else:
        _render_table(table)
    if result.partial:
        for m in result.missing:
            err.print(f"[bold yellow]partial answer:[/] region {m['region']} is missing: {m['error']}", highlight=False)
    if result.stale:
        c = result.report.cache
        err.print(f"[bold yellow]stale answer:[/] from the materialization of {c.get('model')}, "
                  f"{c.get('age_seconds', 0):.0f} s old, because {c.get('stale_reason')}", highlight=False)
    if result.report.from_cache:
        err.print(f"[dim]answer from the result cache ({result.report.cache['age_seconds']:.1f} s old)[/]", highlight=False)
    if report and not (fmt == "json" and not out_path):
        _render_report(rep)


def _write(table: Any, fmt: str, path: str) -> None:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, path)
    elif fmt == "csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, path)
    else:
        with open(path, "w") as fh:
            json.dump({"columns": table.column_names, "rows": table.to_pylist()}, fh, indent=2, default=str)


def _render_table(table: Any, limit: int = 200) -> None:
    view = Table(show_lines=False)
    for name in table.column_names:
        view.add_column(name)
    for row in table.slice(0, limit).to_pylist():
        view.add_row(*("NULL" if v is None else str(v) for v in row.values()))
    out.print(view)
    more = f" (showing {limit})" if table.num_rows > limit else ""
    err.print(f"{table.num_rows:,} rows{more}")


def _render_report(rep: dict[str, Any]) -> None:
    if rep["strategy"] == "materialization":
        c = rep["cache"]
        err.print(f"  answered from the materialization of {c['model']} (build {c['build_id']}, "
                  f"{c['age_seconds']:.0f} s old" + (f"; STALE: {c['stale_reason']}" if c.get("stale") else "")
                  + "); no region contacted", highlight=False)  # fmt: skip
        return
    view = Table(title=f"query report: {rep['strategy']}, coordinator in {rep['coordinator_region']}")
    for col in ("region", "engine", "status", "rows", "bytes", "s", "scanned", "egress $"):
        view.add_column(col, justify="left" if col in ("region", "engine", "status") else "right")
    for r in rep["regions"]:
        view.add_row(
            r["region"], r["engine"], r["status"], f"{r['rows']:,}", f"{r['bytes']:,}", f"{r['seconds']:.3f}",
            "-" if r["bytes_scanned"] is None else f"{r['bytes_scanned']:,}",
            "-" if r["egress_usd"] is None else f"{r['egress_usd']:.8f}",
        )  # fmt: skip
    err.print(view)
    cache = rep.get("cache") or {}
    if cache.get("status") == "hit":
        err.print(f"  from the result cache: computed {cache['age_seconds']:.1f} s ago (TTL {cache['ttl_seconds']:g} s); "
                  f"no region was queried (version lookup {cache['lookup_ms']:.0f} ms)", highlight=False)  # fmt: skip
    elif cache.get("status") not in (None, "off"):
        why = f": {cache['reason']}" if cache.get("reason") else (" (stored)" if cache.get("stored") else "")
        err.print(f"  result cache: {cache['status']}{why}", highlight=False)
    for region, why in rep["pruned"].items():
        err.print(f"  {region}: not read ({why})", highlight=False)
    for r in rep["regions"]:
        if r.get("scan_cache"):
            states = ", ".join(f"{t} {s}" for t, s in r["scan_cache"].items())
            err.print(f"  {r['region']} scan cache: {states}", highlight=False)
    for sj in rep.get("semi_joins") or []:
        err.print(f"  semi-join {sj['fragment']}.{sj['column']} <- {sj['build']}.{sj['build_column']}: "
                  f"{sj.get('decision', 'not run')}", highlight=False)  # fmt: skip
    if rep.get("semi_join_key_bytes") or rep.get("broadcast_bytes"):
        err.print(f"  into regions: {rep.get('semi_join_key_bytes', 0):,} B of join keys, "
                  f"{rep.get('broadcast_bytes', 0):,} B of broadcast reference tables", highlight=False)  # fmt: skip
    err.print(
        f"  plan {rep['plan_ms']:.1f} ms, merge {rep['merge_seconds']:.3f} s, total {rep['total_seconds']:.3f} s; "
        f"shipped {rep['rows_shipped']:,} rows / {rep['bytes_shipped']:,} bytes; est. egress ${rep['egress_usd']:.8f}",
        highlight=False,
    )


def _render_estimate(est: dict[str, Any]) -> None:
    view = Table(title=f"dry run: {est['strategy']}, coordinator in {est['coordinator_region']} (estimates; nothing ran)")
    for col in ("region", "fragment", "engine", "scanned", "from", "rows", "ships rows", "ships bytes", "egress $"):
        view.add_column(col, justify="right" if col in ("scanned", "rows", "ships rows", "ships bytes", "egress $") else "left")
    for r in est["regions"]:
        if r.get("error"):
            view.add_row(r["region"], r["fragment"], r["engine"], "-", f"error: {r['error']}", "-", "-", "-", "-")
            continue
        view.add_row(
            r["region"], r["fragment"], r["engine"], f"{r['bytes_scanned']:,}", r["scanned_source"],
            f"{r['rows_after_filters']:,}", f"{r['boundary_rows']:,}", f"{r['boundary_bytes']:,}", f"{r['egress_usd']:.8f}",
        )  # fmt: skip
    for p in est["pruned"]:
        view.add_row(p["region"], p["fragment"], "-", "0", f"pruned: {p['reason']}", "0", "0", "0", "0")
    out.print(view)
    out.print(
        f"total: scanned {est['bytes_scanned']:,} B, crossing boundaries {est['boundary_bytes']:,} B, "
        f"est. egress ${est['egress_usd']:.8f}" + ("" if est["complete"] else " (some regions could not be estimated)"),
        highlight=False,
    )
    out.print(f"into regions: semi-join keys {est.get('semi_join_key_bytes', 0):,} B, broadcast copies "
              f"{est.get('broadcast_bytes', 0):,} B, est. egress ${est.get('inbound_egress_usd', 0.0):.8f}", highlight=False)
    for a in est.get("assumptions", []):
        out.print(f"  assumed: {a}", highlight=False)


def _render_plan(plan: dict[str, Any]) -> None:
    out.print(f"[bold]strategy:[/] {plan['strategy']}   plan {plan['plan_ms']} ms   coordinator in {plan['coordinator_region']}")
    pol = plan.get("policy") or {}
    if pol.get("governed"):
        out.print(f"[bold]role:[/] {pol['role']} (governance file {pol['governance_file']})", highlight=False)
    for f in plan["fragments"]:
        out.print(f"\n[bold]{f['name']}[/] ({f['strategy']} over {', '.join(f['tables'])}): crosses boundary: {f['crosses_boundary']}", highlight=False)
        for r in f["regions"]:
            out.print(f"  [cyan]{r['region']}[/] ({r['engine']}, egress ${r['egress_usd_per_gb']}/GB):", highlight=False)
            out.print(f"    {r['sql']}", highlight=False, soft_wrap=True)
            for d in r.get("policy", []):
                cross = " (crosses the boundary)" if d.get("crosses_boundary") else ""
                out.print(f"    [magenta]policy {d['policy']}: {d['decision']}[/] {d['detail']}{cross}", highlight=False)
        for region, why in f["pruned"].items():
            out.print(f"  [dim]{region}: not read ({why})[/]", highlight=False)
        for note in f["notes"]:
            out.print(f"  note: {note}", highlight=False)
    out.print(f"\n[bold]coordinator (DuckDB):[/] {plan['coordinator_sql']}", highlight=False, soft_wrap=True)
    for note in plan["notes"]:
        out.print(f"note: {note}", highlight=False)
