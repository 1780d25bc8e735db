"""The planner's join strategies, pure: broadcast reference tables, semi-join key shipping,
co-located per-region joins, and single-region queries that run whole in BigQuery."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from skyfed.query.broadcast import BroadcastTable, broadcastable
from skyfed.query.catalog import Catalog
from skyfed.query.planner import plan_query
from skyfed.spec import load_spec

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "airline" / "skyfed.yaml"


@pytest.fixture()
def catalog() -> Catalog:
    cat = Catalog.from_spec(load_spec(EXAMPLE, env={"SKYFED_HOME": "/tmp/skyfed-planner-test"}))
    cat.broadcast = {"airport": BroadcastTable("airport", "/nowhere/airport.parquet", "v1", 7884, 600_000),
                     "aircraft_type": BroadcastTable("aircraft_type", "/nowhere/t.parquet", "v2", 6, 500)}  # fmt: skip
    return cat


def by_region(plan, i: int = 0) -> dict[str, object]:
    return {rq.region: rq for rq in plan.fragments[i].regions}


def test_small_reference_table_is_broadcast_and_the_join_pushes_down(catalog: Catalog) -> None:
    sql = "SELECT a.country, count(*) n, sum(f.passengers) p FROM flight_leg f JOIN airport a ON a.iata = f.dep_airport GROUP BY 1"
    plan = plan_query(sql, catalog)
    assert plan.strategy == "partial_aggregate"
    assert plan.reference_tables == ["airport"]  # its version is part of the cache key
    rqs = by_region(plan)
    assert set(rqs) == {"latam", "eu", "na"}
    assert "JOIN _sf_ref_airport AS a" in rqs["latam"].sql and rqs["latam"].broadcast == ["airport"]
    assert "`skyfed-eu`.eu_curated._skyfed_ref_airport_v1 AS a" in rqs["eu"].sql
    assert "GROUP BY a.country" in rqs["na"].sql
    # USING with a broadcast table, several broadcast tables, and a comma join push down too
    both = plan_query("SELECT t.body, a.country, sum(f.fuel_kg) FROM flight_leg f JOIN aircraft_type t USING (aircraft_type) "
                      "JOIN airport a ON a.iata = f.arr_airport GROUP BY 1, 2", catalog)  # fmt: skip
    assert both.strategy == "partial_aggregate" and by_region(both)["na"].broadcast == ["aircraft_type", "airport"]


def test_reference_table_that_is_not_small_stays_at_the_coordinator(catalog: Catalog) -> None:
    catalog.broadcast.pop("airport")
    plan = plan_query("SELECT a.country, count(*) FROM flight_leg f JOIN airport a ON a.iata = f.dep_airport GROUP BY 1", catalog)
    assert plan.strategy == "scan" and plan.reference_tables == ["airport"]
    assert all(not rq.broadcast for f in plan.fragments for rq in f.regions)


def test_outer_join_with_a_reference_table_does_not_push_down(catalog: Catalog) -> None:
    plan = plan_query("SELECT a.country, count(*) FROM flight_leg f LEFT JOIN airport a ON a.iata = f.dep_airport GROUP BY 1", catalog)
    assert plan.strategy == "scan"


def test_small_is_decided_from_the_parquet_footer(tmp_path: Path) -> None:
    path = tmp_path / "r.parquet"
    pq.write_table(pa.table({"k": list(range(10)), "v": ["x" * 100] * 10}), path)
    assert set(broadcastable({"r": str(path)}, max_rows=10, max_bytes=10**6)) == {"r"}
    assert broadcastable({"r": str(path)}, max_rows=9, max_bytes=10**6) == {}
    assert broadcastable({"r": str(path)}, max_rows=10, max_bytes=100) == {}
    assert broadcastable({"gone": str(tmp_path / "missing.parquet")}) == {}
    first = broadcastable({"r": str(path)})["r"]
    pq.write_table(pa.table({"k": list(range(11)), "v": ["y"] * 11}), path)  # a new file version, a new BigQuery copy
    assert broadcastable({"r": str(path)})["r"].bigquery_table != first.bigquery_table


def test_semi_join_ships_the_filtered_sides_keys(catalog: Catalog) -> None:
    plan = plan_query("SELECT f.flight_id, b.booking_id FROM flight_leg f JOIN booking b ON b.flight_id = f.flight_id "
                      "WHERE b.cabin = 'business'", catalog)  # fmt: skip
    assert plan.strategy == "scan"
    frags = {f.tables[0]: f for f in plan.fragments}
    assert frags["booking"].semi_join is None  # the build side
    assert frags["flight_leg"].semi_join == {"build": frags["booking"].name, "build_column": "flight_id", "column": "flight_id"}


@pytest.mark.parametrize(
    "sql",
    [
        # neither side filtered: nothing says which side is small
        "SELECT f.flight_id, b.booking_id FROM flight_leg f JOIN booking b ON b.flight_id = f.flight_id",
        # both filtered
        "SELECT f.flight_id FROM flight_leg f JOIN booking b ON b.flight_id = f.flight_id WHERE b.cabin = 'business' AND f.seats > 100",
        # the unfiltered side is preserved by the LEFT join: its unmatched rows are part of the answer
        "SELECT f.flight_id, b.booking_id FROM flight_leg f LEFT JOIN booking b ON b.flight_id = f.flight_id AND b.cabin = 'business'",
        # a region pick is not a reduction
        "SELECT f.flight_id FROM flight_leg f JOIN booking b ON b.flight_id = f.flight_id WHERE b.region = 'eu'",
        # keys of different types
        "SELECT f.flight_id FROM flight_leg f JOIN booking b ON b.fare_usd = f.seats WHERE b.cabin = 'business'",
    ],
)
def test_no_semi_join_where_it_is_not_valid_or_not_useful(catalog: Catalog, sql: str) -> None:
    plan = plan_query(sql, catalog)
    assert all(f.semi_join is None for f in plan.fragments), sql


def test_semi_join_into_the_null_supplying_side(catalog: Catalog) -> None:
    plan = plan_query("SELECT f.flight_id, c.feedback_id FROM flight_leg f LEFT JOIN customer_feedback c "
                      "ON c.flight_id = f.flight_id WHERE f.seats > 300", catalog)  # fmt: skip
    frags = {f.tables[0]: f for f in plan.fragments}
    assert frags["customer_feedback"].semi_join is not None and frags["flight_leg"].semi_join is None


def test_colocated_join_runs_per_region_then_merges(catalog: Catalog) -> None:
    sql = ("SELECT f.region, f.dep_airport, avg(c.satisfaction_0_100) s, count(*) n FROM customer_feedback c "
           "JOIN flight_leg f ON f.flight_id = c.flight_id AND f.region = c.region GROUP BY 1, 2")  # fmt: skip
    plan = plan_query(sql, catalog)
    assert plan.strategy == "partial_aggregate"
    rqs = by_region(plan)
    assert "latam.customer_feedback AS c JOIN latam.flight_leg AS f" in rqs["latam"].sql
    assert "`skyfed-eu`.eu_curated.flight_leg AS f" in rqs["eu"].sql
    # without the region equality the join is not provably co-located: the general strategy
    assert plan_query(sql.replace(" AND f.region = c.region", ""), catalog).strategy == "scan"


def test_single_region_bigquery_query_runs_whole_in_bigquery(catalog: Catalog) -> None:
    sql = ("SELECT f.status, count(*) n, avg(c.satisfaction_0_100) s FROM eu.flight_leg f JOIN eu.customer_feedback c "
           "ON c.flight_id = f.flight_id WHERE f.seats > 100 GROUP BY f.status HAVING count(*) > 1 ORDER BY n DESC LIMIT 3")  # fmt: skip
    plan = plan_query(sql, catalog)
    assert plan.strategy == "single_region"
    (rq,) = plan.fragments[0].regions
    assert rq.region == "eu" and rq.engine == "bigquery"
    assert "HAVING" in rq.sql and "LIMIT 3" in rq.sql and "AVG(c.satisfaction_0_100)" in rq.sql
    assert set(plan.fragments[0].pruned) == {"latam", "na"}
    # an expression BigQuery would read differently (week start, strftime) keeps the work at the coordinator
    other = plan_query("SELECT strftime(dep_time_utc, '%Y-%m') ym, count(*) FROM eu.flight_leg GROUP BY 1", catalog)
    assert other.strategy != "single_region"
