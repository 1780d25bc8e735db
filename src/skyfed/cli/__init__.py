"""The `skyfed` command: one typer app, one module per command group."""

from __future__ import annotations

import os
import sys

import typer

from skyfed.cli.common import err
from skyfed.errors import SkyfedError

app = typer.Typer(
    name="skyfed",
    help="Federated ingestion and SQL across regional Google Cloud projects.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
) -> None:
    if debug:
        os.environ["SKYFED_DEBUG"] = "1"


def _register() -> None:
    """Import command modules; each adds its commands to `app`."""
    from skyfed.cli import demo, ingest, local, quarantine, spec  # noqa: F401
    from skyfed.cli import query  # noqa: F401
    from skyfed.cli import pipelines  # noqa: F401
    from skyfed.cli import governance  # noqa: F401
    from skyfed.cli import stream  # noqa: F401


def main() -> None:
    """Entry point: run the app and turn SkyfedError into one readable sentence."""
    _register()
    debug = "--debug" in sys.argv or os.environ.get("SKYFED_DEBUG") == "1"
    try:
        code = app(standalone_mode=False)
        # with standalone_mode=False click returns typer.Exit's code instead of exiting
        if isinstance(code, int) and code:
            raise SystemExit(code)
    except SkyfedError as exc:
        if debug:
            raise
        err.print(f"[bold red]error:[/] {exc.message}", highlight=False, soft_wrap=True)
        if exc.hint:
            err.print(f"[bold]hint:[/] {exc.hint}", highlight=False, soft_wrap=True)
        raise SystemExit(1) from None
    except typer.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except typer.Abort:
        err.print("aborted")
        raise SystemExit(130) from None
    except Exception as exc:  # click usage errors and genuine bugs
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            raise SystemExit(exc.exit_code) from None
        if debug:
            raise
        err.print(f"[bold red]internal error:[/] {type(exc).__name__}: {exc}", highlight=False, soft_wrap=True)
        err.print("[bold]hint:[/] rerun with --debug for the traceback, and report it.")
        raise SystemExit(2) from None
