"""`skyfed demo`: seed the airline world into the local federation and show what is where."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from skyfed.cli import app
from skyfed.cli.common import emit, err, out, progress

demo_app = typer.Typer(help="The airline demo world: seed it, show what is where.", no_args_is_help=True)
app.add_typer(demo_app, name="demo")

DEFAULT_FLIGHTS = 20_000
DEFAULT_SEED = 42


def _env_from_federation() -> None:
    """Point clients at the services running under this SKYFED_HOME (if any)."""
    from skyfed import localenv

    localenv.apply_service_env()


def _spec(path: Path | None) -> Any:
    if path is None:
        return None
    from skyfed.spec import load_spec

    return load_spec(path)


def _do_seed(flights: int, seed: int, spec_path: Path | None, show_progress: bool) -> dict[str, Any]:
    from skyfed.demo.seed import seed as run_seed
    from skyfed.demo.world import WorldConfig
    from skyfed.home import state_dir

    _env_from_federation()
    spec = _spec(spec_path)
    with progress(show_progress) as prog:
        gen_task = prog.add_task("generating the airline world", total=None)

        def make(desc: str, total: int):
            prog.update(gen_task, total=1, completed=1)
            task = prog.add_task(desc, total=total)
            return lambda n: prog.advance(task, n)

        result = run_seed(WorldConfig(flights=flights, seed=seed), state_dir(), spec=spec, progress=make)
    return result


def _render_seed(result: dict[str, Any]) -> None:
    man = result["manifest"]
    t = Table(title=f"Seeded the airline world: seed {man['seed']}, {man['flights']:,} flights", title_justify="left")
    for col in ("region", "table", "rows", "messy", "quar.", "dedup", "truth"):
        t.add_column(col, justify="left" if col in ("region", "table") else "right")
    for region, r in man["regions"].items():
        for name, st in r["tables"].items():
            messy = sum(v["count"] for v in st["messy"].values())
            t.add_row(f"{region} ({r['kind']})", name, f"{st['source_rows']:,}", f"{messy:,}",
                      f"{st['quarantined']:,}", f"{st['duplicates_removed']:,}", f"{st['ground_truth_rows']:,}")
    out.print(t)
    tm = result["timings"]
    out.print(f"ground truth, reference and manifest: {result['seed_dir']}")
    out.print(f"generate {tm['generate']:.1f}s, postgres {tm['latam_postgres']:.1f}s, bigquery {tm['eu_bigquery']:.1f}s, "
              f"gcs {tm['na_gcs']:.1f}s; total {tm['total']:.1f}s")


@demo_app.command("seed")
def seed_cmd(
    flights: int = typer.Option(DEFAULT_FLIGHTS, "--flights", min=30, help="Number of distinct flights."),
    seed: int = typer.Option(DEFAULT_SEED, "--seed", help="Random seed: the same seed gives the same world."),
    spec: Path | None = typer.Option(None, "--spec", help="Take source settings from this spec instead of the env."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Generate the airline world and write it into PostgreSQL (latam), BigQuery (eu) and GCS (na)."""
    result = _do_seed(flights, seed, spec, show_progress=not as_json and sys.stderr.isatty())
    emit(result, as_json, _render_seed)


ABBREV = {"null": "null", "duplicate": "dup", "malformed": "malf", "out_of_range": "range",
          "invalid_value": "inval", "late_correction": "late"}


