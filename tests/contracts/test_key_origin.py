"""Which source columns a contract key determines (skyfed.contracts.key_origin).

Every expression the analysis calls one-to-one is also run by DuckDB over distinct
values, edge cases included (0, negatives, extremes, '01' next to '1'), through the
contract's cast: the results must stay distinct. Expressions that can merge values
must determine nothing.
"""

from __future__ import annotations

import duckdb
import pytest

from skyfed.contracts.key_origin import determined_columns, lossless, unique_by
from skyfed.contracts.types import duckdb_type
from skyfed.spec.models import Contract, Mapping

SOURCE_TYPES = {"id": "BIGINT", "n": "INTEGER", "code": "VARCHAR", "u": "UINTEGER", "d": "DOUBLE"}
VALUES = {
    "id": "[0, 1, -1, 10, 9223372036854775807, -9223372036854775808]",
    "n": "[0, 1, -1, 2147483647, -2147483648]",
    "code": "['1', '01', 'ab', 'AB', ' ab', '']",
    "u": "[0, 1, 4294967295]",
    "d": "[0.1, 0.2, 1.0]",
}


def contract(key_type: str) -> Contract:
    return Contract.model_validate({"version": 1, "key": ["k"], "columns": {"k": {"type": key_type, "nullable": False}}})


def mapping(expr: str) -> Mapping:
    return Mapping.model_validate({"name": "m", "source": "r.s", "table": "t", "contract": "c", "columns": {"k": expr}})


ONE_TO_ONE = [
    ("id", "string"),
    ("'BL-' || CAST(id AS VARCHAR)", "string"),
    ("CAST(id AS VARCHAR) || '-x'", "string"),
    ("'a' || (n) || 'b'", "string"),
    ("TRY_CAST(n AS BIGINT)", "int64"),
    ("n", "int64"),
    ("CAST(u AS BIGINT)", "int64"),
    ("code", "string"),
    ("'p-' || code", "string"),
]
MERGING = [
    ("upper(code)", "string"),  # 'ab', 'AB'
    ("trim(code)", "string"),  # 'ab', ' ab'
    ("CAST(code AS INTEGER)", "int32"),  # '1', '01'
    ("code", "int32"),  # the contract's cast merges '1' and '01'
    ("CAST(id AS INTEGER)", "int32"),  # narrows
    ("id", "int32"),  # the contract narrows
    ("CAST(d AS VARCHAR)", "string"),  # not an integer: not judged
    ("id % 50", "string"),
    ("'x' || code || CAST(n AS VARCHAR)", "string"),  # two columns
]


@pytest.mark.parametrize(("expr", "key_type"), ONE_TO_ONE)
def test_one_to_one_expressions_keep_distinct_values_distinct(expr: str, key_type: str) -> None:
    determined = determined_columns(mapping(expr), contract(key_type), SOURCE_TYPES)
    assert len(determined) == 1, f"{expr} -> {key_type} should determine its column"
    (col,) = determined
    con = duckdb.connect()
    values = con.execute(
        f"SELECT count(DISTINCT v), count(v), count(*) FROM (SELECT TRY_CAST(({expr}) AS {duckdb_type(key_type)}) AS v "
        f"FROM (SELECT CAST(unnest({VALUES[col]}) AS {SOURCE_TYPES[col]}) AS {col}))"
    ).fetchone()
    distinct, non_null, n = values
    assert distinct == non_null, f"{expr} merged distinct values of {col}: {values}"
    assert non_null >= n - 1  # at most a value that does not fit (quarantined, never merged)


@pytest.mark.parametrize(("expr", "key_type"), MERGING)
def test_expressions_that_can_merge_values_determine_nothing(expr: str, key_type: str) -> None:
    assert determined_columns(mapping(expr), contract(key_type), SOURCE_TYPES) == set(), expr


def test_unique_by_needs_every_column_of_a_unique_key() -> None:
    c = Contract.model_validate({"version": 1, "key": ["a", "b"], "columns": {
        "a": {"type": "string", "nullable": False}, "b": {"type": "int64", "nullable": False}}})  # fmt: skip
    m = Mapping.model_validate({"name": "m", "source": "r.s", "table": "t", "contract": "c",
                                "columns": {"a": "code", "b": "n"}})  # fmt: skip
    assert unique_by(m, c, SOURCE_TYPES, [("id",), ("code", "n")]) == ("code", "n")
    assert unique_by(m, c, SOURCE_TYPES, [("code",)]) == ("code",)  # a superset of a unique key is unique
    assert unique_by(m, c, SOURCE_TYPES, [("id",), ("code", "id")]) is None
    assert unique_by(m, c, SOURCE_TYPES, []) is None


def test_lossless_casts() -> None:
    assert lossless("INTEGER", "BIGINT") and lossless("BIGINT", "VARCHAR") and lossless("UINTEGER", "BIGINT")
    assert not lossless("BIGINT", "INTEGER") and not lossless("VARCHAR", "BIGINT") and not lossless("UBIGINT", "BIGINT")
    assert not lossless("DOUBLE", "VARCHAR") and not lossless("TIMESTAMP", "DATE")
