"""Batch ingestion of the whole airline world equals the generator's ground truth.

Real services: PostgreSQL (latam), the BigQuery emulator (eu, source and curated
store), the GCS emulator (na); Iceberg tables in a local warehouse.
"""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from skyfed.contracts.types import contract_schema
from skyfed.ingest.batch import ingest
from skyfed.ingest.stores import open_store

pytestmark = pytest.mark.services


def curated(world, region: str, contract: str) -> pa.Table:
    store = open_store(region, world.spec.regions[region].store)
    return store.read(contract)


def truth(world, region: str, contract: str) -> pa.Table:
    table = pq.read_table(world.truth_dir / f"{contract}.parquet")
    table = table.filter(pc.equal(table["region"], region))
    key = world.spec.contracts[contract].key
    return table.sort_by([(k, "ascending") for k in key]).cast(contract_schema(world.spec.contracts[contract]))


STREAMING_ONLY = {"na_flight_events"}  # the na `events` Pub/Sub source: `skyfed stream` reads it


@pytest.fixture(scope="module")
def first_run(seeded_world):
    run_id, results, failures = ingest(seeded_world.spec, full_refresh=True)
    assert failures == [], [(m.name, e.message) for m, e in failures]
    skipped = {r.mapping: r for r in results if r.status == "skipped"}
    assert set(skipped) == STREAMING_ONLY, [(r.mapping, r.status) for r in results]
    return {r.mapping: r for r in results if r.status != "skipped"}


def test_streaming_only_mappings_are_skipped_with_a_note_unless_named(seeded_world, first_run) -> None:
    _, results, failures = ingest(seeded_world.spec)
    (skipped,) = [r for r in results if r.mapping == "na_flight_events"]
    assert skipped.status == "skipped" and skipped.rows_read == 0
    assert any("Pub/Sub" in n and "skyfed stream" in n for n in skipped.notes), skipped.notes
    _, results, failures = ingest(seeded_world.spec, ["na_flight_events"])
    assert results == []
    ((mapping, error),) = failures
    assert mapping.name == "na_flight_events" and "skyfed stream" in (error.hint or ""), error


def test_every_run_emits_openlineage_events(seeded_world, first_run) -> None:
    from skyfed.governance.lineage import events_path

    events = [json.loads(line) for line in Path(events_path()).read_text().splitlines() if line.strip()]
    seen = {(e["job"]["name"], e["run"]["runId"], e["eventType"]) for e in events}
    for r in first_run.values():  # OpenLineage wants a UUID: the run id is turned into one per job
        run_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"skyfed:{r.mapping}:{r.run_id}"))
        assert (r.mapping, run_uuid, "COMPLETE") in seen, r.mapping


def test_every_mapping_ran_and_accounts_for_every_row(seeded_world, first_run) -> None:
    assert set(first_run) == {m.name for m in seeded_world.spec.mappings} - STREAMING_ONLY
    for r in first_run.values():
        assert r.rows_read > 0, r.mapping
        assert r.rows_read == r.rows_loaded + r.rows_quarantined + r.rows_filtered, r.to_dict()
        assert r.rows_committed == r.rows_loaded - r.rows_superseded
        assert r.snapshot_id is not None


@pytest.mark.parametrize("region", ["latam", "eu", "na"])
@pytest.mark.parametrize("contract", ["flight_leg", "booking", "customer_feedback"])
def test_curated_tables_equal_ground_truth(seeded_world, first_run, region: str, contract: str) -> None:
    got = curated(seeded_world, region, contract)
    want = truth(seeded_world, region, contract)
    key = seeded_world.spec.contracts[contract].key[0]
    missing = set(want[key].to_pylist()) - set(got[key].to_pylist())
    extra = set(got[key].to_pylist()) - set(want[key].to_pylist())
    assert not missing and not extra, f"missing {sorted(missing)[:5]}, unexpected {sorted(extra)[:5]}"
    assert got.schema == want.schema
    for name in want.column_names:
        if not got[name].equals(want[name]):
            diff = pc.not_equal(got[name], want[name])
            idx = pc.indices_nonzero(pc.fill_null(diff, True)).to_pylist()[:3]
            key = seeded_world.spec.contracts[contract].key[0]
            pytest.fail(
                f"{region}.{contract}.{name} differs at {[got[key][i].as_py() for i in idx]}: "
                f"got {[got[name][i].as_py() for i in idx]}, want {[want[name][i].as_py() for i in idx]}"
            )


