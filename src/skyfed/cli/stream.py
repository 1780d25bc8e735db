"""`skyfed stream [SOURCE...]`, `skyfed stream status [--json]`, `skyfed stream reset [SOURCE...]`."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from skyfed.cli import app
from skyfed.cli.common import emit, err, out
from skyfed.cli.specopt import SpecOption, load


@app.command(context_settings={"allow_interspersed_args": True})
def stream(
    args: list[str] = typer.Argument(
        None,
        help="Sources to stream (mappings, regions, region.source or contracts; default: all streamable), "
        "or `status [SOURCE...]`, or `reset [SOURCE...]`.",
    ),
    until_idle: bool = typer.Option(False, "--until-idle", help="Stop once no source has had anything new for --idle-seconds."),
    max_rows: int = typer.Option(50_000, "--max-rows", min=1, help="Close a micro-batch at this many changes."),
    max_seconds: float = typer.Option(1.0, "--max-seconds", min=0.05, help="Close a micro-batch after this long."),
    idle_seconds: float = typer.Option(2.0, "--idle-seconds", min=0.1, help="Quiet time that counts as idle (--until-idle)."),
    spec: str = SpecOption,
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Keep the curated stores current: PostgreSQL change capture, Pub/Sub events, file arrivals.

    Runs until SIGTERM or Ctrl-C (the batch in hand is committed and acknowledged, exit 0).
    """
    from skyfed.stream import runner

    args = list(args or [])
    platform = load(spec)
    if args and args[0] == "status":
        rows = runner.status(platform, args[1:])
        emit(rows, as_json, _render_status)
        return
    if args and args[0] == "reset":
        rows = runner.reset(platform, args[1:])
        emit(rows, as_json, lambda rs: [out.print(f"{r['source']}: stream state reset", highlight=False) for r in rs])
        return

    def on_batch(source: str, report: Any) -> None:
        if not as_json:
            parts = ", ".join(f"{r.mapping} +{r.upserted} -{r.deleted} q{r.quarantined}" for r in report.results)
            err.print(f"{source}: {report.changes} change(s) in {report.seconds:.2f} s: {parts}", highlight=False)

    stats = runner.run(platform, args, until_idle=until_idle, max_rows=max_rows, max_seconds=max_seconds,
                       idle_seconds=idle_seconds, on_batch=on_batch,
                       on_event=lambda source, text: err.print(text, highlight=False))  # fmt: skip
    emit({s: st.to_dict() for s, st in stats.items()}, as_json, _render_stats)


def _render_stats(stats: dict[str, Any]) -> None:
    table = Table(title="stream")
    for col in ("source", "batches", "changes", "upserted", "deleted", "quarant.", "changes/s"):
        table.add_column(col, justify="left" if col == "source" else "right")
    for s in stats.values():
        table.add_row(s["source"], str(s["batches"]), f"{s['changes']:,}", f"{s['upserted']:,}", f"{s['deleted']:,}",
                      f"{s['quarantined']:,}", f"{s['changes_per_second']:,.0f}")  # fmt: skip
    out.print(table)


def _render_status(rows: list[dict[str, Any]]) -> None:
    table = Table(title="stream status")
    for col in ("source", "kind", "state", "lag s", "lag bytes", "slot WAL", "undelivered", "changes/s", "last commit"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["source"], r["kind"], _v(r.get("state")), _v(r["lag_seconds"]), _v(r["lag_bytes"]),
                      _v(r.get("wal_status")), _v(r["undelivered_messages"]), _v(r["changes_per_second"]),
                      _v(r["last_commit_at"]))  # fmt: skip
    out.print(table)
    for r in rows:
        if r.get("wal_status") == "lost":
            err.print(f"{r['source']}: replication slot {r.get('slot')} is invalidated (wal_status lost): run "
                      f"`skyfed stream reset {r['source']}`, then `skyfed stream {r['source']}` (a fresh snapshot)",
                      highlight=False)  # fmt: skip
        if r.get("error"):
            err.print(f"{r['source']}: {r['error']}", highlight=False)


def _v(value: Any) -> str:
    return "-" if value is None else str(value)
