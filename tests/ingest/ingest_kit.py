"""Helpers for the ingestion fault and crash tests: private sources, small specs, store state.

The fault and crash tests build their own inputs (a PostgreSQL database, a BigQuery
dataset and a Cloud Storage bucket of their own, and a spec written for them) so they
never disturb the shared demo sources that other test modules seed and read.
"""

from __future__ import annotations

import copy
import os
import socket
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import yaml

from skyfed.demo.seed import write_local
from skyfed.demo.world import World, WorldConfig, generate
from skyfed.ingest.runner import MappingResult
from skyfed.ingest.stores import QUARANTINE_TABLE, open_store, table_checksum
from skyfed.spec import PlatformSpec, load_spec

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "airline" / "skyfed.yaml"

# Quarantine columns that differ between two runs by design (which run, when); the
# rest of a quarantine record (mapping, location, reasons, raw record) must be identical.
PER_RUN_QUARANTINE_COLUMNS = ("run_id", "quarantined_at")


def need_env(*names: str) -> dict[str, str]:
    """The named environment variables; a failure saying which is missing (no skips)."""
    missing = [n for n in names if not os.environ.get(n)]
    assert not missing, (
        f"environment variable(s) {', '.join(missing)} are not set: the `federation` fixture "
        "(tests/conftest.py) must be running the local services"
    )
    return {n: os.environ[n] for n in names}


def example_doc() -> dict[str, Any]:
    """The example airline spec as plain YAML data (variables not substituted)."""
    return yaml.safe_load(EXAMPLE.read_text())


def reference_section(world_home: Path) -> dict[str, Any]:
    """The spec's `reference:` section pointing at the reference files written under `world_home`."""
    ref = example_doc()["reference"]
    out = {}
    for name, item in ref.items():
        path = world_home / "seed" / "reference" / f"{name}.parquet"
        assert path.exists(), f"reference file {path} is missing: write the world's local seed files first"
        out[name] = {"contract": item["contract"], "path": str(path)}
    return out


def reference_contracts() -> dict[str, Any]:
    """The example's contracts of the reference tables (the `references:` checks and macros need them)."""
    doc = example_doc()
    return {item["contract"]: doc["contracts"][item["contract"]] for item in doc["reference"].values()}


def local_world(home: Path, flights: int, seed: int = 7) -> World:
    """A generated airline world whose ground truth and reference files are written under `home`/seed."""
    world = generate(WorldConfig(flights=flights, seed=seed))
    write_local(world, home)
    return world


def write_spec(path: Path, doc: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def load(path: Path) -> PlatformSpec:
    """The spec at `path`, with ${VAR}s resolved from the current environment (SKYFED_HOME included)."""
    return load_spec(path)


def closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- services


def pg_connect(dbname: str = "postgres") -> psycopg.Connection:
    env = need_env("SKYFED_PG_HOST", "SKYFED_PG_PORT", "SKYFED_PG_USER", "SKYFED_PG_PASSWORD")
    return psycopg.connect(
        host=env["SKYFED_PG_HOST"],
        port=int(env["SKYFED_PG_PORT"]),
        user=env["SKYFED_PG_USER"],
        password=env["SKYFED_PG_PASSWORD"],
        dbname=dbname,
        autocommit=True,
        connect_timeout=5,
    )


def pg_fresh_database(name: str) -> None:
    """Drop and create database `name` on the session's PostgreSQL."""
    with pg_connect() as con:
        con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        con.execute(f'CREATE DATABASE "{name}"')


def gcs_client():
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    endpoint = need_env("STORAGE_EMULATOR_HOST")["STORAGE_EMULATOR_HOST"]
    return storage.Client(
        project="skyfed-tests", credentials=AnonymousCredentials(), client_options={"api_endpoint": endpoint}
    )


def gcs_fresh_bucket(name: str):
    """An empty bucket `name` on the session's Cloud Storage emulator."""
    from google.api_core.exceptions import NotFound

    client = gcs_client()
    try:
        bucket = client.get_bucket(name)
        for blob in list(bucket.list_blobs()):
            blob.delete()
    except NotFound:
        bucket = client.create_bucket(name)
    return bucket


def bq_client(project: str, location: str):
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    endpoint = need_env("SKYFED_BQ_ENDPOINT")["SKYFED_BQ_ENDPOINT"]
    return bigquery.Client(
        project=project,
        location=location,
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=endpoint),
    )


# --------------------------------------------------------------------------- store state


def accounts(result: MappingResult) -> None:
    """rows_read = rows_loaded + rows_quarantined + rows_filtered, for every run."""
    assert result.rows_read == result.rows_loaded + result.rows_quarantined + result.rows_filtered, result.to_dict()


def comparable_quarantine(table: pa.Table) -> pa.Table:
    return table.drop_columns([c for c in PER_RUN_QUARANTINE_COLUMNS if c in table.column_names])


def store_state(
    spec: PlatformSpec, region: str, contracts: list[str], mappings: list[str], metadata_url: str | None = None
) -> dict[str, Any]:
    """What a failed run must not change and a crashed-then-resumed run must reproduce.

    For each contract: snapshot id, row count, content checksum and every mapping's
    committed position; and the region's quarantine table (checksum without the per-run
    columns, or None when it does not exist yet). `metadata_url` as for open_store.
    """
    store = open_store(region, spec.regions[region].store, metadata_url)
    state: dict[str, Any] = {}
    tables = set(store.table_names())
    for contract in contracts:
        if contract not in tables:
            state[contract] = None
            continue
        data = store.read(contract)
        state[contract] = {
            "snapshot_id": store.snapshot_id(contract),
            "rows": data.num_rows,
            "checksum": table_checksum(data),
            "positions": {m: store.committed_position(contract, m) for m in mappings},
        }
    state[QUARANTINE_TABLE] = quarantine_state(store)
    return state


def quarantine_state(store) -> dict[str, Any] | None:
    try:
        data = store.read(QUARANTINE_TABLE)
    except Exception as exc:
        if "does not exist" in str(exc) or "not found" in str(exc).lower():
            return None
        raise
    return {"rows": data.num_rows, "checksum": table_checksum(comparable_quarantine(data))}


def quarantine_rows(spec: PlatformSpec, region: str, mapping: str | None = None) -> list[dict[str, Any]]:
    store = open_store(region, spec.regions[region].store)
    data = store.read(QUARANTINE_TABLE)
    if mapping is not None:
        data = data.filter(pc.equal(data["mapping"], mapping))
    return data.to_pylist()


def spec_copy(doc: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(doc)
