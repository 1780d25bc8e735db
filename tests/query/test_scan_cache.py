"""The region scan cache (query/scan_cache.py): copies of hot Iceberg snapshots in the regions' DuckDB.

Real stores (the module's ingested world from tests/query/conftest.py), the real shared DuckDB.
Answers read from a copy must equal the same query over the Parquet files (cache off) and the
co-located oracle; a commit must be seen at once and drop the old copy; admission, columns growth,
budget eviction and SKYFED_SCAN_CACHE_MB=0 behave as documented in docs/query.md.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from envkit import env_vars

from skyfed.errors import SkyfedError
from skyfed.ingest.stores import open_store
from skyfed.query import connect
from skyfed.query.executors import (
    SCAN_CACHE,
    _shared_duckdb,
    clear_scan_cache,
    executor_for,
)
from skyfed.query.scan_cache import ALL, MB, columns_used
from tests.query.test_federated import EXAMPLE, assert_same

pytestmark = pytest.mark.services
ICEBERG = ("latam", "na")  # the DuckDB regions of the example spec (eu is BigQuery)

SHAPES = [
    # partial aggregation with filters (the fuel metric's shape)
    ("SELECT region, aircraft_type, 100 * sum(fuel_kg) / sum(passengers * distance_km) k, count(*) n FROM flight_leg "
     "WHERE status <> 'cancelled' AND passengers > 0 GROUP BY 1, 2", False),
    # a per-region co-located join of two canonical tables
    ("SELECT f.region, f.dep_airport, avg(c.satisfaction_0_100) s, count(*) n FROM customer_feedback c "
     "JOIN flight_leg f ON f.flight_id = c.flight_id AND f.region = c.region GROUP BY 1, 2", False),
    # a join with a broadcast reference table
    ("SELECT a.country, count(*) n, sum(f.passengers) p FROM flight_leg f JOIN airport a ON a.iata = f.arr_airport "
     "WHERE f.seats > 100 GROUP BY 1", False),
    # top-N per region
    ("SELECT flight_id, delay_min FROM flight_leg WHERE delay_min IS NOT NULL ORDER BY delay_min DESC, flight_id LIMIT 7",
     True),
    # the general strategy: a window over shipped rows, and semi-join key shipping into the regions
    ("SELECT flight_id, rank() OVER (PARTITION BY region ORDER BY fuel_kg DESC, flight_id) r FROM flight_leg "
     "WHERE distance_km > 1000", False),
    ("SELECT f.flight_id, b.booking_id FROM flight_leg f JOIN booking b ON b.flight_id = f.flight_id "
     "WHERE b.cabin = 'business' AND b.fare_usd > 300", False),
]


@pytest.fixture
def clean() -> Iterator[None]:
    """No copies and no scan counts before (and after) a test: other modules share the process's cache."""
    clear_scan_cache()
    # states asserted below must not depend on timings: the measured copies-or-files switch is off (tested on its own)
    # fills run inline (the run that admits a snapshot makes the copy), so states follow the runs; background
    # fills (the default) have their own test
    with env_vars(SKYFED_SCAN_CACHE_MB=None, SKYFED_SCAN_CACHE_SLOWER="0", SKYFED_SCAN_CACHE_FILL="inline"):
        yield
    clear_scan_cache()


def states(result) -> dict[str, dict[str, str]]:
    """region -> table -> scan cache state (the first word of the label)."""
    return {r.region: {t: s.split(":")[0] for t, s in r.scan_cache.items()} for r in result.report.regions
            if r.engine == "duckdb"}  # fmt: skip


def attached() -> set[str]:
    base, _ = _shared_duckdb()
    cur = base.cursor()
    try:
        return {r[0] for r in cur.execute("SELECT database_name FROM duckdb_databases()").fetchall()}
    finally:
        cur.close()


