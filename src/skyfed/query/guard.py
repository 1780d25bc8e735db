"""Read-only guard: only SELECT and WITH ... SELECT (and set operations of them) pass.

Pure: parses with sqlglot and inspects the tree, never runs anything. A refusal is a
SkyfedError whose message says which construct was refused and why. The guard is
one of three layers: the planner also refuses any table that is not in the
federation's catalog, and the coordinator's DuckDB runs with external access off.
"""

from __future__ import annotations

import re

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import TokenType

from skyfed.errors import SkyfedError

DIALECT = "duckdb"
HINT = "the query API is read-only: write a single SELECT (or WITH ... SELECT) over the federation's tables"

# Statements recognised by their first keyword, so that even ones sqlglot cannot parse get a reason.
REFUSED_STATEMENTS = {
    "ALTER", "ANALYZE", "ATTACH", "BEGIN", "CALL", "CHECKPOINT", "COMMENT", "COMMIT", "COPY", "CREATE",
    "DEALLOCATE", "DELETE", "DESCRIBE", "DETACH", "DROP", "EXECUTE", "EXPLAIN", "EXPORT", "FORCE", "GRANT",
    "IMPORT", "INSERT", "INSTALL", "LOAD", "MERGE", "PIVOT", "PRAGMA", "PREPARE", "RESET", "REVOKE",
    "ROLLBACK", "SET", "SHOW", "SUMMARIZE", "TRUNCATE", "UNPIVOT", "UPDATE", "UPSERT", "USE", "VACUUM",
}  # fmt: skip

# Functions that read files, URLs, other databases or the environment, or run SQL text.
REFUSED_FUNCTIONS = {
    "glob", "read_text", "read_blob", "sniff_csv", "query", "query_table", "getenv", "current_setting",
    "parquet_metadata", "parquet_schema", "parquet_file_metadata", "parquet_kv_metadata", "iceberg_metadata",
    "iceberg_snapshots", "delta_scan", "postgres_query", "postgres_execute", "mysql_query", "sqlite_attach",
    "duckdb_secrets", "duckdb_settings", "load_aws_credentials", "system", "shell",
}  # fmt: skip
_SQLGLOT_FILE_READERS = tuple(
    cls for name in ("ReadCSV", "ReadParquet", "ReadJSON", "ReadText") if (cls := getattr(exp, name, None))
)


def refuse(reason: str) -> SkyfedError:
    return SkyfedError(f"query refused: {reason}", HINT)


def _first_keyword(sql: str) -> str:
    text = re.sub(r"--[^\n]*|/\*.*?\*/", " ", sql, flags=re.DOTALL).lstrip(" \t\r\n(;")
    m = re.match(r"[A-Za-z_]+", text)
    return m.group(0).upper() if m else ""


def _function_name(node: exp.Expression) -> str:
    if isinstance(node, exp.Anonymous):
        return str(node.this).lower()
    if isinstance(node, exp.Func):
        return node.sql_name().lower()
    return ""


def _is_file_reader(name: str) -> bool:
    return name.startswith("read_") or name.endswith("_scan") or name in REFUSED_FUNCTIONS


def check_read_only(sql: str) -> exp.Query:
    """The parsed statement if `sql` is one read-only query; else raise SkyfedError with the reason."""
    if not sql or not sql.strip():
        raise refuse("the query is empty")
    keyword = _first_keyword(sql)
    if keyword in REFUSED_STATEMENTS:
        raise refuse(f"{keyword} statements are not allowed")
    try:
        tokens = sqlglot.Dialect.get_or_raise(DIALECT).tokenize(sql)
    except TokenError as exc:
        raise refuse(f"the SQL cannot be read: {exc}") from None
    _check_string_tables(tokens)
    try:
        statements = [s for s in sqlglot.parse(sql, read=DIALECT) if s is not None]
    except ParseError as exc:
        first = exc.errors[0]["description"] if exc.errors else str(exc)
        raise refuse(f"the SQL cannot be parsed ({first})") from None
    if len(statements) != 1:
        raise refuse(f"{len(statements)} statements given; only one query is allowed")
    tree = statements[0]
    if not isinstance(tree, exp.Query):
        kind = tree.key.upper() if not isinstance(tree, exp.Command) else str(tree.this).upper()
        raise refuse(f"a {kind} statement is not a query (only SELECT and WITH ... SELECT are allowed)")
    for node in tree.walk():
        if isinstance(node, (exp.DML, exp.Create, exp.Drop, exp.Alter, exp.Command, exp.Copy, exp.Set,
                             exp.Pragma, exp.Attach, exp.Detach, exp.Install, exp.Use)):  # fmt: skip
            raise refuse(f"{node.key.upper()} inside a query is not allowed")
        if isinstance(node, exp.Into):
            raise refuse("SELECT ... INTO writes a table and is not allowed")
        if _SQLGLOT_FILE_READERS and isinstance(node, _SQLGLOT_FILE_READERS):
            raise refuse(f"the function {_function_name(node)} reads files or URLs and is not allowed")
        if isinstance(node, (exp.Anonymous, exp.Func)):
            name = _function_name(node)
            if name and _is_file_reader(name):
                raise refuse(f"the function {name} reads files, URLs or settings and is not allowed")
        if isinstance(node, exp.Table):
            inner = node.this
            if isinstance(inner, (exp.Anonymous, exp.Func)) and not isinstance(inner, (exp.Unnest, exp.GenerateSeries)):
                name = _function_name(inner)
                raise refuse(f"the table function {name or inner.key} is not allowed; query the federation's tables")
            name = node.name
            if any(ch in name for ch in "./:\\") or re.search(r"\.(csv|tsv|parquet|json|jsonl|ndjson|txt|avro)$", name, re.IGNORECASE):
                raise refuse(f"the table name {name!r} looks like a file or URL; reading files is not allowed")
    return tree


def _check_string_tables(tokens: list) -> None:
    """Refuse `FROM 'x.csv'` / `JOIN 'x'`: a string literal used as a table reads a file in DuckDB."""
    for prev, tok in zip(tokens, tokens[1:]):
        if tok.token_type == TokenType.STRING and prev.token_type in (TokenType.FROM, TokenType.JOIN, TokenType.COMMA):
            if prev.token_type == TokenType.COMMA and not _in_from_list(tokens, tok):
                continue
            raise refuse(f"the string {tok.text!r} is used as a table name, which reads a file or URL")


def _in_from_list(tokens: list, target) -> bool:
    """Whether the comma before `target` separates FROM items (crude: the nearest clause keyword is FROM)."""
    idx = tokens.index(target)
    depth = 0
    for tok in reversed(tokens[:idx]):
        if tok.token_type == TokenType.R_PAREN:
            depth += 1
        elif tok.token_type == TokenType.L_PAREN:
            if depth == 0:
                return False
            depth -= 1
        elif depth == 0 and tok.token_type in (TokenType.SELECT, TokenType.WHERE, TokenType.GROUP_BY, TokenType.ORDER_BY):
            return False
        elif depth == 0 and tok.token_type == TokenType.FROM:
            return True
    return False
