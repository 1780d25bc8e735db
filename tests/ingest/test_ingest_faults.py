"""Bad input and faults during batch ingestion: each a clear message, quarantine, nothing half-committed.

Real services only: the session's PostgreSQL and Cloud Storage emulator. The faulty
inputs live in a database (`skyfed_faults`) and a bucket (`skyfed-faults`) of this
module's own, read through a small spec written here, so the shared demo sources stay
untouched. Every run checks rows_read = rows_loaded + rows_quarantined + rows_filtered;
every failing run checks that the curated table, the committed positions and the
quarantine table are exactly as they were before it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from envkit import env_vars
from ingest_kit import (
    accounts,
    closed_port,
    gcs_fresh_bucket,
    load,
    local_world,
    need_env,
    pg_connect,
    pg_fresh_database,
    quarantine_rows,
    reference_contracts,
    reference_section,
    store_state,
    write_spec,
)

from skyfed.errors import SkyfedError
from skyfed.ingest.batch import ingest
from skyfed.ingest.runner import MappingResult
from skyfed.spec import PlatformSpec

pytestmark = pytest.mark.services

DATABASE = "skyfed_faults"
BUCKET = "skyfed-faults"
WRONG_PASSWORD_VAR = "SKYFED_FAULTS_WRONG_PASSWORD"
CONTRACT = "leg"
HEADER = "flight_id,dep_airport,dep_time,seats,passengers,updated_at"

LEG = {
    "version": 1,
    "description": "A flight leg, reduced to what the fault tests need.",
    "key": ["flight_id"],
    "partition_by": "month(dep_time_utc)",
    "columns": {
        "flight_id": {"type": "string", "nullable": False},
        "dep_airport": {"type": "string", "nullable": False, "checks": {"references": "airport.iata"}},
        "dep_time_utc": {"type": "timestamptz", "nullable": False},
        "seats": {"type": "int32", "nullable": False, "checks": {"min": 1, "max": 1000}},
        # a negative passenger count is not a bad record but a broken source: stop the run
        "passengers": {"type": "int32", "checks": {"min": 0}, "severity": "fail"},
        "updated_at_utc": {"type": "timestamptz", "nullable": False},
    },
}

# file tables (region na, source `files`, bucket BUCKET) and PostgreSQL tables (latam, `ops`)
FILE_TABLES = {
    "malformed": "malformed/*.csv",
    "wrong_types": "wrong_types/*.csv",
    "bad_utf8": "bad_utf8/*.csv",
    "missing": "missing/*.csv",
    "empty": "empty/*.csv",
    "header_only": "header_only/*.csv",
}


def file_mapping(name: str, source: str, table: str, prefix: str) -> dict:
    return {
        "name": name,
        "source": source,
        "table": table,
        "contract": CONTRACT,
        "key": ["flight_id"],
        "cursor": "updated_at",
        "columns": {
            "flight_id": f"'{prefix}-' || flight_id",
            "dep_airport": "dep_airport",
            "dep_time_utc": "TRY_CAST(dep_time AS TIMESTAMPTZ)",
            "seats": "TRY_CAST(seats AS INTEGER)",
            "passengers": "TRY_CAST(passengers AS INTEGER)",
            "updated_at_utc": "TRY_CAST(updated_at AS TIMESTAMPTZ)",
        },
    }


def pg_mapping(name: str, source: str, table: str, prefix: str, passengers: str = "passengers") -> dict:
    return {
        "name": name,
        "source": source,
        "table": table,
        "contract": CONTRACT,
        "key": ["id"],
        "cursor": "updated_at",
        "columns": {
            "flight_id": f"'{prefix}-' || CAST(id AS VARCHAR)",
            "dep_airport": "origin",
            "dep_time_utc": "departure",
            "seats": "seats",
            "passengers": passengers,
            "updated_at_utc": "updated_at",
        },
    }


def spec_doc(home: Path, pg_port_closed: int, gcs_port_closed: int) -> dict:
    pg = {
        "kind": "postgres",
        "host": "${SKYFED_PG_HOST}",
        "port": "${SKYFED_PG_PORT}",
        "database": DATABASE,
        "user": "${SKYFED_PG_USER}",
        "password": "${SKYFED_PG_PASSWORD}",
        "schema": "public",
    }
    files = {
        "kind": "gcs",
        "bucket": BUCKET,
        "endpoint": "${STORAGE_EMULATOR_HOST}",
        "tables": {name: {"pattern": pattern, "format": "csv"} for name, pattern in FILE_TABLES.items()},
    }
    return {
        "skyfed": 1,
        "name": "faults",
        "regions": {
            "latam": {
                "project": "skyfed-latam",
                "location": "southamerica-east1",
                "store": {"kind": "iceberg", "warehouse": "${SKYFED_HOME}/warehouse/latam"},
                "sources": {
                    "ops": pg,
                    "down": {**pg, "host": "127.0.0.1", "port": pg_port_closed},
                    "badpw": {**pg, "password": "${" + WRONG_PASSWORD_VAR + "}"},
                },
            },
            "na": {
                "project": "skyfed-na",
                "location": "us-east1",
                "store": {"kind": "iceberg", "warehouse": "${SKYFED_HOME}/warehouse/na"},
                "sources": {
                    "files": files,
                    "down": {**files, "endpoint": f"http://127.0.0.1:{gcs_port_closed}"},
                },
            },
        },
        "reference": reference_section(home),
        "contracts": {CONTRACT: LEG, **reference_contracts()},
        "mappings": [
            file_mapping("malformed_csv", "na.files", "malformed", "MAL"),
            file_mapping("wrong_types", "na.files", "wrong_types", "TYP"),
            file_mapping("bad_utf8", "na.files", "bad_utf8", "UTF"),
            file_mapping("missing_files", "na.files", "missing", "MIS"),
            file_mapping("empty_file", "na.files", "empty", "EMP"),
            file_mapping("header_only", "na.files", "header_only", "HDR"),
            file_mapping("gcs_down", "na.down", "malformed", "DWN"),
            pg_mapping("pg_legs", "latam.ops", "legs", "PG"),
            pg_mapping("pg_down", "latam.down", "legs", "PGD"),
            pg_mapping("pg_wrong_password", "latam.badpw", "legs", "PGW"),
            pg_mapping("pg_missing_column", "latam.ops", "legs", "PGM", passengers="passenger"),
            pg_mapping("pg_fail_rule", "latam.ops", "legs_fail", "PGF"),
        ],
    }


# --------------------------------------------------------------------------- inputs

T0 = datetime(2024, 1, 10, 8, 0, tzinfo=UTC)


def csv_line(i: int, *, seats: str | None = None, airport: str = "GRU") -> str:
    dep = (T0 + timedelta(hours=i)).isoformat()
    upd = (T0 + timedelta(days=1, minutes=i)).isoformat()
    return f"{i},{airport},{dep},{seats if seats is not None else 150 + i},{100 + i},{upd}"


def good_csv(ids: range) -> str:
    return HEADER + "\n" + "".join(csv_line(i) + "\n" for i in ids)


def upload(bucket, name: str, data: bytes) -> None:
    bucket.blob(name).upload_from_string(data, content_type="text/csv")


def write_objects(bucket) -> None:
    # malformed: line 3 has a field too few, line 6 two too many (line 1 is the header)
    lines = [HEADER, csv_line(1), "2,GRU,2024-01-10T10:00:00+00:00,150", csv_line(3), csv_line(4),
             csv_line(5) + ",x,y", csv_line(6)]  # fmt: skip
    upload(bucket, "malformed/part-1.csv", ("\n".join(lines) + "\n").encode())
    upload(bucket, "malformed/part-2.csv", good_csv(range(10, 14)).encode())
    # wrong types: a word where seats must be a number (line 3), and an unknown airport (line 5)
    lines = [HEADER, csv_line(1), csv_line(2, seats="many"), csv_line(3), csv_line(4, airport="ZZZ")]
    upload(bucket, "wrong_types/part-1.csv", ("\n".join(lines) + "\n").encode())
    # invalid UTF-8 in line 4 (a Latin-1 byte in the airport field)
    data = (good_csv(range(1, 3)).encode() + csv_line(3, airport="GR\xdc").encode("latin-1") + b"\n"
            + csv_line(4).encode() + b"\n")  # fmt: skip
    upload(bucket, "bad_utf8/part-1.csv", data)
    upload(bucket, "empty/part-1.csv", b"")
    upload(bucket, "header_only/part-1.csv", (HEADER + "\n").encode())


PG_TABLE = """
    id bigint PRIMARY KEY, origin char(3) NOT NULL, departure timestamptz NOT NULL,
    seats integer, passengers integer, updated_at timestamptz NOT NULL"""


def write_tables() -> None:
    pg_fresh_database(DATABASE)
    with pg_connect(DATABASE) as con:
        for table in ("legs", "legs_fail"):
            con.execute(f"CREATE TABLE {table} ({PG_TABLE})")
        rows = [(i, "GRU", T0 + timedelta(hours=i), 150 + i, 100 + i, T0 + timedelta(days=1, minutes=i))
                for i in range(1, 21)]  # fmt: skip
        with con.cursor() as cur:
            cur.executemany("INSERT INTO legs VALUES (%s, %s, %s, %s, %s, %s)", rows)
            # row 7 breaks the `fail` rule; row 3 would only be quarantined (no seats), and is not either
            fail_rows = [(7, "GRU", r[2], 150, -5, r[5]) if r[0] == 7 else (3, "GRU", r[2], 0, 90, r[5]) if r[0] == 3
                         else r for r in rows]  # fmt: skip
            cur.executemany("INSERT INTO legs_fail VALUES (%s, %s, %s, %s, %s, %s)", fail_rows)


# --------------------------------------------------------------------------- fixture


@dataclass
class Faults:
    home: Path
    spec_path: Path
    spec: PlatformSpec

    def run(self, mapping: str, **kw) -> tuple[MappingResult | None, SkyfedError | None]:
        """Ingest one mapping in-process: (result, None) or (None, the error)."""
        _, results, failures = ingest(self.spec, [mapping], **kw)
        assert len(results) + len(failures) == 1
        if failures:
            return None, failures[0][1]
        accounts(results[0])
        return results[0], None

    def state(self, region: str, *_: str) -> dict:
        """The region's `leg` table (snapshot, rows, checksum, every mapping's position) and quarantine table."""
        mappings = [m.name for m in self.spec.mappings if m.source.startswith(f"{region}.")]
        return store_state(self.spec, region, [CONTRACT], mappings)


@pytest.fixture(scope="module")
def faults(federation, tmp_path_factory) -> Faults:
    need_env("SKYFED_PG_PORT", "STORAGE_EMULATOR_HOST")
    home = tmp_path_factory.mktemp("faults-home")
    with env_vars(SKYFED_HOME=str(home), SKYFED_METADATA_URL=None, **{WRONG_PASSWORD_VAR: "not-the-password"}):
        local_world(home, flights=30)  # only its reference files (airports, FX) are used
        write_tables()
        write_objects(gcs_fresh_bucket(BUCKET))
        path = write_spec(home / "faults.yaml", spec_doc(home, closed_port(), closed_port()))
        yield Faults(home, path, load(path))


@pytest.fixture(scope="module")
def committed(faults) -> dict[str, MappingResult]:
    """Both regions' `leg` tables hold committed data before the failing runs (so "unchanged" means something)."""
    results = {}
    for mapping in ("pg_legs", "malformed_csv"):
        result, error = faults.run(mapping)
        assert error is None, f"{mapping}: {error}"
        assert result.rows_committed > 0
        results[mapping] = result
    return results