def test_answers_from_copies_equal_parquet_and_colocated(ingested_world, fed, colocated, clean) -> None:
    with env_vars(SKYFED_SCAN_CACHE_MB="0"):  # the files, as before the cache
        parquet = {sql: fed.query(sql).arrow() for sql, _ in SHAPES}
    seen: set[str] = set()
    for sql, ordered in SHAPES:
        want = colocated.execute(sql).to_arrow_table()
        for attempt in range(3):  # a shape's 3rd run reads every table it needs from a copy
            result = fed.query(sql)
            assert_same(result.arrow(), want, ordered, f"run {attempt} of {sql}")
            assert_same(result.arrow(), parquet[sql], ordered, f"run {attempt} vs parquet: {sql}")
            got = states(result)
            seen.update(s for region in got.values() for s in region.values())
        assert set(got) == set(ICEBERG) and all(s == "hit" for r in got.values() for s in r.values()), (sql, got)
    assert {"miss", "fill", "hit"} <= seen
    copies = SCAN_CACHE.copies()
    assert {(c["region"], c["table"]) for c in copies} >= {(r, t) for r in ICEBERG for t in ("flight_leg", "booking")}
    assert {c["database"] for c in copies} <= attached()


def test_governed_caller_reads_masked_answers_from_copies(ingested_world, clean) -> None:
    from tests.query.test_governed_federation import GOV_FILE

    sql = ("SELECT b.cabin, count(*) n, count(b.email) e, min(b.passenger_name) p FROM booking b "
           "WHERE b.fare_usd > 100 GROUP BY 1")  # fmt: skip
    with env_vars(SKYFED_MASK_SALT="scan-cache-test-salt"):
        analyst = connect(ingested_world.spec, role="analyst", governance=GOV_FILE, cache=False, timeout=120)
        with env_vars(SKYFED_SCAN_CACHE_MB="0"):
            want = analyst.query(sql).arrow()
        runs = [analyst.query(sql) for _ in range(3)]
    for r in runs:
        assert_same(r.arrow(), want, False, sql)
    assert [states(r)["latam"]["booking"] for r in runs] == ["miss", "fill", "hit"]


def test_admission_and_columns_growth(ingested_world, fed, colocated, clean) -> None:
    narrow = "SELECT dep_airport, sum(passengers) p FROM latam.flight_leg GROUP BY 1"
    wider = "SELECT dep_airport, max(fuel_kg) m FROM latam.flight_leg WHERE status = 'landed' GROUP BY 1"
    got = [states(fed.query(narrow))["latam"]["flight_leg"] for _ in range(3)]
    assert got == ["miss", "fill", "hit"]  # the first scan of a snapshot never copies
    (copy,) = [c for c in SCAN_CACHE.copies() if c["region"] == "latam"]
    assert set(copy["columns"]) == {"dep_airport", "passengers"}
    result = fed.query(wider)  # needs columns the copy lacks: rebuilt with the union
    assert result.report.regions[0].scan_cache["flight_leg"] == "fill: columns added"
    assert_same(result.arrow(), colocated.execute(wider).to_arrow_table(), False, wider)
    (grown,) = [c for c in SCAN_CACHE.copies() if c["region"] == "latam"]
    assert set(grown["columns"]) == {"dep_airport", "passengers", "fuel_kg", "status"}
    assert copy["database"] not in attached() and grown["database"] in attached()
    assert states(fed.query(narrow))["latam"]["flight_leg"] == "hit"


