"""The platform spec loader: every kind of mistake gets a precise, located message."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from skyfed.spec import SecretRef, SpecError, check_spec, load_spec, spec_json_schema

VALID = """\
skyfed: 1
name: mini
regions:
  latam:
    project: p-latam
    location: southamerica-east1
    egress_usd_per_gb: {eu: 0.12}
    store: {kind: iceberg, warehouse: "${SKYFED_HOME}/warehouse/latam"}
    sources:
      ops:
        kind: postgres
        host: ${PGHOST_TEST:-127.0.0.1}
        port: ${PGPORT_TEST:-5432}
        database: ops
        user: skyfed
        password: ${PG_PASSWORD_TEST}
  eu:
    project: p-eu
    location: europe-west1
    store: {kind: bigquery, project: p-eu, dataset: curated, location: europe-west1}
    sources:
      files:
        kind: gcs
        bucket: raw
        tables:
          flights: {pattern: "flights/*.csv", format: csv}
contracts:
  airport:
    version: 1
    key: [iata]
    columns:
      iata: {type: string, nullable: false}
  flight_leg:
    version: 2
    compatibility: FULL_TRANSITIVE
    key: [flight_id]
    partition_by: month(dep_time_utc)
    columns:
      flight_id: {type: string, nullable: false}
      dep_airport: {type: string, checks: {references: airport.iata}}
      dep_time_utc: {type: timestamptz}
      fuel_kg: {type: double, checks: {min: 0, max: 400000}, severity: quarantine}
      revenue_usd: {type: "decimal(18, 2)"}
mappings:
  - name: latam_flights
    source: latam.ops
    table: voos
    contract: flight_leg
    key: [id]
    cursor: atualizado_em
    columns:
      flight_id: "'LA-' || CAST(id AS VARCHAR)"
      dep_airport: origem
      dep_time_utc: "partida_local"
      fuel_kg: "combustivel_litros * 0.8"
      revenue_usd: "NULL"
  - name: eu_flights
    source: eu.files
    table: flights
    contract: flight_leg
    columns:
      flight_id: id
      dep_airport: origin
      dep_time_utc: dep
      fuel_kg: fuel
      revenue_usd: "NULL"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "skyfed.yaml"
    path.write_text(text)
    return path


def errors_of(tmp_path: Path, text: str, env: dict[str, str] | None = None):
    spec, issues = check_spec(write(tmp_path, text), env=env if env is not None else {})
    assert spec is None, "expected the spec to be refused"
    return [i for i in issues if i.severity == "error"]


def test_valid_spec_loads_with_env_interpolation(tmp_path: Path) -> None:
    spec, issues = check_spec(write(tmp_path, VALID), env={"PGPORT_TEST": "6543", "SKYFED_HOME": "/h"})
    assert issues == []
    assert spec is not None
    ops = spec.regions["latam"].sources["ops"]
    assert ops.port == 6543 and ops.host == "127.0.0.1"
    assert ops.password == SecretRef("PG_PASSWORD_TEST")
    assert spec.regions["latam"].store.warehouse == "/h/warehouse/latam"
    assert spec.contracts["flight_leg"].columns["revenue_usd"].type == "decimal(18,2)"
    assert spec.source("eu.files").kind == "gcs"


def test_secret_is_resolved_only_when_revealed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec, _ = check_spec(write(tmp_path, VALID), env={})
    secret = spec.regions["latam"].sources["ops"].password
    assert "PG_PASSWORD_TEST" in repr(secret) and "s3cret" not in repr(secret)
    monkeypatch.delenv("PG_PASSWORD_TEST", raising=False)
    from skyfed.errors import SkyfedError

    with pytest.raises(SkyfedError, match="PG_PASSWORD_TEST is not set"):
        secret.reveal()
    monkeypatch.setenv("PG_PASSWORD_TEST", "s3cret")
    assert secret.reveal() == "s3cret"


