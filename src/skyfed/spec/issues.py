"""Spec problems as data: where (file, line, key path), what, and a suggestion."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from skyfed.errors import SkyfedError


def dotted(path: Iterable[Any]) -> str:
    """`regions.latam.sources[0].host` style path."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def nearest(word: str, candidates: Iterable[str]) -> str | None:
    """The closest valid name to a misspelt one, if any is close enough."""
    matches = difflib.get_close_matches(str(word), sorted(set(candidates)), n=1, cutoff=0.6)
    return matches[0] if matches else None


@dataclass(frozen=True)
class SpecIssue:
    file: str
    line: int | None
    column: int | None
    path: str
    message: str
    suggestion: str | None = None
    severity: str = "error"  # error | warning

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}" if self.line else self.file
        text = f"{where}: {self.path}: {self.message}"
        if self.suggestion:
            text += f" (did you mean '{self.suggestion}'?)"
        return text

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SpecError(SkyfedError):
    """A spec that cannot be used; carries every problem found, not just the first."""

    def __init__(self, file: str, issues: list[SpecIssue]):
        errors = [i for i in issues if i.severity == "error"]
        first = str(errors[0]) if errors else file
        more = f" and {len(errors) - 1} more problem(s)" if len(errors) > 1 else ""
        super().__init__(
            f"invalid platform spec: {first}{more}",
            hint=f"run `skyfed validate --spec {file}` to list every problem",
            details=issues,
        )
        self.file = file
        self.issues = issues
