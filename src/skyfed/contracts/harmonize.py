"""Compile a mapping (source table -> contract) into DuckDB SQL over an Arrow batch.

The SQL does three things in one pass, so no row is looked at by Python:
1. parse: raw source values (CSV and JSON arrive as text) are cast to the types the
   source declares; a value that does not convert is a quarantine reason, not a crash;
2. map: the spec's per-column expressions (renames, units, currency, time zones);
3. check: contract types and quality rules; each failed rule adds a readable reason
   to one of three lists by severity (quarantine, fail, warn).

The ingest layer runs the SQL, splits rows on the reason lists and de-duplicates by key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import sqlglot
from sqlglot import exp

from skyfed.contracts.types import duckdb_type, is_numeric
from skyfed.spec.models import Contract, Mapping

PROVENANCE = ("_source_object", "_source_row")
SEQ = "__seq"  # arrival order of a record within a run, assigned by the runner
CURSOR = "__cursor"
QUARANTINE = "__quarantine"
FAIL = "__fail"
WARN = "__warn"
RAW = "__raw"


def q(name: str) -> str:
    """A quoted SQL identifier."""
    return exp.to_identifier(name, quoted=True).sql("duckdb")


def lit(value: object) -> str:
    """A SQL literal."""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, (int, float)):
        return repr(value)
    return exp.Literal.string(str(value)).sql("duckdb")


@dataclass(frozen=True)
class HarmonizeSQL:
    """The compiled statements for one mapping."""

    mapping: str
    contract: str
    select: str  # over relation `__batch`; output: contract columns + CURSOR, SEQ, provenance, RAW and reason lists
    contract_columns: tuple[str, ...]
    key: tuple[str, ...]
    references: dict[str, str] = field(default_factory=dict)  # contract column -> "ref_table.column"


def compile_mapping(
    mapping: Mapping,
    contract: Contract,
    source_types: dict[str, str],
    batch_columns: dict[str, str],
    reference_tables: dict[str, str] | None = None,
) -> HarmonizeSQL:
    """Compile `mapping` for batches whose columns and DuckDB types are `batch_columns`.

    `source_types` are the types the source declares (or infers) per column; a batch
    column of type VARCHAR whose declared type differs is parsed with TRY_CAST.
    `reference_tables` maps a contract name to the relation holding it, for
    `references` checks (e.g. {"airport": "ref_airport"}).
    """
    reference_tables = reference_tables or {}
    data_cols = [c for c in batch_columns if c not in PROVENANCE and c != SEQ]

    # 1. parse
    parse_cols, parse_reasons = [], []
    for col in data_cols:
        have, want = batch_columns[col].upper(), source_types.get(col, batch_columns[col]).upper()
        if have == want or want in ("VARCHAR", "JSON"):
            parse_cols.append(q(col))
            continue
        parse_cols.append(f"TRY_CAST({q(col)} AS {want}) AS {q(col)}")
        parse_reasons.append(
            f"CASE WHEN {q(col)} IS NOT NULL AND TRY_CAST({q(col)} AS {want}) IS NULL "
            f"THEN {lit(f'source column {col}: ')} || left(CAST({q(col)} AS VARCHAR), 80) || {lit(f' is not a valid {want.lower()}')} END"
        )
    # The raw record travels as a struct (no copy) and becomes JSON text only for rows
    # that end in the quarantine or fail a run: serializing every row was a third of
    # the statement's cost.
    raw_struct = "struct_pack(" + ", ".join(f"{q(c)} := {q(c)}" for c in data_cols) + ")" if data_cols else "NULL"
    extra = [c for c in (*PROVENANCE, SEQ) if c in batch_columns]
    parsed = (
        "SELECT "
        + ", ".join(parse_cols + [q(c) for c in extra])
        + f", {raw_struct} AS {RAW}, {_joined(parse_reasons)} AS __parse FROM __batch"
    )

    # 2. map (lookups nested inside lookups are computed first, one level per step)
    exprs, levels = _lift_nested_lookups(dict(mapping.columns))
    steps, source = [], "parsed"
    for i, level in enumerate(levels):
        cols = ", ".join(f"({e}) AS {q(alias)}" for alias, e in level.items())
        steps.append(f"lookup{i} AS (SELECT *, {cols} FROM {source})")
        source = f"lookup{i}"
    mapped_cols = [f"({expr}) AS {q(name)}" for name, expr in exprs.items()]
    cursor = q(mapping.cursor) if mapping.cursor else "NULL"
    mapped = (
        "SELECT "
        + ", ".join(mapped_cols)
        + f", {cursor} AS {CURSOR}, "
        + ", ".join(q(c) for c in extra + [RAW, "__parse"])
        + f" FROM {source}"
    )

    # 3. check: reasons are joined into one string per severity (cheap: NULLs are
    # skipped) and split into lists only at the end.
    out_cols: list[str] = []
    quarantine, fail, warn = ["NULLIF(__parse, '')"], [], []
    refs: dict[str, str] = {}
    for name, col in contract.columns.items():
        ctype = duckdb_type(col.type)
        out_cols.append(f"TRY_CAST({q(name)} AS {ctype}) AS {q(name)}")
        # a mapped value that does not fit the contract type is always quarantined
        quarantine.append(
            f"CASE WHEN {q(name)} IS NOT NULL AND TRY_CAST({q(name)} AS {ctype}) IS NULL "
            f"THEN {lit(f'{name}: ')} || left(CAST({q(name)} AS VARCHAR), 80) || {lit(f' is not a valid {col.type}')} END"
        )
        target = {"quarantine": quarantine, "fail": fail, "warn": warn}[col.severity]
        target.extend(_rules(name, col, ctype, reference_tables, refs))

    checked = (
        "SELECT "
        + ", ".join(out_cols)
        + f", {CURSOR}, "
        + ", ".join(q(c) for c in extra + [RAW])
        + f", {_joined(quarantine)} AS __q, {_joined(fail)} AS __f, {_joined(warn)} AS __w"
        + " FROM mapped"
    )
    others = ", ".join(q(c) for c in [*contract.columns, CURSOR, *extra])
    checked = (
        f"SELECT {others}, CASE WHEN __q <> '' OR __f <> '' THEN CAST(to_json({RAW}) AS VARCHAR) END AS {RAW}, "
        f"{_split('__q')} AS {QUARANTINE}, {_split('__f')} AS {FAIL}, {_split('__w')} AS {WARN} FROM ({checked})"
    )
    where = f" WHERE {mapping.filter}" if mapping.filter else ""
    ctes = ", ".join([f"parsed AS ({parsed}{where})", *steps, f"mapped AS ({mapped})"])
    sql = f"WITH {ctes} {checked}"
    return HarmonizeSQL(
        mapping=mapping.name,
        contract=mapping.contract,
        select=sql,
        contract_columns=tuple(contract.columns),
        key=tuple(contract.key),
        references=refs,
    )


# Macros that look a value up in a reference table (skyfed.ingest.reference). DuckDB
# evaluates such a lookup nested in another one's arguments row by row (about 1,000
# rows/s); computed as a column first, each is one vectorized join.
LOOKUP_FUNCTIONS = frozenset({"to_usd", "local_to_utc"})


def _lift_nested_lookups(exprs: dict[str, str]) -> tuple[dict[str, str], list[dict[str, str]]]:
    """Rewrite expressions so no lookup call has another lookup call in its arguments.

    Returns the rewritten expressions and the lifted calls by level (level 0 first),
    each a mapping alias -> SQL over the previous level's columns.
    """
    trees = {name: sqlglot.parse_one(text, dialect="duckdb") for name, text in exprs.items()}

    def is_lookup(node: exp.Expression) -> bool:
        return isinstance(node, exp.Anonymous) and node.name.lower() in LOOKUP_FUNCTIONS

    levels: list[dict[str, str]] = []
    changed: set[str] = set()
    counter = 0
    while True:
        level: dict[str, str] = {}
        for name, tree in trees.items():
            for node in list(tree.find_all(exp.Anonymous)):
                if not is_lookup(node) or any(is_lookup(n) for n in node.find_all(exp.Anonymous) if n is not node):
                    continue  # not a lookup, or not innermost
                parent = node.parent
                while parent is not None and not is_lookup(parent):
                    parent = parent.parent
                if parent is None:
                    continue  # not nested in another lookup
                alias = f"__lookup{counter}"
                counter += 1
                level[alias] = node.sql(dialect="duckdb")
                node.replace(exp.column(alias, quoted=True))
                changed.add(name)
        if not level:
            break
        levels.append(level)
    # expressions without nested lookups keep the spec's text exactly
    return {name: (tree.sql(dialect="duckdb") if name in changed else exprs[name]) for name, tree in trees.items()}, levels


_SEP = "chr(31)"  # the unit separator cannot occur in a reason we write


def _joined(parts: list[str]) -> str:
    """One string of the non-NULL reasons ('' when none)."""
    return f"concat_ws({_SEP}, {', '.join(parts)})" if parts else "''"


def _split(column: str) -> str:
    return f"CASE WHEN {column} = '' THEN []::VARCHAR[] ELSE string_split({column}, {_SEP}) END"


def _rules(name: str, col: object, ctype: str, reference_tables: dict[str, str], refs: dict[str, str]) -> list[str]:
    """Reason expressions for one column's quality rules (NULL when the rule holds)."""
    v = f"TRY_CAST({q(name)} AS {ctype})"
    rules: list[str] = []
    if not col.nullable:  # type: ignore[attr-defined]
        rules.append(f"CASE WHEN {v} IS NULL THEN {lit(f'{name}: required value is missing')} END")
    checks = col.checks  # type: ignore[attr-defined]
    if checks is None:
        return rules
    shown = f"CAST({v} AS VARCHAR)"
    if checks.min is not None and is_numeric(col.type):  # type: ignore[attr-defined]
        rules.append(f"CASE WHEN {v} < {checks.min!r} THEN {lit(f'{name}: ')} || {shown} || {lit(f' is below the minimum {checks.min:g}')} END")
    if checks.max is not None and is_numeric(col.type):  # type: ignore[attr-defined]
        rules.append(f"CASE WHEN {v} > {checks.max!r} THEN {lit(f'{name}: ')} || {shown} || {lit(f' is above the maximum {checks.max:g}')} END")
    if checks.allowed:
        allowed_text = ", ".join(str(a) for a in checks.allowed)
        rules.append(
            f"CASE WHEN {v} IS NOT NULL AND CAST({v} AS VARCHAR) NOT IN ({', '.join(lit(str(a)) for a in checks.allowed)}) "
            f"THEN {lit(f'{name}: ')} || {shown} || {lit(f' is not one of {allowed_text}')} END"
        )
    if checks.pattern:
        rules.append(
            f"CASE WHEN {v} IS NOT NULL AND NOT regexp_full_match(CAST({v} AS VARCHAR), {lit(checks.pattern)}) "
            f"THEN {lit(f'{name}: ')} || {shown} || {lit(f' does not match {checks.pattern}')} END"
        )
    if checks.references:
        ref_contract, _, ref_col = checks.references.partition(".")
        table = reference_tables.get(ref_contract)
        if table:
            refs[name] = f"{table}.{ref_col}"
            rules.append(
                f"CASE WHEN {v} IS NOT NULL AND {v} NOT IN (SELECT {q(ref_col)} FROM {table} WHERE {q(ref_col)} IS NOT NULL) "
                f"THEN {lit(f'{name}: ')} || {shown} || {lit(f' is not a known {ref_contract}.{ref_col}')} END"
            )
    return rules


_RULE = re.compile(
    r"^(?P<col>(?:source column )?[\w.]+): .*?(?P<rule> is below the minimum .*| is above the maximum .*"
    r"| is not a valid .*| is not one of .*| does not match .*| is not a known .*)$",
    re.S,
)


def reason_rule(reason: str) -> str:
    """`fuel_kg: -3 is below the minimum 0` -> `fuel_kg: is below the minimum 0`, for counting by rule."""
    m = _RULE.match(reason)
    return f"{m.group('col')}:{m.group('rule')}" if m else reason