def test_columns_used_is_a_superset_or_unsure() -> None:
    tables = ["flight_leg", "booking"]
    used = columns_used("SELECT f.dep_airport, sum(b.fare_usd) FROM latam.flight_leg AS f JOIN latam.booking AS b "
                        "ON b.flight_id = f.flight_id WHERE f.status <> 'x' GROUP BY 1", "latam", tables)  # fmt: skip
    assert used is not None and {"dep_airport", "status", "flight_id"} <= used["flight_leg"] and "fare_usd" in used["booking"]
    assert columns_used("SELECT count(*) FROM na.flight_leg", "latam", tables) == {}  # another region's table
    assert columns_used("SELECT f.* FROM latam.flight_leg f", "latam", tables) == {"flight_leg": ALL}
    assert columns_used("SELECT * FROM latam.flight_leg", "latam", tables) == {"flight_leg": ALL}
    star_over_subquery = "SELECT * FROM (SELECT f.seats FROM latam.flight_leg AS f) AS _sf_s WHERE seats IN (SELECT k FROM _sf_keys_x)"
    assert columns_used(star_over_subquery, "latam", tables)["flight_leg"] >= {"seats"}
    assert columns_used(star_over_subquery, "latam", tables)["flight_leg"] != ALL
    for unsure in ("SELECT f FROM latam.flight_leg AS f",  # a whole row as a struct
                   "SELECT count(*) FROM latam.flight_leg NATURAL JOIN latam.booking",
                   "SELECT count(*) FROM latam.flight_leg JOIN latam.booking USING (flight_id)",
                   "SELECT COLUMNS('fuel.*') FROM latam.flight_leg"):  # fmt: skip
        assert columns_used(unsure, "latam", tables) is None, unsure


def test_unsure_region_sql_bypasses_and_stays_correct(ingested_world, colocated, clean) -> None:
    ex = executor_for("latam", ingested_world.spec.regions["latam"], spec=ingested_world.spec)
    sql = "SELECT count(*) AS n, count(DISTINCT f.dep_airport) AS d FROM latam.flight_leg AS f JOIN latam.booking AS b USING (flight_id)"
    want = colocated.execute(sql).fetchall()
    for _ in range(3):
        run = ex.run(sql, ["flight_leg", "booking"], 60)
        assert [tuple(r.values()) for r in run.table.to_pylist()] == want
        assert run.scan_cache == {t: "bypass: columns read not known for this SQL shape" for t in ("flight_leg", "booking")}
    assert SCAN_CACHE.copies() == []


def test_budget_evicts_least_recently_used_and_zero_turns_it_off(ingested_world, fed, clean) -> None:
    a = "SELECT dep_airport, sum(passengers) p FROM latam.flight_leg GROUP BY 1"
    b = "SELECT cabin, sum(fare_usd) f FROM latam.booking GROUP BY 1"
    for sql in (a, a, b, b):
        fed.query(sql)
    sizes = {c["table"]: c for c in SCAN_CACHE.copies()}
    assert set(sizes) == {"flight_leg", "booking"} and all(c["bytes"] > 0 for c in sizes.values())
    clear_scan_cache()
    # room for flight_leg's copy and booking's fill estimate minus a little: filling booking must evict flight_leg
    budget = (sizes["flight_leg"]["bytes"] + sizes["booking"]["estimate_bytes"]) / MB - 0.001
    with env_vars(SKYFED_SCAN_CACHE_MB=f"{budget:.6f}"):
        evictions = SCAN_CACHE.evictions
        assert [states(fed.query(a))["latam"]["flight_leg"] for _ in range(3)] == ["miss", "fill", "hit"]
        old = SCAN_CACHE.copies()[0]["database"]
        assert [states(fed.query(b))["latam"]["booking"] for _ in range(2)] == ["miss", "fill"]
        assert [c["table"] for c in SCAN_CACHE.copies()] == ["booking"] and SCAN_CACHE.evictions == evictions + 1
        assert old not in attached()
    clear_scan_cache()
    tiny = sizes["flight_leg"]["estimate_bytes"] / 2 / MB  # a table bigger than the budget is never copied
    with env_vars(SKYFED_SCAN_CACHE_MB=f"{tiny:.6f}"):
        got = [fed.query(a).report.regions[0].scan_cache["flight_leg"] for _ in range(3)]
        assert got[0].startswith("miss") and all(s.startswith("bypass: too big") for s in got[1:]), got
    for _ in range(2):
        fed.query(a)
    assert [c["table"] for c in SCAN_CACHE.copies()] == ["flight_leg"]
    with env_vars(SKYFED_SCAN_CACHE_MB="0"):
        got = {fed.query(a).report.regions[0].scan_cache["flight_leg"] for _ in range(3)}
        assert got == {"bypass: off (SKYFED_SCAN_CACHE_MB=0)"} and SCAN_CACHE.copies() == []
    with env_vars(SKYFED_SCAN_CACHE_MB="lots"), pytest.raises(SkyfedError, match="SKYFED_SCAN_CACHE_MB='lots' is not a number"):
        fed.query(a)


