"""Governance inside the federated query path, against the ingested airline world.

Every PII column of examples/airline/skyfed.governance.yaml, for each restricted role:
query shapes return no value the role may not see (cells and error messages), residency
holds on the plan (each region's SQL) and on what the report says was shipped, the
cache never serves one role's answer to another, every query is audited with its
original SQL, and `flight_leg@N` reads an older registered shape.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from envkit import env_vars
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skyfed.catalog import audit as audit_store
from skyfed.errors import SkyfedError
from skyfed.governance.config import load_governance
from skyfed.governance.policy import PolicyRefusal
from skyfed.query import connect

EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "examples" / "airline"
GOV_FILE = EXAMPLE_DIR / "skyfed.governance.yaml"
SALT = "fed-test-salt-9f2"
GOV = load_governance(GOV_FILE)
PII = [(t, c) for t, cols in GOV.classifications.items() for c in cols]  # every classified column of the file
RESTRICTED_ROLES = ["analyst", "support_eu", "anonymous"]


@pytest.fixture(scope="module")
def salted(ingested_world) -> Iterator[None]:
    with env_vars(SKYFED_MASK_SALT=SALT):
        yield


class Values(dict):
    """Raw values by (table, column) and region; a short repr keeps hypothesis' failure report readable."""

    def __repr__(self) -> str:
        return f"Values({len(self)} columns)"


@pytest.fixture(scope="module")
def raw(colocated: duckdb.DuckDBPyConnection) -> dict[tuple[str, str], dict[str, set[str]]]:
    """(table, column) -> region -> raw values (at least 5 characters, so a substring hit means a leak)."""
    out: dict[tuple[str, str], dict[str, set[str]]] = Values()
    for table, col in PII:
        rows = colocated.execute(f'SELECT region, CAST("{col}" AS VARCHAR) FROM {table} WHERE "{col}" IS NOT NULL').fetchall()
        per: dict[str, set[str]] = {}
        for region, v in rows:
            if len(v) >= 5:
                per.setdefault(region, set()).add(v)
        assert per, f"the test world has no {table}.{col} values: the leak detector would see nothing"
        out[(table, col)] = per
    return out


def forbidden(role: str, table: str, col: str, raw: dict) -> set[str]:
    """Raw values `role` must never receive: all of them unless its mask is clear, then those of other regions."""
    policy = GOV.roles.get(role)
    cls = GOV.classifications[table][col]
    mask = policy.mask_for(cls) if policy else "null"
    regions = policy.regions if policy else None
    per = raw[(table, col)]
    if mask != "clear":
        return {v for vs in per.values() for v in vs}
    if regions is None:
        return set()
    seen = {v for r, vs in per.items() if r in regions for v in vs}  # a name in eu may also exist in na
    return {v for r, vs in per.items() if r not in regions for v in vs} - seen


def cells(table: pa.Table) -> list[str]:
    return [str(v) for col in table.columns for v in col.to_pylist() if v is not None]


def assert_no_leak(fed, sql: str, bad: set[str]) -> pa.Table | None:
    try:
        table = fed.query(sql).arrow()
    except SkyfedError as exc:  # a refusal or an error: its text must not carry a value either
        text = f"{exc.message} {exc.hint or ''}"
        assert not [v for v in bad if v in text], f"{sql}: an error message quotes a raw value"
        assert SALT not in text, f"{sql}: an error message quotes the salt"
        return None
    joined = "\n".join(cells(table))
    leaked = [v for v in bad if v in joined]
    assert not leaked, f"{sql}: raw values reached the caller: {leaked[:3]}"
    return table


SHAPES = [
    "SELECT * FROM {r}{t}",
    "SELECT {c} FROM {r}{t}",
    "SELECT x.{c}, y.{c} FROM {r}{t} x JOIN {r}{t} y ON x.{k} = y.{k}",
    "WITH w AS (SELECT {c} AS v FROM {r}{t}) SELECT v FROM w",
    "SELECT v FROM (SELECT upper(CAST({c} AS VARCHAR)) AS v FROM {r}{t}) s",
    "SELECT {c} FROM {r}{t} UNION SELECT {c} FROM {r}{t}",
    "SELECT {c}, row_number() OVER (ORDER BY {c}) FROM {r}{t}",
    "SELECT substr({c}, 1, 40), lower({c}) || '' FROM {r}{t}",
    "SELECT {c}, count(*) FROM {r}{t} GROUP BY {c} ORDER BY {c}",
    "SELECT min({c}), max({c}), string_agg({c}, ',') FROM {r}{t}",
    "SELECT {k}, max({c}) FROM {r}{t} GROUP BY {k} HAVING count(*) < 3",
    "SELECT CAST({c} AS INTEGER) FROM {r}{t}",
]
KEYS = {"booking": "booking_id", "customer_feedback": "feedback_id"}


