"""File arrivals: new or replaced objects under a Cloud Storage prefix (the emulator) are
ingested once, polled by generation, the generations committed as the position."""

from __future__ import annotations

import pytest
from envkit import env_vars
from stream_kit import load, need_env, write_spec

from skyfed.ingest.stores import open_store
from skyfed.stream import runner

pytestmark = pytest.mark.services

BUCKET = "stream-test-drops"


@pytest.fixture(scope="module")
def setup(federation, tmp_path_factory):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    need_env("STORAGE_EMULATOR_HOST")
    home = tmp_path_factory.mktemp("stream-files-home")
    with env_vars(SKYFED_HOME=str(home)):
        client = storage.Client(project="stream-test", credentials=AnonymousCredentials())
        bucket = client.bucket(BUCKET)
        if not bucket.exists():
            bucket = client.create_bucket(BUCKET)
        doc = {
            "skyfed": 1, "name": "filestest",
            "regions": {"na": {"project": "p", "location": "us-east1",
                               "store": {"kind": "iceberg", "warehouse": "${SKYFED_HOME}/warehouse/na"},
                               "sources": {"drops": {"kind": "gcs", "bucket": BUCKET, "prefix": "in",
                                                     "endpoint": "${STORAGE_EMULATOR_HOST}",
                                                     "tables": {"readings": {"pattern": "readings/*.csv", "format": "csv"}}}}}},
            "contracts": {"reading": {"version": 1, "key": ["reading_id"], "columns": {
                "reading_id": {"type": "string", "nullable": False}, "value": {"type": "double", "checks": {"min": 0}}}}},
            "mappings": [{"name": "na_readings", "source": "na.drops", "table": "readings", "contract": "reading",
                          "key": ["id"], "columns": {"reading_id": "'R-' || id", "value": "TRY_CAST(v AS DOUBLE)"}}],
        }  # fmt: skip
        yield bucket, load(write_spec(home / "skyfed.yaml", doc))


def _rows(spec) -> dict[str, float]:
    t = open_store("na", spec.regions["na"].store).read("reading")
    return dict(zip(t["reading_id"].to_pylist(), t["value"].to_pylist()))


def _stream(spec) -> int:
    return runner.run(spec, ["na.drops"], until_idle=True, idle_seconds=0.5)["na.drops"].changes


def test_new_and_replaced_objects_are_ingested_once(setup):
    bucket, spec = setup
    bucket.blob("in/readings/a.csv").upload_from_string("id,v\n1,1.5\n2,2.5\n")
    assert _stream(spec) == 2
    assert _rows(spec) == {"R-1": 1.5, "R-2": 2.5}
    assert _stream(spec) == 0  # nothing new: nothing read again
    bucket.blob("in/readings/b.csv").upload_from_string("id,v\n3,3.5\n")
    bucket.blob("in/readings/a.csv").upload_from_string("id,v\n1,10.0\n2,2.5\n")  # a new generation
    assert _stream(spec) == 3  # b.csv, and a.csv once more as a whole
    assert _rows(spec) == {"R-1": 10.0, "R-2": 2.5, "R-3": 3.5}
    pos = open_store("na", spec.regions["na"].store).committed_position("reading", "na_readings")
    assert set(pos["objects"]) == {"readings/a.csv", "readings/b.csv"}
    assert _stream(spec) == 0