def _render_show(inv: dict[str, Any]) -> None:
    for region, r in inv["regions"].items():
        t = Table(title=f"[bold]{region}[/]: {r['kind']} {r['source']} — {r['where']}", title_justify="left")
        for col in ("table", "contract", "rows", "expected", "messy injected", "quar.", "dedup", "truth"):
            t.add_column(col, justify="left" if col in ("table", "contract", "messy injected") else "right")
        for tb in r["tables"]:
            rows = "missing" if tb["rows"] is None else f"{tb['rows']:,}"
            style = "green" if tb["ok"] else "red"
            name = tb["object"] if "objects" not in tb else f"{tb['object']}\n{tb['objects']} objects, {tb['bytes'] / 1e6:.1f} MB"
            messy = " ".join(f"{ABBREV.get(k, k)} {v}" for k, v in tb["messy"].items() if v)
            t.add_row(name, tb["contract"], f"[{style}]{rows}[/]", f"{tb['expected_rows']:,}", messy,
                      f"{tb['quarantine_expected']:,}", f"{tb['duplicates_removed']:,}", f"{tb['ground_truth_rows']:,}")
        out.print(t)
    m = Table(title="Messiness injected (all source tables)", title_justify="left")
    for col in ("kind", "records", "of base records", "rate"):
        m.add_column(col, justify="left" if col == "kind" else "right")
    for kind, v in inv["messiness"].items():
        m.add_row(kind, f"{v['count']:,}", f"{v['base_records']:,}", f"{v['rate']:.2%}")
    out.print(m)
    gt = ", ".join(f"{k} {v:,}" for k, v in inv["ground_truth_rows"].items())
    out.print(f"ground truth ({inv['seed_dir']}): {gt}")
    out.print("[green]every source holds exactly the rows the manifest lists[/]" if inv["ok"]
              else "[red]some sources differ from the manifest: reseed with `skyfed demo seed`[/]")