# --------------------------------------------------------------------------- files


def test_malformed_csv_lines_are_quarantined_with_object_and_line(faults, committed) -> None:
    rows = quarantine_rows(faults.spec, "na", "malformed_csv")
    by_location = {r["location"]: r for r in rows}
    obj = f"gs://{BUCKET}/malformed/part-1.csv"
    assert set(by_location) == {f"{obj}:3", f"{obj}:6"}, by_location.keys()
    assert "expected 6 fields, found 4" in by_location[f"{obj}:3"]["reason"]
    assert "expected 6 fields, found 8" in by_location[f"{obj}:6"]["reason"]
    assert by_location[f"{obj}:3"]["raw"] == "2,GRU,2024-01-10T10:00:00+00:00,150"
    assert all(r["source"] == "na.files" and r["source_table"] == "malformed" for r in rows)


def test_malformed_run_counts_every_line(committed) -> None:
    result = committed["malformed_csv"]
    assert result.rows_read == 10  # 4 + 4 data lines that parse, 2 that do not
    assert result.rows_quarantined == 2 and result.rows_loaded == 8
    assert sum(result.quarantine_reasons.values()) == 2


def test_wrong_types_become_null_and_the_required_rule_quarantines_them(faults, committed) -> None:
    before = faults.state("na", "wrong_types")
    result, error = faults.run("wrong_types")
    assert error is None, error
    assert (result.rows_read, result.rows_loaded, result.rows_quarantined) == (4, 2, 2), result.to_dict()
    rows = {r["location"]: r for r in quarantine_rows(faults.spec, "na", "wrong_types")}
    obj = f"gs://{BUCKET}/wrong_types/part-1.csv"
    assert set(rows) == {f"{obj}:3", f"{obj}:5"}
    assert rows[f"{obj}:3"]["reason"] == "seats: required value is missing"
    assert '"seats":"many"' in rows[f"{obj}:3"]["raw"], "the raw record keeps the text as it came"
    assert rows[f"{obj}:5"]["reason"] == "dep_airport: ZZZ is not a known airport.iata"
    assert all(r["source"] == "na.files" and r["source_table"] == "wrong_types" for r in rows.values())
    assert result.quarantine_reasons == {
        "seats: required value is missing": 1,
        "dep_airport: is not a known airport.iata": 1,
    }
    after = faults.state("na", "wrong_types")
    assert after["leg"]["rows"] == before["leg"]["rows"] + 2