def test_unknown_key_is_located_and_suggests_the_nearest_name(tmp_path: Path) -> None:
    text = VALID.replace("        database: ops\n", "        databse: ops\n")
    errs = errors_of(tmp_path, text)
    unknown = [e for e in errs if "unknown key 'databse'" in e.message]
    assert unknown, errs
    e = unknown[0]
    assert e.path == "regions.latam.sources.ops.databse"
    assert e.suggestion == "database"
    assert e.line == text.splitlines().index("        databse: ops") + 1
    assert e.file.endswith("skyfed.yaml")
    # the same mistake also makes the required key missing, reported at the source
    assert any(x.message == "missing required key 'database'" for x in errs)


def test_misspelt_top_level_and_nested_keys(tmp_path: Path) -> None:
    text = VALID.replace("contracts:\n", "contract:\n", 1).replace("egress_usd_per_gb", "egress_usd_per_gbb")
    errs = errors_of(tmp_path, text)
    by_path = {e.path: e for e in errs}
    assert by_path["contract"].suggestion == "contracts"
    assert by_path["regions.latam.egress_usd_per_gbb"].suggestion == "egress_usd_per_gb"


def test_wrong_type_names_the_key_and_the_value(tmp_path: Path) -> None:
    text = VALID.replace("port: ${PGPORT_TEST:-5432}", "port: many")
    errs = errors_of(tmp_path, text)
    assert [e.path for e in errs] == ["regions.latam.sources.ops.port"]
    assert "integer" in errs[0].message and "'many'" in errs[0].message


def test_unknown_column_type_and_source_kind(tmp_path: Path) -> None:
    text = VALID.replace("{type: double, checks", "{type: float64, checks").replace("kind: postgres", "kind: postgress")
    errs = errors_of(tmp_path, text)
    by_path = {e.path: e for e in errs}
    assert "unknown type 'float64'" in by_path["contracts.flight_leg.columns.fuel_kg.type"].message
    kind = by_path["regions.latam.sources.ops.kind"]
    assert "unknown kind 'postgress'" in kind.message and kind.suggestion == "postgres"


def test_secret_written_inline_is_refused(tmp_path: Path) -> None:
    text = VALID.replace("password: ${PG_PASSWORD_TEST}", "password: hunter2")
    errs = errors_of(tmp_path, text)
    assert len(errs) == 1
    assert errs[0].path == "regions.latam.sources.ops.password"
    assert "secret written inline" in errs[0].message
    assert "hunter2" not in str(errs[0])


def test_missing_references_are_reported_with_suggestions(tmp_path: Path) -> None:
    text = (
        VALID.replace("source: latam.ops", "source: latam.opps")
        .replace("contract: flight_leg\n    columns:\n      flight_id: id", "contract: flight_legs\n    columns:\n      flight_id: id")
        .replace("references: airport.iata", "references: airport.icao")
        .replace("egress_usd_per_gb: {eu: 0.12}", "egress_usd_per_gb: {eur: 0.12}")
    )
    errs = errors_of(tmp_path, text)
    by_path = {e.path: e for e in errs}
    assert by_path["mappings[0].source"].suggestion == "ops"
    assert "no source 'opps'" in by_path["mappings[0].source"].message
    assert by_path["mappings[1].contract"].suggestion == "flight_leg"
    assert "has no column 'icao'" in by_path["contracts.flight_leg.columns.dep_airport.checks.references"].message
    assert by_path["regions.latam.egress_usd_per_gb.eur"].suggestion == "eu"
    line = text.splitlines().index("    source: latam.opps") + 1
    assert by_path["mappings[0].source"].line == line


