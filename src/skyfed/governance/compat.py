"""Schema compatibility between contract versions (Avro/Schema-Registry modes, Iceberg rules).

BACKWARD: a reader of the new version can read data written with the old one.
FORWARD: a reader of the old version can read data written with the new one.
FULL: both. *_TRANSITIVE: against every earlier version, not just the latest.
NONE: anything goes (the table may then need a rewrite: see `evolution`).

Per change, the direction(s) it breaks:

| change                                   | breaks   |
| ---------------------------------------- | -------- |
| add optional column                      | -        |
| add required column                      | BACKWARD (old rows have no value) |
| drop optional column                     | -        |
| drop required column                     | FORWARD (old readers need a value) |
| widen type (int32->int64, decimal p->p') | FORWARD  |
| narrow type                              | BACKWARD |
| other type change                        | BOTH (Iceberg cannot promote it) |
| rename (same field id)                   | -        |
| required -> optional                     | FORWARD  |
| optional -> required                     | BACKWARD |
| constraint tightened                     | BACKWARD (old rows may now fail) |
| constraint loosened                      | FORWARD  |
| key changed                              | BOTH     |
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from skyfed.errors import SkyfedError
from skyfed.spec.models import COMPATIBILITY_MODES

BACKWARD, FORWARD = "BACKWARD", "FORWARD"
_DEC = re.compile(r"^decimal\((\d+),(\d+)\)$")


@dataclass(frozen=True)
class Change:
    """One difference between two versions, and the directions it breaks."""

    column: str | None
    rule: str
    detail: str
    breaks: tuple[str, ...]


@dataclass(frozen=True)
class Violation:
    """A change refused by the contract's mode: which column, which rule, against which version."""

    contract: str
    column: str | None
    rule: str
    detail: str
    mode: str
    against_version: int

    def message(self) -> str:
        where = f"column {self.column}" if self.column else "contract"
        return (
            f"{self.contract}: {where}: {self.rule} ({self.detail}) is not {self.mode}-compatible "
            f"with version {self.against_version}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "message": self.message()}


def check_mode(mode: str) -> str:
    mode = mode.upper()
    if mode not in COMPATIBILITY_MODES:
        raise SkyfedError(f"unknown compatibility mode {mode!r}", f"use one of {', '.join(COMPATIBILITY_MODES)}")
    return mode


def widening(old: str, new: str) -> bool | None:
    """True if `new` is an Iceberg promotion of `old`, False if the reverse, None if neither."""
    if old == new:
        return None
    if (old, new) == ("int32", "int64"):
        return True
    if (old, new) == ("int64", "int32"):
        return False
    mo, mn = _DEC.match(old), _DEC.match(new)
    if mo and mn and mo.group(2) == mn.group(2):
        return int(mn.group(1)) > int(mo.group(1))
    return None


def _by_id(body: dict[str, Any]) -> dict[int, tuple[str, dict[str, Any]]]:
    return {c["id"]: (name, c) for name, c in body["columns"].items()}


def _num(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _num_changes(name: str, old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    out: list[Change] = []
    old = {k: _num(v) for k, v in old.items() if k in ("min", "max")}
    new = {k: _num(v) for k, v in new.items() if k in ("min", "max")}
    for bound, tighter in (("min", lambda o, n: n > o), ("max", lambda o, n: n < o)):
        o, n = old.get(bound), new.get(bound)
        if o == n:
            continue
        if o is None:
            out.append(Change(name, f"{bound} added", f"{bound} {n}", (BACKWARD,)))
        elif n is None:
            out.append(Change(name, f"{bound} removed", f"was {o}", (FORWARD,)))
        elif tighter(o, n):
            out.append(Change(name, f"{bound} tightened", f"{o} -> {n}", (BACKWARD,)))
        else:
            out.append(Change(name, f"{bound} loosened", f"{o} -> {n}", (FORWARD,)))
    return out


def _check_changes(name: str, old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    out = _num_changes(name, old, new)
    oa, na = old.get("allowed"), new.get("allowed")
    if oa != na:
        if oa is None:
            out.append(Change(name, "allowed values added", f"only {na}", (BACKWARD,)))
        elif na is None:
            out.append(Change(name, "allowed values removed", f"was {oa}", (FORWARD,)))
        else:
            gone, added = sorted(set(map(str, oa)) - set(map(str, na))), sorted(set(map(str, na)) - set(map(str, oa)))
            if gone:
                out.append(Change(name, "allowed values narrowed", f"no longer allowed: {', '.join(gone)}", (BACKWARD,)))
            if added:
                out.append(Change(name, "allowed values widened", f"newly allowed: {', '.join(added)}", (FORWARD,)))
    for rule, label in (("pattern", "pattern"), ("references", "reference")):
        o, n = old.get(rule), new.get(rule)
        if o == n:
            continue
        if o is None:
            out.append(Change(name, f"{label} added", str(n), (BACKWARD,)))
        elif n is None:
            out.append(Change(name, f"{label} removed", f"was {o}", (FORWARD,)))
        else:
            out.append(Change(name, f"{label} changed", f"{o} -> {n}", (BACKWARD, FORWARD)))
    if bool(old.get("unique")) != bool(new.get("unique")):
        tightened = bool(new.get("unique"))
        out.append(
            Change(name, "unique added" if tightened else "unique removed", "", (BACKWARD,) if tightened else (FORWARD,))
        )
    return out


def diff(old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    """Every schema or constraint change from canonical body `old` to `new`, matched by field id."""
    changes: list[Change] = []
    o_ids, n_ids = _by_id(old), _by_id(new)
    for fid, (name, col) in n_ids.items():
        if fid not in o_ids:
            if col["nullable"]:
                changes.append(Change(name, "add optional column", col["type"], ()))
            else:
                changes.append(Change(name, "add required column", col["type"], (BACKWARD,)))
            continue
        oname, ocol = o_ids[fid]
        if oname != name:
            changes.append(Change(name, "rename", f"{oname} -> {name} (field id {fid})", ()))
        if ocol["type"] != col["type"]:
            w = widening(ocol["type"], col["type"])
            if w is True:
                changes.append(Change(name, "widen type", f"{ocol['type']} -> {col['type']}", (FORWARD,)))
            elif w is False:
                changes.append(Change(name, "narrow type", f"{ocol['type']} -> {col['type']}", (BACKWARD,)))
            else:
                changes.append(
                    Change(name, "incompatible type change", f"{ocol['type']} -> {col['type']}", (BACKWARD, FORWARD))
                )
        if ocol["nullable"] and not col["nullable"]:
            changes.append(Change(name, "optional -> required", "", (BACKWARD,)))
        elif not ocol["nullable"] and col["nullable"]:
            changes.append(Change(name, "required -> optional", "", (FORWARD,)))
        if ocol.get("classification") != col.get("classification"):
            changes.append(Change(name, "classification changed", f"{ocol.get('classification')} -> {col.get('classification')}", ()))
        changes.extend(_check_changes(name, ocol.get("checks") or {}, col.get("checks") or {}))
    for fid, (name, col) in o_ids.items():
        if fid not in n_ids:
            if col["nullable"]:
                changes.append(Change(name, "drop optional column", col["type"], ()))
            else:
                changes.append(Change(name, "drop required column", col["type"], (FORWARD,)))
    if list(old.get("key", [])) != list(new.get("key", [])):
        changes.append(Change(None, "key changed", f"{old.get('key')} -> {new.get('key')}", (BACKWARD, FORWARD)))
    return changes


def directions(mode: str) -> tuple[str, ...]:
    mode = check_mode(mode)
    if mode == "NONE":
        return ()
    if mode.startswith("FULL"):
        return (BACKWARD, FORWARD)
    return (BACKWARD,) if mode.startswith(BACKWARD) else (FORWARD,)


def violations(contract: str, mode: str, history: list[dict[str, Any]], new: dict[str, Any]) -> list[Violation]:
    """The changes `mode` refuses when `new` follows `history` (registry rows, oldest first)."""
    mode = check_mode(mode)
    wanted = directions(mode)
    if not wanted or not history:
        return []
    against = history if mode.endswith("_TRANSITIVE") else history[-1:]
    out: list[Violation] = []
    for row in reversed(against):
        for ch in diff(row["body"], new):
            if set(ch.breaks) & set(wanted):
                out.append(Violation(contract, ch.column, ch.rule, ch.detail, mode, row["version"]))
    return out


OPTIONS = (
    "make the change compatible (add the column as nullable, keep or widen the type, loosen rather than tighten)",
    "publish the new shape as a new contract (e.g. NAME_v2) and migrate readers to it",
    ("if every reader and writer is updated together, set `compatibility: NONE` on the contract (or pass --mode NONE)"
    " and rebuild the curated tables"),
    ("for a rename, declare it (renames: {new_name: old_name} under the contract in the governance file) so the"
    " column keeps its field id"),
)
