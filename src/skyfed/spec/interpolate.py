"""`${VAR}` and `${VAR:-default}` references in spec values, resolved from the environment.

Secrets (see secrets.SECRET_KEYS) are left as references: they are resolved only
by the connector that needs them, so a loaded spec never holds a password.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from skyfed.spec.secrets import SECRET_KEYS

_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class UnsetVariable(Exception):
    def __init__(self, path: tuple[Any, ...], name: str):
        super().__init__(name)
        self.path = path
        self.name = name


def interpolate(data: Any, env: Mapping[str, str] | None = None) -> tuple[Any, list[UnsetVariable]]:
    """A copy of `data` with references resolved, plus the unset variables found."""
    env = os.environ if env is None else env
    problems: list[UnsetVariable] = []

    def text(value: str, path: tuple[Any, ...]) -> Any:
        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env and (env[name] != "" or default is None):
                return env[name]
            if default is not None:
                return default
            problems.append(UnsetVariable(path, name))
            return m.group(0)

        resolved = _REF.sub(sub, value)
        # A whole-value reference that resolved to "" means "not set": treat as null.
        if resolved == "" and _REF.fullmatch(value.strip()):
            return None
        return resolved

    def walk(node: Any, path: tuple[Any, ...]) -> Any:
        if isinstance(node, dict):
            return {k: (v if k in SECRET_KEYS else walk(v, path + (k,))) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, path + (i,)) for i, v in enumerate(node)]
        if isinstance(node, str) and "${" in node:
            return text(node, path)
        return node

    return walk(data, ()), problems
