"""Where generated state lives: `.skyfed/` under the working directory, or SKYFED_HOME.

Services, their logs and ports, seeded data, warehouses and caches all go below this
folder so that one `rm -rf .skyfed` resets a laptop and nothing generated is ever
committed.
"""

from __future__ import annotations

import os
from pathlib import Path


def state_dir() -> Path:
    """The state folder, created on first use."""
    path = Path(os.environ.get("SKYFED_HOME") or Path.cwd() / ".skyfed").resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def sub_dir(*parts: str) -> Path:
    """A folder below the state folder, created on first use."""
    path = state_dir().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
