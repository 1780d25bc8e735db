"""`skyfed run | backfill | schedule | report | shell`: models over the federation."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from skyfed.cli import app
from skyfed.cli.common import emit, err, out
from skyfed.cli.specopt import SpecOption, load

ModelsOption = typer.Option(None, "--models", help="Models folder (default: models/ beside the spec).")


def _project(spec_path: str | None, models: str | None) -> Any:
    from skyfed.pipelines.project import load_project
    from skyfed.pipelines.runner import default_models_dir

    return load_project(Path(models) if models else default_models_dir(spec_path))


def _spec_path(spec: str | None) -> str:
    """The spec's path as load_spec finds it (the governance file is looked up beside it)."""
    import os

    return spec or os.environ.get("SKYFED_SPEC") or "skyfed.yaml"


def _render_run(data: dict[str, Any]) -> None:
    view = Table(title=f"run {data['run_id']} ({data['seconds']:.1f} s)")
    for col in ("model", "status", "action", "rows", "s", "note"):
        view.add_column(col, justify="right" if col in ("rows", "s") else "left")
    for r in data["results"]:
        d = r.get("detail") or {}
        note = d.get("error") or ""
        if "stale_age_seconds" in d:
            note = f"stale fallback, {d['stale_age_seconds']:.0f} s old"
        missing = sorted({m["region"] for p in (d.get("parts") or {}).values() for m in p.get("missing", [])})
        if missing and not note:
            note = f"missing {', '.join(missing)}"
        view.add_row(r["model"], r["status"], r.get("action") or "", f"{r.get('rows') or 0:,}",
                     f"{r.get('seconds') or 0:.2f}", note)  # fmt: skip
    out.print(view)


def _finish(data: dict[str, Any], as_json: bool) -> None:
    emit(data, as_json, _render_run)
    if not data["ok"]:
        raise typer.Exit(1)


@app.command()
def run(
    models: list[str] = typer.Argument(None, help="Models to build (default: all)."),
    select: list[str] = typer.Option(None, "--select", "-s", help="tag:X, name; X+ adds downstream, +X upstream."),
    full_refresh: bool = typer.Option(False, "--full-refresh", help="Rebuild from scratch, ignoring what is up to date."),
    parallel: int = typer.Option(4, "--parallel", help="Models built at once (independent ones)."),
    spec: str = SpecOption,
    models_dir: str = ModelsOption,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Build models in dependency order; only what changed (SQL or input versions) is rebuilt."""
    from skyfed.pipelines.runner import run as run_models

    s = load(spec)
    project = _project(spec, models_dir)
    chosen = project.select(models or None, select or None)
    err.print(f"[dim]building {len(chosen)} model(s): {', '.join(chosen)}[/]", highlight=False)
    _finish(run_models(s, project, models or None, select or None, full_refresh=full_refresh, parallel=parallel,
                       spec_path=_spec_path(spec)), as_json)  # fmt: skip


@app.command()
def backfill(
    model: str = typer.Argument(..., help="An incremental model by time range."),
    start: str = typer.Option(..., "--from", help="First day (or timestamp), aligned down to the model's period."),
    end: str = typer.Option(..., "--to", help="End (exclusive), aligned up to the model's period."),
    spec: str = SpecOption,
    models_dir: str = ModelsOption,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Recompute one model over [--from, --to) and merge it into its materialization."""
    from skyfed.pipelines.runner import backfill as do_backfill

    _finish(do_backfill(load(spec), _project(spec, models_dir), model, start, end, spec_path=_spec_path(spec)), as_json)


@app.command()
def schedule(
    spec: str = SpecOption,
    models_dir: str = ModelsOption,
    backoff: float = typer.Option(30.0, "--backoff", help="Seconds before the first retry (doubles each attempt)."),
    once: bool = typer.Option(False, "--once", help="Run every scheduled model once now, then keep the schedule."),
) -> None:
    """Run models at their cron schedules until SIGTERM/Ctrl-C (finishes the build in progress)."""
    import functools
    import json
    import sys

    from skyfed.pipelines.runner import federation
    from skyfed.pipelines.runner import run as run_models
    from skyfed.pipelines.scheduler import Scheduler

    s = load(spec)
    project = _project(spec, models_dir)
    fed = federation(s)

    def on_event(event: dict[str, Any]) -> None:
        sys.stderr.write(json.dumps(event, default=str) + "\n")
        sys.stderr.flush()

    sched = Scheduler(project, functools.partial(run_models, s, project, fed=fed, spec_path=_spec_path(spec)), backoff=backoff, on_event=on_event)
    previous = {sig: signal.signal(sig, lambda *_: sched.stop()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if once:
            sched.run_models(sched.scheduled, trigger="schedule", attempt=1)
        sched.run_forever()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    err.print("scheduler stopped")


@app.command()
def report(
    path: str = typer.Option(None, "--out", "-o", help="HTML file (default: <state>/reports/airline.html)."),
    summary_only: bool = typer.Option(False, "--summary", help="Only print the summary tables."),
    top: int = typer.Option(5, "--top", help="Routes in the top/bottom lists."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Write the HTML report of the three airline metrics and print the summary."""
    from skyfed.pipelines.report import print_summary, summary, write_report

    if as_json:
        data = summary(top)
        if not summary_only:
            data["report_path"] = str(write_report(path))
        emit(data, True, lambda _: None)
        return
    print_summary(top, out)
    if not summary_only:
        err.print(f"report: {write_report(path)}")


@app.command()
def shell(
    spec: str = SpecOption,
    models_dir: str = ModelsOption,
    execute: list[str] = typer.Option(None, "--execute", "-e", help="Run these lines and exit (no prompt)."),
    role: str = typer.Option(None, "--role", help="Governance role (default $SKYFED_ROLE; anonymous with a governance file)."),
) -> None:
    """Interactive SQL over the federation and the models, with history and completion."""
    from skyfed.governance.config import governance_path
    from skyfed.home import sub_dir
    from skyfed.pipelines.serve import attach
    from skyfed.pipelines.shell import ShellCore
    from skyfed.query import connect

    platform = load(spec)
    fed = connect(platform, cache=False, role=role, governance=governance_path(_spec_path(spec), None))
    attach(fed, spec_path=_spec_path(spec))  # fresh materialized views answer, as in `skyfed query`
    core = ShellCore(fed, _project(spec, models_dir))
    if execute:
        failed = False
        for line in execute:
            reply = core.handle(line)
            out.print(reply.text, highlight=False, markup=False, soft_wrap=True)
            failed |= reply.error
        if failed:
            raise typer.Exit(1)
        return
    from skyfed.pipelines.shell import repl

    err.print("skyfed shell: SQL over the federation and models; .help for commands, Ctrl-D to leave")
    repl(core, str(sub_dir("pipelines") / "shell_history"),
         write=lambda text: out.print(text, highlight=False, markup=False, soft_wrap=True))  # fmt: skip
