"""The governance commands end to end through `python -m skyfed` on a SQLite metadata database."""

from __future__ import annotations

import json
from pathlib import Path

from skyfed.catalog import runs
from tests.governance.conftest import booking, spec_doc, write_spec


def test_contracts_catalog_lineage_audit(home: Path, tmp_path: Path, run_cli) -> None:
    folder = tmp_path / "proj"
    folder.mkdir()
    gov = {"roles": {"analyst": {"masks": {"pii.*": "hash"}}}, "residency": {"restricted": ["pii.*"], "min_group_size": 5}}
    spec = write_spec(folder, spec_doc(), gov)
    env = {"SKYFED_HOME": str(home)}

    r = run_cli("contracts", "check", "--spec", spec, "--json", env=env)
    assert r.code == 0, r.stderr
    assert json.loads(r.stdout)["contracts"][0]["status"] == "registered"

    doc = spec_doc(booking=booking(version=2, columns={"seats": {"type": "int32", "nullable": False, "checks": {"min": 3}}}))
    write_spec(folder, doc)
    r = run_cli("contracts", "check", "--spec", spec, env=env)
    assert r.code == 1
    assert "column seats: min tightened (1 -> 3) is not BACKWARD-compatible with version 1" in r.stdout
    assert "violation: booking: column seats: max removed" not in r.stdout  # loosening is allowed under BACKWARD
    assert "options:" in r.stdout and "NAME_v2" in r.stdout
    r = run_cli("contracts", "check", "--spec", spec, "--mode", "NONE", env=env)
    assert r.code == 0, r.stdout + r.stderr

    r = run_cli("contracts", "list", "--json", env=env)
    assert [(x["contract"], x["latest"]) for x in json.loads(r.stdout)] == [("booking", 2)]
    r = run_cli("contracts", "diff", "booking", "1", "2", "--json", env=env)
    assert {(c["column"], c["rule"]) for c in json.loads(r.stdout)} == {("seats", "min tightened"), ("seats", "max removed")}

    # policy weakening through the governance file is reported
    (folder / "skyfed.governance.yaml").write_text("roles:\n  analyst: {masks: {'pii.*': clear}}\n")
    r = run_cli("contracts", "check", "--spec", spec, env=env)
    assert r.code == 1 and "role analyst: mask of pii.email weakened from hash to clear" in r.stdout
    assert "residency: min_group_size lowered from 5 to 10" not in r.stdout

    # catalog
    runs.record({"run_id": "r1", "mapping": "eu_bookings", "region": "eu", "source": "eu.ops", "source_table": "bookings",
                 "contract": "booking", "status": "ok", "started_at": runs.now(), "finished_at": runs.now(),
                 "rows_read": 10, "rows_loaded": 8, "rows_quarantined": 2})
    r = run_cli("catalog", "show", "booking", "--spec", spec, "--json", env=env)
    info = json.loads(r.stdout)
    m = info["regions"]["eu"]["mappings"]["eu_bookings"]
    assert (m["rows_loaded"], m["rows_quarantined"], m["quality_pass_rate"]) == (8, 2, 0.8)
    assert [v["version"] for v in info["versions"]] == [1, 2]
    assert info["regions"]["eu"]["snapshot"] is None  # no Iceberg table written yet
    out = tmp_path / "dataplex.json"
    r = run_cli("catalog", "export", "--format", "dataplex", "--out", out, "--spec", spec, env=env)
    assert r.code == 0, r.stderr
    entry = json.loads(out.read_text())["entries"][0]
    assert entry["name"] == "projects/p/locations/europe-west1/entryGroups/skyfed/entries/eu.booking"
    gov_aspect = entry["aspects"]["p.europe-west1.skyfed-governance"]["data"]
    assert gov_aspect["classifications"]["email"] == "pii.email"
    assert gov_aspect["masks_by_role"]["analyst"]["email"] == "clear"

    # lineage and audit
    r = run_cli("lineage", "booking.passenger_name", "--spec", spec, env=env)
    assert r.code == 0 and "eu.ops.bookings.first_name" in r.stdout and "eu.ops.bookings.last_name" in r.stdout
    from skyfed.governance.audit import record_query

    record_query("SELECT email FROM booking", actor="ana", rows=1)
    r = run_cli("audit", "--user", "ana", "--since", "1h", "--json", env=env)
    assert [e["columns"] for e in json.loads(r.stdout)] == [["booking.email"]]


def test_show_and_since_in_process(home: Path) -> None:
    """The same command functions without a subprocess (cheaper): versions, --since parsing."""
    import pytest

    from skyfed.cli.governance import _get, _version, parse_since
    from skyfed.errors import SkyfedError
    from skyfed.governance.config import Governance
    from skyfed.governance.versioning import check_spec
    from tests.governance.conftest import make_spec

    check_spec(make_spec(), Governance())
    assert _get(*_version("booking@1"))["body"]["columns"]["seats"]["checks"] == {"min": 1.0, "max": 9.0}
    with pytest.raises(SkyfedError, match="no version 9"):
        _get(*_version("booking@9"))
    with pytest.raises(SkyfedError, match="must be a number"):
        _version("booking@x")
    with pytest.raises(SkyfedError, match="neither a duration nor a date"):
        parse_since("yesterday")
    assert parse_since("2026-01-02").isoformat() == "2026-01-02T00:00:00+00:00"
