"""Policies on the quarantine: what a role may see of the raw source records kept there.

A quarantine record holds the raw source record (JSON), PII included. Shown to a
caller, the raw fields that feed a classified contract column (found through the
mapping's expressions: skyfed.governance.lineage.mapping_columns) get the role's mask
for that classification, exactly as the query path masks the curated column (same
salted sha256, `[redacted]`, `****` + last 4, NULL). A reason that quotes a masked
column's value is cut down to its rule. Replay reads the unmasked records directly.

The role is the caller's (`--role`, else $SKYFED_ROLE); with a governance file and no
role the caller is `anonymous` (every classified column NULL unless the file defines
that role). Without a governance file nothing is masked.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from skyfed.contracts.harmonize import reason_rule
from skyfed.errors import SkyfedError
from skyfed.governance.config import (
    STRENGTH,
    MaskKind,
    RolePolicy,
    governance_path,
    load_governance,
)
from skyfed.governance.lineage import mapping_columns
from skyfed.governance.policy import PARTIAL_KEEP, PARTIAL_MIN, REDACTED
from skyfed.spec.models import PlatformSpec

ROLE_ENV = "SKYFED_ROLE"
ANONYMOUS = "anonymous"


def caller_role(role: str | None) -> str | None:
    """--role, else $SKYFED_ROLE, else None."""
    return role or os.environ.get(ROLE_ENV) or None


def field_masks(spec: PlatformSpec, mapping_name: str, role: str | None, spec_path: str | None) -> tuple[dict[str, MaskKind], str] | None:
    """(raw source field (lower case) -> mask, salt) for `mapping_name` as `role` sees it; None without a governance file."""
    path = governance_path(spec_path)
    if path is None:
        return None
    gov = load_governance(path)
    name = caller_role(role) or ANONYMOUS
    policy = gov.roles.get(name) or (RolePolicy() if name == ANONYMOUS else gov.role(name))
    mapping = next((m for m in spec.mappings if m.name == mapping_name), None)
    if mapping is None:
        return {}, gov.salt()
    contract = gov.classify(spec.contracts)[mapping.contract]
    masks: dict[str, MaskKind] = {}
    for col, sources in mapping_columns(mapping).items():
        cls = contract.columns[col].classification if col in contract.columns else None
        if not cls:
            continue
        kind = policy.mask_for(cls)
        for src in sources:
            have = masks.get(src.lower())
            if have is None or STRENGTH[kind] > STRENGTH[have]:
                masks[src.lower()] = kind
        masks.setdefault(col.lower(), kind)  # reasons name the contract column
    return masks, gov.salt()


def mask_value(value: Any, kind: MaskKind, salt: str) -> Any:
    """One raw value under a mask (the same results as the SQL masks of skyfed.governance.policy)."""
    if value is None or kind == "clear":
        return value
    if kind == "null":
        return None
    if kind == "redact":
        return REDACTED
    text = value if isinstance(value, str) else json.dumps(value)
    if kind == "hash":
        if not salt:
            raise SkyfedError(
                "hash masking needs a secret salt, and none is set",
                "set the environment variable named by `salt_env` in the governance file (default SKYFED_MASK_SALT)",
            )
        return hashlib.sha256((salt + text).encode()).hexdigest()
    return "****" + text[-PARTIAL_KEEP:] if len(text) >= PARTIAL_MIN else "****"


def mask_raw(raw: str | None, masks: dict[str, MaskKind], salt: str) -> str | None:
    """The raw JSON record with its masked fields masked (unparseable text is withheld if anything is masked)."""
    if raw is None or not any(k != "clear" for k in masks.values()):
        return raw
    try:
        obj = json.loads(raw)
    except ValueError:
        return REDACTED
    if not isinstance(obj, dict):
        return REDACTED
    out = {k: mask_value(v, masks.get(k.lower(), "clear"), salt) for k, v in obj.items()}
    return json.dumps(out, default=str)


def mask_reason(reason: str | None, masks: dict[str, MaskKind]) -> str | None:
    """A reason quoting the value of a masked column is cut down to its rule (`email: does not match ...`)."""
    if reason is None:
        return None
    head = reason.split(":", 1)[0].removeprefix("source column ").strip().lower()
    if masks.get(head, "clear") != "clear" or masks.get(head.rsplit(".", 1)[-1], "clear") != "clear":
        return reason_rule(reason) if reason_rule(reason) != reason else f"{reason.split(':', 1)[0]}: [value withheld]"
    return reason


def apply_policy(spec: PlatformSpec, records: pa.Table, role: str | None, spec_path: str | None) -> pa.Table:
    """`records` (quarantine rows) as `role` may see them: raw fields and quoted values masked per mapping."""
    if records.num_rows == 0 or "mapping" not in records.column_names:
        return records
    parts = []
    for name in pc.unique(records["mapping"]).to_pylist():
        part = records.filter(pc.equal(records["mapping"], name))
        found = field_masks(spec, name, role, spec_path)
        if found is None:
            return records
        masks, salt = found
        if not any(k != "clear" for k in masks.values()):
            parts.append(part)
            continue
        if "raw" in part.column_names:
            raw = pa.array([mask_raw(r, masks, salt) for r in part["raw"].to_pylist()], pa.string())
            part = part.set_column(part.schema.get_field_index("raw"), "raw", raw)
        if "reasons" in part.column_names:
            part = part.set_column(part.schema.get_field_index("reasons"), "reasons", _mask_lists(part["reasons"], masks))
        if "reason" in part.column_names:
            reasons = part["reasons"] if "reasons" in part.column_names else None
            joined = pc.binary_join(reasons, "; ") if reasons is not None else pa.array(
                [mask_reason(r, masks) for r in part["reason"].to_pylist()], pa.string())
            part = part.set_column(part.schema.get_field_index("reason"), "reason", joined)
        parts.append(part)
    return pa.concat_tables(parts)


def _mask_lists(lists: pa.ChunkedArray, masks: dict[str, MaskKind]) -> pa.Array:
    """Masked reasons, computed once per distinct reason (lists of reasons keep their shape)."""
    arr = lists.combine_chunks()
    flat = pc.list_flatten(arr)
    uniq = pc.unique(flat)
    masked = pa.array([mask_reason(r, masks) for r in uniq.to_pylist()], pa.string())
    new_flat = masked.take(pc.index_in(flat, value_set=uniq))
    offsets = pc.list_value_length(arr).fill_null(0)
    bounds = pa.array([0, *pc.cumulative_sum(offsets).to_pylist()], pa.int32())
    return pa.ListArray.from_arrays(bounds, new_flat, mask=pc.is_null(arr))
