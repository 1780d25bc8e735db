"""PostgreSQL connector against the local federation's real server."""

from __future__ import annotations

import datetime as dt
import os
from decimal import Decimal

import psycopg
import pyarrow as pa
import pytest

from skyfed.connectors.base import ReadPosition, ReadRequest
from skyfed.connectors.postgres import PostgresConnector
from skyfed.connectors.registry import connector_for
from skyfed.errors import SkyfedError
from skyfed.spec.models import PostgresSource


def _spec(**over: object) -> PostgresSource:
    data = {
        "kind": "postgres", "host": os.environ["SKYFED_PG_HOST"], "port": int(os.environ["SKYFED_PG_PORT"]),
        "database": "skyfed", "user": os.environ["SKYFED_PG_USER"], "password": "${SKYFED_PG_PASSWORD}",
        "schema": "conn_test",
    }  # fmt: skip
    data.update(over)
    return PostgresSource.model_validate(data)


@pytest.fixture(scope="module")
def pg(federation: object) -> psycopg.Connection:
    e = os.environ
    conn = psycopg.connect(
        host=e["SKYFED_PG_HOST"], port=e["SKYFED_PG_PORT"], user=e["SKYFED_PG_USER"],
        password=e["SKYFED_PG_PASSWORD"], dbname="skyfed", autocommit=True,
    )  # fmt: skip
    conn.execute("DROP SCHEMA IF EXISTS conn_test CASCADE; CREATE SCHEMA conn_test")
    conn.execute(
        """CREATE TABLE conn_test.legs (
             id bigint PRIMARY KEY, code text NOT NULL, fare numeric(12,2), exact numeric,
             dep_local timestamp, dep_utc timestamptz, day date, load double precision, pax int,
             updated_at timestamptz NOT NULL)"""
    )
    conn.execute(
        """INSERT INTO conn_test.legs
           SELECT g, 'SF' || g, g * 1.25, ('123456789012345678901234567890.' || g)::numeric,
                  timestamp '2024-03-01 10:00' + g * interval '1 hour',
                  timestamptz '2024-03-01 10:00+02' + g * interval '1 hour',
                  date '2024-03-01' + g, g / 4.0, g % 7,
                  timestamptz '2024-01-01 00:00+00' + g * interval '1 minute'
           FROM generate_series(1, 1000) g"""
    )
    conn.execute("ANALYZE conn_test.legs")
    yield conn
    conn.execute("DROP SCHEMA IF EXISTS conn_test CASCADE")
    conn.close()


@pytest.fixture
def conn(pg: psycopg.Connection) -> PostgresConnector:
    c = connector_for(_spec(), "latam.ops")
    assert isinstance(c, PostgresConnector)
    yield c
    c.close()


def _table(batches: list[pa.RecordBatch]) -> pa.Table:
    return pa.Table.from_batches(batches).sort_by("id")


def test_discover_and_table_info(conn: PostgresConnector) -> None:
    tables = {t.name: t for t in conn.discover()}
    info = tables["legs"]
    assert info.rows == 1000 and info.bytes and info.bytes > 0
    assert info.schema.field("fare").type == pa.decimal128(12, 2)
    assert info.schema.field("exact").type == pa.string()  # unconstrained numeric: exact text, never float
    assert info.schema.field("dep_local").type == pa.timestamp("us")
    assert info.schema.field("dep_utc").type == pa.timestamp("us", tz="UTC")
    assert not info.schema.field("code").nullable
    assert conn.table_info("legs").schema == info.schema


def test_full_read_equals_source(conn: PostgresConnector, pg: psycopg.Connection) -> None:
    req = ReadRequest("legs")
    got = _table(list(conn.read(req, conn.position(req))))
    rows = pg.execute("SELECT id, code, fare, exact::text, dep_local, dep_utc, day, load, pax, updated_at "
                      "FROM conn_test.legs ORDER BY id").fetchall()  # fmt: skip
    assert got.num_rows == 1000
    want = [dict(zip(got.column_names, r, strict=True)) for r in rows]
    assert got.to_pylist() == want
    first = got.slice(0, 1).to_pylist()[0]
    assert first["fare"] == Decimal("1.25") and first["exact"] == "123456789012345678901234567890.1"
    assert first["dep_local"] == dt.datetime(2024, 3, 1, 11, 0)
    assert first["dep_utc"] == dt.datetime(2024, 3, 1, 9, 0, tzinfo=dt.UTC)


