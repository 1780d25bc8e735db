"""`skyfed quarantine list | show | replay`."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.table import Table

from skyfed.cli import app
from skyfed.cli.common import emit, out
from skyfed.cli.specopt import SpecOption, load
from skyfed.errors import SkyfedError


def spec_path(spec: str | None) -> str:
    """The spec file the governance file is looked up beside."""
    from skyfed.spec import resolve_spec_path

    return str(resolve_spec_path(spec))

RoleOption = typer.Option(
    None, "--role", envvar="SKYFED_ROLE",
    help="Whose policies mask the raw records (default $SKYFED_ROLE; with a governance file and no role: anonymous).",
)

quarantine_app = typer.Typer(help="Records that failed harmonization or quality rules.", no_args_is_help=True)
app.add_typer(quarantine_app, name="quarantine")


@quarantine_app.command("list")
def list_(
    region: str = typer.Option(None, "--region", help="Only this region."),
    mapping: str = typer.Option(None, "--mapping", help="Only this mapping."),
    role: str = RoleOption,
    spec: str = SpecOption,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Quarantined records counted by region, mapping and reason."""
    from skyfed.ingest.quarantine import read_quarantine_as, summarize

    table = read_quarantine_as(load(spec), role, region, mapping, spec_path=spec_path(spec))
    rows = summarize(table)

    def render(data: list[dict[str, Any]]) -> None:
        if not data:
            out.print("the quarantine is empty")
            return
        t = Table(title=f"quarantine: {table.num_rows:,} record(s)")
        for col in ("region", "mapping", "reason", "records"):
            t.add_column(col, justify="right" if col == "records" else "left")
        for r in data:
            t.add_row(r["region"], r["mapping"], r["reason"], f"{r['records']:,}")
        out.print(t)
        out.print("show one: skyfed quarantine show MAPPING [LOCATION]; re-judge: skyfed quarantine replay MAPPING")

    emit(rows, as_json, render)


@quarantine_app.command("show")
def show(
    mapping: str = typer.Argument(..., help="The mapping whose records to show."),
    location: str = typer.Argument(None, help="One record's location (object:line or key=...)."),
    limit: int = typer.Option(20, "--limit", help="How many records at most."),
    role: str = RoleOption,
    spec: str = SpecOption,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Quarantined records of a mapping, with their reasons and raw source record (masked for the role)."""
    from skyfed.ingest.quarantine import read_quarantine_as

    table = read_quarantine_as(load(spec), role, None, mapping, spec_path=spec_path(spec))
    records = table.to_pylist() if table.num_rows else []
    if location:
        records = [r for r in records if r["location"] == location]
        if not records:
            raise SkyfedError(
                f"mapping {mapping} has no quarantined record at {location}",
                hint=f"`skyfed quarantine show {mapping}` lists its records",
            )
    records = records[:limit]
    for r in records:
        r.pop("reasons", None)
        try:
            r["raw"] = json.loads(r["raw"])
        except (TypeError, ValueError):
            pass

    def render(data: list[dict[str, Any]]) -> None:
        if not data:
            out.print(f"no quarantined records for {mapping}")
        for r in data:
            out.print(f"[bold]{r['mapping']}[/] {r['location']}  (run {r['run_id']}, {r['quarantined_at']})", highlight=False)
            out.print(f"  reason: {r['reason']}", highlight=False)
            out.print(f"  raw: {json.dumps(r['raw'], default=str) if not isinstance(r['raw'], str) else r['raw']}", highlight=False)

    emit(records, as_json, render)


@quarantine_app.command("replay")
def replay(
    mappings: list[str] = typer.Argument(..., help="Mappings whose quarantine to re-judge with the current spec."),
    spec: str = SpecOption,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Re-judge quarantined records after the spec or reference data was fixed."""
    from skyfed.ingest.quarantine import replay as do_replay

    platform = load(spec)
    results = [do_replay(platform, m).to_dict() for m in mappings]

    def render(data: list[dict[str, Any]]) -> None:
        t = Table(title="quarantine replay")
        for col in ("mapping", "replayed", "loaded", "superseded", "still failing", "not replayable"):
            t.add_column(col, justify="left" if col == "mapping" else "right")
        for r in data:
            t.add_row(r["mapping"], *(f"{r[k]:,}" for k in ("replayed", "loaded", "superseded", "still_failing", "not_replayable")))
        out.print(t)

    emit(results, as_json, render)