def test_invalid_utf8_is_quarantined_naming_object_and_line(faults, committed) -> None:
    result, error = faults.run("bad_utf8")
    assert error is None, error
    assert (result.rows_read, result.rows_loaded, result.rows_quarantined) == (4, 3, 1), result.to_dict()
    (row,) = quarantine_rows(faults.spec, "na", "bad_utf8")
    assert row["location"] == f"gs://{BUCKET}/bad_utf8/part-1.csv:4"
    assert row["reason"] == "invalid UTF-8"
    assert (row["source"], row["source_table"], row["mapping"]) == ("na.files", "bad_utf8", "bad_utf8")
    assert "GR" in row["raw"] and "\\xdc" in row["raw"], row["raw"]


@pytest.mark.parametrize(
    ("mapping", "note"),
    [
        ("missing_files", "pattern 'missing/*.csv' matched no objects"),
        ("empty_file", f"object gs://{BUCKET}/empty/part-1.csv is empty"),
        ("header_only", f"object gs://{BUCKET}/header_only/part-1.csv has a header but no data lines"),
    ],
)
def test_missing_and_empty_files_load_nothing_and_say_so(faults, committed, mapping: str, note: str) -> None:
    before = faults.state("na", mapping)
    result, error = faults.run(mapping)
    assert error is None, f"{mapping} must not fail: {error}"
    assert result.rows_read == 0 and result.rows_loaded == 0 and result.rows_quarantined == 0
    assert result.status == "no_new_data"
    assert any(note in n for n in result.notes), result.notes
    after = faults.state("na", mapping)
    assert after["leg"]["checksum"] == before["leg"]["checksum"]
    assert after["quarantine"] == before["quarantine"]


