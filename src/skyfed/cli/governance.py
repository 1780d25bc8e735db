"""`skyfed contracts`, `skyfed audit`, `skyfed catalog` and `skyfed lineage`: governance commands."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import typer
from rich.table import Table
from rich.tree import Tree

from skyfed.cli import app
from skyfed.cli.common import emit, out
from skyfed.cli.specopt import SpecOption
from skyfed.errors import SkyfedError

contracts_app = typer.Typer(help="Versioned contracts: list, show, diff, check compatibility.", no_args_is_help=True)
catalog_app = typer.Typer(help="The data catalog: search, describe, export to Dataplex.", no_args_is_help=True)
app.add_typer(contracts_app, name="contracts")
app.add_typer(catalog_app, name="catalog")

GovOption = typer.Option(None, "--governance", help="Governance file (default: skyfed.governance.yaml beside the spec).")
JsonOption = typer.Option(False, "--json", help="Print JSON.")


def _load(spec: str | None, governance: str | None) -> tuple[Any, Any, str]:
    from skyfed.cli.specopt import load
    from skyfed.governance.config import governance_path, load_governance
    from skyfed.spec import resolve_spec_path

    path = resolve_spec_path(spec)
    return load(str(path)), load_governance(governance_path(path, governance)), str(path)


# ------------------------------------------------------------------ contracts


@contracts_app.command("list")
def contracts_list(as_json: bool = JsonOption) -> None:
    """Every registered contract with its latest version."""
    from skyfed.catalog import registry

    rows = []
    for name in registry.names():
        hist = registry.history(name)
        last = hist[-1]
        rows.append({"contract": name, "latest": last["version"], "versions": len(hist), "hash": last["hash"],
                     "registered_at": last["registered_at"], "spec_path": last["spec_path"]})

    def render(data: list[dict[str, Any]]) -> None:
        if not data:
            out.print("no contract registered yet: run `skyfed contracts check`")
            return
        t = Table("contract", "latest", "versions", "hash", "registered")
        for r in data:
            t.add_row(r["contract"], str(r["latest"]), str(r["versions"]), r["hash"][:12], str(r["registered_at"])[:19])
        out.print(t)

    emit(rows, as_json, render)


def _version(name_at: str) -> tuple[str, int | None]:
    name, _, v = name_at.partition("@")
    if v and not v.isdigit():
        raise SkyfedError(f"{name_at!r}: the version after @ must be a number", "e.g. flight_leg@2")
    return name, int(v) if v else None


def _get(name: str, version: int | None) -> dict[str, Any]:
    from skyfed.catalog import registry

    hist = registry.history(name)
    if not hist:
        raise SkyfedError(f"contract {name!r} has no registered version", "run `skyfed contracts check` first")
    if version is None:
        return hist[-1]
    for row in hist:
        if row["version"] == version:
            return row
    raise SkyfedError(f"contract {name} has no version {version}", f"versions: {', '.join(str(r['version']) for r in hist)}")


@contracts_app.command("show")
def contracts_show(name: str = typer.Argument(..., help="NAME or NAME@VERSION"), as_json: bool = JsonOption) -> None:
    """One registered version (latest by default): columns with field ids, constraints, classifications."""
    row = _get(*_version(name))

    def render(r: dict[str, Any]) -> None:
        out.print(f"[bold]{r['name']}@{r['version']}[/] hash {r['hash'][:12]} registered {str(r['registered_at'])[:19]}"
                  f" from {r['spec_path']} (declared version {r['declared_version']})", highlight=False, soft_wrap=True)
        t = Table("id", "column", "type", "nullable", "classification", "checks")
        for col, c in r["body"]["columns"].items():
            t.add_row(str(c["id"]), col, c["type"], "yes" if c["nullable"] else "no", c["classification"] or "",
                      json.dumps(c["checks"]) if c["checks"] else "")
        out.print(t)
        out.print(f"key: {', '.join(r['body']['key']) or '-'}; partition_by: {r['body']['partition_by'] or '-'}")

    emit(row, as_json, render)


@contracts_app.command("diff")
def contracts_diff(name: str, v1: int, v2: int, as_json: bool = JsonOption) -> None:
    """What changed from version V1 to V2, and which compatibility directions each change breaks."""
    from skyfed.governance.compat import diff

    old, new = _get(name, v1), _get(name, v2)
    changes = [{"column": c.column, "rule": c.rule, "detail": c.detail, "breaks": list(c.breaks)}
               for c in diff(old["body"], new["body"])]

    def render(rows: list[dict[str, Any]]) -> None:
        if not rows:
            out.print(f"{name}@{v1} and {name}@{v2} have the same schema")
            return
        t = Table("column", "change", "detail", "breaks")
        for r in rows:
            t.add_row(r["column"] or "(contract)", r["rule"], r["detail"], ", ".join(r["breaks"]) or "-")
        out.print(t)

    emit(changes, as_json, render)


@contracts_app.command("check")
def contracts_check(
    spec: str = SpecOption,
    governance: str = GovOption,
    mode: str = typer.Option(None, "--mode", help="Override every contract's compatibility mode."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Report only; register nothing."),
    accept_weaker_policy: bool = typer.Option(False, "--accept-weaker-policy", help="Register despite policy findings."),
    as_json: bool = JsonOption,
) -> None:
    """Check the spec's contracts and policies against the registry; register compatible versions."""
    from skyfed.governance.versioning import check_spec

    parsed, gov, path = _load(spec, governance)
    report = check_spec(parsed, gov, spec_path=path, mode=mode, register=not dry_run,
                        accept_weaker_policy=accept_weaker_policy)

    def render(rep: dict[str, Any]) -> None:
        for c in rep["contracts"]:
            style = {"refused": "red", "registered": "green"}.get(c["status"], "")
            ver = f" v{c['version']}" if c["version"] else ""
            out.print(f"[{style or 'default'}]{c['contract']}: {c['status']}{ver}[/] ({c['mode']})", highlight=False, soft_wrap=True)
            for ch in c["changes"]:
                out.print(f"  change: {ch['column'] or '(contract)'}: {ch['rule']} {ch['detail']}", highlight=False, soft_wrap=True)
            for v in c["violations"]:
                out.print(f"  [red]violation[/]: {v['message']}", highlight=False, soft_wrap=True)
            for n in c["notes"]:
                out.print(f"  note: {n}", highlight=False, soft_wrap=True)
        for f in rep["policy"]["findings"]:
            out.print(f"[yellow]policy weakened[/]: {f}", highlight=False, soft_wrap=True)
        if rep["options"]:
            out.print("[bold]options:[/]")
            for i, o in enumerate(rep["options"], 1):
                out.print(f"  {i}. {o}", highlight=False, soft_wrap=True)
            if rep["policy"]["status"] == "refused":
                out.print("  or, if the weaker policy is intended: rerun with --accept-weaker-policy", highlight=False, soft_wrap=True)

    emit(report.to_dict(), as_json, render)
    if not report.ok:
        raise typer.Exit(1)


