"""The plan cache (query/plan_cache.py): a repeated statement skips planning, and a plan is never reused
across anything it depends on: a contract's version or columns, the caller's role, an edited governance
file, a new version of a broadcast reference file. Pure planning: no services needed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from skyfed.contracts.types import contract_schema
from skyfed.query import connect
from skyfed.query.plan_cache import PLANS, PlanCache
from skyfed.spec import load_spec

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "airline" / "skyfed.yaml"
GOVERNANCE = EXAMPLE.parent / "skyfed.governance.yaml"
SQL = "SELECT region, count(*) AS n, sum(fuel_kg) AS fuel FROM flight_leg WHERE status <> 'cancelled' GROUP BY region"


@pytest.fixture(autouse=True)
def _clean(monkeypatch, tmp_path):
    monkeypatch.setenv("SKYFED_HOME", str(tmp_path))  # reference paths resolve under it
    monkeypatch.setenv("SKYFED_MASK_SALT", "plan-cache-test-salt")
    for name in ("SKYFED_ROLE", "SKYFED_GOVERNANCE", "SKYFED_SPEC"):
        monkeypatch.delenv(name, raising=False)
    PLANS.clear()


def _region_sql(plan) -> dict[str, str]:
    return {f"{f.name}/{rq.region}": rq.sql for f in plan.fragments for rq in f.regions}


def test_a_repeat_is_a_hit_and_gets_its_own_copy() -> None:
    fed = connect(load_spec(EXAMPLE), cache=False)
    first = fed.plan(SQL)
    again = fed.plan("  select region, COUNT(*) AS n, sum(fuel_kg) AS fuel -- same statement\n from flight_leg "
                     "where status <> 'cancelled' group by region")  # fmt: skip
    assert (first.plan_cache, again.plan_cache) == ("miss", "hit")
    assert _region_sql(again) == _region_sql(first) and again.coordinator_sql == first.coordinator_sql
    # the engine writes run-time decisions into a plan: they must not reach the cached entry
    again.fragments[0].notes.append("written at run time")
    assert "written at run time" not in fed.plan(SQL).fragments[0].notes
    # identifiers are kept as written (DuckDB names the result columns that way): another spelling, another plan
    assert fed.plan(SQL.replace("AS n,", "AS N,")).plan_cache == "miss"
    # a Federation on the same spec shares the cache
    assert connect(load_spec(EXAMPLE), cache=False).plan(SQL).plan_cache == "hit"


def test_the_lru_is_bounded() -> None:
    cache = PlanCache(max_entries=2)
    for key in ("a", "b", "a", "c"):  # "a" used again, so "b" is the least recently used
        if cache.get(key) is None:
            cache.put(key, {"plan": key})
    assert len(cache) == 2 and cache.get("b") is None and cache.get("a") == {"plan": "a"}
    off = PlanCache(max_entries=0)
    off.put("a", {"plan": "a"})
    assert off.get("a") is None


def test_a_contract_version_change_is_not_served_the_old_plan() -> None:
    spec = load_spec(EXAMPLE)
    sql = "SELECT * FROM flight_leg WHERE region = 'na'"
    assert connect(spec, cache=False).plan(sql).plan_cache == "miss"
    leg = spec.contracts["flight_leg"]
    columns = {**leg.columns, "gate": leg.columns["tail_number"].model_copy()}
    evolved = spec.model_copy(update={"contracts": {**spec.contracts, "flight_leg": leg.model_copy(
        update={"version": leg.version + 1, "columns": columns})}})  # fmt: skip
    plan = connect(evolved, cache=False).plan(sql)
    assert plan.plan_cache == "miss"
    assert "gate" in plan.fragments[0].regions[0].sql
    # a new version with the same columns (e.g. a changed check) is a new plan too
    bumped = spec.model_copy(update={"contracts": {**spec.contracts, "flight_leg": leg.model_copy(
        update={"version": leg.version + 1})}})  # fmt: skip
    assert connect(bumped, cache=False).plan(sql).plan_cache == "miss"
    assert connect(spec, cache=False).plan(sql).plan_cache == "hit"


def test_a_role_change_is_not_served_another_roles_plan() -> None:
    spec = load_spec(EXAMPLE)
    sql = "SELECT booking_id, email FROM booking WHERE region = 'na'"
    analyst = connect(spec, cache=False, role="analyst", governance=str(GOVERNANCE), coordinator="na").plan(sql)
    officer = connect(spec, cache=False, role="privacy_officer", governance=str(GOVERNANCE), coordinator="na").plan(sql)
    assert (analyst.plan_cache, officer.plan_cache) == ("miss", "miss")
    assert "SHA256" in analyst.fragments[0].regions[0].sql.upper()
    assert "SHA256" not in officer.fragments[0].regions[0].sql.upper()
    again = connect(spec, cache=False, role="analyst", governance=str(GOVERNANCE), coordinator="na").plan(sql)
    assert again.plan_cache == "hit" and _region_sql(again) == _region_sql(analyst)
    # the same role merging in another region is another plan (residency depends on where rows go)
    assert connect(spec, cache=False, role="analyst", governance=str(GOVERNANCE), coordinator="latam").plan(
        "SELECT region, count(email) AS n FROM booking GROUP BY region").plan_cache == "miss"


def test_an_edited_governance_file_applies_from_the_next_query(tmp_path, monkeypatch) -> None:
    gov = tmp_path / "skyfed.governance.yaml"
    shutil.copy(GOVERNANCE, gov)
    spec = load_spec(EXAMPLE)
    sql = "SELECT booking_id, email FROM booking WHERE region = 'na'"
    fed = connect(spec, cache=False, role="analyst", governance=str(gov), coordinator="na")
    hashed = fed.plan(sql)
    assert "SHA256" in hashed.fragments[0].regions[0].sql.upper()
    assert fed.plan(sql).plan_cache == "hit"
    text = gov.read_text()
    assert "      pii.phone: partial" in text
    gov.write_text(text.replace("      pii.phone: partial", "      pii.phone: partial\n      pii.email: clear", 1))
    clear = fed.plan(sql)  # the same long-lived Federation
    assert clear.plan_cache == "miss"
    assert "SHA256" not in clear.fragments[0].regions[0].sql.upper()
    fresh = connect(spec, cache=False, role="analyst", governance=str(gov), coordinator="na").plan(sql)
    assert fresh.plan_cache == "hit" and "SHA256" not in fresh.fragments[0].regions[0].sql.upper()
    # the salt is part of the policies' fingerprint: another salt, another plan (the hash differs)
    gov.write_text(text)
    assert fed.plan(sql).plan_cache == "hit"  # back to the first file's policies
    monkeypatch.setenv("SKYFED_MASK_SALT", "another-salt")
    salted = fed.plan(sql)
    assert salted.plan_cache == "miss" and "another-salt" in salted.fragments[0].regions[0].sql


def test_a_new_reference_file_version_is_a_new_plan(tmp_path) -> None:
    spec = load_spec(EXAMPLE)
    path = Path(spec.reference["airport"].path)
    assert path.is_relative_to(tmp_path), path
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = contract_schema(spec.contracts["airport"])
    rows = [{"iata": "LIM", "lat": -12.0, "lon": -77.1, "tz": "America/Lima", "country": "PE"},
            {"iata": "MAD", "lat": 40.5, "lon": -3.6, "tz": "Europe/Madrid", "country": "ES"}]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    sql = ("SELECT a.country, count(*) AS n FROM eu.flight_leg f JOIN airport a ON a.iata = f.dep_airport "
           "GROUP BY a.country")  # fmt: skip
    fed = connect(spec, cache=False)
    first = fed.plan(sql)
    eu_sql = first.fragments[0].regions[0].sql
    assert first.plan_cache == "miss" and "_skyfed_ref_airport_" in eu_sql, eu_sql
    assert fed.plan(sql).plan_cache == "hit"
    pq.write_table(pa.Table.from_pylist(rows[:1], schema=schema), path)  # a new version of the file
    second = fed.plan(sql)
    assert second.plan_cache == "miss"
    assert second.fragments[0].regions[0].sql != eu_sql  # it names the new version's BigQuery copy


def test_the_read_only_guard_still_refuses_after_a_cached_prefix() -> None:
    from skyfed.errors import SkyfedError

    fed = connect(load_spec(EXAMPLE), cache=False)
    assert fed.plan("SELECT region FROM flight_leg").plan_cache == "miss"
    for bad in ("SELECT region FROM flight_leg; DROP TABLE flight_leg", "SELECT region FROM flight_leg; SELECT 1"):
        with pytest.raises(SkyfedError):
            fed.plan(bad)