def test_cli_reports_notes_and_failures_as_json(faults, committed, run_cli) -> None:
    """The same faults through `skyfed ingest --json`: a note and exit 0, or the error, its hint and exit 1."""
    env = {"SKYFED_HOME": str(faults.home)}
    ok = run_cli("ingest", "missing_files", "--spec", str(faults.spec_path), "--json", env=env)
    assert ok.code == 0, ok.stderr
    (result,) = json.loads(ok.stdout)["results"]
    assert result["rows_read"] == 0 and result["status"] == "no_new_data"
    assert any("matched no objects" in n for n in result["notes"]), result
    bad = run_cli("ingest", "pg_down", "--spec", str(faults.spec_path), "--json", env=env)
    assert bad.code == 1, (bad.stdout, bad.stderr)
    report = json.loads(bad.stdout)
    assert report["results"] == []
    (failure,) = report["failures"]
    assert failure["mapping"] == "pg_down"
    assert failure["error"].startswith("postgres source latam.down") and failure["hint"]


def test_gcs_endpoint_down_names_the_source_and_commits_nothing(faults, committed) -> None:
    before = faults.state("na", "gcs_down")
    result, error = faults.run("gcs_down")
    assert result is None, f"the run must fail, it reported {result}"
    assert error.message.startswith("gcs source na.down"), error.message
    assert "cannot list objects" in error.message and "127.0.0.1" in error.message
    assert error.hint and "endpoint" in error.hint
    assert faults.state("na", "gcs_down") == before


