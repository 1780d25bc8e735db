"""Phase 2: the result cache, --dry-run estimates, live source tables.

Real services and a seeded, ingested world per module (conftest.ingested_world). Tests
that commit to a store come last in their section; the others do not depend on exact data.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from skyfed.connectors.base import SOURCE_OBJECT, SOURCE_ROW, ReadRequest
from skyfed.connectors.registry import connector_for
from skyfed.ingest.stores import open_store
from skyfed.query import connect
from tests.query.test_federated import assert_same

pytestmark = pytest.mark.services

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "airline" / "skyfed.yaml"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="module")
def cached(ingested_world, clock, tmp_path_factory):
    return connect(ingested_world.spec, timeout=120, cache_ttl=60, clock=clock,
                   cache_dir=tmp_path_factory.mktemp("qcache"))  # fmt: skip


@pytest.fixture(scope="module")
def broken_eu_spec(ingested_world):
    spec = ingested_world.spec.model_copy(deep=True)
    spec.regions["eu"].store.endpoint = "http://127.0.0.1:9"  # nothing listens on the discard port
    return spec


# --------------------------------------------------------------------------- result cache

SQL = "SELECT region, count(*) AS n, sum(seats) AS s FROM flight_leg GROUP BY region ORDER BY region"
SQL_RESPELLED = "select   region ,COUNT(*)   as n, SUM( seats ) AS s\n  from FLIGHT_LEG -- same query\n group by REGION order BY region"


def test_cache_hit_ignores_whitespace_and_keyword_case(cached, colocated) -> None:
    first = cached.query(SQL)
    assert first.report.cache["status"] == "miss" and first.report.cache.get("stored")
    assert {r.region for r in first.report.regions} == {"latam", "eu", "na"}
    again = cached.query(SQL_RESPELLED)
    assert again.report.from_cache and again.report.cache["key"] == first.report.cache["key"]
    assert again.report.regions == [] and again.report.bytes_shipped == 0
    assert again.report.cache["age_seconds"] == 0.0  # the injected clock did not move
    assert_same(again.arrow(), colocated.execute(SQL).to_arrow_table(), True, SQL)
    assert again.arrow().equals(first.arrow())
    # a different literal, setting or query is a different key
    other = cached.query(SQL.replace("count(*)", "count(delay_min)"))
    assert not other.report.from_cache
    assert not cached.query(SQL, allow_partial=True).report.from_cache


def test_cache_expires_after_the_ttl(cached, clock) -> None:
    sql = "SELECT status, max(delay_min) AS m FROM flight_leg GROUP BY status"
    assert not cached.query(sql).report.from_cache
    clock.now += 30
    hit = cached.query(sql)
    assert hit.report.from_cache and hit.report.cache["age_seconds"] == pytest.approx(30)
    clock.now += 31  # 61 s old, TTL 60 s
    miss = cached.query(sql)
    assert miss.report.cache["status"] == "miss" and miss.report.regions
    assert cached.query(sql).report.from_cache  # the recomputed answer is cached again


def test_partial_answers_are_not_cached(ingested_world, broken_eu_spec, cached, colocated) -> None:
    sql = "SELECT region, count(*) AS n FROM flight_leg GROUP BY region"
    broken = connect(broken_eu_spec, timeout=20, cache_dir=cached.cache.root, clock=cached.cache.clock)
    partial = broken.query(sql, allow_partial=True)
    assert partial.partial and not partial.report.from_cache
    assert partial.report.cache["status"] in ("not_cacheable", "not_stored") and "eu" in partial.report.cache["reason"]
    full = cached.query(sql, allow_partial=True)
    assert not full.report.from_cache and not full.partial
    assert_same(full.arrow(), colocated.execute(sql).to_arrow_table(), False, sql)


def test_cli_second_process_hits_the_cache(ingested_world, run_cli) -> None:
    sql = "SELECT aircraft_type, count(*) AS n FROM flight_leg GROUP BY 1 ORDER BY 1"
    spec = str(EXAMPLE)
    first = run_cli("query", sql, "--spec", spec, "--json")
    assert first.code == 0, first.stderr
    second = run_cli("query", "SELECT aircraft_type, COUNT(*) AS n FROM flight_leg GROUP BY 1 ORDER BY 1", "--spec", spec,
                     "--format", "json", "--report")  # fmt: skip
    assert second.code == 0, second.stderr
    a, b = json.loads(first.stdout), json.loads(second.stdout)
    assert a["report"]["cache"]["status"] == "miss" and b["report"]["cache"]["status"] == "hit"
    assert a["rows"] == b["rows"]
    assert "from the result cache" in second.stderr
    off = run_cli("query", sql, "--spec", spec, "--json", "--no-cache")
    assert off.code == 0 and json.loads(off.stdout)["report"]["cache"]["status"] == "off"


def test_a_commit_to_one_region_invalidates(cached, ingested_world) -> None:
    sql = "SELECT region, sum(passengers) AS p FROM flight_leg GROUP BY region ORDER BY region"
    before = cached.query(sql)
    assert cached.query(sql).report.from_cache
    # commit one changed row to eu's BigQuery store (as an ingest run would), then to na's Iceberg store
    for region in ("eu", "na"):
        store = open_store(region, ingested_world.spec.regions[region].store)
        row = store.read("flight_leg").slice(0, 1)
        row = row.set_column(row.schema.get_field_index("passengers"), "passengers",
                             pc.cast(pc.add(row["passengers"], 1), pa.int32()))  # fmt: skip
        mapping = f"{region}_flights"
        store.commit("flight_leg", row, key=["flight_id"], mapping=mapping,
                     position=store.committed_position("flight_leg", mapping) or {}, run_id=f"test-{region}")  # fmt: skip
        after = cached.query(sql)
        assert not after.report.from_cache, region
        got = dict(zip(after.arrow()["region"].to_pylist(), after.arrow()["p"].to_pylist()))
        old = dict(zip(before.arrow()["region"].to_pylist(), before.arrow()["p"].to_pylist()))
        assert got[region] == old[region] + 1
        before = after
        assert cached.query(sql).report.from_cache


# --------------------------------------------------------------------------- dry run


def test_dry_run_estimates_without_running(cached) -> None:
    est = cached.estimate("SELECT region, count(*), sum(fuel_kg) FROM flight_leg WHERE status <> 'cancelled' GROUP BY region")
    assert est["strategy"] == "partial_aggregate" and est["region_queries_run"] == 0 and est["complete"]
    by = {r["region"]: r for r in est["regions"]}
    assert set(by) == {"latam", "eu", "na"}
    for region in ("latam", "na"):
        assert by[region]["scanned_source"] == "iceberg manifests" and by[region]["bytes_scanned"] > 0
        assert by[region]["rows_after_filters"] > 0
    assert "bigquery" in by["eu"]["scanned_source"] and by["eu"]["bytes_scanned"] > 0
    # partial aggregation by region: one group per region crosses each boundary
    assert all(r["boundary_rows"] == 1 and r["boundary_bytes"] > 0 for r in est["regions"])
    assert by["latam"]["egress_usd"] == 0.0 and by["eu"]["egress_usd"] == pytest.approx(by["eu"]["boundary_bytes"] / 1e9 * 0.12)


def test_dry_run_pruning_and_partition_filters(cached) -> None:
    est = cached.estimate("SELECT flight_id FROM flight_leg WHERE region = 'latam'")
    assert [r["region"] for r in est["regions"]] == ["latam"]
    assert {p["region"]: p["bytes_scanned"] for p in est["pruned"]} == {"eu": 0, "na": 0}
    whole = cached.estimate("SELECT flight_id, fuel_kg FROM latam.flight_leg")["regions"][0]
    march = cached.estimate("SELECT flight_id, fuel_kg FROM latam.flight_leg WHERE dep_time_utc >= TIMESTAMPTZ "
                            "'2024-03-01 00:00:00+00' AND dep_time_utc < TIMESTAMPTZ '2024-04-01 00:00:00+00'")["regions"][0]  # fmt: skip
    assert 0 < march["bytes_scanned"] < whole["bytes_scanned"]
    assert march["files"] < whole["files"] and march["pruning_filters"]
    narrow = cached.estimate("SELECT flight_id FROM latam.flight_leg")["regions"][0]
    assert narrow["bytes_scanned"] < whole["bytes_scanned"]  # projected columns only
    assert narrow["boundary_rows"] == whole["rows_after_filters"]


def test_dry_run_does_not_touch_a_dead_region_engine(broken_eu_spec) -> None:
    fed = connect(broken_eu_spec, timeout=20, cache=False)
    est = fed.estimate("SELECT region, count(*) FROM flight_leg GROUP BY region")
    by = {r["region"]: r for r in est["regions"]}
    assert by["latam"]["bytes_scanned"] > 0 and by["na"]["bytes_scanned"] > 0
    assert by["eu"]["error"] and not est["complete"]
    assert fed.estimate("SELECT count(*) FROM flight_leg WHERE region IN ('latam', 'na')")["complete"]


def test_cli_dry_run(ingested_world, run_cli) -> None:
    res = run_cli("query", "SELECT region, count(*) FROM flight_leg GROUP BY region", "--spec", str(EXAMPLE), "--dry-run", "--json")
    assert res.code == 0, res.stderr
    est = json.loads(res.stdout)
    assert est["region_queries_run"] == 0 and len(est["regions"]) == 3
    res = run_cli("query", "SELECT region, count(*) FROM flight_leg GROUP BY region", "--spec", str(EXAMPLE), "--dry-run")
    assert res.code == 0 and "dry run" in res.stdout and "total: scanned" in res.stdout


# --------------------------------------------------------------------------- live source tables


def read_direct(spec, region: str, source: str, table: str) -> pa.Table:
    """The source table as its connector reads it (the oracle for live queries)."""
    conn = connector_for(spec.regions[region].sources[source], f"{region}.{source}")
    try:
        req = ReadRequest(table)
        skipped: list = []  # malformed records: skipped, as the live read does
        batches = list(conn.read(req, conn.position(req), rejects=skipped.append))
    finally:
        conn.close()
    data = pa.Table.from_batches(batches)
    return data.select([c for c in data.column_names if c not in (SOURCE_OBJECT, SOURCE_ROW)])


@pytest.fixture(scope="module")
def direct(ingested_world, colocated) -> duckdb.DuckDBPyConnection:
    """colocated + the live tables read through their connectors, as voos / flights / feedback."""
    spec = ingested_world.spec
    for region, source, table, alias in [("latam", "ops", "voos", "voos"), ("eu", "ops", "flights", "eu_flights"),
                                         ("eu", "ops", "feedback", "eu_feedback"),
                                         ("na", "exports", "flights", "na_flights")]:  # fmt: skip
        colocated.register(f"_d_{alias}", read_direct(spec, region, source, table))
        colocated.execute(f"CREATE OR REPLACE TABLE {alias} AS SELECT * FROM _d_{alias}")
    return colocated


LIVE = [
    # (federated SQL, oracle SQL over the directly read tables, strategy)
    ("SELECT situacao, count(*) AS n, sum(passageiros) AS p, avg(combustivel_litros) AS f FROM latam.ops.voos "
     "WHERE assentos > 150 GROUP BY situacao", None, "single_region"),
    ("SELECT id, numero_voo, partida_local FROM latam.ops.voos WHERE origem = 'GRU' AND atraso_min IS NOT NULL", None, "single_region"),
    ("SELECT f.flight_id, v.numero_voo, f.fuel_kg FROM latam.flight_leg f JOIN latam.ops.voos v "
     "ON f.flight_id = 'LA-' || CAST(v.id AS VARCHAR) WHERE v.assentos > 150", None, "single_region"),
    ("SELECT status, count(*) AS n, sum(passengers) AS p, min(scheduled_departure) AS first FROM eu.ops.flights "
     "WHERE seats > 150 GROUP BY status", None, "single_region"),
    ("SELECT flight_id, origin, destination FROM eu.ops.flights WHERE origin IN ('LHR', 'CDG') ORDER BY flight_id LIMIT 5",
     None, "single_region"),
    ("SELECT v.origem, count(*) AS n FROM latam.ops.voos v JOIN eu.ops.flights e ON v.destino = e.origin GROUP BY 1", None, "scan"),
    ("SELECT e.status, count(*) AS n, avg(c.csat) AS csat FROM eu.ops.flights e JOIN eu.ops.feedback c "
     "ON c.flight_id = e.flight_id GROUP BY 1", None, "single_region"),
    # files: hive partition pruning, projection and filter pushdown
    ("SELECT status, count(*) AS n, min(origin) AS o FROM na.exports.flights WHERE dt >= '2024-03-01' AND dt < '2024-03-08' "
     "GROUP BY status", None, "single_region"),
    ("SELECT origin, destination, dt FROM na.exports.flights WHERE dt = '2024-02-10' AND status <> 'cancelled'", None,
     "single_region"),
]


def _oracle(sql: str) -> str:
    return (sql.replace("latam.ops.voos", "voos").replace("eu.ops.flights", "eu_flights")
            .replace("eu.ops.feedback", "eu_feedback").replace("na.exports.flights", "na_flights"))  # fmt: skip


@pytest.mark.parametrize(("sql", "oracle", "strategy"), LIVE, ids=[f"live{i}" for i in range(len(LIVE))])
def test_live_table_equals_reading_it_through_its_connector(cached, direct, sql, oracle, strategy) -> None:
    result = cached.query(sql)
    want = direct.execute(oracle or _oracle(sql)).to_arrow_table()
    assert result.report.strategy == strategy, cached.explain(sql)
    assert want.num_rows > 0, sql
    assert_same(result.arrow(), want, "ORDER BY" in sql, sql)
    assert result.report.cache["status"] == "not_cacheable" and "live" in result.report.cache["reason"]


def test_live_files_read_only_matching_partitions_and_columns(cached, ingested_world) -> None:
    from skyfed.connectors.base import ReadRequest
    from skyfed.connectors.registry import connector_for
    from skyfed.query.live import prune_partitions, read_files_table

    sql = "SELECT flight_id, status FROM na.exports.flights WHERE dt = '2024-02-10' AND status <> 'cancelled'"
    plan = cached.explain(sql)
    (rq,) = plan["fragments"][0]["regions"]
    reads = rq["file_reads"]["na__exports__flights"]
    assert set(reads["columns"]) == {"flight_id", "status", "dt"}  # dt: the region's WHERE needs it too
    assert set(reads["filters"]) == {"dt = '2024-02-10'", "status <> 'cancelled'"}
    spec = ingested_world.spec
    conn = connector_for(spec.regions["na"].sources["exports"], "na.exports")
    try:
        upto = conn.position(ReadRequest("flights"))
    finally:
        conn.close()
    kept = prune_partitions(upto, reads["filters"])
    assert 0 < len(kept.objects) < len(upto.objects)
    assert all("dt=2024-02-10/" in k for k in kept.objects)
    live = cached.catalog.live["na__exports__flights"]
    data, _ = read_files_table(spec, live, reads["columns"], reads["filters"])
    assert set(data.column_names) <= {"flight_id", "status", "dt"} and data.num_rows > 0
    everything, _ = read_files_table(spec, live)
    import duckdb

    want = duckdb.sql("SELECT count(*) FROM everything WHERE dt = '2024-02-10' AND status <> 'cancelled'").fetchone()[0]
    assert data.num_rows == want


def test_live_postgres_filters_reach_postgres(cached) -> None:
    plan = cached.explain("SELECT id FROM latam.ops.voos WHERE assentos > 150")
    (frag,) = plan["fragments"]
    assert frag["regions"][0]["engine"] == "duckdb" and "latam__ops.public.voos" in frag["regions"][0]["sql"]
    assert set(frag["pruned"]) == {"eu", "na"}
    est = cached.estimate("SELECT id FROM latam.ops.voos WHERE assentos > 150")
    assert est["regions"][0]["bytes_scanned"] > 0 and "postgres" in est["regions"][0]["scanned_source"]


def test_unknown_live_table_is_a_clear_error(cached) -> None:
    from skyfed.errors import SkyfedError

    with pytest.raises(SkyfedError) as info:
        cached.query("SELECT * FROM latam.ops.nope")
    assert "nope" in info.value.message
    with pytest.raises(SkyfedError) as info:
        cached.query("SELECT * FROM latam.nosuch.voos")
    assert "no source 'nosuch'" in info.value.message


# --------------------------------------------------------------------------- figures (printed with -s)

CORE = {
    "route_profitability": "SELECT dep_airport, arr_airport, date_trunc('month', dep_time_utc) AS month, "
    "sum(revenue_usd - cost_usd) AS profit, count(*) AS flights FROM flight_leg WHERE status <> 'cancelled' GROUP BY 1, 2, 3",
    "fuel_per_100_rpk": "SELECT aircraft_type, 100 * sum(fuel_kg) / sum(passengers * distance_km) AS f FROM flight_leg "
    "WHERE status <> 'cancelled' GROUP BY aircraft_type",
    "satisfaction": "SELECT region, date_trunc('month', submitted_at_utc) AS month, avg(satisfaction_0_100) AS s, "
    "count(*) AS n FROM customer_feedback GROUP BY 1, 2",
}


@pytest.mark.parametrize("metric", list(CORE))
def test_estimates_are_within_an_order_of_magnitude_and_hits_are_fast(cached, metric) -> None:
    sql = CORE[metric]
    est = cached.estimate(sql)
    run = cached.query(sql, use_cache=False)
    hit_first = cached.query(sql)  # stores
    hit = cached.query(sql)
    assert hit.report.from_cache and hit_first.report.cache["status"] == "miss"
    actual = {r.region: r for r in run.report.regions}
    for r in est["regions"]:
        got = actual[r["region"]]
        ratio = r["boundary_bytes"] / max(1, got.bytes)
        print(f"{metric} {r['region']}: est. scanned {r['bytes_scanned']} B ({r['scanned_source']}), est. shipped "
              f"{r['boundary_rows']} rows / {r['boundary_bytes']} B vs actual {got.rows} rows / {got.bytes} B (x{ratio:.2f})")  # fmt: skip
        assert 0.05 < ratio < 20, (metric, r, got)
    print(f"{metric}: run {run.report.total_seconds:.3f} s; cache miss+store {hit_first.report.total_seconds:.3f} s "
          f"(lookup {hit_first.report.cache['lookup_ms']:.0f} ms); hit {hit.report.total_seconds:.3f} s "
          f"(lookup {hit.report.cache['lookup_ms']:.0f} ms); estimate {est['estimate_seconds']:.3f} s")  # fmt: skip
    assert hit.report.bytes_shipped == 0 and hit.report.regions == []  # timing is not asserted: the machine is shared