def test_a_fill_never_evicts_a_copy_its_own_run_reads(ingested_world, colocated, clean) -> None:
    ex = executor_for("latam", ingested_world.spec.regions["latam"], spec=ingested_world.spec)
    alone = "SELECT f.dep_airport, count(f.flight_id) AS n FROM latam.flight_leg AS f GROUP BY 1"
    join = ("SELECT f.dep_airport, count(*) AS n, sum(c.satisfaction_0_100) AS s FROM latam.flight_leg AS f "
            "JOIN latam.customer_feedback AS c ON c.flight_id = f.flight_id GROUP BY 1")  # fmt: skip
    both = ["flight_leg", "customer_feedback"]  # flight_leg is pointed at its copy first
    for _ in range(2):
        ex.run(join, both, 60)
    sizes = {c["table"]: c for c in SCAN_CACHE.copies()}
    clear_scan_cache()
    budget = (sizes["flight_leg"]["bytes"] + sizes["customer_feedback"]["estimate_bytes"]) / MB - 0.001
    with env_vars(SKYFED_SCAN_CACHE_MB=f"{budget:.6f}"):
        for _ in range(2):
            ex.run(alone, ["flight_leg"], 60)
        assert ex.run(join, both, 60).scan_cache == {"flight_leg": "hit", "customer_feedback": "miss: first scan of "
                                                     "this snapshot (copied on the second)"}  # fmt: skip
        run = ex.run(join, both, 60)  # filling customer_feedback would need flight_leg's room: it is in use
    assert run.scan_cache == {"flight_leg": "hit", "customer_feedback": "bypass: budget full: the copies to evict are in use"}
    want = sorted(colocated.execute(join).fetchall())
    assert sorted(tuple(r.values()) for r in run.table.to_pylist()) == want


def test_report_json_and_cli_show_the_scan_cache(ingested_world, fed, run_cli, clean) -> None:
    sql = "SELECT region, count(*) AS n FROM flight_leg WHERE seats > 0 GROUP BY region ORDER BY region"
    reports = [fed.query(sql).report.to_dict() for _ in range(3)]
    got = [{r["region"]: r["scan_cache"] for r in rep["regions"]} for rep in reports]
    assert got == [{"latam": {"flight_leg": m}, "na": {"flight_leg": m}, "eu": {}} for m in
                   ("miss: first scan of this snapshot (copied on the second)", "fill", "hit")], got  # fmt: skip
    assert all("fill" in {r["region"]: r for r in reports[1]["regions"]}[x]["phases"] for x in ICEBERG)
    res = run_cli("query", sql, "--spec", str(EXAMPLE), "--format", "json", "--report")  # a new process: a miss
    assert res.code == 0, res.stderr
    regions = {r["region"]: r for r in json.loads(res.stdout)["report"]["regions"]}
    assert regions["latam"]["scan_cache"]["flight_leg"].startswith("miss")
    text = run_cli("query", sql, "--spec", str(EXAMPLE), "--report", "--no-cache")  # the text report: each region's state
    assert text.code == 0, text.stderr
    assert "latam scan cache: flight_leg " in text.stderr and "na scan cache: flight_leg " in text.stderr, text.stderr


