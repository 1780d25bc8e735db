"""Federated answers equal the co-located answer; failures name the region; the CLI works.

Real services (PostgreSQL, BigQuery emulator, GCS emulator) through `federation`; the
world is seeded and ingested once for this module (conftest.ingested_world). The
oracle is the same SQL over every region's curated rows loaded into one DuckDB.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skyfed.errors import SkyfedError
from skyfed.query import connect

pytestmark = pytest.mark.services

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "airline" / "skyfed.yaml"

# (sql, ordered): ordered=True when ORDER BY makes the row order total, so order is compared too.
QUERIES: list[tuple[str, bool]] = [
    # filters, projections, NULLs
    ("SELECT * FROM flight_leg", False),
    ("SELECT flight_id, delay_min FROM flight_leg WHERE delay_min IS NULL", False),
    ("SELECT flight_id FROM flight_leg WHERE seats BETWEEN 150 AND 200 AND status IN ('arrived', 'departed')", False),
    ("SELECT flight_id, coalesce(tail_number, '?') t FROM flight_leg WHERE flight_number LIKE 'SL1%' OR seats < 100", False),
    ("SELECT * FROM eu.flight_leg WHERE passengers > 100", False),
    ("SELECT flight_id FROM flight_leg WHERE region = 'na' AND fuel_kg > 10000", False),
    ("SELECT flight_id, seats / 7 AS q, seats // 7 AS d, seats % 7 AS m FROM flight_leg WHERE region <> 'latam'", False),
    # aggregates, GROUP BY, HAVING
    ("SELECT count(*) FROM flight_leg", False),
    ("SELECT count(*), count(delay_min), sum(delay_min), min(delay_min), max(delay_min), avg(delay_min) FROM flight_leg", False),
    ("SELECT region, count(*) n, sum(passengers) p, avg(load_factor) lf FROM flight_leg GROUP BY region", False),
    ("SELECT dep_airport, arr_airport, date_trunc('month', dep_time_utc) AS month, sum(revenue_usd - cost_usd) AS profit, "
     "count(*) AS flights FROM flight_leg WHERE status <> 'cancelled' GROUP BY ALL", False),
    ("SELECT aircraft_type, 100 * sum(fuel_kg) / sum(passengers * distance_km) AS fuel_per_100_rpk FROM flight_leg "
     "WHERE status <> 'cancelled' GROUP BY aircraft_type", False),
    ("SELECT region, date_trunc('month', submitted_at_utc) AS month, avg(satisfaction_0_100) AS s, count(*) AS n "
     "FROM customer_feedback GROUP BY region, month", False),
    ("SELECT dep_airport, count(*) n FROM flight_leg GROUP BY dep_airport HAVING count(*) > 5 AND max(seats) > 150", False),
    ("SELECT status, count(DISTINCT aircraft_type) a, count(DISTINCT dep_airport) d, sum(DISTINCT seats) s FROM flight_leg GROUP BY status", False),
    ("SELECT region, min(dep_time_utc), max(updated_at_utc) FROM flight_leg GROUP BY region", False),
    ("SELECT cabin, count(*) FROM booking WHERE region IN ('eu', 'na') GROUP BY cabin", False),
    ("SELECT sum(seats) FROM flight_leg WHERE region = 'mars'", False),
    ("SELECT region, count(*) FROM flight_leg WHERE region = 'mars' GROUP BY region", False),
    ("SELECT delay_min IS NULL AS cancelled, count(*) FROM flight_leg GROUP BY 1", False),
    ("SELECT region, median(delay_min), quantile_cont(load_factor, 0.9) FROM flight_leg GROUP BY region", False),
    ("SELECT DISTINCT region, status FROM flight_leg", False),
    ("SELECT DISTINCT aircraft_type FROM flight_leg WHERE region = 'eu'", False),
    # ORDER BY + LIMIT
    ("SELECT flight_id, delay_min FROM flight_leg ORDER BY delay_min DESC NULLS LAST, flight_id LIMIT 7", True),
    ("SELECT flight_id, delay_min FROM flight_leg ORDER BY delay_min NULLS FIRST, flight_id LIMIT 7", True),
    ("SELECT flight_id, revenue_usd - cost_usd AS profit FROM flight_leg ORDER BY profit DESC, flight_id LIMIT 5 OFFSET 3", True),
    ("SELECT dep_airport, count(*) n FROM flight_leg GROUP BY 1 ORDER BY n DESC, dep_airport LIMIT 4", True),
    # joins
    ("SELECT f.region, b.cabin, count(*) n, sum(b.fare_usd) fare FROM flight_leg f JOIN booking b "
     "ON b.flight_id = f.flight_id AND b.region = f.region GROUP BY 1, 2", False),
    ("SELECT f.flight_id, b.booking_id FROM flight_leg f JOIN booking b ON b.flight_id = f.flight_id WHERE b.cabin = 'business'", False),
    ("SELECT f.flight_id, c.feedback_id FROM flight_leg f LEFT JOIN customer_feedback c ON c.flight_id = f.flight_id "
     "WHERE f.region = 'eu'", False),
    ("SELECT f.flight_id, c.feedback_id FROM customer_feedback c RIGHT JOIN flight_leg f ON c.flight_id = f.flight_id "
     "AND c.satisfaction_0_100 > 50", False),
    ("SELECT f.flight_id, c.feedback_id FROM flight_leg f FULL JOIN customer_feedback c ON c.flight_id = f.flight_id "
     "AND f.seats > 150", False),
    ("SELECT f.flight_id, b.booking_id FROM flight_leg f LEFT JOIN booking b ON b.flight_id = f.flight_id "
     "WHERE b.booking_id IS NULL", False),
    ("SELECT flight_id FROM flight_leg WHERE flight_id IN (SELECT flight_id FROM booking WHERE cabin = 'business')", False),
    ("SELECT flight_id FROM flight_leg f WHERE NOT EXISTS (SELECT 1 FROM customer_feedback c WHERE c.flight_id = f.flight_id)", False),
    ("SELECT f.flight_id FROM flight_leg f SEMI JOIN booking b ON b.flight_id = f.flight_id", False),
    ("SELECT f.flight_id FROM flight_leg f ANTI JOIN booking b ON b.flight_id = f.flight_id AND b.status = 'confirmed'", False),
    ("SELECT a.country, count(*) n, avg(f.load_factor) lf FROM flight_leg f JOIN airport a ON a.iata = f.dep_airport GROUP BY 1", False),
    ("SELECT t.body, sum(f.fuel_kg) FROM flight_leg f JOIN aircraft_type t USING (aircraft_type) GROUP BY 1", False),
    ("SELECT x.flight_id, y.flight_id FROM flight_leg x JOIN flight_leg y ON x.tail_number = y.tail_number "
     "AND x.dep_time_utc < y.dep_time_utc AND y.dep_time_utc < x.dep_time_utc + INTERVAL 1 DAY", False),
    # windows, subqueries, CTEs, set operations
    ("SELECT flight_id, region, row_number() OVER (PARTITION BY region ORDER BY dep_time_utc, flight_id) rn FROM flight_leg", False),
    ("SELECT region, flight_id, sum(passengers) OVER (PARTITION BY region ORDER BY dep_time_utc, flight_id) running "
     "FROM flight_leg QUALIFY running < 2000", False),
    ("SELECT flight_id FROM flight_leg WHERE seats > (SELECT avg(seats) FROM flight_leg)", False),
    ("SELECT region, (SELECT count(*) FROM booking b WHERE b.region = f.region) n FROM flight_leg f GROUP BY region", False),
    ("WITH r AS (SELECT region, sum(revenue_usd) rev FROM flight_leg GROUP BY region), "
     "t AS (SELECT sum(rev) total FROM r) SELECT r.region, r.rev / t.total AS pct FROM r, t", False),
    ("WITH per_flight AS (SELECT flight_id, count(*) n FROM booking GROUP BY flight_id) "
     "SELECT f.aircraft_type, sum(p.n) FROM flight_leg f JOIN per_flight p USING (flight_id) GROUP BY 1", False),
    ("SELECT flight_id FROM flight_leg WHERE region = 'eu' UNION SELECT flight_id FROM booking WHERE cabin = 'business'", False),
    ("SELECT flight_id FROM booking EXCEPT SELECT flight_id FROM flight_leg", False),
    ("SELECT * FROM (SELECT region, count(*) n FROM flight_leg GROUP BY region) s WHERE n > 1", False),
    # dates and time zones
    ("SELECT date_trunc('month', dep_time_utc) m, count(*) FROM flight_leg GROUP BY 1", False),
    ("SELECT CAST(dep_time_utc AS DATE) d, extract(hour FROM dep_time_utc) h, count(*) FROM flight_leg GROUP BY 1, 2", False),
    ("SELECT date_trunc('day', timezone('America/Sao_Paulo', dep_time_utc)) local_day, count(*) FROM flight_leg "
     "WHERE region = 'latam' GROUP BY 1", False),
    ("SELECT flight_id FROM flight_leg WHERE dep_time_utc >= TIMESTAMPTZ '2024-03-01 00:00:00+00' "
     "AND dep_time_utc < TIMESTAMPTZ '2024-04-01 00:00:00+00'", False),
    ("SELECT flight_id FROM flight_leg WHERE dep_time_utc >= TIMESTAMP '2024-03-01' AND dep_time_utc < DATE '2024-04-01'", False),
    ("SELECT strftime(dep_time_utc, '%Y-%m') ym, count(*) FROM flight_leg GROUP BY ym", False),
    # semi-join key shipping (the filtered side's keys filter the other side in its regions)
    ("SELECT f.flight_id, f.seats, b.booking_id, b.fare_usd FROM flight_leg f JOIN booking b ON b.flight_id = f.flight_id "
     "WHERE b.cabin = 'business' AND b.fare_usd > 300", False),
    ("SELECT f.flight_id, c.feedback_id FROM flight_leg f LEFT JOIN customer_feedback c ON c.flight_id = f.flight_id "
     "WHERE f.seats > 250", False),
    ("SELECT f.flight_id, c.feedback_id FROM customer_feedback c RIGHT JOIN flight_leg f ON c.flight_id = f.flight_id "
     "WHERE f.passengers < 60", False),
    ("SELECT c.survey_scale, count(*) n, avg(f.load_factor) lf FROM customer_feedback c JOIN flight_leg f "
     "ON f.flight_id = c.flight_id WHERE c.satisfaction_0_100 >= 90 GROUP BY 1", False),
    ("SELECT f.flight_id FROM flight_leg f SEMI JOIN booking b ON b.flight_id = f.flight_id AND b.fare_usd > 1000", False),
    ("SELECT b.booking_id FROM booking b ANTI JOIN flight_leg f ON f.flight_id = b.flight_id AND f.seats > 250", False),
    # broadcast reference tables: joins with them run in every region
    ("SELECT a.country, t.body, count(*) n, sum(f.passengers) p, avg(f.load_factor) lf FROM flight_leg f "
     "JOIN airport a ON a.iata = f.arr_airport JOIN aircraft_type t ON t.aircraft_type = f.aircraft_type "
     "WHERE f.status <> 'cancelled' GROUP BY 1, 2", False),
    ("SELECT f.region, a.tz, count(DISTINCT f.dep_airport) d, max(f.fuel_kg) m FROM flight_leg f, airport a "
     "WHERE a.iata = f.dep_airport AND a.iata LIKE 'G%' GROUP BY 1, 2", False),
    ("SELECT b.cabin, a.country, sum(b.fare_usd) fare FROM booking b JOIN flight_leg f ON f.flight_id = b.flight_id "
     "AND f.region = b.region JOIN airport a ON a.iata = f.dep_airport GROUP BY 1, 2", False),
    # co-located per-region join without aggregation (general strategy) and with it (per-region join, merged)
    ("SELECT f.region, f.dep_airport, avg(c.satisfaction_0_100) s, count(*) n FROM customer_feedback c "
     "JOIN flight_leg f ON f.flight_id = c.flight_id AND f.region = c.region GROUP BY 1, 2", False),
    # one BigQuery region: the whole statement runs there
    ("SELECT f.status, count(*) n, avg(c.satisfaction_0_100) s, sum(f.passengers) p FROM eu.flight_leg f "
     "JOIN eu.customer_feedback c ON c.flight_id = f.flight_id WHERE f.seats > 100 GROUP BY f.status "
     "HAVING count(*) > 1 ORDER BY n DESC, f.status", True),
    ("SELECT flight_id, delay_min FROM eu.flight_leg ORDER BY delay_min, flight_id LIMIT 9", True),
    ("SELECT flight_id, delay_min FROM eu.flight_leg ORDER BY delay_min DESC, flight_id LIMIT 9 OFFSET 2", True),
]


def _sortable(v):
    if v is None:
        return (0, "")
    if isinstance(v, float):
        return (1, float(f"{v:.9g}") if math.isfinite(v) else v)
    return (1, v)


def assert_same(got: pa.Table, want: pa.Table, ordered: bool, what: str) -> None:
    assert got.column_names == want.column_names, what
    assert got.schema.types == want.schema.types, f"{what}: {got.schema} != {want.schema}"
    g = [tuple(r.values()) for r in got.to_pylist()]
    w = [tuple(r.values()) for r in want.to_pylist()]
    assert len(g) == len(w), f"{what}: {len(g)} rows, want {len(w)}"
    if not ordered:
        g = sorted(g, key=lambda row: tuple(_sortable(v) for v in row))
        w = sorted(w, key=lambda row: tuple(_sortable(v) for v in row))
    for i, (a, b) in enumerate(zip(g, w)):
        for x, y in zip(a, b):
            if isinstance(x, float) and isinstance(y, float):
                assert math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9), f"{what}: row {i}: {a} != {b}"
            else:
                assert x == y, f"{what}: row {i}: {a} != {b}"


@pytest.mark.parametrize(("sql", "ordered"), QUERIES, ids=[f"q{i:02d}" for i in range(len(QUERIES))])
def test_federated_equals_colocated(fed, colocated, sql: str, ordered: bool) -> None:
    result = fed.query(sql)
    want = colocated.execute(sql).to_arrow_table()
    assert_same(result.arrow(), want, ordered, f"[{result.report.strategy}] {sql}")
    assert not result.partial


GROUPS = ["region", "dep_airport", "aircraft_type", "status", "date_trunc('month', dep_time_utc)", "delay_min IS NULL"]
AGGS = ["count(*)", "sum(seats)", "min(delay_min)", "max(fuel_kg)", "avg(load_factor)", "count(DISTINCT aircraft_type)",
        "count(delay_min)", "sum(revenue_usd - cost_usd)", "avg(passengers)", "max(dep_time_utc)", "min(flight_id)"]  # fmt: skip
FILTERS = ["seats > 150", "region = 'eu'", "region IN ('latam', 'na')", "delay_min IS NULL", "status <> 'cancelled'",
           "dep_time_utc < TIMESTAMPTZ '2024-04-01 00:00:00+00'", "passengers * 2 > seats", "tail_number LIKE 'P%'"]  # fmt: skip


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    groups=st.lists(st.sampled_from(GROUPS), unique=True, max_size=3),
    aggs=st.lists(st.sampled_from(AGGS), unique=True, min_size=1, max_size=4),
    filters=st.lists(st.sampled_from(FILTERS), unique=True, max_size=2),
    having=st.booleans(),
)
def test_generated_aggregates_equal_colocated(fed, colocated, groups, aggs, filters, having) -> None:
    select = ", ".join([f"{g} AS g{i}" for i, g in enumerate(groups)] + [f"{a} AS a{i}" for i, a in enumerate(aggs)])
    sql = f"SELECT {select} FROM flight_leg"
    if filters:
        sql += " WHERE " + " AND ".join(filters)
    if groups:
        sql += " GROUP BY " + ", ".join(str(i + 1) for i in range(len(groups)))
    if having:
        sql += " HAVING count(*) > 1"
    result = fed.query(sql)
    assert result.report.strategy == "partial_aggregate", sql
    assert_same(result.arrow(), colocated.execute(sql).to_arrow_table(), False, sql)


CORE = {
    "route_profitability": (
        "SELECT dep_airport, arr_airport, date_trunc('month', dep_time_utc) AS month, sum(revenue_usd - cost_usd) AS profit, "
        "sum(revenue_usd) AS revenue, count(*) AS flights FROM flight_leg WHERE status <> 'cancelled' GROUP BY 1, 2, 3",
        "SELECT dep_airport, arr_airport, dep_time_utc, revenue_usd, cost_usd, status FROM flight_leg WHERE status <> 'cancelled'",
    ),
    "fuel_per_100_rpk": (
        "SELECT aircraft_type, 100 * sum(fuel_kg) / sum(passengers * distance_km) AS fuel_kg_per_100_rpk FROM flight_leg "
        "WHERE status <> 'cancelled' GROUP BY aircraft_type",
        "SELECT aircraft_type, fuel_kg, passengers, distance_km, status FROM flight_leg WHERE status <> 'cancelled'",
    ),
    "satisfaction": (
        "SELECT region, date_trunc('month', submitted_at_utc) AS month, avg(satisfaction_0_100) AS satisfaction, "
        "count(*) AS answers FROM customer_feedback GROUP BY 1, 2",
        "SELECT region, submitted_at_utc, satisfaction_0_100 FROM customer_feedback",
    ),
}


@pytest.mark.parametrize("metric", list(CORE))
def test_core_metrics_ship_aggregates_not_rows(fed, colocated, metric: str) -> None:
    sql, naive_sql = CORE[metric]
    result = fed.query(sql)
    naive = fed.query(naive_sql)  # every needed row pulled to the coordinator
    assert result.report.strategy == "partial_aggregate"
    assert_same(result.arrow(), colocated.execute(sql).to_arrow_table(), False, sql)
    rep = result.report
    assert {r.region for r in rep.regions} == {"latam", "eu", "na"}
    assert all(r.status == "ok" and r.rows > 0 and r.bytes > 0 for r in rep.regions)
    assert rep.bytes_shipped == sum(r.bytes for r in rep.regions)
    assert rep.bytes_shipped < naive.report.bytes_shipped
    latam = next(r for r in rep.regions if r.region == "latam")
    assert latam.egress_usd == 0.0  # the coordinator runs in latam (the spec's first region)
    eu = next(r for r in rep.regions if r.region == "eu")
    assert eu.egress_usd == pytest.approx(eu.bytes / 1e9 * 0.12)
    print(f"{metric}: shipped {rep.bytes_shipped} bytes ({rep.rows_shipped} rows) vs naive "
          f"{naive.report.bytes_shipped} bytes ({naive.report.rows_shipped} rows); plan {rep.plan_ms:.1f} ms")  # fmt: skip


def test_explain_does_not_run_and_names_every_region(fed) -> None:
    plan = fed.explain("SELECT region, count(*) FROM flight_leg WHERE region IN ('eu', 'na') GROUP BY region")
    (frag,) = plan["fragments"]
    assert [r["region"] for r in frag["regions"]] == ["eu", "na"]
    assert frag["regions"][0]["engine"] == "bigquery" and "`skyfed-eu`.eu_curated.flight_leg" in frag["regions"][0]["sql"]
    assert frag["pruned"] == {"latam": "region filter keeps only eu, na"}
    assert "one row per group per region" in frag["crosses_boundary"]


def test_result_converts_to_pandas_and_polars(fed) -> None:
    result = fed.query("SELECT region, count(*) AS n FROM flight_leg GROUP BY region ORDER BY region")
    assert list(result.df()["region"]) == ["eu", "latam", "na"]
    assert result.pl()["n"].sum() == result.arrow()["n"].to_pylist()[0] + sum(result.arrow()["n"].to_pylist()[1:])


@pytest.fixture(scope="module")
def broken_eu(ingested_world):
    spec = ingested_world.spec.model_copy(deep=True)
    spec.regions["eu"].store.endpoint = "http://127.0.0.1:9"  # nothing listens on the discard port
    return connect(spec, timeout=20, cache=False)


SEMI = ("SELECT f.flight_id, f.seats, b.booking_id FROM flight_leg f JOIN booking b ON b.flight_id = f.flight_id "
        "WHERE b.cabin = 'business' AND b.fare_usd > 300")  # fmt: skip


def test_semi_join_ships_keys_and_fewer_bytes_than_reduced_inputs(fed, ingested_world, colocated) -> None:
    result = fed.query(SEMI)
    rep = result.report
    (sj,) = rep.semi_joins
    assert sj["decision"].startswith("shipped") and int(sj["keys"]) > 0, sj
    assert rep.semi_join_key_bytes > 0 and all(r.semi_join_key_bytes > 0 for r in rep.regions)
    naive = connect(ingested_world.spec, cache=False, pushdown=False).query(SEMI)
    assert naive.report.semi_joins == []
    want = colocated.execute("SELECT count(*) FROM flight_leg").fetchone()[0]
    flight_rows = sum(r.rows for r in naive.report.regions) - colocated.execute(
        "SELECT count(*) FROM booking WHERE cabin = 'business' AND fare_usd > 300").fetchone()[0]  # fmt: skip
    assert flight_rows == want  # without key shipping every flight row crosses
    assert rep.bytes_shipped + rep.semi_join_key_bytes < naive.report.bytes_shipped
    assert_same(result.arrow(), naive.arrow(), False, SEMI)
    plan = fed.explain(SEMI)
    assert any(f["semi_join"] for f in plan["fragments"])


def test_cli_report_says_what_crossed_for_a_semi_join(ingested_world, run_cli) -> None:
    res = run_cli("query", SEMI, "--spec", str(EXAMPLE), "--format", "csv", "--report", "--no-cache")
    assert res.code == 0, res.stderr
    assert "semi-join" in res.stderr and "shipped" in res.stderr and "B of join keys" in res.stderr, res.stderr
    res = run_cli("query", SEMI, "--spec", str(EXAMPLE), "--explain", "--json")
    frags = json.loads(res.stdout)["fragments"]
    assert [f["semi_join"]["column"] for f in frags if f["semi_join"]] == ["flight_id"]


def test_broadcast_join_runs_in_every_region(fed, ingested_world) -> None:
    from skyfed.ingest.stores.bigquery import _client

    sql = "SELECT a.country, count(*) n FROM flight_leg f JOIN airport a ON a.iata = f.dep_airport GROUP BY 1"
    first = fed.query(sql)
    assert first.report.strategy == "partial_aggregate"
    assert {r.region for r in first.report.regions} == {"latam", "eu", "na"}
    assert all(r.broadcast_bytes > 0 for r in first.report.regions if r.engine == "duckdb")
    store = ingested_world.spec.regions["eu"].store
    names = [t.table_id for t in _client(store).list_tables(f"{store.project}.{store.dataset}")]
    assert any(n.startswith("_skyfed_ref_airport_") for n in names), names
    again = fed.query(sql)  # the BigQuery copy of this file version is reused
    assert next(r for r in again.report.regions if r.region == "eu").broadcast_bytes == 0
    # only the answer's groups cross: at most one row per country per region
    assert first.report.rows_shipped <= 3 * first.arrow().num_rows


def test_single_region_bigquery_query_runs_as_one_job(fed) -> None:
    sql = "SELECT status, count(*) n, avg(delay_min) d FROM eu.flight_leg WHERE seats > 100 GROUP BY status ORDER BY status"
    result = fed.query(sql)
    rep = result.report
    assert rep.strategy == "single_region"
    assert [(r.region, r.engine) for r in rep.regions] == [("eu", "bigquery")]
    assert rep.rows_shipped == result.arrow().num_rows


def test_unreachable_region_is_named(broken_eu) -> None:
    with pytest.raises(SkyfedError) as info:
        broken_eu.query("SELECT region, count(*) FROM flight_leg GROUP BY region")
    assert "region eu" in info.value.message
    assert "latam" not in info.value.message and "na " not in info.value.message
    assert "allow" in (info.value.hint or "")


def test_allow_partial_answers_from_the_others_and_flags_it(broken_eu, colocated) -> None:
    sql = "SELECT region, count(*) n, sum(seats) s FROM flight_leg GROUP BY region"
    result = broken_eu.query(sql, allow_partial=True)
    assert result.partial
    assert [m["region"] for m in result.missing] == ["eu"]
    want = colocated.execute(sql.replace("GROUP BY", "WHERE region <> 'eu' GROUP BY")).to_arrow_table()
    assert_same(result.arrow(), want, False, sql)
    statuses = {r.region: r.status for r in result.report.regions}
    assert statuses["eu"] in ("failed", "timeout") and statuses["latam"] == statuses["na"] == "ok"


def test_pruned_query_does_not_touch_the_broken_region(broken_eu) -> None:
    result = broken_eu.query("SELECT count(*) n FROM flight_leg WHERE region = 'latam'")
    assert not result.partial and result.arrow()["n"][0].as_py() > 0


def test_cli_query_formats_explain_and_report(ingested_world, run_cli, tmp_path) -> None:
    spec = str(EXAMPLE)
    sql = "SELECT region, count(*) AS n FROM flight_leg GROUP BY region ORDER BY region"
    res = run_cli("query", sql, "--spec", spec, "--format", "json", "--report")
    assert res.code == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["columns"] == ["region", "n"] and [r["region"] for r in data["rows"]] == ["eu", "latam", "na"]
    assert data["report"]["strategy"] == "partial_aggregate" and len(data["report"]["regions"]) == 3
    res = run_cli("query", sql, "--spec", spec, "--explain", "--json")
    assert res.code == 0, res.stderr
    assert json.loads(res.stdout)["fragments"][0]["regions"][1]["engine"] == "bigquery"
    out = tmp_path / "r.parquet"
    res = run_cli("query", sql, "--spec", spec, "--format", "parquet", "--out", str(out), "--report")
    assert res.code == 0, res.stderr
    import pyarrow.parquet as pq

    assert pq.read_table(out).num_rows == 3 and "query report" in res.stderr
    res = run_cli("query", sql, "--spec", spec, "--format", "csv")
    assert res.code == 0 and res.stdout.splitlines()[0] == '"region","n"'
    res = run_cli("query", "DELETE FROM flight_leg", "--spec", spec)
    assert res.code == 1 and "DELETE statements are not allowed" in res.stderr


# --------------------------------------------------------------------------- per-query fixed costs


def test_report_explains_the_time_by_phase(fed, colocated) -> None:
    """Every answer says where its time went: coordinator phases and each region's own phases."""
    sql = CORE["fuel_per_100_rpk"][0]
    result = fed.query(sql)
    assert_same(result.arrow(), colocated.execute(sql).to_arrow_table(), False, sql)
    rep = result.report
    assert {"plan", "bind", "regions", "merge", "audit"} <= set(rep.phases), rep.phases
    assert all(v >= 0 for v in rep.phases.values()), rep.phases
    # the regions phase waits for every region, so it is at least the slowest region's own time
    assert rep.phases["regions"] >= max(r.seconds for r in rep.regions) - 1e-3
    for r in rep.regions:
        want = {"catalog", "setup", "execute", "fetch"} if r.engine == "duckdb" else {"client", "submit", "wait", "fetch"}
        assert want <= set(r.phases), (r.region, r.phases)
        assert sum(r.phases.values()) <= r.seconds + 1e-3, (r.region, r.phases, r.seconds)


def test_repeated_statements_reuse_the_bind_and_stay_correct(fed, colocated) -> None:
    """The bind step is remembered per statement shape; answers and errors stay what they were."""
    sql = "SELECT aircraft_type, count(*) AS n, avg(load_factor) AS lf FROM flight_leg GROUP BY 1"
    first = fed.query(sql)
    remembered = len(fed._binds)
    second = fed.query(sql)
    assert len(fed._binds) == remembered  # the second run found its bind, it did not add one
    assert second.arrow().schema == first.arrow().schema
    assert_same(second.arrow(), colocated.execute(sql).to_arrow_table(), False, sql)
    for _ in range(2):  # an invalid statement is never remembered: it fails every time, with the binder's reason
        with pytest.raises(SkyfedError, match="not valid"):
            fed.query("SELECT sum(status) FROM flight_leg")
