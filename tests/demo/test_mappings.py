"""The example federation's mappings reproduce the generator's ground truth exactly.

Each mapping of examples/airline/skyfed.yaml is evaluated with the reference semantics
(skyfed.demo.harmonize_reference: DuckDB macros, checks, de-duplication) over the small
world's source tables and objects; the result must equal the ground truth row for row and
the quarantined records must equal `quarantine_expected`.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml

from skyfed.demo import harmonize_reference as hr
from skyfed.demo.contracts import CONTRACTS
from skyfed.demo.world import World

SPEC = Path(__file__).resolve().parents[2] / "examples" / "airline" / "skyfed.yaml"


@pytest.fixture(scope="module")
def spec() -> dict:
    assert SPEC.exists(), f"{SPEC} is missing"
    return yaml.safe_load(SPEC.read_text())


@pytest.fixture(scope="module")
def harmonized(small_world: World, spec: dict) -> dict[str, list[tuple[dict, hr.MappingResult]]]:
    con = hr.connect(small_world.reference)
    refs = {
        "airport.iata": small_world.reference["airport"]["iata"].combine_chunks(),
        "aircraft_type.aircraft_type": small_world.reference["aircraft_type"]["aircraft_type"].combine_chunks(),
    }
    gcs_tables = spec["regions"]["na"]["sources"]["exports"]["tables"]
    out: dict[str, list] = {}
    for mp in spec["mappings"]:
        region, source = mp["source"].split(".")
        if spec["regions"][region]["sources"][source]["kind"] == "pubsub":
            continue  # streaming only (na.events): no table in the generated world
        contract = hr.contract_from_yaml(mp["contract"], spec["contracts"][mp["contract"]])
        malformed = None
        if small_world.regions[region].kind == "gcs":
            t = gcs_tables[mp["table"]]
            src, malformed = hr.read_gcs_table(small_world.regions[region].objects, t["pattern"], t["format"])
        else:
            src = small_world.regions[region].tables[mp["table"]]
        out.setdefault(mp["contract"], []).append((mp, hr.run_mapping(con, src, mp, contract, refs, malformed)))
    return out


def test_spec_is_valid_for_the_platform_loader(monkeypatch) -> None:
    from skyfed.spec import check_spec

    monkeypatch.setenv("SKYFED_PG_PASSWORD", "not-a-real-password")
    monkeypatch.setenv("SKYFED_HOME", "/tmp/skyfed-home-for-spec-test")
    spec, issues = check_spec(SPEC)
    assert spec is not None, [str(i) for i in issues]
    assert {m.name for m in spec.mappings} >= {"latam_flights", "eu_flights", "na_flights"}


def test_yaml_contracts_equal_the_generators(spec: dict) -> None:
    for name, c in CONTRACTS.items():
        y = hr.contract_from_yaml(name, spec["contracts"][name])
        assert y.key == c.key, name
        assert [(x.name, x.type, x.nullable) for x in y.columns] == [(x.name, x.type, x.nullable) for x in c.columns], name
        assert [x.checks for x in y.columns] == [x.checks for x in c.columns], name
        assert [x.classification for x in y.columns] == [x.classification for x in c.columns], name


def test_every_mapping_covers_every_contract_column(spec: dict) -> None:
    for mp in spec["mappings"]:
        cols = list(spec["contracts"][mp["contract"]]["columns"])
        assert list(mp["columns"]) == cols, mp["name"]


@pytest.mark.parametrize("contract", ["flight_leg", "booking", "customer_feedback"])
def test_mappings_reproduce_ground_truth(small_world: World, harmonized, contract: str) -> None:
    key = CONTRACTS[contract].key[0]
    got = pa.concat_tables([r.rows for _, r in harmonized[contract]]).sort_by(key)
    want = small_world.ground_truth[contract].sort_by(key)
    assert got.schema == want.schema
    assert got.num_rows == want.num_rows
    for col in want.column_names:
        a, b = got[col].combine_chunks(), want[col].combine_chunks()
        if not a.equals(b):
            diff = pc.invert(pc.fill_null(pc.equal(a, b), False))
            pytest.fail(f"{contract}.{col}: {pc.sum(diff).as_py()} rows differ, e.g. {a.filter(diff)[:3]} vs {b.filter(diff)[:3]}")
    assert got.equals(want)


@pytest.mark.parametrize("contract", ["flight_leg", "booking", "customer_feedback"])
def test_mappings_quarantine_exactly_the_expected_records(small_world: World, harmonized, contract: str) -> None:
    q = small_world.ground_truth["quarantine_expected"]
    q = q.filter(pc.equal(q["contract"], contract))
    want = set()
    for r in q.to_pylist():
        ident = r["source_position"] if r["source_position"] is not None else r["source_key"]
        want.add((r["source"], r["source_table"], ident, r["rule"], r["column"]))
    got = set()
    for mp, res in harmonized[contract]:
        for r in res.quarantine.to_pylist():
            ident = r["source_position"] if r["source_position"] is not None else r["source_key"]
            got.add((mp["source"], mp["table"], ident, r["rule"], r["column"]))
    assert got == want
    # no loss: rows read = loaded + quarantined + duplicates removed, per mapping
    for mp, res in harmonized[contract]:
        assert res.read == res.rows.num_rows + res.quarantine.num_rows + res.duplicates_removed, mp["name"]