def test_a_statement_measured_slower_on_copies_reads_the_files(ingested_world, fed, colocated, clean) -> None:
    """The switch's logic, fed with chosen run times (not a timing threshold on this machine)."""
    from skyfed.query.scan_cache import REPROBE, ScanCache

    cache = ScanCache(lambda region: None)  # type: ignore[arg-type,return-value]
    assert cache.slower("latam", "q") is None  # nothing measured: copies
    cache.record("latam", "q", "files", 0.90)  # a process's first run: warm-up included
    with env_vars(SKYFED_SCAN_CACHE_SLOWER=None):
        assert cache.slower("latam", "q") is None  # the copy not measured yet: copies
        cache.record("latam", "q", "copy", 0.40)
        # faster than that first run, but one time on the files is not enough: once more on the files
        assert cache.slower("latam", "q").startswith("measuring this SQL on the files once more")
        cache.record("latam", "q", "files", 0.10)
        why = [cache.slower("latam", "q") for _ in range(REPROBE)]
        assert all(w is not None and w.startswith("slower on the copy") for w in why[:-1]) and why[-1] is None
        cache.record("latam", "q", "copy", 0.09)  # the re-try was faster: copies again
        assert cache.slower("latam", "q") is None
        cache.record("na", "q", "copy", 0.025)  # measured on copies only: one run on the files, to compare
        assert cache.slower("na", "q").startswith("measuring this SQL on the files once")
        cache.record("na", "q", "files", 0.010)
        assert cache.slower("na", "q").startswith("measuring this SQL on the files once more")
        cache.record("na", "q", "files", 0.012)
        assert cache.slower("na", "q") is None  # 2.5x, but 15 ms: noise at this size, not switched
    # end to end in a region: the statement's measurements decide, before any copy is made
    sql = "SELECT dep_airport, count(*) AS n FROM latam.flight_leg GROUP BY 1"
    (rq,) = fed.plan(sql).fragments[0].regions
    SCAN_CACHE.record("latam", rq.sql, "files", 0.001)  # as if the files had been far faster (twice)
    SCAN_CACHE.record("latam", rq.sql, "files", 0.001)
    SCAN_CACHE.record("latam", rq.sql, "copy", 10.0)
    with env_vars(SKYFED_SCAN_CACHE_SLOWER="1.2"):
        results = [fed.query(sql) for _ in range(3)]
    for result in results:
        assert result.report.regions[0].scan_cache["flight_leg"].startswith("bypass: slower on the copy")
        assert_same(result.arrow(), colocated.execute(sql).to_arrow_table(), False, sql)
    assert SCAN_CACHE.copies() == []


def test_commit_is_seen_at_once_and_drops_the_old_copy(ingested_world, fed, clean) -> None:
    """Last in the module: it changes the world (the colocated oracle is not used after it)."""
    spec = ingested_world.spec
    store = open_store("latam", spec.regions["latam"].store)
    sql = "SELECT count(*) AS n, sum(passengers) AS p, max(flight_id) AS m FROM latam.flight_leg"
    assert [states(fed.query(sql))["latam"]["flight_leg"] for _ in range(3)] == ["miss", "fill", "hit"]
    (before,) = SCAN_CACHE.copies()
    rows = store.read("flight_leg").slice(0, 3)
    extra = rows.set_column(rows.schema.get_field_index("flight_id"), "flight_id",
                            pa.array(["LA-ZZZ-1", "LA-ZZZ-2", "LA-ZZZ-3"]))  # fmt: skip
    store.commit("flight_leg", extra, key=list(spec.contracts["flight_leg"].key), mapping="test_scan_cache",
                 position={"test": 1}, run_id="test-scan-cache")  # fmt: skip
    now = store.read("flight_leg")
    want = (now.num_rows, pc.sum(now.column("passengers")).as_py(), pc.max(now.column("flight_id")).as_py())
    assert want[2] == "LA-ZZZ-3" or "LA-ZZZ-3" in now.column("flight_id").to_pylist()
    result = fed.query(sql)
    assert tuple(result.arrow().to_pylist()[0].values()) == want  # not the copy of the older snapshot
    assert states(result)["latam"]["flight_leg"] == "miss"
    assert SCAN_CACHE.copies() == [] and before["database"] not in attached()
    assert [states(fed.query(sql))["latam"]["flight_leg"] for _ in range(2)] == ["fill", "hit"]
    assert tuple(fed.query(sql).arrow().to_pylist()[0].values()) == want
    (after,) = SCAN_CACHE.copies()
    assert after["snapshot_id"] != before["snapshot_id"] and after["rows"] == now.num_rows


