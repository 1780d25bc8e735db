"""The one exception type the user interface knows how to show.

Every failure a user can cause or fix (bad spec, service down, bad input) is raised
as a SkyfedError with one clear sentence and, where possible, what to do next. The
CLI prints those without a traceback; anything else is a bug and shows one with
--debug.
"""

from __future__ import annotations


class SkyfedError(Exception):
    """A failure with a user-facing message and an optional hint."""

    def __init__(self, message: str, hint: str | None = None, *, details: object = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = details

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"
