"""The planner, pure: strategies, region pruning, partial aggregation shape, dialects (planning time is measured in bench/bench_query.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlglot

from skyfed.errors import SkyfedError
from skyfed.query.catalog import Catalog
from skyfed.query.planner import plan_query
from skyfed.spec import load_spec

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "airline" / "skyfed.yaml"

ROUTE_PROFIT = (
    "SELECT dep_airport, arr_airport, date_trunc('month', dep_time_utc) AS month, "
    "sum(revenue_usd - cost_usd) AS profit, sum(revenue_usd) / sum(cost_usd) AS margin, count(*) AS flights "
    "FROM flight_leg WHERE status <> 'cancelled' GROUP BY 1, 2, 3"
)
FUEL = (
    "SELECT aircraft_type, 100 * sum(fuel_kg) / sum(passengers * distance_km) AS fuel_kg_per_100_rpk "
    "FROM flight_leg WHERE status <> 'cancelled' GROUP BY aircraft_type"
)
SATISFACTION = (
    "SELECT region, date_trunc('month', submitted_at_utc) AS month, avg(satisfaction_0_100) AS satisfaction, "
    "count(*) AS answers FROM customer_feedback GROUP BY region, month"
)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.from_spec(load_spec(EXAMPLE, env={"SKYFED_HOME": "/tmp/skyfed-planner-test"}))


def regions(plan, i: int = 0) -> dict[str, str]:
    return {rq.region: rq.sql for rq in plan.fragments[i].regions}


def test_catalog_knows_tables_engines_and_pinned_regions(catalog: Catalog) -> None:
    # canonical tables are exactly the contracts some mapping feeds (the spec may add streaming ones)
    spec = load_spec(EXAMPLE, env={"SKYFED_HOME": "/tmp/skyfed-planner-test"})
    assert set(catalog.contracts) == {m.contract for m in spec.mappings}
    assert {"flight_leg", "booking", "customer_feedback"} <= set(catalog.contracts)
    assert set(catalog.reference) == {"airport", "aircraft_type", "fx_rate"}
    assert {r: t.engine for r, t in catalog.regions.items()} == {"latam": "duckdb", "eu": "bigquery", "na": "duckdb"}
    for target in catalog.regions.values():  # every mapping sets region to its own literal
        assert target.region_pinned == target.tables


def test_partial_aggregation_shape(catalog: Catalog) -> None:
    plan = plan_query(ROUTE_PROFIT, catalog)
    assert plan.strategy == "partial_aggregate"
    (frag,) = plan.fragments
    assert frag.columns == ["_sf_g0", "_sf_g1", "_sf_g2", "_sf_a0", "_sf_a1", "_sf_a2", "_sf_a3"]
    sql = regions(plan)
    latam = sqlglot.parse_one(sql["latam"], read="duckdb")
    assert latam.args["group"] is not None and len(latam.args["group"].expressions) == 3
    assert "FROM latam.flight_leg" in sql["latam"] and "WHERE flight_leg.status <> 'cancelled'" in sql["latam"]
    assert "TIMESTAMP_TRUNC(flight_leg.dep_time_utc, MONTH)" in sql["eu"]
    assert "`skyfed-eu`.eu_curated.flight_leg" in sql["eu"]
    coord = plan.coordinator_sql
    assert "FROM _sf_f0" in coord and "GROUP BY _sf_g0, _sf_g1, _sf_g2" in coord
    assert "CAST(COALESCE(SUM(_sf_a1), 0) AS BIGINT) AS flights" in coord  # count = sum of counts


def test_avg_becomes_sum_and_count(catalog: Catalog) -> None:
    plan = plan_query(SATISFACTION, catalog)
    assert plan.strategy == "partial_aggregate"
    latam = regions(plan)["latam"]
    assert "SUM(customer_feedback.satisfaction_0_100)" in latam and "COUNT(customer_feedback.satisfaction_0_100)" in latam
    assert "SUM(_sf_a0) / SUM(_sf_a1) AS satisfaction" in plan.coordinator_sql


def test_count_distinct_ships_distinct_pairs(catalog: Catalog) -> None:
    plan = plan_query("SELECT region, count(DISTINCT aircraft_type) n, sum(seats) s FROM flight_leg GROUP BY region", catalog)
    assert plan.strategy == "partial_aggregate"
    latam = sqlglot.parse_one(regions(plan)["latam"], read="duckdb")
    keys = [e.sql() for e in latam.args["group"].expressions]
    assert keys == ["flight_leg.region", "flight_leg.aircraft_type"]
    assert "COUNT(DISTINCT _sf_d0)" in plan.coordinator_sql and "SUM(_sf_a0)" in plan.coordinator_sql


def test_having_order_limit_evaluated_at_the_coordinator(catalog: Catalog) -> None:
    plan = plan_query(
        "SELECT dep_airport, count(*) n FROM flight_leg GROUP BY dep_airport HAVING count(*) > 3 ORDER BY n DESC LIMIT 5",
        catalog,
    )
    assert plan.strategy == "partial_aggregate"
    for sql in regions(plan).values():
        assert "HAVING" not in sql and "LIMIT" not in sql
    assert "HAVING CAST(COALESCE(SUM(_sf_a0), 0) AS BIGINT) > 3" in plan.coordinator_sql
    assert plan.coordinator_sql.endswith("ORDER BY n DESC LIMIT 5")


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT region, median(delay_min) FROM flight_leg GROUP BY region",
        "SELECT region, string_agg(flight_id, ',') FROM flight_leg GROUP BY region",
        "SELECT region, count(*) FILTER (WHERE seats > 100) FROM flight_leg GROUP BY region",
        "SELECT region, sum(seats) OVER () FROM flight_leg",
    ],
)
def test_non_decomposable_aggregates_fall_back(catalog: Catalog, sql: str) -> None:
    plan = plan_query(sql, catalog)
    assert plan.strategy == "scan"
    for f in plan.fragments:
        for rq in f.regions:
            assert "GROUP BY" not in rq.sql


@pytest.mark.parametrize(
    ("sql", "kept"),
    [
        ("SELECT count(*) FROM flight_leg WHERE region = 'eu'", {"eu"}),
        ("SELECT count(*) FROM flight_leg WHERE 'na' = region AND seats > 1", {"na"}),
        ("SELECT count(*) FROM flight_leg WHERE region IN ('eu', 'latam')", {"eu", "latam"}),
        ("SELECT flight_id FROM flight_leg WHERE region = 'eu' ORDER BY flight_id LIMIT 3", {"eu"}),
        ("SELECT * FROM flight_leg WHERE region = 'latam'", {"latam"}),
        ("SELECT * FROM flight_leg WHERE region = 'mars'", set()),
        ("SELECT count(*) FROM eu.flight_leg", {"eu"}),
        ("SELECT * FROM flight_leg WHERE region = 'eu' OR seats > 1", {"latam", "eu", "na"}),
    ],
)
def test_region_pruning(catalog: Catalog, sql: str, kept: set[str]) -> None:
    plan = plan_query(sql, catalog)
    assert set(regions(plan)) == kept
    assert set(plan.fragments[0].pruned) == {"latam", "eu", "na"} - kept


def test_outer_join_side_is_not_pruned_or_filtered(catalog: Catalog) -> None:
    plan = plan_query(
        "SELECT f.flight_id, b.booking_id FROM flight_leg f LEFT JOIN booking b ON b.flight_id = f.flight_id "
        "WHERE b.region = 'eu' OR b.region IS NULL",
        catalog,
    )
    booking = next(f for f in plan.fragments if f.tables == ["booking"])
    assert set(r.region for r in booking.regions) == {"latam", "eu", "na"}
    assert not booking.pushed_filters


def test_top_n_per_region(catalog: Catalog) -> None:
    plan = plan_query("SELECT flight_id, delay_min FROM flight_leg ORDER BY delay_min DESC, flight_id LIMIT 5 OFFSET 2", catalog)
    assert plan.strategy == "top_n"
    for sql in regions(plan).values():
        assert sql.endswith("LIMIT 7")
    assert plan.coordinator_sql.endswith("LIMIT 5 OFFSET 2")


def test_general_fallback_pushes_projection_and_single_table_filters(catalog: Catalog) -> None:
    plan = plan_query(
        "SELECT f.dep_airport, b.cabin, count(*) FROM flight_leg f JOIN booking b ON b.flight_id = f.flight_id "
        "WHERE f.seats > 100 AND b.cabin = 'business' AND f.passengers < b.fare_usd GROUP BY 1, 2",
        catalog,
    )
    assert plan.strategy == "scan"
    by_table = {f.tables[0]: f for f in plan.fragments}
    assert by_table["flight_leg"].columns == ["flight_id", "dep_airport", "seats", "passengers"]
    assert by_table["flight_leg"].pushed_filters == ["f.seats > 100"]
    assert by_table["booking"].pushed_filters == ["b.cabin = 'business'"]
    assert "f.passengers < b.fare_usd" in plan.coordinator_sql


def test_co_located_join_on_region_runs_per_region(catalog: Catalog) -> None:
    plan = plan_query(
        "SELECT f.region, b.cabin, count(*) n, sum(b.fare_usd) fare FROM flight_leg f "
        "JOIN booking b ON b.flight_id = f.flight_id AND b.region = f.region GROUP BY 1, 2",
        catalog,
    )
    assert plan.strategy == "partial_aggregate"
    assert "JOIN latam.booking AS b" in regions(plan)["latam"]
    # without the region equality the join is not known to be co-located
    plan = plan_query(
        "SELECT f.region, count(*) FROM flight_leg f JOIN booking b ON b.flight_id = f.flight_id GROUP BY 1", catalog
    )
    assert plan.strategy == "scan" and len(plan.fragments) == 2


def test_unsafe_bigquery_filters_stay_at_the_coordinator(catalog: Catalog) -> None:
    plan = plan_query("SELECT flight_id FROM flight_leg WHERE dep_time_utc >= TIMESTAMP '2024-03-01' AND seats > 1", catalog)
    sql = regions(plan)
    assert "CAST('2024-03-01' AS TIMESTAMP)" in sql["latam"]
    assert "TIMESTAMP" not in sql["eu"].split("WHERE")[1] and "seats > 1" in sql["eu"]
    assert "dep_time_utc >= CAST('2024-03-01' AS TIMESTAMP)" in plan.coordinator_sql


def test_reference_tables_join_at_the_coordinator(catalog: Catalog) -> None:
    plan = plan_query(
        "SELECT a.country, count(*) FROM flight_leg f JOIN airport a ON a.iata = f.dep_airport GROUP BY 1", catalog
    )
    assert plan.reference_tables == ["airport"]
    assert [f.tables for f in plan.fragments] == [["flight_leg"]]


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELECT * FROM nowhere", "nowhere"),
        ("SELECT * FROM mars.flight_leg", "no region 'mars'"),
        ("SELECT * FROM latam.ops.voos", "no such live source table"),
        ("SELECT no_such_column FROM flight_leg", "no_such_column"),
        ("DROP TABLE flight_leg", "refused"),
    ],
)
def test_bad_names_are_clear_errors(catalog: Catalog, sql: str, message: str) -> None:
    with pytest.raises(SkyfedError) as info:
        plan_query(sql, catalog)
    assert message in info.value.message