# ------------------------------------------------------------------ audit


def parse_since(text: str | None) -> datetime | None:
    """`2h`, `30m`, `7d` ago, or an ISO date/time (UTC if no zone)."""
    if not text:
        return None
    m = re.fullmatch(r"(\d+)\s*([smhd])", text.strip())
    if m:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
        return datetime.now(UTC) - timedelta(**{unit: int(m.group(1))})
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise SkyfedError(f"--since {text!r} is neither a duration nor a date", "use e.g. 2h, 7d or 2026-11-27T10:00") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@app.command("audit")
def audit(
    since: str = typer.Option(None, "--since", help="Only events after this: 2h, 7d or an ISO date."),
    user: str = typer.Option(None, "--user", help="Only this actor."),
    table: str = typer.Option(None, "--table", help="Only events that touched this table."),
    kind: str = typer.Option(None, "--kind", help="query, run, model or ingest."),
    limit: int = typer.Option(100, "--limit", min=1),
    as_json: bool = JsonOption,
) -> None:
    """Who ran which query or run, when, over which tables and columns, with which policy decisions."""
    from skyfed.catalog import audit as store

    rows = store.search(since=parse_since(since), actor=user, table=table, kind=kind, limit=limit)

    def render(data: list[dict[str, Any]]) -> None:
        t = Table("when", "who", "kind", "status", "rows", "tables", "decisions", "sql / run")
        for r in data:
            what = r["sql"] or (r["detail"] or {}).get("run_id", "")
            decisions = ", ".join(f"{d.get('policy')}:{d.get('decision')}" for d in r["decisions"])
            t.add_row(str(r["at"])[:19], r["actor"], r["kind"], r["status"], "" if r["rows"] is None else str(r["rows"]),
                      ", ".join(r["tables"]), decisions, (what or "")[:80])
        out.print(t)

    emit(rows, as_json, render)


# ------------------------------------------------------------------ catalog


