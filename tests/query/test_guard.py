"""The read-only guard: only SELECT / WITH ... SELECT pass; everything else is refused with a reason."""

from __future__ import annotations

import pytest

from skyfed.errors import SkyfedError
from skyfed.query.guard import check_read_only

REFUSED = [
    ("CREATE TABLE t AS SELECT 1", "CREATE"),
    ("DROP TABLE flight_leg", "DROP"),
    ("ALTER TABLE flight_leg ADD COLUMN x INT", "ALTER"),
    ("INSERT INTO flight_leg VALUES (1)", "INSERT"),
    ("UPDATE flight_leg SET seats = 1", "UPDATE"),
    ("DELETE FROM flight_leg", "DELETE"),
    ("MERGE INTO a USING b ON a.x = b.x WHEN MATCHED THEN DELETE", "MERGE"),
    ("TRUNCATE flight_leg", "TRUNCATE"),
    ("COPY flight_leg TO 'out.csv'", "COPY"),
    ("ATTACH 'other.db' AS o", "ATTACH"),
    ("DETACH o", "DETACH"),
    ("INSTALL httpfs", "INSTALL"),
    ("LOAD httpfs", "LOAD"),
    ("PRAGMA database_list", "PRAGMA"),
    ("SET threads = 1", "SET"),
    ("CALL pragma_version()", "CALL"),
    ("EXPORT DATABASE 'dump'", "EXPORT"),
    ("IMPORT DATABASE 'dump'", "IMPORT"),
    ("USE other", "USE"),
    ("VACUUM", "VACUUM"),
    ("CHECKPOINT", "CHECKPOINT"),
    ("EXPLAIN SELECT 1", "EXPLAIN"),
    ("SELECT 1; SELECT 2", "2 statements"),
    ("SELECT 1; DROP TABLE flight_leg", "statements"),
    ("SELECT * INTO t2 FROM flight_leg", "INTO"),
    ("SELECT * FROM read_csv('x.csv')", "read_csv"),
    ("SELECT * FROM read_csv_auto('x.csv')", "read_csv_auto"),
    ("SELECT * FROM read_parquet('x.parquet')", "read_parquet"),
    ("SELECT * FROM read_json('x.json')", "read_json"),
    ("SELECT * FROM read_json_auto('x.json')", "read_json_auto"),
    ("SELECT * FROM parquet_scan('x.parquet')", "parquet_scan"),
    ("SELECT * FROM iceberg_scan('m.json')", "iceberg_scan"),
    ("SELECT * FROM postgres_scan('dsn', 'public', 't')", "postgres_scan"),
    ("SELECT * FROM glob('/etc/*')", "glob"),
    ("SELECT * FROM read_text('/etc/passwd')", "read_text"),
    ("SELECT * FROM read_blob('/etc/passwd')", "read_blob"),
    ("SELECT * FROM sniff_csv('x.csv')", "sniff_csv"),
    ("SELECT * FROM read_anything_new('x')", "read_anything_new"),
    ("SELECT * FROM my_custom_scan('x')", "my_custom_scan"),
    ("SELECT * FROM query('SELECT 1')", "query"),
    ("SELECT getenv('HOME')", "getenv"),
    ("SELECT * FROM 'flights.csv'", "'flights.csv'"),
    ("SELECT * FROM flight_leg f JOIN 'https://example.com/x.parquet' u ON true", "https://"),
    ("SELECT * FROM flight_leg, 'x.parquet'", "'x.parquet'"),
    ("SELECT * FROM \"data.csv\"", "file"),
    ("WITH a AS (SELECT * FROM read_parquet('x')) SELECT * FROM a", "read_parquet"),
    ("SELECT (SELECT count(*) FROM read_csv('x')) AS n", "read_csv"),
    ("", "empty"),
]


@pytest.mark.parametrize(("sql", "reason"), REFUSED)
def test_refused_with_a_reason(sql: str, reason: str) -> None:
    with pytest.raises(SkyfedError) as info:
        check_read_only(sql)
    assert info.value.message.startswith("query refused:")
    assert reason.lower() in info.value.message.lower(), info.value.message
    assert "read-only" in (info.value.hint or "")


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1",
        "FROM flight_leg",
        "SELECT region, count(*) FROM flight_leg GROUP BY region",
        "WITH a AS (SELECT * FROM flight_leg) SELECT * FROM a",
        "SELECT 1 UNION ALL SELECT 2",
        "SELECT flight_id FROM flight_leg EXCEPT SELECT flight_id FROM booking",
        "SELECT 'read_csv(x)' AS s, 'a.csv' AS f FROM flight_leg WHERE status = 'x.csv'",
        "SELECT * FROM (VALUES (1), (2)) t(x)",
        "SELECT x FROM flight_leg, unnest([1, 2]) u(x)",
        "SELECT 1;",
    ],
)
def test_read_only_queries_pass(sql: str) -> None:
    check_read_only(sql)
