"""Which source columns a contract key determines: when a read's keys cannot repeat.

De-duplication by key looks for repeated keys in every load (a GROUP BY over all staged
keys: half a second per 5M rows). A read of one snapshot of a table whose unique key
(the primary key, say) is carried into the contract key by one-to-one expressions
cannot have a repeated contract key, so that search can be skipped.

"One-to-one" is decided on the mapping's SQL, conservatively: a bare column, a cast
that loses nothing (an integer to a wider integer or to text, text to text),
concatenation with a constant text, and the contract's own cast at the end. Anything
else (trim, upper, arithmetic, a cast from text to a number, which maps '01' and '1'
to the same value) determines nothing, and the search runs as before.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlglot import exp, parse_one
from sqlglot.errors import SqlglotError

from skyfed.contracts.types import duckdb_type
from skyfed.spec.models import Contract, Mapping

_SIGNED = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT")
_UNSIGNED = ("UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT")
_TEXT = ("VARCHAR", "TEXT", "STRING")


def _norm(type_name: str) -> str:
    t = type_name.strip().upper()
    aliases = {"INT": "INTEGER", "INT4": "INTEGER", "INT8": "BIGINT", "INT2": "SMALLINT", "LONG": "BIGINT",
               "TEXT": "VARCHAR", "STRING": "VARCHAR", "CHAR": "VARCHAR", "BPCHAR": "VARCHAR"}  # fmt: skip
    return aliases.get(t, t)


def lossless(src: str, dst: str) -> bool:
    """Whether casting a value of DuckDB type `src` to `dst` keeps distinct values distinct."""
    src, dst = _norm(src), _norm(dst)
    if src == dst:
        return True
    integer = src in _SIGNED or src in _UNSIGNED
    if integer and dst == "VARCHAR":
        return True  # the decimal digits of an integer are unique
    if src in _SIGNED and dst in _SIGNED:
        return _SIGNED.index(dst) >= _SIGNED.index(src)
    if src in _UNSIGNED and dst in _UNSIGNED:
        return _UNSIGNED.index(dst) >= _UNSIGNED.index(src)
    if src in _UNSIGNED and dst in _SIGNED:  # a signed type of at least twice the width
        return _SIGNED.index(dst) > _UNSIGNED.index(src)
    return False


def _origin(node: exp.Expression, source_types: dict[str, str]) -> tuple[str, str] | None:
    """(source column, DuckDB type of the value) when `node` is one-to-one in one column."""
    if isinstance(node, exp.Paren):
        return _origin(node.this, source_types)
    if isinstance(node, exp.Column) and not node.table:
        t = source_types.get(node.name)
        return (node.name, _norm(t)) if t else None
    if isinstance(node, exp.Cast):  # TryCast is a Cast: a value that fails becomes NULL and is quarantined
        inner = _origin(node.this, source_types)
        target = node.to.sql(dialect="duckdb")
        if inner and lossless(inner[1], target):
            return inner[0], _norm(target)
        return None
    if isinstance(node, exp.DPipe):
        left, right = node.this, node.expression
        for const, other in ((left, right), (right, left)):
            if isinstance(const, exp.Literal) and const.is_string:
                inner = _origin(other, source_types)
                if inner and lossless(inner[1], "VARCHAR"):  # `||` casts its operands to text
                    return inner[0], "VARCHAR"
    return None


def determined_columns(mapping: Mapping, contract: Contract, source_types: dict[str, str]) -> set[str]:
    """Source columns whose value is fixed by a row's contract key (one key column each)."""
    out: set[str] = set()
    for name in contract.key:
        text = mapping.columns.get(name)
        column = contract.columns.get(name)
        if text is None or column is None:
            continue
        try:
            tree = parse_one(text, dialect="duckdb")
        except SqlglotError:
            continue
        found = _origin(tree, source_types)
        if found and lossless(found[1], duckdb_type(column.type)):  # the contract's TRY_CAST at the end
            out.add(found[0])
    return out


def unique_by(
    mapping: Mapping, contract: Contract, source_types: dict[str, str], unique_keys: Iterable[tuple[str, ...]]
) -> tuple[str, ...] | None:
    """A unique key of the source that the contract key determines (so keys cannot repeat
    within one snapshot of the source), or None."""
    if not contract.key:
        return None
    determined = determined_columns(mapping, contract, source_types)
    for key in unique_keys:
        if key and set(key) <= determined:
            return tuple(key)
    return None
