"""Each local stand-in works through the official Google Cloud / PostgreSQL client."""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.services


def test_postgres_select_1_and_logical_wal(federation):
    import psycopg

    assert federation["postgres"].state == "running"
    with psycopg.connect(
        host=os.environ["SKYFED_PG_HOST"],
        port=int(os.environ["SKYFED_PG_PORT"]),
        user=os.environ["SKYFED_PG_USER"],
        password=os.environ["SKYFED_PG_PASSWORD"],
        dbname="skyfed",
        connect_timeout=5,
    ) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        assert conn.execute("show wal_level").fetchone() == ("logical",)
        assert int(conn.execute("show max_replication_slots").fetchone()[0]) >= 10
        assert conn.execute("show max_slot_wal_keep_size").fetchone()[0] != "-1"
        assert conn.execute("select rolreplication from pg_roles where rolname = current_user").fetchone() == (True,)


def test_postgres_password_file_is_private(federation):
    pw = Path(federation.home) / "services" / "postgres" / "password"
    assert stat.S_IMODE(pw.stat().st_mode) == 0o600
    assert pw.read_text().strip() == os.environ["SKYFED_PG_PASSWORD"]


def test_postgres_rejects_wrong_password(federation):
    import psycopg

    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(
            host="127.0.0.1", port=int(os.environ["SKYFED_PG_PORT"]), user="skyfed",
            password="wrong", dbname="skyfed", connect_timeout=5,
        )  # fmt: skip


def test_bigquery_dataset_and_query(federation):
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    client = bigquery.Client(
        project="skyfed-test",
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=os.environ["SKYFED_BQ_ENDPOINT"]),
    )
    ds = f"ds_{uuid.uuid4().hex[:8]}"
    client.create_dataset(ds)
    client.query(f"create table {ds}.flights as select 'LH400' as flight, 2 as legs").result()
    rows = list(client.query(f"select flight, legs * @k as n from {ds}.flights", job_config=bigquery.QueryJobConfig(
        query_parameters=[bigquery.ScalarQueryParameter("k", "INT64", 21)]
    )).result())  # fmt: skip
    assert [(r.flight, r.n) for r in rows] == [("LH400", 42)]
    assert ds in [d.dataset_id for d in client.list_datasets()]


def test_gcs_bucket_upload_download(federation):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    assert os.environ["STORAGE_EMULATOR_HOST"].startswith("http://127.0.0.1:")
    client = storage.Client(project="skyfed-test", credentials=AnonymousCredentials())
    bucket = client.create_bucket(f"b-{uuid.uuid4().hex[:8]}")
    bucket.blob("raw/hello.txt").upload_from_string(b"hello skyfed")
    assert client.bucket(bucket.name).blob("raw/hello.txt").download_as_bytes() == b"hello skyfed"
    assert [b.name for b in client.list_blobs(bucket.name, prefix="raw/")] == ["raw/hello.txt"]


def test_pubsub_topic_publish_pull(federation):
    ps = federation["pubsub"]
    if ps.state != "running":
        pytest.fail(f"the Pub/Sub emulator is {ps.state}: {ps.detail}. To fix: {ps.hint}")
    from google.cloud import pubsub_v1

    project = "skyfed-test"
    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    topic = publisher.topic_path(project, f"t-{uuid.uuid4().hex[:8]}")
    sub = subscriber.subscription_path(project, f"s-{uuid.uuid4().hex[:8]}")
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=sub, topic=topic)
    publisher.publish(topic, b"wheels up", flight="LH400").result(timeout=30)
    resp = subscriber.pull(subscription=sub, max_messages=10, timeout=30)
    assert [(m.message.data, dict(m.message.attributes)) for m in resp.received_messages] == [
        (b"wheels up", {"flight": "LH400"})
    ]
    subscriber.acknowledge(subscription=sub, ack_ids=[m.ack_id for m in resp.received_messages])
    subscriber.close()
