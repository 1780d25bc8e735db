"""Cross-references a schema cannot check: names that must exist elsewhere in the spec.

Each finding is (key path, message, suggestion); the loader turns the path into a
file position.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError

from skyfed.spec.issues import nearest
from skyfed.spec.models import GcsSource, PlatformSpec

Finding = tuple[tuple[Any, ...], str, "str | None"]
_PARTITION = re.compile(r"^\s*(?:(year|month|day|hour|identity)\s*\(\s*([a-z_][a-z0-9_]*)\s*\)|([a-z_][a-z0-9_]*))\s*$")


def check_references(spec: PlatformSpec) -> Iterator[Finding]:
    regions = set(spec.regions)
    for rname, region in spec.regions.items():
        for target in region.egress_usd_per_gb:
            path = ("regions", rname, "egress_usd_per_gb", target)
            if target == rname:
                yield path, "a region has no egress price to itself", None
            elif target not in regions:
                yield path, f"unknown region '{target}'", nearest(target, regions)

    yield from _check_contracts(spec)

    for name, ref in spec.reference.items():
        if ref.contract not in spec.contracts:
            yield ("reference", name, "contract"), f"unknown contract '{ref.contract}'", nearest(
                ref.contract, spec.contracts
            )

    seen: dict[str, int] = {}
    for i, m in enumerate(spec.mappings):
        base = ("mappings", i)
        if m.name in seen:
            yield base + ("name",), f"mapping name '{m.name}' is already used by mappings[{seen[m.name]}]", None
        seen.setdefault(m.name, i)
        yield from _check_mapping(spec, base, m)


def _check_contracts(spec: PlatformSpec) -> Iterator[Finding]:
    for cname, contract in spec.contracts.items():
        base = ("contracts", cname)
        cols = set(contract.columns)
        for j, k in enumerate(contract.key):
            if k not in cols:
                yield base + ("key", j), f"key column '{k}' is not a column of contract '{cname}'", nearest(k, cols)
        if contract.partition_by:
            m = _PARTITION.match(contract.partition_by)
            if not m:
                yield base + ("partition_by",), (
                    f"cannot read partition spec '{contract.partition_by}'; use a column or "
                    "year(col), month(col), day(col), hour(col)"
                ), None
            else:
                col = m.group(2) or m.group(3)
                if col not in cols:
                    yield base + ("partition_by",), f"partition column '{col}' is not a column of '{cname}'", nearest(
                        col, cols
                    )
        for col_name, col in contract.columns.items():
            if col.checks and col.checks.references:
                target = col.checks.references
                path = base + ("columns", col_name, "checks", "references")
                tc, _, tcol = target.partition(".")
                if not tcol:
                    yield path, f"references must be 'contract.column', got '{target}'", None
                elif tc not in spec.contracts:
                    yield path, f"unknown contract '{tc}'", nearest(tc, spec.contracts)
                elif tcol not in spec.contracts[tc].columns:
                    yield path, f"contract '{tc}' has no column '{tcol}'", nearest(tcol, spec.contracts[tc].columns)
            if col.checks and col.checks.min is not None and col.checks.max is not None:
                if col.checks.min > col.checks.max:
                    yield base + ("columns", col_name, "checks"), "min is greater than max", None


def _check_mapping(spec: PlatformSpec, base: tuple[Any, ...], m: Any) -> Iterator[Finding]:
    region_name, dot, source_name = m.source.partition(".")
    if not dot:
        yield base + ("source",), f"source must be 'region.source', got '{m.source}'", None
    elif region_name not in spec.regions:
        yield base + ("source",), f"unknown region '{region_name}'", nearest(region_name, spec.regions)
    elif source_name not in spec.regions[region_name].sources:
        sources = spec.regions[region_name].sources
        yield base + ("source",), f"region '{region_name}' has no source '{source_name}'", nearest(
            source_name, sources
        )
    else:
        source = spec.regions[region_name].sources[source_name]
        if isinstance(source, GcsSource) and m.table not in source.tables:
            yield base + ("table",), f"source '{m.source}' has no table '{m.table}'", nearest(m.table, source.tables)
        if source.kind == "pubsub" and m.cursor:
            yield base + ("cursor",), "a pubsub mapping has no cursor (messages are acknowledged)", None
        if source.kind == "pubsub" and not m.key:
            yield base + ("key",), "a pubsub mapping needs a key (the event id) to de-duplicate redelivered messages", None

    if m.contract not in spec.contracts:
        yield base + ("contract",), f"unknown contract '{m.contract}'", nearest(m.contract, spec.contracts)
        return
    contract = spec.contracts[m.contract]
    for col in m.columns:
        if col not in contract.columns:
            yield base + ("columns", col), f"contract '{m.contract}' has no column '{col}'", nearest(
                col, contract.columns
            )
    missing = [c for c in contract.columns if c not in m.columns]
    if missing:
        yield base + ("columns",), (
            f"no expression for contract column(s) {', '.join(missing)}; write NULL where the source lacks one"
        ), None
    for col, expr in m.columns.items():
        problem = _sql_problem(expr)
        if problem:
            yield base + ("columns", col), f"cannot parse SQL expression {expr!r}: {problem}", None
    if m.filter:
        problem = _sql_problem(m.filter, predicate=True)
        if problem:
            yield base + ("filter",), f"cannot parse SQL predicate {m.filter!r}: {problem}", None


def _sql_problem(expr: str, *, predicate: bool = False) -> str | None:
    """Why `expr` is not one DuckDB column expression (or predicate), or None."""
    if not expr.strip():
        return "empty expression"
    # Parsing inside a SELECT makes anything that is not a single expression fail.
    sql = f"SELECT 1 AS __v FROM __t WHERE {expr}" if predicate else f"SELECT {expr} AS __v FROM __t"
    try:
        parsed = sqlglot.parse(sql, dialect="duckdb")
    except ParseError as exc:
        errors = exc.errors
        text = errors[0]["description"] if errors else str(exc).splitlines()[0]
        return re.sub(r" for <class '[\w.]+'>", "", text)
    ok = (
        len(parsed) == 1
        and isinstance(parsed[0], exp.Select)
        and len(parsed[0].expressions) == 1
        and parsed[0].expressions[0].alias == "__v"
        and isinstance(parsed[0].args.get("from_") or parsed[0].args.get("from"), exp.From)
    )
    return None if ok else "not a single SQL expression over the source columns"