# --------------------------------------------------------------------------- PostgreSQL


def test_postgres_unreachable_names_the_source_and_commits_nothing(faults, committed) -> None:
    before = faults.state("latam", "pg_down")
    result, error = faults.run("pg_down")
    assert result is None
    assert error.message.startswith("postgres source latam.down"), error.message
    assert "cannot reach PostgreSQL at 127.0.0.1:" in error.message
    assert error.hint and "host and port" in error.hint
    assert faults.state("latam", "pg_down") == before


def test_postgres_wrong_password_names_the_user_and_commits_nothing(faults, committed) -> None:
    before = faults.state("latam", "pg_wrong_password")
    result, error = faults.run("pg_wrong_password")
    assert result is None
    assert error.message.startswith("postgres source latam.badpw"), error.message
    assert "rejected user" in error.message and "password authentication failed" in error.message
    assert "not-the-password" not in str(error), "the password never appears in messages"
    assert error.hint and "password" in error.hint
    assert faults.state("latam", "pg_wrong_password") == before


def test_new_source_column_is_named_in_the_notes(faults, committed) -> None:
    with pg_connect(DATABASE) as con:
        con.execute("ALTER TABLE legs ADD COLUMN IF NOT EXISTS gate text")
        con.execute("UPDATE legs SET gate = 'B7', updated_at = updated_at + interval '1 day' WHERE id <= 3")
    result, error = faults.run("pg_legs")
    assert error is None, error
    assert result.rows_read == 3 and result.rows_loaded == 3
    assert any("gate" in n and "not used by the mapping" in n for n in result.notes), result.notes
    assert any(n.startswith("drift (evolve)") and "gate" in n for n in result.notes), result.notes


def test_drift_rules_of_the_governance_file_apply_to_batch_runs(faults, committed, monkeypatch) -> None:
    """freeze refuses a new source column and commits nothing; discard_row quarantines the rows that use it."""
    with pg_connect(DATABASE) as con:
        con.execute("ALTER TABLE legs ADD COLUMN IF NOT EXISTS stand text")
        con.execute("UPDATE legs SET stand = CASE WHEN id <= 2 THEN 'S1' END, updated_at = updated_at + interval '1 day' "
                    "WHERE id <= 4")  # fmt: skip
    governance = faults.home / "drift.governance.yaml"
    monkeypatch.setenv("SKYFED_GOVERNANCE", str(governance))

    governance.write_text("drift:\n  mappings:\n    pg_legs: {columns: freeze}\n", encoding="utf-8")
    before = faults.state("latam", "pg_legs")
    result, error = faults.run("pg_legs")
    assert result is None and "stand" in error.message, error
    assert faults.state("latam", "pg_legs") == before

    governance.write_text("drift:\n  mappings:\n    pg_legs: {columns: discard_row}\n", encoding="utf-8")
    result, error = faults.run("pg_legs")
    assert error is None, error
    assert result.rows_read == 4 and result.rows_quarantined == 2 and result.rows_loaded == 2, result.to_dict()
    assert any("drift (discard_row)" in n and "stand" in n for n in result.notes), result.notes
    stored = [q for q in quarantine_rows(faults.spec, "latam", "pg_legs") if "stand" in (q["reason"] or "")]
    assert len(stored) == 2, stored


def test_mapping_with_a_missing_column_fails_with_a_suggestion(faults, committed) -> None:
    before = faults.state("latam", "pg_missing_column")
    result, error = faults.run("pg_missing_column")
    assert result is None
    assert "mapping pg_missing_column" in error.message
    assert "source table latam.ops.legs" in error.message
    assert "no column 'passenger'" in error.message and "did you mean 'passengers'?" in error.message
    assert error.hint
    assert faults.state("latam", "pg_missing_column") == before


def test_a_fail_rule_stops_the_run_naming_row_and_rule(faults, committed) -> None:
    before = faults.state("latam", "pg_fail_rule")
    result, error = faults.run("pg_fail_rule")
    assert result is None
    assert "mapping pg_fail_rule" in error.message
    assert "latam.ops" in error.message and "legs_fail" in error.message
    assert "id=7 (row 7 of this run" in error.message, error.message
    assert "passengers: -5 is below the minimum 0" in error.message
    assert error.hint and "nothing was committed" in error.hint
    # neither the good rows nor row 3's quarantine record were committed
    assert faults.state("latam", "pg_fail_rule") == before
