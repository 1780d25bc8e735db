"""BigQuery connector against the emulator: Storage Read (gRPC) and REST paths."""

from __future__ import annotations

import datetime as dt
import os
from decimal import Decimal

import pyarrow as pa
import pytest

from skyfed.connectors.base import ReadPosition, ReadRequest
from skyfed.connectors.bigquery import BigQueryConnector
from skyfed.connectors.registry import connector_for
from skyfed.errors import SkyfedError
from skyfed.spec.models import BigQuerySource

PROJECT, DATASET = "conn-test", "ops"
ROWS = [
    {"id": i, "code": f"SF{i}", "fare": f"{i}.123456789", "dep": f"2024-01-{1 + i % 9:02d}T10:00:00+00:00",
     "day": f"2024-01-{1 + i % 9:02d}", "local": f"2024-01-{1 + i % 9:02d}T08:30:00", "load": i / 4}
    for i in range(1, 41)
]  # fmt: skip


def _spec(**over: object) -> BigQuerySource:
    data = {"kind": "bigquery", "project": PROJECT, "dataset": DATASET, "location": "EU",
            "endpoint": os.environ["SKYFED_BQ_ENDPOINT"]}  # fmt: skip
    data.update(over)
    return BigQuerySource.model_validate(data)


@pytest.fixture(scope="module")
def bq(federation: object):  # noqa: ANN201
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    client = bigquery.Client(project=PROJECT, location="EU", credentials=AnonymousCredentials(),
                             client_options=ClientOptions(api_endpoint=os.environ["SKYFED_BQ_ENDPOINT"]))  # fmt: skip
    client.create_dataset(f"{PROJECT}.{DATASET}", exists_ok=True)
    table = bigquery.Table(f"{PROJECT}.{DATASET}.legs", schema=[
        bigquery.SchemaField("id", "INT64", "REQUIRED"), bigquery.SchemaField("code", "STRING"),
        bigquery.SchemaField("fare", "NUMERIC"), bigquery.SchemaField("dep", "TIMESTAMP"),
        bigquery.SchemaField("day", "DATE"), bigquery.SchemaField("local", "DATETIME"),
        bigquery.SchemaField("load", "FLOAT64"),
    ])  # fmt: skip
    table.time_partitioning = bigquery.TimePartitioning(field="day")
    client.delete_table(table, not_found_ok=True)
    client.create_table(table)
    assert client.insert_rows_json(f"{PROJECT}.{DATASET}.legs", ROWS) == []
    yield client
    client.close()


@pytest.fixture(params=["storage", "rest"])
def conn(request: pytest.FixtureRequest, bq: object) -> BigQueryConnector:
    c = connector_for(_spec(), "eu.warehouse")
    assert isinstance(c, BigQueryConnector)
    c.use_storage_api = request.param == "storage"
    yield c
    c.close()


def test_discover(conn: BigQueryConnector) -> None:
    info = {t.name: t for t in conn.discover()}["legs"]
    assert info.rows == len(ROWS) and info.partitions == ("day",)
    assert info.schema.field("fare").type == pa.decimal128(38, 9)
    assert info.schema.field("dep").type == pa.timestamp("us", tz="UTC")
    assert info.schema.field("local").type == pa.timestamp("us")


def test_full_read_equals_source(conn: BigQueryConnector) -> None:
    req = ReadRequest("legs")
    got = pa.Table.from_batches(list(conn.read(req, conn.position(req)))).sort_by("id").to_pylist()
    assert conn.last_method == ("storage" if conn.use_storage_api else "rest")
    assert len(got) == len(ROWS)
    for row, src in zip(got, ROWS, strict=True):
        assert row["id"] == src["id"] and row["code"] == src["code"] and row["load"] == src["load"]
        assert row["fare"] == Decimal(src["fare"])
        assert row["dep"] == dt.datetime.fromisoformat(src["dep"])
        assert row["day"] == dt.date.fromisoformat(src["day"])
        assert row["local"] == dt.datetime.fromisoformat(src["local"])


def test_projection_filter_and_partition_pruning(conn: BigQueryConnector) -> None:
    req = ReadRequest("legs", columns=("id", "fare"), filter="day = DATE '2024-01-03' AND id > 10")
    got = pa.Table.from_batches(list(conn.read(req, conn.position(req))))
    assert got.column_names == ["id", "fare"]
    assert sorted(got.column("id").to_pylist()) == [r["id"] for r in ROWS if r["day"] == "2024-01-03" and r["id"] > 10]
    assert "day" in (conn.last_sql or "") and "id > 10" in (conn.last_sql or "")  # pushed into the request


def test_cursor_reads(conn: BigQueryConnector) -> None:
    req = ReadRequest("legs", columns=("id",), cursor="id")
    first = list(conn.read(req, ReadPosition(cursor_value=15)))
    upto = conn.position(req)
    assert upto.cursor_value == 40
    second = list(conn.read(req, upto, after=ReadPosition(cursor_value=15)))
    ids = sorted(pa.Table.from_batches(first).column("id").to_pylist()) + sorted(
        pa.Table.from_batches(second).column("id").to_pylist()
    )
    assert ids == list(range(1, 41))


def test_errors(conn: BigQueryConnector) -> None:
    with pytest.raises(SkyfedError, match=r"bigquery source eu.warehouse, table nope: not found"):
        conn.table_info("nope")
    with pytest.raises(SkyfedError, match=r"column 'cod' does not exist.*'code'"):
        list(conn.read(ReadRequest("legs", columns=("cod",)), ReadPosition()))


def test_unreachable_endpoint(federation: object) -> None:
    c = connector_for(_spec(endpoint="http://127.0.0.1:9"), "eu.warehouse")
    c.retry_deadline = 1.0  # type: ignore[attr-defined]
    with pytest.raises(SkyfedError, match=r"bigquery source eu.warehouse.*cannot reach BigQuery at http://127.0.0.1:9"):
        c.table_info("legs")
