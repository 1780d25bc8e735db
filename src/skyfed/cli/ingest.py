"""`skyfed ingest`: batch ingestion with progress and a run report per source table."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from skyfed.cli import app
from skyfed.cli.common import emit, err, out, progress
from skyfed.cli.specopt import SpecOption, load


@app.command()
def ingest(
    sources: list[str] = typer.Argument(None, help="Mappings, regions, region.source or contracts (default: all)."),
    full_refresh: bool = typer.Option(False, "--full-refresh", help="Ignore committed positions; rebuild the tables."),
    spec: str = SpecOption,
    as_json: bool = typer.Option(False, "--json", help="Print the run report as JSON."),
) -> None:
    """Ingest sources into each region's curated store (incremental unless --full-refresh)."""
    from skyfed.ingest.batch import ingest as run_ingest

    platform = load(spec)
    with progress(enabled=not as_json) as prog:
        tasks: dict[str, Any] = {}

        def progress_for(mapping):  # type: ignore[no-untyped-def]
            task = prog.add_task(f"{mapping.name}", total=None)
            tasks[mapping.name] = task

            def update(done: int, total: int | None) -> None:
                prog.update(task, completed=done, total=max(total or 0, done) or None)

            return update

        run_id, results, failures = run_ingest(platform, sources or (), full_refresh=full_refresh, progress_for=progress_for)
        for name, task in tasks.items():
            prog.update(task, total=prog.tasks[task].completed or 1, completed=prog.tasks[task].completed or 1)

    report = {
        "run_id": run_id,
        "results": [r.to_dict() for r in results],
        "failures": [{"mapping": m.name, "error": e.message, "hint": e.hint} for m, e in failures],
    }

    def render(rep: dict[str, Any]) -> None:
        table = Table(title=f"ingest run {run_id}")
        table.add_column("mapping", no_wrap=True, min_width=14)
        for col in ("read", "loaded", "quarant.", "filtered", "supers.", "MB", "s", "rows/s"):
            table.add_column(col, justify="right")
        for r in rep["results"]:
            table.add_row(
                r["mapping"],
                f"{r['rows_read']:,}",
                f"{r['rows_loaded']:,}",
                f"{r['rows_quarantined']:,}",
                f"{r['rows_filtered']:,}",
                f"{r['rows_superseded']:,}",
                f"{r['bytes_read'] / 1e6:.1f}",
                f"{r['seconds']:.1f}",
                f"{r['rows_per_second']:,.0f}",
            )
        out.print(table)
        for r in rep["results"]:
            if r["status"] == "no_new_data":
                out.print(f"{r['mapping']}: no new data since the last run (0 rows loaded)")
            for reason, n in sorted(r["quarantine_reasons"].items(), key=lambda kv: -kv[1]):
                out.print(f"  {r['mapping']}: quarantined {n:,} × {reason}", highlight=False)
            for note in r["notes"]:
                out.print(f"  {r['mapping']}: note: {note}", highlight=False)
        for f in rep["failures"]:
            err.print(f"[bold red]failed:[/] {f['mapping']}: {f['error']}", highlight=False)
            if f["hint"]:
                err.print(f"  hint: {f['hint']}", highlight=False)

    emit(report, as_json, render)
    if failures:
        raise typer.Exit(1)
