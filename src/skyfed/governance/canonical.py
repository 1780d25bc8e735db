"""The canonical form of a contract version: what compatibility and the registry compare.

A version is the contract's schema (columns with Iceberg-style field ids, types,
nullability), its constraints (checks, severity, key) and its classifications,
serialized as sorted JSON and hashed. Descriptions, owners and tags are catalog
text, not schema: editing them does not make a new version.

Field ids make renames expressible: a column keeps its id across versions, so a
rename is "same id, new name" (as in Iceberg), never a drop plus an add.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from skyfed.errors import SkyfedError
from skyfed.spec.models import Contract


def canonical(contract: Contract, previous: dict[str, Any] | None = None, renames: dict[str, str] | None = None) -> dict[str, Any]:
    """The canonical body of `contract`, with field ids carried over from `previous`.

    `renames` maps a new column name to the name it had in `previous`; that column
    keeps the old field id. New columns get ids above every id used before.
    """
    renames = renames or {}
    prev_cols: dict[str, dict[str, Any]] = (previous or {}).get("columns", {})
    prev_ids = {name: col["id"] for name, col in prev_cols.items()}
    next_id = max([0, int((previous or {}).get("last_column_id", 0)), *prev_ids.values()]) + 1
    for new, old in renames.items():
        if new not in contract.columns:
            raise SkyfedError(
                f"the rename {old} -> {new} names a column {new!r} that the contract does not have",
                "list renames as new_name: old_name under the contract in the governance file",
            )
        if previous is not None and old not in prev_cols:
            raise SkyfedError(
                f"the rename {old} -> {new} names a column {old!r} that the previous version does not have",
                f"columns of the previous version: {', '.join(prev_cols)}",
            )
    columns: dict[str, Any] = {}
    for name, col in contract.columns.items():
        old = renames.get(name, name)
        if old in prev_ids and (old == name or name in renames):
            fid = prev_ids[old]
        else:
            fid, next_id = next_id, next_id + 1
        checks = col.checks.model_dump(exclude_defaults=True) if col.checks else {}
        if "allowed" in checks:
            checks["allowed"] = sorted(checks["allowed"], key=lambda v: (type(v).__name__, str(v)))
        columns[name] = {
            "id": fid,
            "type": col.type,
            "nullable": col.nullable,
            "classification": col.classification,
            "checks": checks,
            "severity": col.severity,
        }
    return {
        "columns": columns,
        "key": list(contract.key),
        "partition_by": contract.partition_by,
        "last_column_id": max([next_id - 1, *[c["id"] for c in columns.values()]]),
    }


def body_hash(body: dict[str, Any]) -> str:
    """sha256 of the canonical JSON, ignoring id bookkeeping (`last_column_id`)."""
    hashed = {k: v for k, v in body.items() if k != "last_column_id"}
    return hashlib.sha256(dumps(hashed).encode()).hexdigest()


def dumps(body: dict[str, Any]) -> str:
    """Canonical JSON: sorted keys, no whitespace."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