@demo_app.command("show")
def show_cmd(
    spec: Path | None = typer.Option(None, "--spec", help="Take source settings from this spec instead of the env."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """What is where: each region's source, its tables or objects and row counts read back through its client."""
    from skyfed.demo.inventory import inventory
    from skyfed.home import state_dir

    _env_from_federation()
    inv = inventory(state_dir(), _spec(spec))
    emit(inv, as_json, _render_show)
    if not inv["ok"]:
        raise typer.Exit(1)


EXAMPLE_SPEC = Path("examples/airline/skyfed.yaml")


def _render_ingest(report: dict[str, Any]) -> None:
    t = Table(title="Ingested into the regional curated stores (full refresh)", title_justify="left")
    for col in ("mapping", "read", "loaded", "quarantined", "superseded", "s"):
        t.add_column(col, justify="left" if col == "mapping" else "right")
    for r in report["results"]:
        t.add_row(
            r["mapping"],
            f"{r['rows_read']:,}",
            f"{r['rows_loaded']:,}",
            f"{r['rows_quarantined']:,}",
            f"{r['rows_superseded']:,}",
            f"{r['seconds']:.1f}",
        )
    out.print(t)
    v = Table(title="Curated tables vs the generator's ground truth", title_justify="left")
    for col in ("region", "store", "contract", "curated", "truth", "identical"):
        v.add_column(col, justify="right" if col in ("curated", "truth") else "left")
    for r in report["verification"]:
        mark = "[green]yes[/]" if r["identical"] else "[bold red]NO[/]"
        v.add_row(r["region"], r["store"], r["contract"], f"{r['curated_rows']:,}", f"{r['truth_rows']:,}", mark)
    out.print(v)
    for f in report["failures"]:
        err.print(f"[bold red]failed:[/] {f['mapping']}: {f['error']}", highlight=False, soft_wrap=True)


@demo_app.command("run")
def run_cmd(
    flights: int = typer.Option(DEFAULT_FLIGHTS, "--flights", min=30, help="Number of distinct flights."),
    seed: int = typer.Option(DEFAULT_SEED, "--seed", help="Random seed."),
    spec: Path = typer.Option(None, "--spec", help="Platform spec (default: $SKYFED_SPEC or examples/airline/skyfed.yaml)."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Start the local federation, seed the airline world, ingest it, build the airline models (`make demo`)."""
    import os

    from skyfed import localenv
    from skyfed.demo.inventory import inventory
    from skyfed.demo.verify import verify_against_truth
    from skyfed.home import state_dir
    from skyfed.ingest.batch import ingest
    from skyfed.pipelines.report import print_summary, write_report
    from skyfed.pipelines.runner import BAD, default_models_dir
    from skyfed.pipelines.runner import run as run_models
    from skyfed.spec import load_spec

    spec_path = (spec or Path(os.environ.get("SKYFED_SPEC") or EXAMPLE_SPEC)).resolve()
    os.environ["SKYFED_SPEC"] = str(spec_path)  # files beside the spec (governance, models) are found from it
    if not as_json:
        err.print("[bold]starting the local federation[/] …")
    localenv.up()
    result = _do_seed(flights, seed, None, show_progress=not as_json and sys.stderr.isatty())
    inv = inventory(state_dir())
    if not as_json:
        _render_seed(result)
        _render_show(inv)
        err.print("[bold]ingesting every source into its region's curated store[/] …")
    platform = load_spec(spec_path)
    with progress(enabled=not as_json and sys.stderr.isatty()) as prog:
        def progress_for(mapping):  # type: ignore[no-untyped-def]
            task = prog.add_task(mapping.name, total=None)
            return lambda done, total: prog.update(task, completed=done, total=max(total or 0, done) or None)

        run_id, results, failures = ingest(platform, full_refresh=True, progress_for=progress_for)
    report = {
        "run_id": run_id,
        "results": [r.to_dict() for r in results],
        "failures": [{"mapping": m.name, "error": e.message} for m, e in failures],
        "verification": verify_against_truth(platform, state_dir()),
    }
    if not as_json:
        _render_ingest(report)
    report["stream"] = _live_events(platform, quiet=as_json)
    if not as_json:
        err.print("[bold]building the airline models (route profitability, fuel efficiency, satisfaction)[/] …")
    models = run_models(platform, default_models_dir(spec_path), full_refresh=True)
    report_path = write_report()
    if as_json:
        emit({"seed": result, "show": inv, "ingest": report, "models": models, "report": str(report_path)}, True,
             lambda _: None)
    else:
        print_summary(5, out)
        for row in models["results"]:
            if row["status"] in BAD:
                err.print(f"[bold red]model {row['model']}: {row['status']}[/] {row.get('detail') or ''}", highlight=False)
        out.print(f"report: {report_path}")
        out.print(
            "next: skyfed quarantine list --spec examples/airline/skyfed.yaml · "
            "skyfed ingest --spec examples/airline/skyfed.yaml (incremental: loads nothing new) · "
            "skyfed shell --spec examples/airline/skyfed.yaml · skyfed down"
        )
    if not inv["ok"] or failures or not all(r["identical"] for r in report["verification"]) or not models["ok"]:
        raise typer.Exit(1)


def _live_events(platform: Any, *, quiet: bool, seconds: float = 3.0, rate: float = 50.0) -> dict[str, Any] | None:
    """Publish a short live flight-status feed and stream it into na's store (when the Pub/Sub emulator runs).

    The streamer runs once before publishing so that its subscription exists: Pub/Sub
    delivers only to subscriptions that exist when a message is published.
    """
    import os

    from skyfed.demo.events import publish_feed
    from skyfed.stream import runner as stream_runner

    sources = [(f"{r}.{n}", src) for r, reg in platform.regions.items() for n, src in reg.sources.items()
               if src.kind == "pubsub" and any(m.source == f"{r}.{n}" for m in platform.mappings)]  # fmt: skip
    if not sources or not os.environ.get("PUBSUB_EMULATOR_HOST"):
        if not quiet:
            err.print("[dim]no Pub/Sub emulator here: the live event feed is skipped (see `skyfed status`)[/]")
        return None
    ref, src = sources[0]
    if not quiet:
        err.print(f"[bold]publishing a live flight-status feed to {src.topic} and streaming it ({ref})[/] …")
    stream_runner.run(platform, [ref], until_idle=True, idle_seconds=1.0)  # creates the subscription
    published = publish_feed(src.project, src.topic, rate=rate, seconds=seconds, poison_every=40, resend_every=25)
    stats = stream_runner.run(platform, [ref], until_idle=True, idle_seconds=2.0)[ref].to_dict()
    result = {"source": ref, "published": published, "streamed": stats}
    if not quiet:
        out.print(
            f"live events: published {published['events']} events, {published['poison']} malformed and "
            f"{published['resent']} re-sent; streamed {stats['upserted']} into {ref.split('.')[0]}'s store, "
            f"{stats['quarantined']} to quarantine (dead letters), duplicates dropped by event id",
            highlight=False,
        )
    return result
