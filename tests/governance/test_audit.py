"""Audit trail: tables and columns derived from SQL, filters, idempotent run records."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from skyfed.catalog import audit as store
from skyfed.governance.audit import record_query, record_run, touched

SCHEMA = {"booking": ["booking_id", "email", "fare"], "flight_leg": ["flight_id", "region", "fuel_kg"]}


def test_touched_resolves_aliases_ctes_and_stars() -> None:
    sql = (
        "WITH f AS (SELECT flight_id, fuel_kg FROM flight_leg WHERE region = 'eu') "
        "SELECT b.email, sum(f.fuel_kg) FROM booking AS b JOIN f ON f.flight_id = b.booking_id GROUP BY 1"
    )
    tables, cols = touched(sql)
    assert tables == ["booking", "flight_leg"]
    assert cols == ["booking.booking_id", "booking.email", "flight_leg.flight_id", "flight_leg.fuel_kg", "flight_leg.region"]
    assert touched("SELECT * FROM booking")[1] == ["booking.*"]
    assert touched("SELECT * FROM booking", SCHEMA)[1] == ["booking.booking_id", "booking.email", "booking.fare"]
    assert touched("this is not sql (") == ([], [])


def test_record_and_filter(home: Path) -> None:
    record_query("SELECT email FROM booking", actor="ana", role="analyst", rows=3,
                 decisions=[{"policy": "mask", "decision": "hash", "detail": "booking.email"}])
    record_query("SELECT fuel_kg FROM eu.flight_leg", actor="bo", status="refused")
    rid = record_run("run-1", tables=["eu.flight_leg"], actor="ingest", rows=10)
    assert record_run("run-1", tables=["eu.flight_leg"], actor="ingest", rows=10) == rid  # retry: same event
    assert len(store.search()) == 3
    ana = store.search(actor="ana")
    assert len(ana) == 1 and ana[0]["columns"] == ["booking.email"] and ana[0]["decisions"][0]["decision"] == "hash"
    assert {r["actor"] for r in store.search(table="flight_leg")} == {"bo", "ingest"}
    assert store.search(table="leg") == []
    assert store.search(since=datetime.now(UTC) + timedelta(minutes=1)) == []
    assert [r["kind"] for r in store.search(kind="run")] == ["run"]
    record_run("run-2", kind="model", tables=["route_profitability"], actor="pipelines", rows=4)
    assert [r["actor"] for r in store.search(kind="model")] == ["pipelines"]
    assert [r["actor"] for r in store.search(kind="ingest")] == ["ingest"]


def test_hooks_record_lineage_audit_and_refusals(home: Path, tmp_path: Path, monkeypatch) -> None:
    import pytest

    from skyfed.catalog import registry
    from skyfed.governance.hooks import after_ingest, ensure_contracts, govern_query
    from skyfed.governance.lineage import recorded_edges
    from skyfed.governance.policy import PolicyRefusal
    from tests.governance.conftest import booking, make_spec, spec_doc, write_spec

    spec_path = write_spec(tmp_path, spec_doc(), {"roles": {"analyst": {"masks": {"pii.*": "redact"}}},
                                                  "residency": {"restricted": ["pii.*"]}})
    spec = make_spec()
    assert ensure_contracts(spec, str(spec_path)) == {"booking": 1}
    assert ensure_contracts(spec, str(spec_path)) == {"booking": 1}  # idempotent
    bad = make_spec(booking=booking(version=2, columns={"extra": {"type": "string", "nullable": False}}))
    import skyfed.errors

    with pytest.raises(skyfed.errors.SkyfedError, match="column extra: add required column"):
        ensure_contracts(bad, str(spec_path))
    assert len(registry.history("booking")) == 1

    assert after_ingest(spec, "eu_bookings", "run-1", "ok", 5) is None
    runs_ = store.search(kind="run")
    assert runs_[0]["tables"] == ["eu.booking", "eu.ops.bookings"] and runs_[0]["rows"] == 5
    assert any(e.dst == "eu.booking.email" and e.src == "eu.ops.bookings.mail" for e in recorded_edges())

    sql, decisions = govern_query("SELECT email FROM booking", spec, "analyst", str(spec_path))
    assert "[redacted]" in sql and {"policy": "mask", "decision": "redact", "detail": "booking.email (pii.email)"} in decisions
    # a redacted column reveals nothing, so it may cross regions; a write never may
    govern_query("SELECT email FROM booking", spec, "analyst", str(spec_path), cross_region=True)
    with pytest.raises(PolicyRefusal):
        govern_query("DELETE FROM booking", spec, "analyst", str(spec_path))
    assert [r["status"] for r in store.search(kind="query")] == ["refused"]


def test_after_ingest_reports_a_dead_lineage_endpoint_instead_of_failing_the_run(home: Path, monkeypatch) -> None:
    import socket

    from skyfed.governance.hooks import after_ingest
    from tests.governance.conftest import make_spec

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("OPENLINEAGE_URL", f"http://127.0.0.1:{port}")
    problem = after_ingest(make_spec(), "eu_bookings", "run-9", "ok", 5)
    assert problem is not None and problem.startswith("lineage/audit record not written")
