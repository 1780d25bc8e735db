"""Contract registry and compatibility modes over a real SQLite metadata database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from skyfed.catalog import registry
from skyfed.errors import SkyfedError
from skyfed.governance.config import Governance, load_governance
from skyfed.governance.versioning import check_spec
from tests.governance.conftest import booking, make_spec


def run(doc: dict[str, Any], gov: Governance | None = None, **kw: Any):
    return check_spec(make_spec(booking=doc), gov or Governance(), spec_path="spec.yaml", **kw)


def rules(report) -> set[tuple[str | None, str, int]]:
    return {(v.column, v.rule, v.against_version) for c in report.contracts for v in c.violations}


def test_registering_is_idempotent(home: Path) -> None:
    first = run(booking())
    assert first.ok and first.contracts[0].status == "registered" and first.contracts[0].version == 1
    again = run(booking(description="new words, same schema", owner="someone@else"))
    assert again.contracts[0].status == "unchanged" and again.contracts[0].version == 1
    assert [r["version"] for r in registry.history("booking")] == [1]
    row = registry.history("booking")[0]
    assert row["spec_path"] == "spec.yaml" and row["declared_version"] == 1 and len(row["hash"]) == 64


def test_backward_accepts_optional_add_and_widening(home: Path) -> None:
    run(booking())
    rep = run(
        booking(
            version=2,
            columns={
                "loyalty_tier": {"type": "string"},
                "seats": {"type": "int64", "nullable": False, "checks": {"min": 1, "max": 9}},
                "fare": {"type": "decimal(12,2)"},
                "passenger_name": {"type": "string", "classification": "pii.name"},
            },
        )
    )
    assert rep.ok, [v.message() for c in rep.contracts for v in c.violations]
    assert rep.contracts[0].version == 2
    got = {(c["column"], c["rule"]) for c in rep.contracts[0].changes}
    assert got == {
        ("loyalty_tier", "add optional column"),
        ("seats", "widen type"),
        ("fare", "widen type"),
        ("passenger_name", "required -> optional"),
    }


def test_backward_refuses_with_precise_messages(home: Path) -> None:
    run(booking())
    rep = run(
        booking(
            version=2,
            columns={
                "checkin": {"type": "string", "nullable": False},
                "seats": {"type": "int32", "nullable": False, "checks": {"min": 2, "max": 9}},
                "region": {"type": "string", "nullable": False, "checks": {"allowed": ["eu", "na"]}},
                "phone": {"type": "int64", "classification": "pii.phone"},
                "email": {"type": "string", "nullable": False, "classification": "pii.email"},
            },
        )
    )
    assert not rep.ok and rep.contracts[0].status == "refused"
    assert rules(rep) == {
        ("checkin", "add required column", 1),
        ("seats", "min tightened", 1),
        ("region", "allowed values narrowed", 1),
        ("phone", "incompatible type change", 1),
        ("email", "optional -> required", 1),
    }
    msgs = [v.message() for v in rep.contracts[0].violations]
    assert any("column seats: min tightened (1 -> 2) is not BACKWARD-compatible with version 1" in m for m in msgs)
    assert registry.history("booking")[-1]["version"] == 1  # nothing registered
    assert rep.to_dict()["options"], "a refusal lists the options"


def test_forward_and_full(home: Path) -> None:
    run(booking())
    widened = booking(version=2, columns={"seats": {"type": "int64", "nullable": False, "checks": {"min": 1, "max": 9}}})
    assert rules(run(widened, mode="FORWARD")) == {("seats", "widen type", 1)}
    assert rules(run(widened, mode="FULL")) == {("seats", "widen type", 1)}
    dropped = booking(version=2, columns={"booking_id": None})
    assert rules(run(dropped, mode="FORWARD")) == {("booking_id", "drop required column", 1)}
    assert rules(run(dropped, mode="BACKWARD")) == set()  # BACKWARD registers it: version 2
    assert run(booking(version=3, columns={"booking_id": None, "x": {"type": "string"}}), mode="FULL").ok
    # bringing a dropped required column back is a new field id, and a required add
    back = run(booking(version=4), mode="FULL", register=False)
    assert rules(back) == {("booking_id", "add required column", 3)}


def test_transitive_checks_every_older_version(home: Path) -> None:
    run(booking())  # v1: seats min 1
    loosened = booking(version=2, columns={"seats": {"type": "int32", "nullable": False, "checks": {"min": 0, "max": 9}}})
    assert run(loosened).ok  # v2: min 0 (loosening is BACKWARD-compatible)
    # v3 sets min back to 1: tightening against v2; against v1 it is no change
    back = booking(version=3, columns={"seats": {"type": "int32", "nullable": False, "checks": {"min": 1, "max": 9}}})
    # the spec equals v1's hash, so it is recognised as the older version, not a new one
    same = run(back)
    assert same.contracts[0].status == "unchanged" and same.contracts[0].version == 1
    narrowed = booking(version=3, columns={"seats": {"type": "int32", "nullable": False, "checks": {"min": 2, "max": 9}}})
    plain = rules(run(narrowed, mode="BACKWARD", register=False))
    trans = rules(run(narrowed, mode="BACKWARD_TRANSITIVE", register=False))
    assert plain == {("seats", "min tightened", 2)}
    assert trans == {("seats", "min tightened", 2), ("seats", "min tightened", 1)}
    assert run(narrowed, mode="NONE").ok


def test_rename_keeps_field_id(home: Path, tmp_path: Path) -> None:
    run(booking())
    renamed_doc = booking(version=2)
    renamed_doc["columns"]["full_name"] = renamed_doc["columns"].pop("passenger_name")
    # without declaring it, a rename is a drop of a required column plus an add of a required one
    undeclared = run(renamed_doc, register=False)
    assert ("full_name", "add required column", 1) in rules(undeclared)
    gov_file = tmp_path / "gov.yaml"
    gov_file.write_text("contracts:\n  booking:\n    renames: {full_name: passenger_name}\n")
    rep = run(renamed_doc, load_governance(gov_file), mode="FULL")
    assert rep.ok and [c["rule"] for c in rep.contracts[0].changes] == ["rename"]
    v1, v2 = registry.history("booking")
    assert v2["body"]["columns"]["full_name"]["id"] == v1["body"]["columns"]["passenger_name"]["id"]


def test_classification_removed_is_a_policy_finding(home: Path) -> None:
    run(booking())
    rep = run(booking(version=2, columns={"email": {"type": "string"}}))
    assert rep.policy_status == "refused" and not rep.ok
    assert rep.policy_findings == ["booking.email: classification pii.email removed (now none)"]
    assert registry.history("booking")[-1]["version"] == 1
    accepted = run(booking(version=2, columns={"email": {"type": "string"}}), accept_weaker_policy=True)
    assert accepted.ok and accepted.contracts[0].version == 2


def test_weaker_masks_are_reported(home: Path, tmp_path: Path) -> None:
    strict = tmp_path / "strict.yaml"
    strict.write_text(
        "roles:\n  analyst: {masks: {'pii.*': hash}, regions: [eu]}\nresidency: {restricted: ['pii.*'], min_group_size: 10}\n"
    )
    loose = tmp_path / "loose.yaml"
    loose.write_text(
        "roles:\n  analyst: {masks: {'pii.*': hash, pii.email: partial}}\nresidency: {restricted: [pii.name], min_group_size: 3}\n"
    )
    assert run(booking(), load_governance(strict)).ok
    rep = run(booking(), load_governance(loose))
    assert rep.policy_status == "refused"
    assert set(rep.policy_findings) == {
        "role analyst: mask of pii.email weakened from hash to partial",
        "role analyst: row access widened to all regions",
        "residency: min_group_size lowered from 10 to 3",
        "residency: pii.email is no longer restricted",
        "residency: pii.phone is no longer restricted",
    }
    # stricter again is fine
    assert run(booking(), load_governance(strict)).ok


def test_declared_version_not_bumped_is_noted(home: Path) -> None:
    run(booking())
    rep = run(booking(columns={"x": {"type": "string"}}))
    assert rep.ok and any("bump `version:` to 2" in n for n in rep.contracts[0].notes)


def test_bad_mode_and_bad_rename(home: Path, tmp_path: Path) -> None:
    with pytest.raises(SkyfedError, match="unknown compatibility mode"):
        run(booking(), mode="SIDEWAYS")
    run(booking())
    gov = tmp_path / "g.yaml"
    gov.write_text("contracts:\n  booking:\n    renames: {nope: passenger_name}\n")
    with pytest.raises(SkyfedError, match="rename passenger_name -> nope"):
        run(booking(version=2), load_governance(gov))
    gov.write_text("contracts:\n  booking:\n    renamez: {}\n")
    with pytest.raises(SkyfedError, match="renamez"):
        load_governance(gov)


def test_pinned_version_gets_the_older_shape(home: Path, tmp_path: Path) -> None:
    import duckdb

    from skyfed.governance.versioning import pinned_select

    run(booking())
    doc = booking(version=2, columns={"seats": {"type": "int64", "nullable": False, "checks": {"min": 1, "max": 9}},
                                      "tier": {"type": "string"}})
    doc["columns"]["full_name"] = doc["columns"].pop("passenger_name")
    gov = tmp_path / "g.yaml"
    gov.write_text("contracts:\n  booking:\n    renames: {full_name: passenger_name}\n")
    assert run(doc, load_governance(gov)).ok
    con = duckdb.connect()
    con.execute("CREATE TABLE cur (booking_id VARCHAR, region VARCHAR, full_name VARCHAR, email VARCHAR, phone VARCHAR,"
                " seats BIGINT, fare DECIMAL(10,2), tier VARCHAR)")
    con.execute("INSERT INTO cur VALUES ('B1', 'eu', 'Ana', NULL, NULL, 2, 1.5, 'gold')")
    rel = con.sql(pinned_select("booking", 1, "cur"))
    assert rel.columns == ["booking_id", "region", "passenger_name", "email", "phone", "seats", "fare"]
    assert str(rel.types[5]) == "INTEGER" and rel.fetchall()[0][2] == "Ana"
    with pytest.raises(SkyfedError, match="no version 7"):
        pinned_select("booking", 7, "cur")


def test_concurrent_registration_stores_one_version(home: Path, tmp_path: Path) -> None:
    """Writers racing on the same new contract version end with one row, not two."""
    import os
    import subprocess
    import sys

    from tests.governance.conftest import spec_doc, write_spec

    spec = write_spec(tmp_path, spec_doc())
    code = (
        "import sys; from skyfed.spec import load_spec; from skyfed.governance.config import Governance; "
        "from skyfed.governance.versioning import check_spec; "
        "r = check_spec(load_spec(sys.argv[1]), Governance()); print(r.contracts[0].version)"
    )
    env = {**os.environ, "SKYFED_HOME": str(home)}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(spec)], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(3)]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs) and outs == ["1", "1", "1"]
    assert [r["version"] for r in registry.history("booking")] == [1]
    assert len(registry.history("governance", kind="policy")) == 1
