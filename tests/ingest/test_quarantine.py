"""The quarantine: records keep their reason and raw form, and replay re-judges them."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from skyfed.ingest.batch import ingest
from skyfed.ingest.quarantine import read_quarantine, replay, summarize
from skyfed.ingest.stores import open_store


pytestmark = pytest.mark.services
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "airline" / "skyfed.yaml"


@pytest.fixture(scope="module")
def na_ingested(seeded_world):
    _, results, failures = ingest(seeded_world.spec, ["na_flights"], full_refresh=True)
    assert not failures
    return results[0]


def test_list_counts_records_by_rule(seeded_world, na_ingested) -> None:
    table = read_quarantine(seeded_world.spec, "na", "na_flights")
    assert table.num_rows == na_ingested.rows_quarantined
    rows = summarize(table)
    assert sum(r["records"] for r in rows) >= table.num_rows
    assert all(r["mapping"] == "na_flights" and r["region"] == "na" for r in rows)
    assert any(r["reason"].startswith("status: is not one of") for r in rows), rows


def test_replay_after_a_spec_fix_loads_the_fixed_records_only(seeded_world, na_ingested) -> None:
    spec = seeded_world.spec
    before = read_quarantine(spec, "na", "na_flights")
    bad_status = [r for r in before.to_pylist() if r["reason"].startswith("status:")]
    assert bad_status, "the seeded world has a flight with an unknown status"
    flight_ids = {"NA-" + str(json.loads(r["raw"])["flight_id"]) for r in bad_status}
    store = open_store("na", spec.regions["na"].store)
    rows_before = store.read("flight_leg").num_rows

    # unchanged spec: nothing passes, nothing moves
    same = replay(spec, "na_flights")
    assert same.loaded == 0 and same.still_failing == same.replayed
    assert read_quarantine(spec, "na", "na_flights").num_rows == before.num_rows

    allowed = spec.contracts["flight_leg"].columns["status"].checks.allowed
    allowed.append("unknown")
    try:
        fixed = replay(spec, "na_flights")
    finally:
        allowed.remove("unknown")
    assert fixed.loaded == len(bad_status)
    assert fixed.not_replayable >= 1, "malformed lines cannot be replayed from the quarantine"
    after = read_quarantine(spec, "na", "na_flights")
    assert after.num_rows == before.num_rows - len(bad_status)
    table = store.read("flight_leg")
    assert table.num_rows == rows_before + len(bad_status)
    loaded = table.filter(pc.is_in(table["flight_id"], pa.array(sorted(flight_ids))))
    assert loaded["status"].to_pylist() == ["unknown"] * len(bad_status)

    # replaying again is harmless: the loaded records left the quarantine
    again = replay(spec, "na_flights")
    assert again.loaded == 0 and store.read("flight_leg").num_rows == table.num_rows


def test_cli_show_and_list_json(seeded_world, na_ingested, run_cli) -> None:
    env = {"SKYFED_HOME": str(seeded_world.home)}
    spec = str(EXAMPLE)
    code, out, err = run_cli("quarantine", "list", "--region", "na", "--json", "--spec", spec, env=env)
    assert code == 0, err
    assert json.loads(out)
    code, out, err = run_cli("quarantine", "show", "na_flights", "--json", "--spec", spec, env=env)
    assert code == 0, err
    records = json.loads(out)
    assert records and all(r["mapping"] == "na_flights" and r["reason"] for r in records)
    code, out, err = run_cli("quarantine", "show", "na_flights", "nowhere", "--spec", spec, env=env)
    assert code == 1 and "no quarantined record" in err and "Traceback" not in err
    code, out, err = run_cli("quarantine", "show", "na_flightz", "--spec", spec, env=env)
    assert code == 1 and "no mapping named 'na_flightz'" in err and "Traceback" not in err