@pytest.fixture(scope="module")
def feds(salted) -> dict[tuple[str, str], object]:
    """One federation per (role, coordinator), result cache off: every query really runs."""
    return {(role, coord): connect(_spec(), role=role,
                                   coordinator=coord, governance=GOV_FILE, cache=False, timeout=120)
            for role in RESTRICTED_ROLES + ["privacy_officer"] for coord in ("eu", "na")}  # fmt: skip


def _spec():
    from skyfed.spec import load_spec

    return load_spec(EXAMPLE_DIR / "skyfed.yaml")


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(shape=st.sampled_from(SHAPES), col=st.sampled_from(PII), role=st.sampled_from(RESTRICTED_ROLES),
       coord=st.sampled_from(["eu", "na"]), scope=st.sampled_from(["", "eu.", "na."]))
def test_no_query_shape_leaks_a_raw_value(feds, raw, shape, col, role, coord, scope) -> None:
    table, column = col
    sql = shape.format(c=column, t=table, k=KEYS[table], r=scope)
    assert_no_leak(feds[(role, coord)], sql, forbidden(role, table, column, raw))


def test_the_detector_sees_raw_values_for_a_clear_role_in_its_region(feds, raw) -> None:
    """Control: privacy_officer (clear) with the merge in eu gets eu's raw emails: the check above can fail."""
    table = feds[("privacy_officer", "eu")].query("SELECT email FROM eu.booking").arrow()
    assert set(cells(table)) & raw[("booking", "email")]["eu"]


def test_masks_are_computed_in_the_region_and_agree_across_engines(feds, colocated) -> None:
    """analyst's hash of eu's (BigQuery) and na's (DuckDB) emails equals sha256(salt || email): the BigQuery
    translation TO_HEX(SHA256(..)) gives the same text as DuckDB's sha256, so hashed keys join across regions."""
    for region in ("eu", "na"):
        got = feds[("analyst", region)].query(f"SELECT booking_id, email FROM {region}.booking").arrow()
        want = dict(colocated.execute(
            f"SELECT booking_id, sha256('{SALT}' || email) FROM {region}.booking WHERE email IS NOT NULL").fetchall())
        pairs = {k: v for k, v in zip(got.column("booking_id").to_pylist(), got.column("email").to_pylist()) if v}
        assert pairs and pairs == want, region


def test_residency_on_the_plan_and_on_the_bytes_shipped(feds, raw) -> None:
    """analyst, merge in na: eu's and latam's fragments may ship booking emails only as counts over >= k rows."""
    fed = feds[("analyst", "na")]
    sql = "SELECT region, count(email) AS n FROM booking GROUP BY region"
    plan = fed.explain(sql)
    k = GOV.residency.min_group_size
    for frag in plan["fragments"]:
        for rq in frag["regions"]:
            if rq["region"] == "na":
                continue
            assert f">= {k}" in rq["sql"], f"{rq['region']}: no group-size guard in the SQL that leaves the region"
            assert SALT not in rq["sql"], "explain shows the salt"
            assert any(d["policy"] == "residency" and d["crosses_boundary"] for d in rq["policy"])
    result = fed.query(sql)
    for rep in result.report.regions:  # one row per region group at most: counts, not rows
        assert rep.rows <= 1, (rep.region, rep.rows)
    counts = dict(zip(result.arrow().column("region").to_pylist(), result.arrow().column("n").to_pylist()))
    for region, values in raw[("booking", "email")].items():
        if len(values) >= k:
            assert counts.get(region, 0) >= k
    with pytest.raises(PolicyRefusal) as info:  # the raw column itself may not cross
        fed.query("SELECT email FROM eu.booking")
    assert info.value.policy == "residency" and "eu.booking.email" in info.value.message
    assert "allowed:" in (info.value.hint or "")


def test_row_access_prunes_regions_for_support_eu(feds, colocated) -> None:
    fed = feds[("support_eu", "eu")]
    result = fed.query("SELECT region, count(*) AS n FROM booking GROUP BY region")
    got = dict(zip(result.arrow().column("region").to_pylist(), result.arrow().column("n").to_pylist()))
    assert got == dict(colocated.execute("SELECT region, count(*) FROM booking WHERE region = 'eu' GROUP BY region").fetchall())
    assert {"latam", "na"} <= set(result.report.pruned), result.report.pruned