def test_a_snapshot_younger_than_the_minimum_age_is_not_copied(ingested_world, fed, clean) -> None:
    """A streamed table committing every few seconds must not be copied at every commit."""
    sql = "SELECT arr_airport, count(*) AS n FROM na.flight_leg GROUP BY 1"
    with env_vars(SKYFED_SCAN_CACHE_MIN_AGE="86400"):  # the world's snapshots are minutes old
        states = [fed.query(sql).report.regions[0].scan_cache["flight_leg"] for _ in range(3)]
    assert states[0].startswith("miss: first scan"), states
    assert all(s.startswith("miss: snapshot committed") and "86400 s old" in s for s in states[1:]), states
    assert SCAN_CACHE.copies() == []
    with env_vars(SKYFED_SCAN_CACHE_MIN_AGE="0"):  # old enough: the next scan copies it
        assert fed.query(sql).report.regions[0].scan_cache["flight_leg"] == "fill"
    with env_vars(SKYFED_SCAN_CACHE_MIN_AGE="-1"), pytest.raises(SkyfedError, match="SKYFED_SCAN_CACHE_MIN_AGE"):
        fed.query("SELECT dep_airport, count(*) FROM na.flight_leg GROUP BY 1")


def test_by_default_the_copy_is_made_in_the_background_after_the_run(ingested_world, fed, clean) -> None:
    """No query pays for a fill: the admitting run reads the files, a thread copies afterwards."""
    from skyfed.query.scan_cache import BACKGROUND

    sql = ("SELECT aircraft_type, sum(fuel_kg) AS fuel, count(*) AS n FROM latam.flight_leg "
           "WHERE status <> 'cancelled' GROUP BY 1")  # fmt: skip
    with env_vars(SKYFED_SCAN_CACHE_MB="0"):  # the files' answer (an earlier test committed to this table)
        want = fed.query(sql).arrow()
    with env_vars(SKYFED_SCAN_CACHE_FILL=None):
        runs = [fed.query(sql)]
        runs.append(fed.query(sql))  # admits the snapshot: queues the copy, reads the files
        assert "fill" not in runs[1].report.regions[0].phases
        waited = SCAN_CACHE.wait_for_fills()
        assert waited >= 0 and SCAN_CACHE.last_fill_error is None, SCAN_CACHE.last_fill_error
        assert [c["table"] for c in SCAN_CACHE.copies() if c["region"] == "latam"] == ["flight_leg"]
        runs.append(fed.query(sql))
    labels = [r.report.regions[0].scan_cache["flight_leg"] for r in runs]
    assert labels == ["miss: first scan of this snapshot (copied on the second)", "miss: " + BACKGROUND, "hit"], labels
    for r in runs:
        assert_same(r.arrow(), want, False, sql)
    with env_vars(SKYFED_SCAN_CACHE_FILL="sideways"), pytest.raises(SkyfedError, match="SKYFED_SCAN_CACHE_FILL"):
        fed.query("SELECT tail_number, count(*) FROM latam.flight_leg GROUP BY 1")


def test_a_queued_fill_for_a_table_that_moved_on_is_skipped(ingested_world, fed, clean) -> None:
    """A background fill waits for the region's lock; a commit meanwhile makes it pointless."""
    from skyfed.query.executors import _shared_duckdb
    from skyfed.query.scan_cache import Decision

    fed.query("SELECT dep_airport, count(*) FROM latam.flight_leg GROUP BY 1")  # a scan at the current snapshot
    base, _ = _shared_duckdb()
    con = base.cursor()
    try:
        stale = Decision("fill", columns=("dep_airport",), estimate_bytes=1)
        assert SCAN_CACHE.fill_queued(con, stale, "latam", "flight_leg", "/an/older/metadata.json", 1) is None
    finally:
        con.close()
    assert SCAN_CACHE.copies() == []
