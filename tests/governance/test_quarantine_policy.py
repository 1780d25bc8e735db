"""Quarantine records keep raw source records (PII included): what a caller sees is masked by role.

The airline example's spec and governance file; quarantine records committed to the
latam Iceberg store (a temporary SKYFED_HOME, no services). The raw field names are
the source's (Portuguese), mapped to classified contract columns through the
mapping's expressions.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest

from skyfed.errors import SkyfedError
from skyfed.ingest.quarantine import read_quarantine, read_quarantine_as, summarize
from skyfed.ingest.stores import open_store
from skyfed.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "examples" / "airline" / "skyfed.yaml"
SALT = "test-salt-6"
NAME, EMAIL, PHONE, DOC = "Ana Beatriz Lima", "ana.lima@example.com", "+55 11 98765-4321", "BR1234567"


@pytest.fixture
def quarantined(home: Path, monkeypatch) -> tuple:
    monkeypatch.setenv("SKYFED_MASK_SALT", SALT)
    monkeypatch.delenv("SKYFED_ROLE", raising=False)
    monkeypatch.delenv("SKYFED_GOVERNANCE", raising=False)
    spec = load_spec(str(SPEC))
    mapping = next(m for m in spec.mappings if m.name == "latam_bookings")
    src = {v: k for k, v in mapping.columns.items()}  # source field -> contract column (plain renames here)
    raw = {
        next(f for f, c in src.items() if c == "passenger_name"): NAME,
        next(f for f, c in src.items() if c == "email"): EMAIL,
        next(f for f, c in src.items() if c == "phone"): PHONE,
        next(f for f, c in src.items() if c == "document_number"): DOC,
        "assentos": "0",
    }
    store = open_store("latam", spec.regions["latam"].store)
    rows = pa.table({
        "mapping": ["latam_bookings"], "contract": ["booking"], "source": [mapping.source], "source_table": [mapping.table],
        "location": ["key=B-1"], "cursor": [None],
        "reasons": [[f"email: '{EMAIL}' does not match the pattern .*@.*\\..*", "seats: 0 is below the minimum 1"]],
        "raw": [json.dumps(raw)],
        "quarantined_at": [datetime(2026, 1, 1, tzinfo=UTC)],
    })
    store.commit_quarantine(rows, run_id="r1")
    return spec, raw, src


def fields(table: pa.Table) -> dict:
    assert table.num_rows == 1
    return json.loads(table["raw"][0].as_py())


def test_analyst_sees_hashed_and_redacted_pii(quarantined) -> None:
    spec, _, src = quarantined
    got = fields(read_quarantine_as(spec, "analyst", mapping="latam_bookings", spec_path=str(SPEC)))
    by_col = {src[f]: v for f, v in got.items() if f in src}
    assert by_col["passenger_name"] == "[redacted]"
    assert by_col["email"] == hashlib.sha256((SALT + EMAIL).encode()).hexdigest()
    assert by_col["phone"] == "****" + PHONE[-4:]
    assert by_col["document_number"] is None
    assert got["assentos"] == "0", "unclassified fields stay as they were"
    text = json.dumps(got) + str(read_quarantine_as(spec, "analyst", mapping="latam_bookings", spec_path=str(SPEC)).to_pylist())
    for secret in (NAME, EMAIL, DOC, PHONE):
        assert secret not in text, secret


def test_privacy_officer_sees_clear_values_and_replay_reads_unmasked(quarantined) -> None:
    spec, raw, _ = quarantined
    assert fields(read_quarantine_as(spec, "privacy_officer", mapping="latam_bookings", spec_path=str(SPEC))) == raw
    assert json.loads(read_quarantine(spec, "latam", "latam_bookings")["raw"][0].as_py()) == raw


def test_no_role_is_anonymous_and_an_unknown_role_is_refused(quarantined) -> None:
    spec, _, src = quarantined
    got = fields(read_quarantine_as(spec, None, mapping="latam_bookings", spec_path=str(SPEC)))
    assert all(got[f] is None for f, c in src.items() if c in ("passenger_name", "email", "phone", "document_number"))
    reasons = summarize(read_quarantine_as(spec, None, "latam", spec_path=str(SPEC)))
    assert EMAIL not in str(reasons) and {r["reason"] for r in reasons} >= {"seats: is below the minimum 1"}
    with pytest.raises(SkyfedError, match="role 'intern' has no policy"):
        read_quarantine_as(spec, "intern", mapping="latam_bookings", spec_path=str(SPEC))


def test_cli_show_masks_by_role(quarantined, run_cli, home: Path) -> None:
    _, raw, _ = quarantined
    env = {"SKYFED_MASK_SALT": SALT, "SKYFED_ROLE": None, "SKYFED_GOVERNANCE": None}
    code, out, err = run_cli("quarantine", "show", "latam_bookings", "--role", "analyst", "--json", "--spec", str(SPEC), env=env)
    assert code == 0, err
    shown = json.loads(out)[0]
    assert EMAIL not in out and NAME not in out and shown["raw"]  # raw is a dict after JSON decoding
    code, out, err = run_cli("quarantine", "show", "latam_bookings", "--json", "--spec", str(SPEC),
                             env={**env, "SKYFED_ROLE": "privacy_officer"})
    assert code == 0, err
    assert json.loads(out)[0]["raw"] == raw