@catalog_app.command("search")
def catalog_search(text: str, spec: str = SpecOption, as_json: bool = JsonOption) -> None:
    """Tables, columns and sources whose name, description, owner, tags or classification match TEXT."""
    from skyfed.governance.catalog import search

    parsed, _, _ = _load(spec, None)
    hits = search(parsed, text)

    def render(rows: list[dict[str, Any]]) -> None:
        t = Table("kind", "table", "column", "matched", "text")
        for r in rows:
            t.add_row(r["kind"], r["table"], r["column"] or "", r["field"], r["text"][:80])
        out.print(t if rows else f"nothing matches {text!r}")

    emit(hits, as_json, render)


@catalog_app.command("show")
def catalog_show(table: str, spec: str = SpecOption, governance: str = GovOption, as_json: bool = JsonOption) -> None:
    """Schema, version history, freshness, row counts and quality pass rate of a canonical table."""
    from skyfed.governance.catalog import show

    parsed, gov, _ = _load(spec, governance)
    info = show(parsed, table, gov)

    def render(d: dict[str, Any]) -> None:
        out.print(f"[bold]{d['table']}[/] (declared v{d['declared_version']}, {d['compatibility']}) owner {d['owner'] or '-'}",
                  highlight=False, soft_wrap=True)
        if d["description"]:
            out.print(d["description"], highlight=False, soft_wrap=True)
        t = Table("column", "type", "nullable", "classification", "description")
        for c in d["columns"]:
            t.add_row(c["name"], c["type"], "yes" if c["nullable"] else "no", c["classification"] or "", c["description"] or "")
        out.print(t)
        vers = ", ".join(f"v{v['version']} ({str(v['registered_at'])[:10]})" for v in d["versions"]) or "none registered"
        out.print(f"versions: {vers}", highlight=False, soft_wrap=True)
        for region, r in d["regions"].items():
            snap = r.get("snapshot")
            snap_txt = f"; snapshot {snap['snapshot_id']} rows {snap['rows']} at {snap['committed_at']}" if snap else ""
            out.print(f"[bold]{region}[/] ({r['store']}){snap_txt}", highlight=False, soft_wrap=True)
            for m, s in r["mappings"].items():
                rate = "-" if s["quality_pass_rate"] is None else f"{s['quality_pass_rate']:.2%}"
                out.print(f"  {m}: {s['runs']} run(s), last success {s['last_success'] or '-'}, loaded {s['rows_loaded']}, "
                          f"quarantined {s['rows_quarantined']}, pass rate {rate}", highlight=False, soft_wrap=True)

    emit(info, as_json, render)


@catalog_app.command("export")
def catalog_export(
    fmt: str = typer.Option("dataplex", "--format", help="dataplex (Dataplex Catalog / Data Catalog entries)."),
    out_file: str = typer.Option(None, "--out", help="Write to this file instead of stdout."),
    spec: str = SpecOption,
    governance: str = GovOption,
) -> None:
    """Export the catalog as Dataplex Catalog entries (JSON); see docs/governance.md for the mapping."""
    from skyfed.governance.catalog import export_dataplex

    if fmt != "dataplex":
        raise SkyfedError(f"unknown export format {fmt!r}", "use --format dataplex")
    parsed, gov, _ = _load(spec, governance)
    text = json.dumps({"entries": export_dataplex(parsed, gov)}, indent=2, default=str) + "\n"
    if out_file:
        Path(out_file).write_text(text, encoding="utf-8")
    else:
        out.file.write(text)


# ------------------------------------------------------------------ lineage


@app.command("lineage")
def lineage(
    target: str = typer.Argument(..., help="TABLE or TABLE.COLUMN (canonical, region.table or region.source.table)"),
    upstream: bool = typer.Option(True, "--upstream/--downstream", help="Where it comes from (default) or what it feeds."),
    spec: str = SpecOption,
    as_json: bool = JsonOption,
) -> None:
    """Print the lineage tree of a table or column, from the spec's mappings and recorded model builds."""
    from skyfed.governance.lineage import recorded_edges, spec_edges, walk

    parsed, _, _ = _load(spec, None)
    tree = walk(target, spec_edges(parsed) + recorded_edges(), upstream=upstream)

    def render(node: dict[str, Any]) -> None:
        def add(parent: Tree, n: dict[str, Any]) -> None:
            for child in n["children"]:
                add(parent.add(f"{child['name']}  [dim]{child['via']}[/]"), child)

        root = Tree(f"[bold]{node['name']}[/] ({'upstream' if upstream else 'downstream'})")
        add(root, node)
        out.print(root)

    emit(tree, as_json, render)
