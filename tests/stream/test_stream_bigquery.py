"""Change capture into a BigQuery curated store (the eu region's kind), against the BigQuery emulator:
the snapshot, then inserts, updates (the last change of a key wins) and deletes applied by key,
with the position in the same commit; the table equals the source (checksums).
"""

from __future__ import annotations

import pytest
from stream_kit import (
    CONTRACT,
    MAPPING,
    cdc_home,
    expected_items,
    need_env,
    pg,
    spec_doc,
)

from skyfed.ingest.stores import open_store, table_checksum
from skyfed.stream import runner

pytestmark = pytest.mark.services

DB = "skyfed_stream_bq"


@pytest.fixture(scope="module")
def setup(federation, tmp_path_factory):
    need_env("SKYFED_BQ_ENDPOINT")
    home = tmp_path_factory.mktemp("stream-bq-home")
    doc = spec_doc(DB, "bqstreamtest")
    doc["regions"]["latam"]["store"] = {"kind": "bigquery", "project": "skyfed-latam", "dataset": "stream_curated",
                                        "location": "southamerica-east1", "endpoint": "${SKYFED_BQ_ENDPOINT}"}  # fmt: skip
    seed = "INSERT INTO items (id, qty, note, price) SELECT g, g, 'seed', g * 1.5 FROM generate_series(1, 40) g"
    with cdc_home(home, DB, "bqstreamtest", seed=seed, doc=doc) as (path, spec):
        yield home, path, spec


def _store(spec):
    return open_store("latam", spec.regions["latam"].store)


def _same(spec) -> None:
    got, want = _store(spec).read(CONTRACT), expected_items(DB)
    assert got.num_rows == want.num_rows, f"curated has {got.num_rows} rows, the source {want.num_rows}"
    assert table_checksum(got) == table_checksum(want)


def test_cdc_upserts_and_deletes_into_bigquery(setup):
    home, path, spec = setup
    runner.run(spec, ["latam.ops"], until_idle=True, idle_seconds=0.5)  # the snapshot
    assert _store(spec).kind == "bigquery"
    _same(spec)
    with pg(DB) as con:
        con.execute("UPDATE items SET note = 'u1', qty = qty + 1 WHERE id <= 10")
        con.execute("UPDATE items SET note = 'u2' WHERE id <= 5")
        con.execute("DELETE FROM items WHERE id BETWEEN 30 AND 35")
        con.execute("INSERT INTO items (id, qty, note, price) VALUES (100, 1, 'new', 9.99), (101, 2, 'gone soon', 1)")
        con.execute("DELETE FROM items WHERE id = 101")
    stats = runner.run(spec, ["latam.ops"], until_idle=True, idle_seconds=0.5)["latam.ops"]
    assert stats.deleted >= 6 and stats.changes == 24
    _same(spec)
    pos = _store(spec).committed_position(CONTRACT, MAPPING)
    assert pos["kind"] == "pg_lsn" and pos["ordinal"] is None and not pos.get("snapshot")
    again = runner.run(spec, ["latam.ops"], until_idle=True, idle_seconds=0.5)["latam.ops"]  # nothing new, nothing doubled
    assert again.changes == 0
    _same(spec)
