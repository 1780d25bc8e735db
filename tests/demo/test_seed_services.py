"""Seeding into the local federation, read back through each source's official client."""

from __future__ import annotations

import io
import json
import os

import pyarrow.parquet as pq
import pytest

from skyfed.demo.seed import read_manifest, seed
from skyfed.demo.world import WorldConfig, generate

pytestmark = pytest.mark.services

CFG = WorldConfig(flights=600, seed=11)


@pytest.fixture(scope="module")
def seeded(federation, tmp_path_factory):
    state = tmp_path_factory.mktemp("demo-state")
    result = seed(CFG, state)
    return state, result


def test_manifest_and_ground_truth_files(seeded) -> None:
    state, result = seeded
    man = read_manifest(state)
    assert man == json.loads(json.dumps(result["manifest"]))
    for rel in man["files"]:
        assert (state / "seed" / rel).exists(), rel
    for name in ("flight_leg", "booking", "customer_feedback", "quarantine_expected"):
        assert pq.read_table(state / "seed" / "ground_truth" / f"{name}.parquet").num_rows == man["ground_truth_rows"][name]
    for name in ("airport", "aircraft_type", "fx_rate"):
        assert (state / "seed" / "reference" / f"{name}.parquet").exists()


def test_latam_read_back_with_psycopg(seeded) -> None:
    import psycopg

    _, result = seeded
    tables = result["manifest"]["regions"]["latam"]["tables"]
    with psycopg.connect(host=os.environ["SKYFED_PG_HOST"], port=int(os.environ["SKYFED_PG_PORT"]),
                         user=os.environ["SKYFED_PG_USER"], password=os.environ.get("SKYFED_PG_PASSWORD"),
                         dbname="latam_ops") as conn:
        for name in ("voos", "reservas", "pesquisas"):
            assert conn.execute(f"SELECT count(*) FROM {name}").fetchone()[0] == tables[name]["source_rows"]
        pk = conn.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
            "WHERE i.indrelid = 'voos'::regclass AND i.indisprimary").fetchall()
        assert pk == [("id",)]
        typ = dict(conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'voos'").fetchall())
        assert typ["partida_local"] == "timestamp without time zone"
        assert typ["combustivel_litros"] == "numeric"
        world = generate(CFG)
        first = world.regions["latam"].tables["voos"].slice(0, 1).to_pylist()[0]
        row = conn.execute("SELECT partida_local, combustivel_litros, receita_brl FROM voos WHERE id = 1").fetchone()
        assert row == (first["partida_local"], first["combustivel_litros"], first["receita_brl"])


def test_eu_read_back_with_bigquery_client(seeded) -> None:
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    _, result = seeded
    tables = result["manifest"]["regions"]["eu"]["tables"]
    client = bigquery.Client(project="skyfed-eu", credentials=AnonymousCredentials(),
                             client_options=ClientOptions(api_endpoint=os.environ["SKYFED_BQ_ENDPOINT"]))
    ds = client.get_dataset("skyfed-eu.eu_ops")
    assert ds.location == "europe-west1"
    for name in ("flights", "bookings", "feedback"):
        n = list(client.query(f"SELECT COUNT(*) AS n FROM `skyfed-eu.eu_ops.{name}`").result())[0]["n"]
        assert n == tables[name]["source_rows"], name
    schema = {f.name: f.field_type for f in client.get_table("skyfed-eu.eu_ops.flights").schema}
    assert schema["scheduled_departure"] == "TIMESTAMP" and schema["fuel_kg"] in ("FLOAT", "FLOAT64")


def test_na_read_back_with_storage_client(seeded) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    _, result = seeded
    tables = result["manifest"]["regions"]["na"]["tables"]
    client = storage.Client(project="skyfed-na", credentials=AnonymousCredentials(),
                            client_options={"api_endpoint": os.environ["STORAGE_EMULATOR_HOST"]})
    blobs = list(client.list_blobs("skyfed-na-raw"))
    by_table: dict[str, list] = {}
    for b in blobs:
        by_table.setdefault(b.name.split("/", 1)[0], []).append(b)
    assert set(by_table) == {"flights", "bookings", "feedback"}
    rows = {"flights": 0, "bookings": 0, "feedback": 0}
    for b in by_table["flights"]:
        data = b.download_as_bytes()
        assert b.name.endswith("/flights.csv") and data.startswith(b"flight_id,")
        rows["flights"] += data.count(b"\n") - 1
    for b in by_table["feedback"]:
        rows["feedback"] += b.download_as_bytes().count(b"\n")
    for b in by_table["bookings"]:
        rows["bookings"] += pq.ParquetFile(io.BytesIO(b.download_as_bytes())).metadata.num_rows
    for name, n in rows.items():
        assert n == tables[name]["source_rows"], name
        assert len(by_table[name]) == tables[name]["objects"], name


def test_reseed_is_idempotent_and_show_matches(seeded, tmp_path) -> None:
    from skyfed.demo.inventory import inventory

    state, first = seeded
    again = seed(CFG, state)
    assert again["manifest"] == first["manifest"]
    inv = inventory(state)
    assert inv["ok"], inv
    assert {r: v["kind"] for r, v in inv["regions"].items()} == {"latam": "postgres", "eu": "bigquery", "na": "gcs"}


def test_cli_seed_and_show_json(federation, run_cli, tmp_path) -> None:
    env = {"SKYFED_HOME": os.environ["SKYFED_HOME"]}
    res = run_cli("demo", "seed", "--flights", "300", "--seed", "5", "--json", env=env, timeout=300)
    assert res.code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["manifest"]["flights"] == 300 and out["manifest"]["seed"] == 5
    res = run_cli("demo", "show", "--json", env=env, timeout=300)
    assert res.code == 0, res.stderr
    inv = json.loads(res.stdout)
    assert inv["ok"] and inv["flights"] == 300
    assert all(t["rows"] == t["expected_rows"] for r in inv["regions"].values() for t in r["tables"])
