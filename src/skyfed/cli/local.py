"""`skyfed up | down | status`: the local federation of Google Cloud stand-ins."""

from __future__ import annotations

import time

import typer
from rich.table import Table

from skyfed.cli import app
from skyfed.cli.common import emit, err, out
from skyfed.localenv import FederationStatus
from skyfed.localenv import down as _down
from skyfed.localenv import status as _status
from skyfed.localenv import up as _up

_STATE_STYLE = {"running": "green", "stopped": "dim", "missing": "yellow", "failed": "bold red"}
_JSON = typer.Option(False, "--json", help="Print machine-readable JSON instead of a table.")


def _render(st: FederationStatus) -> None:
    table = Table(
        title=f"local federation in {st.home}",
        title_justify="left",
        caption=f"logs: {st.home}/logs/<service>.log",
        caption_justify="left",
    )
    table.add_column("service", no_wrap=True, min_width=8)
    table.add_column("state", no_wrap=True, min_width=7)
    table.add_column("pid", no_wrap=True, min_width=5)
    table.add_column("endpoints", overflow="fold", min_width=24)
    table.add_column("data", no_wrap=True, min_width=6)
    table.add_column("version", overflow="fold", min_width=8)
    for s in st.services:
        style = _STATE_STYLE.get(s.state, "")
        table.add_row(
            s.name,
            f"[{style}]{s.state}[/]" if style else s.state,
            str(s.pid or ""),
            "\n".join(f"{k}: {v}" for k, v in s.endpoints.items()),
            "kept" if s.persists_data else "memory",
            s.version or "",
        )
    out.print(table)
    for s in st.services:
        if s.state in ("missing", "failed"):
            out.print(f"[bold]{s.name}[/] {s.state}: {s.detail or ''}", highlight=False)
            if s.hint:
                out.print(f"  hint: {s.hint}", highlight=False)


@app.command()
def up(as_json: bool = _JSON) -> None:
    """Start the local stand-ins (PostgreSQL, BigQuery, Cloud Storage, Pub/Sub); running ones are left alone."""
    started = time.monotonic()
    err.print("starting the local federation ...", highlight=False)
    st = _up()
    err.print(f"ready in {time.monotonic() - started:.1f} s", highlight=False)
    emit(st.to_dict() if as_json else st, as_json, _render)


@app.command()
def down(as_json: bool = _JSON) -> None:
    """Stop the local stand-ins this state folder started (data is kept)."""
    st = _down()
    emit(st.to_dict() if as_json else st, as_json, _render)


@app.command()
def status(as_json: bool = _JSON) -> None:
    """Show each local stand-in: state, pid, endpoints, log, version, whether it keeps data."""
    st = _status()
    emit(st.to_dict() if as_json else st, as_json, _render)
