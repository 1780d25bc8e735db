"""Shared CLI conventions: output to stdout (tables or --json), progress and errors to stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

out = Console()  # results
err = Console(stderr=True)  # progress, warnings, errors


def emit(data: Any, as_json: bool, render: Callable[[Any], None]) -> None:
    """Print `data` as JSON (machine use) or through `render` (people)."""
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, default=str, sort_keys=False) + "\n")
        sys.stdout.flush()
    else:
        render(data)


@contextmanager
def progress(enabled: bool = True) -> Iterator[Progress]:
    """A rich progress display on stderr; silent when not a terminal or disabled."""
    prog = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=not enabled,
        transient=False,
    )
    with prog:
        yield prog