def test_quarantine_counts_match_the_expected_records(seeded_world, first_run) -> None:
    expected = pq.read_table(seeded_world.truth_dir / "quarantine_expected.parquet").to_pylist()
    want = Counter((q["region"], q["source_table"]) for q in expected)
    got = Counter()
    for r in first_run.values():
        got[(r.region, r.source_table)] += r.rows_quarantined
    want_by_mapping = {
        m.name: want[(m.source.split(".")[0], m.table)]
        for m in seeded_world.spec.mappings
        if m.name not in STREAMING_ONLY
    }
    got_by_mapping = {m: r.rows_quarantined for m, r in first_run.items()}
    assert got_by_mapping == want_by_mapping


def test_quarantine_records_carry_rule_raw_record_and_location(seeded_world, first_run) -> None:
    store = open_store("na", seeded_world.spec.regions["na"].store)
    rows = store.read("quarantine").to_pylist()
    assert rows, "na has malformed and invalid records"
    malformed = [r for r in rows if r["source_table"] == "flights" and "field" in (r["reason"] or "").lower()]
    assert malformed, "malformed CSV lines are quarantined with a reason"
    for r in rows:
        assert r["reason"] and r["location"] and r["raw"] is not None
    located = [r for r in rows if "/flights/dt=" in r["location"]]
    assert located and all(":" in r["location"] for r in located)


def test_second_run_loads_nothing_and_says_so(seeded_world, first_run) -> None:
    before = {
        (region, c): open_store(region, seeded_world.spec.regions[region].store).snapshot_id(c)
        for region in seeded_world.spec.regions
        for c in ("flight_leg", "booking", "customer_feedback")
    }
    _, results, failures = ingest(seeded_world.spec)
    assert not failures
    for r in results:
        if r.mapping in STREAMING_ONLY:
            continue
        assert r.rows_read == 0 and r.rows_loaded == 0, r.to_dict()
        assert r.status == "no_new_data"
    after = {
        (region, c): open_store(region, seeded_world.spec.regions[region].store).snapshot_id(c)
        for region in seeded_world.spec.regions
        for c in ("flight_leg", "booking", "customer_feedback")
    }
    assert after == before, "a run without new data commits nothing"


def test_incremental_run_reads_only_changed_rows_and_upserts_them(seeded_world, first_run) -> None:
    with psycopg.connect(
        host=os.environ["SKYFED_PG_HOST"],
        port=int(os.environ["SKYFED_PG_PORT"]),
        user=os.environ["SKYFED_PG_USER"],
        password=os.environ["SKYFED_PG_PASSWORD"],
        dbname="latam_ops",
    ) as con:
        ids = [r[0] for r in con.execute("SELECT id FROM voos ORDER BY id LIMIT 5").fetchall()]
        con.execute(
            "UPDATE voos SET atraso_min = 7, atualizado_em = (SELECT max(atualizado_em) FROM voos) + interval '1 hour' "
            "WHERE id = ANY(%s)",
            [ids],
        )
    _, results, failures = ingest(seeded_world.spec, ["latam_flights"])
    assert not failures
    (r,) = results
    assert r.rows_read == 5 and r.rows_loaded + r.rows_quarantined == 5
    table = curated(seeded_world, "latam", "flight_leg")
    changed = table.filter(pc.is_in(table["flight_id"], pa.array([f"LA-{i}" for i in ids])))
    loaded = [row for row in changed.to_pylist()]
    assert len(loaded) == r.rows_loaded
    assert all(row["delay_min"] == 7 for row in loaded)
    assert table.num_rows == first_run["latam_flights"].rows_committed, "upsert replaced, did not add"
