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
    raw_struct = (
        "CAST(to_json(struct_pack(" + ", ".join(f"{q(c)} := {q(c)}" for c in data_cols) + ")) AS VARCHAR)" if data_cols else "NULL"
    )
    extra = [c for c in (*PROVENANCE, SEQ) if c in batch_columns]
    parsed = (
        "SELECT "
        + ", ".join(parse_cols + [q(c) for c in extra])
        + f", {raw_struct} AS {RAW}, [{', '.join(parse_reasons)}] AS __parse FROM __batch"
    )

    # 2. map
    mapped_cols = [f"({expr}) AS {q(name)}" for name, expr in mapping.columns.items()]
    cursor = q(mapping.cursor) if mapping.cursor else "NULL"
    mapped = (
        "SELECT "
        + ", ".join(mapped_cols)
        + f", {cursor} AS {CURSOR}, "
        + ", ".join(q(c) for c in extra + [RAW, "__parse"])
        + " FROM parsed"
    )

    # 3. check
    out_cols, quarantine, fail, warn = [], ["__parse"], [], []
    refs: dict[str, str] = {}
    for name, col in contract.columns.items():
        ctype = duckdb_type(col.type)
        out_cols.append(f"TRY_CAST({q(name)} AS {ctype}) AS {q(name)}")
        # a mapped value that does not fit the contract type is always quarantined
        quarantine.append(
            f"[CASE WHEN {q(name)} IS NOT NULL AND TRY_CAST({q(name)} AS {ctype}) IS NULL "
            f"THEN {lit(f'{name}: ')} || left(CAST({q(name)} AS VARCHAR), 80) || {lit(f' is not a valid {col.type}')} END]"
        )
        rules = _rules(name, col, ctype, reference_tables, refs)
        target = {"quarantine": quarantine, "fail": fail, "warn": warn}[col.severity]
        if rules:
            target.append("[" + ", ".join(rules) + "]")

    def reasons(parts: list[str]) -> str:
        if not parts:
            return "[]::VARCHAR[]"
        return f"list_filter(flatten([{', '.join(parts)}]), x -> x IS NOT NULL)"

    checked = (
        "SELECT "
        + ", ".join(out_cols)
        + f", {CURSOR}, "
        + ", ".join(q(c) for c in extra + [RAW])
        + f", {reasons(quarantine)} AS {QUARANTINE}, {reasons(fail)} AS {FAIL}, {reasons(warn)} AS {WARN}"
        + " FROM mapped"
    )
    where = f" WHERE {mapping.filter}" if mapping.filter else ""
    sql = f"WITH parsed AS ({parsed}{where}), mapped AS ({mapped}) {checked}"
    return HarmonizeSQL(
        mapping=mapping.name,
        contract=mapping.contract,
        select=sql,
        contract_columns=tuple(contract.columns),
        key=tuple(contract.key),
        references=refs,
    )


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