def test_mapping_must_cover_every_contract_column_with_valid_sql(tmp_path: Path) -> None:
    text = VALID.replace('      fuel_kg: "combustivel_litros * 0.8"\n', '      fuel_kgs: "combustivel_litros *"\n')
    errs = errors_of(tmp_path, text)
    at = {(e.path, e.message.split(":")[0]): e for e in errs}
    assert at[("mappings[0].columns.fuel_kgs", "contract 'flight_leg' has no column 'fuel_kgs'")].suggestion == "fuel_kg"
    assert ("mappings[0].columns.fuel_kgs", "cannot parse SQL expression 'combustivel_litros *'") in at
    assert any("no expression for contract column(s) fuel_kg" in e.message for e in errs)
    text2 = VALID.replace("dep_airport: origem", 'dep_airport: "DROP TABLE voos"')
    errs2 = errors_of(tmp_path, text2)
    assert any("not a single SQL expression" in e.message or "cannot parse" in e.message for e in errs2), errs2


def test_duplicate_keys_and_yaml_syntax_errors(tmp_path: Path) -> None:
    dup = VALID.replace("    project: p-eu\n", "    project: p-eu\n    project: p-eu2\n")
    errs = errors_of(tmp_path, dup)
    assert any(e.path == "regions.eu.project" and "duplicate key" in e.message for e in errs)
    broken = VALID.replace("name: mini", "name: [mini")
    errs = errors_of(tmp_path, broken)
    assert errs[0].line is not None and errs[0].path == "(yaml)"


def test_unset_variable_without_default(tmp_path: Path) -> None:
    text = VALID.replace("${PGHOST_TEST:-127.0.0.1}", "${PGHOST_TEST}")
    errs = errors_of(tmp_path, text)
    assert errs[0].path == "regions.latam.sources.ops.host"
    assert "PGHOST_TEST is not set" in errs[0].message


def test_load_spec_raises_one_error_carrying_all_issues(tmp_path: Path) -> None:
    text = VALID.replace("databse", "x").replace("database: ops", "databse: ops").replace("port: ${PGPORT_TEST:-5432}", "port: many")
    with pytest.raises(SpecError) as info:
        load_spec(write(tmp_path, text), env={})
    assert len(info.value.issues) >= 2
    assert "more problem" in info.value.message


def test_json_schema_accepts_the_example_federation_and_env_refs() -> None:
    schema = spec_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    example = Path(__file__).resolve().parents[2] / "examples" / "airline" / "skyfed.yaml"
    assert example.exists(), f"the example federation is missing: {example}"
    data = yaml.safe_load(example.read_text())
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(data))
    assert errors == [], [e.message for e in errors[:5]]
    bad = dict(data, regionz=data["regions"])
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(bad)), "schema must refuse unknown keys"


def test_example_federation_validates() -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "airline" / "skyfed.yaml"
    spec, issues = check_spec(example, env={"SKYFED_PG_PASSWORD": "x"})
    assert spec is not None, "\n".join(str(i) for i in issues)
    assert set(spec.regions) == {"latam", "eu", "na"}
    assert {"flight_leg", "booking", "customer_feedback"} <= set(spec.contracts)


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "skyfed", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_cli_validate_exit_codes_and_json(tmp_path: Path) -> None:
    good = write(tmp_path, VALID)
    ok = run_cli("validate", "--spec", str(good), "--json", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["valid"] is True
    bad_path = tmp_path / "bad.yaml"
    bad_path.write_text(VALID.replace("database: ops", "databse: ops"))
    bad = run_cli("validate", "--spec", str(bad_path), cwd=tmp_path)
    assert bad.returncode == 1
    assert "did you mean 'database'" in bad.stdout
    assert "Traceback" not in bad.stdout + bad.stderr
    bad_json = run_cli("validate", "--spec", str(bad_path), "--json", cwd=tmp_path)
    issues = json.loads(bad_json.stdout)["issues"]
    assert any(i["suggestion"] == "database" and i["line"] for i in issues)
    missing = run_cli("validate", "--spec", str(tmp_path / "nope.yaml"), cwd=tmp_path)
    assert missing.returncode == 1 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr


def test_cli_spec_schema_prints_json_schema(tmp_path: Path) -> None:
    res = run_cli("spec", "schema", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["title"] == "skyfed platform spec"