def test_projection_and_filter_pushdown(conn: PostgresConnector) -> None:
    req = ReadRequest("legs", columns=("id", "fare"), filter="pax = 3 AND code LIKE 'SF1%' AND day >= DATE '2024-03-10'")
    got = _table(list(conn.read(req, conn.position(req))))
    assert got.column_names == ["id", "fare"]
    ids = got.column("id").to_pylist()
    assert ids and all(i % 7 == 3 and str(i).startswith("1") and i >= 9 for i in ids)
    sql = conn.last_sql or ""
    assert sql.startswith('SELECT "id", "fare" FROM "conn_test"."legs" WHERE')
    assert "pax = 3" in sql and "LIKE 'SF1%'" in sql  # the predicate runs on the server


def test_cursor_reads_have_no_gap_and_no_overlap(conn: PostgresConnector, pg: psycopg.Connection) -> None:
    req = ReadRequest("legs", columns=("id", "updated_at"), cursor="updated_at")
    mid = ReadPosition(cursor_value=dt.datetime(2024, 1, 1, 5, 0, tzinfo=dt.UTC))  # id 300
    first = _table(list(conn.read(req, mid)))
    upto = conn.position(req)
    assert upto.cursor_value == dt.datetime(2024, 1, 1, 16, 40, tzinfo=dt.UTC)
    second = _table(list(conn.read(req, upto, after=mid)))
    ids = first.column("id").to_pylist() + second.column("id").to_pylist()
    assert ids == list(range(1, 1001))
    assert '"updated_at" >' in (conn.last_sql or "") and '"updated_at" <=' in (conn.last_sql or "")
    # the position survives its JSON form
    again = ReadPosition.from_json(upto.to_json())
    assert again == upto and list(conn.read(req, upto, after=again)) == []


def test_parallel_ctid_ranges_match_single_read(pg: psycopg.Connection) -> None:
    import skyfed.connectors.postgres as mod

    old = mod.PARALLEL_MIN_PAGES
    mod.PARALLEL_MIN_PAGES = 1
    try:
        with PostgresConnector(_spec(), "latam.ops", parallel=3) as c:
            req = ReadRequest("legs", filter="pax <> 1")
            got = _table(list(c.read(req, c.position(req))))
            assert "ctid >=" in (c.last_sql or "")
        with PostgresConnector(_spec(), "latam.ops", parallel=1) as c:
            want = _table(list(c.read(req, c.position(req))))
            assert "ctid" not in (c.last_sql or "")
    finally:
        mod.PARALLEL_MIN_PAGES = old
    assert got.equals(want)


def test_missing_table_and_column(conn: PostgresConnector) -> None:
    with pytest.raises(SkyfedError, match=r"postgres source latam.ops, table nope: table conn_test.nope does not exist"):
        conn.table_info("nope")
    with pytest.raises(SkyfedError, match=r"column 'fair' does not exist.*did you mean 'fare'"):
        list(conn.read(ReadRequest("legs", columns=("id", "fair")), ReadPosition()))
    with pytest.raises(SkyfedError, match=r"postgres source latam.ops, table legs: .*nosuch"):
        list(conn.read(ReadRequest("legs", filter="nosuch > 1"), ReadPosition()))


def test_wrong_password(pg: psycopg.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BAD_PG_PASSWORD", "not-the-password")
    c = connector_for(_spec(password="${BAD_PG_PASSWORD}"), "latam.ops")
    with pytest.raises(SkyfedError, match=r"postgres source latam.ops.*rejected user") as err:
        c.discover()
    assert "password" in (err.value.hint or "")


def test_unreachable_host(federation: object) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = connector_for(_spec(port=port), "latam.ops")
    with pytest.raises(SkyfedError, match=rf"postgres source latam.ops: cannot reach PostgreSQL at 127.0.0.1:{port}"):
        c.table_info("legs")
