"""`flight_leg@2`: a query may read a contract in the shape of an older registered version.

The `@N` suffix is found with sqlglot's tokenizer (so `'a@2'` inside a string is left
alone) before the SQL is parsed, and `name@N` becomes a derived table
`(SELECT CAST(current AS old type) AS old_name, ... FROM name) AS name` built by
`skyfed.governance.versioning.pinned_select` from the contract registry: columns matched
by field id (a renamed column gets its old name back), later columns left out, widened
types cast back. The planner then sees a subquery over the current table, so masks and
row filters still apply inside each region to the table underneath.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlglot.dialects.duckdb import DuckDB
from sqlglot.errors import TokenError
from sqlglot.tokens import TokenType

from skyfed.errors import SkyfedError


def pin_versions(sql: str, pinned: Callable[[str, int, str], str]) -> str:
    """`sql` with every `[region.]table@N` replaced by `pinned(contract, N, relation)` as a derived table."""
    if "@" not in sql:
        return sql
    try:
        tokens = DuckDB().tokenize(sql)
    except TokenError:
        return sql  # the parser reports the syntax error with its position
    edits: list[tuple[int, int, str]] = []
    for i, tok in enumerate(tokens):
        if tok.token_type != TokenType.PARAMETER or tok.text != "@" or i == 0 or i + 1 >= len(tokens):
            continue
        num, name = tokens[i + 1], tokens[i - 1]
        if num.token_type != TokenType.NUMBER or num.start != tok.end + 1 or name.end + 1 != tok.start:
            continue
        if name.token_type != TokenType.VAR:
            continue
        start, parts = name.start, [name.text]
        if i >= 3 and tokens[i - 2].token_type == TokenType.DOT and tokens[i - 3].token_type == TokenType.VAR:
            start, parts = tokens[i - 3].start, [tokens[i - 3].text, name.text]
        if not num.text.isdigit():
            raise SkyfedError(f"{'.'.join(parts)}@{num.text}: a version is a whole number", "e.g. flight_leg@2")
        follow = tokens[i + 2] if i + 2 < len(tokens) else None
        has_alias = follow is not None and follow.token_type in (TokenType.ALIAS, TokenType.VAR)
        body = pinned(parts[-1], int(num.text), ".".join(parts))
        edits.append((start, num.end + 1, f"({body})" + ("" if has_alias else f" AS {parts[-1]}")))
    for start, end, text in reversed(edits):
        sql = sql[:start] + text + sql[end:]
    return sql
