"""Evolve a curated Iceberg table in place from one contract version to the next.

Only metadata changes, never a data rewrite: add a column (optional in storage,
since existing rows have no value), rename by field id, promote a type
(int->long, decimal precision), relax required to optional. A dropped column
stays in storage (old snapshots and pinned readers still need it) and is simply
no longer selected. Anything else (a type Iceberg cannot promote) is refused.

Call site: IcebergCuratedStore._evolve gets the table's old body (stored in a table
property) and the new one from `table_bodies` (the registry's, or computed with the
governance file's renames), checks `refusals`, and calls
`evolve_iceberg(transaction, old_body, new_body)`: matching by field id is what makes
a rename keep its data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from skyfed.errors import SkyfedError
from skyfed.governance.canonical import body_hash, canonical
from skyfed.governance.compat import diff, widening
from skyfed.spec.models import Contract


@dataclass(frozen=True)
class Op:
    action: str  # add | rename | promote | make_optional | keep_dropped
    column: str  # the name in the old version (new name for add)
    detail: str = ""


def plan(old: dict[str, Any], new: dict[str, Any]) -> list[Op]:
    """The in-place operations that take a table from canonical body `old` to `new`."""
    ops: list[Op] = []
    o_ids = {c["id"]: (n, c) for n, c in old["columns"].items()}
    n_ids = {c["id"]: (n, c) for n, c in new["columns"].items()}
    for fid, (name, col) in n_ids.items():
        if fid not in o_ids:
            ops.append(Op("add", name, col["type"]))
            continue
        oname, ocol = o_ids[fid]
        if oname != name:
            ops.append(Op("rename", oname, name))
        if ocol["type"] != col["type"]:
            if widening(ocol["type"], col["type"]) is not True:
                raise SkyfedError(
                    f"column {name}: {ocol['type']} -> {col['type']} cannot be changed in place (Iceberg promotes only "
                    "int32->int64 and decimal precision widening)",
                    "add a new column with the new type instead, or rebuild the table",
                )
            ops.append(Op("promote", oname, col["type"]))
        if not ocol["nullable"] and col["nullable"]:
            ops.append(Op("make_optional", oname))
    for fid, (name, col) in o_ids.items():
        if fid not in n_ids:
            ops.append(Op("keep_dropped", name, "kept in storage, no longer part of the contract"))
            if not col["nullable"]:  # new rows have no value for it
                ops.append(Op("make_optional", name))
    return ops


STORE_REFUSED = ("narrow type", "incompatible type change", "key changed")


def refusals(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The changes from `old` to `new` that no table can take in place (whatever the compatibility mode)."""
    return [f"column {c.column}: {c.rule} ({c.detail})" if c.column else f"{c.rule} ({c.detail})"
            for c in diff(old, new) if c.rule in STORE_REFUSED]


def _shape(body: dict[str, Any]) -> tuple[Any, ...]:
    cols = tuple((n, c["type"], c["nullable"]) for n, c in body["columns"].items())
    return cols, tuple(body.get("key", []))


def table_bodies(
    name: str,
    contract: Contract,
    stored_body: dict[str, Any] | None,
    stored_contract: Contract | None,
    renames: dict[str, str] | None = None,
) -> tuple[dict[str, Any], dict[str, Any], int | None]:
    """(old body, new body, registry version of the new one or None) for evolving a stored table.

    The old body is the one stored with the table (else derived from the stored
    contract, with the registry's field ids when a registered version has its shape).
    The new body is the registry's version when one matches (its ids carry the renames
    `skyfed contracts check` accepted), else the contract's canonical body with ids
    carried from the old one and `renames` (new name -> old name) applied.
    """
    from skyfed.catalog import registry

    history = registry.history(name)
    if stored_body is None:
        if stored_contract is None:
            raise SkyfedError(f"table {name} records no contract, so it cannot be evolved by field id")
        stored_body = canonical(stored_contract)
        same = [r["body"] for r in history if _shape(r["body"]) == _shape(stored_body)]
        stored_body = same[-1] if same else stored_body
    valid = {n: o for n, o in (renames or {}).items()
             if o in stored_body["columns"] and n in contract.columns and n not in stored_body["columns"]}
    local = canonical(contract, stored_body, valid)
    digest = body_hash(local)
    row = next((r for r in history if r["hash"] == digest), None)
    if row is None and history and _shape(history[-1]["body"]) == _shape(local):
        old_hash = body_hash(stored_body)
        if any(r["hash"] == old_hash for r in history):  # same id lineage: the registry's ids win
            row = history[-1]
    if row is not None:
        return stored_body, row["body"], int(row["version"])
    return stored_body, local, None


def iceberg_type(type_name: str) -> Any:
    """The Iceberg type of a canonical column type."""
    from pyiceberg import types as t

    simple = {
        "string": t.StringType(),
        "int32": t.IntegerType(),
        "int64": t.LongType(),
        "double": t.DoubleType(),
        "bool": t.BooleanType(),
        "date": t.DateType(),
        "timestamp": t.TimestampType(),
        "timestamptz": t.TimestamptzType(),
    }
    if type_name in simple:
        return simple[type_name]
    if type_name.startswith("decimal("):
        p, s = type_name[len("decimal(") : -1].split(",")
        return t.DecimalType(int(p), int(s))
    raise SkyfedError(f"the column type {type_name!r} has no Iceberg equivalent")


def evolve_iceberg(table: Any, old: dict[str, Any], new: dict[str, Any]) -> list[Op]:
    """Apply `plan(old, new)` to a pyiceberg Table (or Transaction) in one schema update; returns the operations."""
    ops = plan(old, new)
    todo = [op for op in ops if op.action != "keep_dropped"]
    if not todo:
        return ops
    with table.update_schema() as upd:
        for op in todo:
            if op.action == "rename":
                upd.rename_column(op.column, op.detail)
        for op in todo:
            if op.action == "add":
                upd.add_column(op.column, iceberg_type(op.detail), required=False)
            elif op.action == "promote":
                upd.update_column(op.column, field_type=iceberg_type(op.detail))
            elif op.action == "make_optional":
                upd.make_column_optional(op.column)
    return ops
