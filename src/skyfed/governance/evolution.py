"""Evolve a curated Iceberg table in place from one contract version to the next.

Only metadata changes, never a data rewrite: add a column (optional in storage,
since existing rows have no value), rename by field id, promote a type
(int->long, decimal precision), relax required to optional. A dropped column
stays in storage (old snapshots and pinned readers still need it) and is simply
no longer selected. Anything else (a type Iceberg cannot promote) is refused.

Call site (owned by ingest): IcebergCuratedStore._evolve can call
`evolve_iceberg(table, old_body, new_body)` with the registry's bodies instead of
comparing names, which is what makes renames keep their data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from skyfed.errors import SkyfedError
from skyfed.governance.compat import widening


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
    for fid, (name, _) in o_ids.items():
        if fid not in n_ids:
            ops.append(Op("keep_dropped", name, "kept in storage, no longer part of the contract"))
    return ops


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
    """Apply `plan(old, new)` to a pyiceberg Table in one schema commit; returns the operations."""
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
