"""Against real services (a seeded, ingested world, conftest.ingested_world):

- a cached plan stays right when the data changes (snapshots change results, not plans);
- `--dry-run` for a governed caller still prunes Iceberg files, and accounts for semi-join keys and
  broadcast reference tables shipped into regions (saying what it assumed);
- BigQuery reference copies `_skyfed_ref_<name>_<version>`: a new file version drops the older copies
  (the emulator ignores table expiration, so the explicit drop is what is tested).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from skyfed.ingest.stores import open_store
from skyfed.query import connect
from skyfed.query.broadcast import BIGQUERY_PREFIX
from skyfed.query.plan_cache import PLANS

pytestmark = pytest.mark.services

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "airline" / "skyfed.yaml"
GOVERNANCE = EXAMPLE.parent / "skyfed.governance.yaml"
MARCH = ("SELECT flight_id, fuel_kg FROM latam.flight_leg WHERE dep_time_utc >= TIMESTAMPTZ '2024-03-01 00:00:00+00' "
         "AND dep_time_utc < TIMESTAMPTZ '2024-04-01 00:00:00+00'")  # fmt: skip
SEMI = ("SELECT b.booking_id, b.fare_usd, f.dep_airport FROM booking b JOIN flight_leg f ON f.flight_id = b.flight_id "
        "WHERE f.status = 'cancelled'")  # fmt: skip
AIRPORT_JOIN = "SELECT a.country, count(*) AS n FROM {t} f JOIN airport a ON a.iata = f.dep_airport GROUP BY a.country"


@pytest.fixture(scope="module")
def plain(ingested_world):
    return connect(ingested_world.spec, timeout=120, cache=False)


@pytest.fixture(scope="module")
def analyst(ingested_world):
    return connect(ingested_world.spec, timeout=120, cache=False, role="analyst", governance=str(GOVERNANCE))


def test_governed_dry_run_prunes_iceberg_files_like_an_ungoverned_one(plain, analyst, monkeypatch) -> None:
    monkeypatch.setenv("SKYFED_MASK_SALT", "dry-run-salt")
    whole = plain.estimate("SELECT flight_id, fuel_kg FROM latam.flight_leg")["regions"][0]
    ungoverned = plain.estimate(MARCH)["regions"][0]
    governed = analyst.estimate(MARCH)["regions"][0]
    assert governed["files"] < whole["files"] and governed["pruning_filters"], governed
    assert governed["bytes_scanned"] == ungoverned["bytes_scanned"] < whole["bytes_scanned"]
    assert governed["rows_after_filters"] == ungoverned["rows_after_filters"]


def test_dry_run_accounts_for_semi_join_keys(plain) -> None:
    plan = plain.plan(SEMI)
    probe = next(f for f in plan.fragments if f.semi_join is not None)
    est = plain.estimate(SEMI)
    probe_rows = [r for r in est["regions"] if r["fragment"] == probe.name]
    assert probe_rows and all(r["semi_join_key_bytes"] > 0 for r in probe_rows), probe_rows
    assert all(r["boundary_rows"] < r["rows_after_filters"] for r in probe_rows)  # only rows with a shipped key cross
    assert est["semi_join_key_bytes"] == sum(r["semi_join_key_bytes"] for r in est["regions"])
    assert any("semi-join" in a for a in est["assumptions"])
    ran = plain.query(SEMI).report
    assert ran.semi_join_key_bytes > 0  # the run ships keys too, as estimated


def test_dry_run_accounts_for_broadcast_reference_tables(plain, ingested_world) -> None:
    sql = AIRPORT_JOIN.format(t="flight_leg")
    plain.query(sql)  # eu's BigQuery copy of this airport file version now exists
    est = plain.estimate(sql)
    by = {r["region"]: r for r in est["regions"]}
    info = plain.catalog.broadcast["airport"]
    assert est["complete"], [r.get("error") for r in est["regions"]]
    assert by["latam"]["broadcast_bytes"] == by["na"]["broadcast_bytes"] == info.bytes > 0
    assert by["eu"]["broadcast_bytes"] == 0  # reused copy
    assert est["broadcast_bytes"] == 2 * info.bytes
    assert by["na"]["inbound_egress_usd"] > 0 and by["latam"]["inbound_egress_usd"] == 0.0  # latam coordinates
    assert any("does not exist" not in a and "exists" in a for a in est["assumptions"])


def test_a_cached_plan_reads_the_new_snapshot(plain, ingested_world) -> None:
    sql = "SELECT region, sum(passengers) AS p FROM flight_leg GROUP BY region ORDER BY region"
    PLANS.clear()
    before = plain.query(sql)
    assert before.report.plan_cache == "miss"
    store = open_store("na", ingested_world.spec.regions["na"].store)
    row = store.read("flight_leg").slice(0, 1)
    row = row.set_column(row.schema.get_field_index("passengers"), "passengers",
                         pc.cast(pc.add(row["passengers"], 5), pa.int32()))  # fmt: skip
    store.commit("flight_leg", row, key=["flight_id"], mapping="na_flights",
                 position=store.committed_position("flight_leg", "na_flights") or {}, run_id="test-plan-reuse")  # fmt: skip
    after = plain.query(sql)
    assert after.report.plan_cache == "hit"
    old = dict(zip(before.arrow()["region"].to_pylist(), before.arrow()["p"].to_pylist()))
    new = dict(zip(after.arrow()["region"].to_pylist(), after.arrow()["p"].to_pylist()))
    assert new == {**old, "na": old["na"] + 5}


def test_a_new_reference_version_drops_the_old_bigquery_copy(plain, ingested_world) -> None:
    from skyfed.ingest.stores.bigquery import _client

    store = ingested_world.spec.regions["eu"].store
    client = _client(store)

    def copies() -> list[str]:
        prefix = f"{BIGQUERY_PREFIX}airport_"
        return sorted(t.table_id for t in client.list_tables(f"{store.project}.{store.dataset}")
                      if t.table_id.startswith(prefix))  # fmt: skip

    sql = AIRPORT_JOIN.format(t="eu.flight_leg")
    first = plain.query(sql)
    old = plain.catalog.broadcast["airport"].bigquery_table
    assert old in copies()
    path = Path(ingested_world.spec.reference["airport"].path)
    pq.write_table(pq.read_table(path), path)  # the same rows, a new file version
    second = plain.query(sql)
    new = plain.catalog.broadcast["airport"].bigquery_table
    assert new != old and copies() == [new]
    assert second.arrow().sort_by("country").equals(first.arrow().sort_by("country"))
