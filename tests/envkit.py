"""Environment variables for the span of a fixture or a block, then back to what they were.

Module fixtures cannot use pytest's function-scoped `monkeypatch`, and its `delenv` of an
unset variable records nothing to restore; one helper instead of a save/set/restore block
in every fixture.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def env_vars(**values: str | None) -> Iterator[None]:
    """Set each variable (None: unset it) for the block; restore every one afterwards, set or unset."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
