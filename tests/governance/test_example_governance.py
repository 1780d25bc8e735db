"""examples/airline/skyfed.governance.yaml: it loads, names only what the example spec has, and its policies hold in DuckDB."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from skyfed.contracts.types import contract_schema
from skyfed.errors import SkyfedError
from skyfed.governance.config import (
    FILE_NAME,
    Governance,
    governance_path,
    governed_spec,
    load_governance,
)
from skyfed.governance.policy import REDACTED, PolicyRefusal, apply_policies
from skyfed.spec.loader import load_spec
from skyfed.spec.models import PlatformSpec

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "airline"
SALT = "example-salt"


@pytest.fixture(scope="module")
def spec() -> PlatformSpec:
    return load_spec(EXAMPLE / "skyfed.yaml", env={"SKYFED_HOME": "/nonexistent", "SKYFED_PG_PASSWORD": "unused"})


@pytest.fixture(scope="module")
def gov() -> Governance:
    path = governance_path(EXAMPLE / "skyfed.yaml")
    assert path == EXAMPLE / FILE_NAME, f"{FILE_NAME} is not found beside the example spec"
    return load_governance(path)


def test_every_name_in_the_file_exists_in_the_example_spec(spec: PlatformSpec, gov: Governance) -> None:
    assert gov.classifications, "the example classifies no column"
    for contract, cols in gov.classifications.items():
        assert contract in spec.contracts, f"classified contract {contract} is not in the example spec"
        for col, cls in cols.items():
            assert col in spec.contracts[contract].columns, f"classified column {contract}.{col} does not exist"
            own = spec.contracts[contract].columns[col].classification
            assert own in (None, cls), f"{contract}.{col}: file says {cls}, spec says {own}"
    # the inventory is complete: every column the spec classifies is listed
    spec_classified = {(k, c) for k, con in spec.contracts.items() for c, col in con.columns.items() if col.classification}
    assert spec_classified == {(k, c) for k, cols in gov.classifications.items() for c in cols}
    assert set(gov.contracts) <= set(spec.contracts)
    assert set(gov.drift.mappings) <= {m.name for m in spec.mappings}
    assert set(gov.roles) == {"analyst", "support_eu", "privacy_officer"}
    assert gov.drift.modes_for("latam_flights").types == "freeze"
    assert gov.drift.modes_for("eu_flights").model_dump() == {"columns": "evolve", "types": "evolve"}  # the default
    governed = governed_spec(spec, gov)
    assert governed.contracts["booking"].compatibility == "FULL_TRANSITIVE"  # the file's override, seen by the catalog
    assert spec.contracts["booking"].compatibility == "BACKWARD"  # the spec object itself is untouched


def test_a_classification_that_disagrees_with_the_spec_is_refused(spec: PlatformSpec, gov: Governance) -> None:
    bad = gov.model_copy(update={"classifications": {"booking": {"email": "pii.name"}}})
    with pytest.raises(SkyfedError, match="classifies booking.email as pii.name but the spec says pii.email"):
        governed_spec(spec, bad)
    bad = gov.model_copy(update={"classifications": {"booking": {"emial": "pii.email"}}})
    with pytest.raises(SkyfedError, match="did you mean 'email'"):
        governed_spec(spec, bad)
    extra = gov.model_copy(update={"classifications": {"flight_leg": {"tail_number": "ops.aircraft"}}})
    assert governed_spec(spec, extra).contracts["flight_leg"].columns["tail_number"].classification == "ops.aircraft"
    assert spec.contracts["flight_leg"].columns["tail_number"].classification is None  # the spec is not modified


def _rows() -> dict[str, pa.Table]:
    t = datetime(2024, 5, 1, tzinfo=UTC)
    bookings = [
        {"booking_id": f"{r.upper()}-{i}", "region": r, "flight_id": f"{r}-F1", "booked_at_utc": t,
         "passenger_name": f"Name{r}{i} Surname", "email": f"p{i}.{r}@mail.example", "phone": f"+00 555 {i:04d}",
         "document_number": f"DOC{r}{i:05d}", "cabin": "economy", "fare_usd": 100.0 + i,
         "status": "confirmed", "updated_at_utc": t}
        for r, n in (("eu", 12), ("na", 3)) for i in range(n)
    ]
    feedback = [
        {"feedback_id": f"{r}-{i}", "region": r, "flight_id": f"{r}-F1", "submitted_at_utc": t, "survey_scale": "nps_0_10",
         "raw_score": 9, "recommend_0_10": 9, "satisfaction_0_100": 90.0, "comment": f"seat 12C was fine, {r} {i}"}
        for r in ("eu", "latam") for i in range(2)
    ]
    return {"booking": bookings, "customer_feedback": feedback}


def _run(spec: PlatformSpec, gov: Governance, sql: str, role: str, cross_region: bool = False) -> list[tuple[Any, ...]]:
    governed = governed_spec(spec, gov)
    rewritten = apply_policies(sql, role=role, contracts=governed.contracts, gov=gov, cross_region=cross_region).sql
    con = duckdb.connect()
    for name, rows in _rows().items():
        con.register(name, pa.Table.from_pylist(rows, schema=contract_schema(spec.contracts[name])))
    return con.sql(rewritten).fetchall()


def test_roles_over_example_queries(spec: PlatformSpec, gov: Governance, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKYFED_MASK_SALT", SALT)
    sql = "SELECT booking_id, passenger_name, email, phone, document_number FROM booking ORDER BY booking_id"
    analyst = _run(spec, gov, sql, "analyst")
    assert len(analyst) == 15
    first = analyst[0]  # EU-0
    assert first[1] == REDACTED
    assert first[2] == hashlib.sha256((SALT + "p0.eu@mail.example").encode()).hexdigest()
    assert first[3] == "****0000" and first[4] is None

    support = _run(spec, gov, sql, "support_eu")
    assert {r[0].split("-")[0] for r in support} == {"EU"}  # row access: its region only
    assert support[0][1:4] == ("Nameeu0 Surname", "p0.eu@mail.example", "****0000") and support[0][4] is None

    officer = _run(spec, gov, sql, "privacy_officer")
    assert officer[0][1:] == ("Nameeu0 Surname", "p0.eu@mail.example", "+00 555 0000", "DOCeu00000")

    comments = _run(spec, gov, "SELECT region, comment FROM customer_feedback ORDER BY region", "support_eu")
    assert comments == [("eu", "seat 12C was fine, eu 0"), ("eu", "seat 12C was fine, eu 1")]
    assert {c for _, c in _run(spec, gov, "SELECT region, comment FROM customer_feedback", "analyst")} == {REDACTED}


def test_residency_across_regions(spec: PlatformSpec, gov: Governance, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKYFED_MASK_SALT", SALT)
    grouped = "SELECT region, COUNT(DISTINCT email) AS customers FROM booking GROUP BY region ORDER BY region"
    assert _run(spec, gov, grouped, "analyst", cross_region=True) == [("eu", 12)]  # na has 3 < 10 bookings
    assert _run(spec, gov, grouped, "analyst") == [("eu", 12), ("na", 3)]  # inside the region: no guard
    with pytest.raises(PolicyRefusal, match=r"booking.email \(pii.email\) is restricted to its region"):
        _run(spec, gov, "SELECT email FROM booking", "analyst", cross_region=True)
    with pytest.raises(PolicyRefusal, match="residency"):
        _run(spec, gov, "SELECT region, MAX(comment) FROM customer_feedback GROUP BY region", "support_eu", cross_region=True)
    with pytest.raises(SkyfedError, match="role 'guest' has no policy"):
        _run(spec, gov, grouped, "guest")
