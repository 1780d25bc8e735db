"""The --spec option and spec loading shared by commands."""

from __future__ import annotations

import typer

from skyfed.spec import PlatformSpec, load_spec

SpecOption = typer.Option(None, "--spec", help="Platform spec (default: $SKYFED_SPEC or ./skyfed.yaml).")


def load(spec: str | None) -> PlatformSpec:
    """Load the spec with the local federation's addresses in the environment."""
    from skyfed.localenv import apply_service_env

    apply_service_env()
    return load_spec(spec)