def test_cache_key_includes_the_role(salted, tmp_path, raw) -> None:
    spec = _spec()
    sql = "SELECT email FROM eu.booking ORDER BY email LIMIT 5"
    officer = connect(spec, role="privacy_officer", coordinator="eu", governance=GOV_FILE, cache_dir=tmp_path, timeout=120)
    analyst = connect(spec, role="analyst", coordinator="eu", governance=GOV_FILE, cache_dir=tmp_path, timeout=120)
    clear = officer.query(sql)
    masked = analyst.query(sql)
    assert clear.report.cache["status"] == "miss" and masked.report.cache["status"] == "miss"
    assert not set(cells(masked.arrow())) & raw[("booking", "email")]["eu"]
    assert set(cells(clear.arrow())) & raw[("booking", "email")]["eu"]
    assert analyst.query(sql).report.cache["status"] == "hit"


def test_every_query_is_audited_with_the_original_sql(feds) -> None:
    fed = feds[("analyst", "na")]
    sql = "SELECT region, count(email) AS n FROM booking GROUP BY region"
    fed.query(sql)
    with pytest.raises(PolicyRefusal):
        fed.query("SELECT email FROM latam.booking")
    with pytest.raises(SkyfedError):
        fed.query("SELECT no_such_column FROM flight_leg")
    rows = audit_store.search(kind="query", limit=500)
    mine = [r for r in rows if r["role"] == "analyst"]
    by_sql = {r["sql"]: r for r in mine}
    ok = by_sql[sql]
    assert ok["status"] == "ok" and ok["rows"] == 3 and "booking.email" in ok["columns"]
    assert any(d["policy"] == "mask" for d in ok["decisions"]) and any(d["policy"] == "residency" for d in ok["decisions"])
    assert by_sql["SELECT email FROM latam.booking"]["status"] == "refused"
    assert by_sql["SELECT no_such_column FROM flight_leg"]["status"] == "failed"
    assert not [r for r in rows if SALT in (r["sql"] or "")], "the audit stores the rewritten SQL (with the salt)"
    assert ok["actor"], "no OS user recorded"


def test_a_query_pins_an_older_contract_version(salted, colocated) -> None:
    """flight_leg@V reads the curated table in the shape of registered version V (here: before tail_number)."""
    from skyfed.catalog import registry
    from skyfed.governance.versioning import check_spec

    spec = _spec()
    older = spec.contracts["flight_leg"]
    older = older.model_copy(update={"columns": {n: c for n, c in older.columns.items() if n != "tail_number"}})
    for version in (spec.model_copy(update={"contracts": {**spec.contracts, "flight_leg": older}}), spec):
        report = check_spec(version, GOV)
        assert report.ok, report.to_dict()
    hist = registry.history("flight_leg")
    v_old = max(r["version"] for r in hist if "tail_number" not in r["body"]["columns"])
    fed = connect(spec, role="analyst", coordinator="na", governance=GOV_FILE, cache=False, timeout=120)
    pinned = fed.query(f"SELECT * FROM flight_leg@{v_old} WHERE region = 'na'").arrow()
    current = fed.query("SELECT * FROM flight_leg WHERE region = 'na'").arrow()
    assert "tail_number" in current.column_names and "tail_number" not in pinned.column_names
    assert pinned.column_names == [c for c in current.column_names if c != "tail_number"]
    assert pinned.num_rows == colocated.execute("SELECT count(*) FROM na.flight_leg").fetchone()[0]
    with pytest.raises(SkyfedError) as info:
        fed.query("SELECT count(*) FROM flight_leg@99")
    assert "no version 99" in info.value.message


def test_cli_role_explain_and_refusal(salted, run_cli) -> None:
    spec = str(EXAMPLE_DIR / "skyfed.yaml")
    code, out, err = run_cli("query", "SELECT region, count(email) AS n FROM booking GROUP BY region", "--spec", spec,
                             "--role", "analyst", "--coordinator", "na", "--explain", "--json")
    assert code == 0, err
    import json

    plan = json.loads(out)
    assert plan["policy"]["role"] == "analyst" and plan["policy"]["governed"]
    assert {d["policy"] for d in plan["policy"]["decisions"]} >= {"mask", "residency"}
    assert SALT not in out and "<salt>" in out
    code, out, err = run_cli("query", "SELECT email FROM eu.booking", "--spec", spec, "--role", "analyst",
                             "--coordinator", "na")
    assert code != 0
    assert "refused by the residency policy" in err and "allowed:" in err, err
    code, out, err = run_cli("query", "SELECT count(*) AS n FROM booking", "--spec", spec, "--role", "pilot")
    assert code != 0 and "role 'pilot' has no policy" in err, err
    code, out, err = run_cli("query", "SELECT email FROM na.booking LIMIT 3", "--spec", spec, "--coordinator", "na",
                             "--format", "json", env={"SKYFED_ROLE": None})
    assert code == 0, err
    rows = json.loads(out)["rows"]
    assert rows and all(r["email"] is None for r in rows), "no role: every classified column is NULL"
