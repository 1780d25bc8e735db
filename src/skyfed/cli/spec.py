"""`skyfed validate` and `skyfed spec schema`."""

from __future__ import annotations

import json
import sys

import typer
from rich.table import Table

from skyfed.cli import app
from skyfed.cli.common import emit, out
from skyfed.spec import check_spec, resolve_spec_path, spec_json_schema

spec_app = typer.Typer(help="The platform spec: its JSON Schema.", no_args_is_help=True)
app.add_typer(spec_app, name="spec")

from skyfed.cli.specopt import SpecOption


@app.command()
def validate(
    spec: str = SpecOption,
    as_json: bool = typer.Option(False, "--json", help="Print the problems as JSON."),
) -> None:
    """Check a platform spec and report every problem with file, line and key path."""
    from skyfed.localenv import apply_service_env

    apply_service_env()
    path = resolve_spec_path(spec)
    parsed, issues = check_spec(path)
    report = {
        "spec": str(path),
        "valid": parsed is not None,
        "issues": [i.to_dict() for i in issues],
        "summary": None
        if parsed is None
        else {
            "name": parsed.name,
            "regions": {r: sorted(reg.sources) for r, reg in parsed.regions.items()},
            "contracts": {c: k.version for c, k in parsed.contracts.items()},
            "mappings": len(parsed.mappings),
        },
    }

    def render(rep: dict) -> None:
        for issue in issues:
            style = "red" if issue.severity == "error" else "yellow"
            out.print(f"[{style}]{issue.severity}[/]: {issue}", highlight=False, soft_wrap=True)
        if rep["valid"]:
            s = rep["summary"]
            table = Table(title=f"{path}: valid", show_header=True)
            table.add_column("region")
            table.add_column("sources")
            for region, sources in s["regions"].items():
                table.add_row(region, ", ".join(sources))
            out.print(table)
            out.print(
                f"{len(s['contracts'])} contract(s): "
                + ", ".join(f"{c} v{v}" for c, v in s["contracts"].items())
                + f"; {s['mappings']} mapping(s)"
            )
        else:
            n = sum(1 for i in issues if i.severity == "error")
            out.print(f"[bold red]{path}: {n} problem(s)[/]")

    emit(report, as_json, render)
    if parsed is None:
        raise typer.Exit(1)


@spec_app.command("schema")
def schema(out_file: str = typer.Option(None, "--out", help="Write to a file instead of stdout.")) -> None:
    """Print the JSON Schema of the platform spec (for editor autocompletion)."""
    text = json.dumps(spec_json_schema(), indent=2) + "\n"
    if out_file:
        with open(out_file, "w", encoding="utf-8") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text)
