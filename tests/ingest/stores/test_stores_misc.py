"""Checksum, metadata database location, and an Iceberg warehouse in Cloud Storage (the emulator)."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pyarrow as pa

from skyfed.catalog.metadata import ENV_VAR, metadata_url, redact
from skyfed.contracts.types import contract_schema
from skyfed.ingest.stores import open_store, table_checksum
from skyfed.spec.models import IcebergStore
from stores_testdata import CONTRACT, flights


def test_checksum_ignores_order_and_chunking_but_not_content() -> None:
    t = flights(range(200), 3)
    shuffled = t.take(pa.array(list(range(199, -1, -1))))
    chunked = pa.concat_tables([t.slice(0, 17), t.slice(17, 100), t.slice(117)])
    assert table_checksum(t) == table_checksum(shuffled) == table_checksum(chunked)
    assert table_checksum(t) == table_checksum(t.cast(contract_schema(CONTRACT)))  # field metadata does not count
    changed = t.set_column(5, "revenue_usd", pa.array([Decimal("0.01")] * 200, pa.decimal128(18, 2)))
    assert table_checksum(changed) != table_checksum(t)
    assert table_checksum(t.slice(1)) != table_checksum(t)
    nulls = pa.table({"a": pa.array([1, None], pa.int64())})
    assert table_checksum(nulls) != table_checksum(pa.table({"a": pa.array([1, 0], pa.int64())}))
    assert table_checksum(nulls) == table_checksum(nulls.take([1, 0]))


def test_metadata_url_default_env_and_redaction(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SKYFED_HOME", str(tmp_path))
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert metadata_url() == f"sqlite:///{tmp_path.resolve() / 'catalog.db'}"
    monkeypatch.setenv(ENV_VAR, "postgresql+psycopg://u:secret@db:5432/skyfed")
    assert metadata_url().startswith("postgresql+psycopg://")
    assert metadata_url("sqlite:///x.db") == "sqlite:///x.db"
    assert redact(metadata_url()) == "postgresql+psycopg://u:***@db:5432/skyfed"


def test_iceberg_catalog_in_postgres_and_warehouse_in_gcs(federation, tmp_path, monkeypatch) -> None:
    """The GCP shape: catalog tables in PostgreSQL (Cloud SQL), data files in a gs:// bucket."""
    import os

    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    monkeypatch.setenv("SKYFED_HOME", str(tmp_path))
    bucket = f"skyfed-latam-{uuid.uuid4().hex[:8]}"
    storage.Client(project="skyfed-local", credentials=AnonymousCredentials()).create_bucket(bucket)
    e = os.environ
    url = (
        f"postgresql+psycopg://{e['SKYFED_PG_USER']}:{e['SKYFED_PG_PASSWORD']}@{e['SKYFED_PG_HOST']}:"
        f"{e['SKYFED_PG_PORT']}/skyfed"
    )
    store = open_store("latam", IcebergStore(kind="iceberg", warehouse=f"gs://{bucket}/warehouse"), url)
    table = f"flight_leg_{uuid.uuid4().hex[:6]}"
    store.ensure_table(table, CONTRACT)
    store.commit(table, flights(range(100)), key=["flight_id"], mapping="ops", position={"c": 1}, run_id="r1")
    store.commit(table, flights(range(50, 120), 1), key=["flight_id"], mapping="ops", position={"c": 2}, run_id="r2")
    assert store.read(table).num_rows == 120
    assert store.committed_position(table, "ops") == {"c": 2}
    blobs = [b.name for b in storage.Client(project="skyfed-local", credentials=AnonymousCredentials()).list_blobs(bucket)]
    assert any(b.endswith(".parquet") for b in blobs) and any(b.endswith(".metadata.json") for b in blobs)
