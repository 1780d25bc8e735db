"""The --spec option and spec loading shared by commands."""

from __future__ import annotations

import os

import typer

from skyfed.spec import PlatformSpec, load_spec
from skyfed.spec.loader import resolve_spec_path

SpecOption = typer.Option(None, "--spec", help="Platform spec (default: $SKYFED_SPEC or ./skyfed.yaml).")


def load(spec: str | None) -> PlatformSpec:
    """Load the spec with the local federation's addresses in the environment.

    The chosen spec's path becomes this process's $SKYFED_SPEC, so every component that
    looks for files beside the spec (the governance file for drift rules, renames and
    policies; models/) finds the ones of `--spec`, not of a stale environment.
    """
    from skyfed.localenv import apply_service_env

    apply_service_env()
    loaded = load_spec(spec)
    os.environ["SKYFED_SPEC"] = str(resolve_spec_path(spec).resolve())
    return loaded
