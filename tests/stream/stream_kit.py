"""Helpers for the streaming tests: a PostgreSQL database and a small spec of their own."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import yaml
from envkit import env_vars

from skyfed.spec import PlatformSpec, load_spec

CONTRACT = "item"
MAPPING = "latam_items"
SOURCE = "latam.ops"


def need_env(*names: str) -> dict[str, str]:
    """The named environment variables; a failure saying which is missing (no skips)."""
    missing = [n for n in names if not os.environ.get(n)]
    assert not missing, (
        f"environment variable(s) {', '.join(missing)} are not set: the `federation` fixture "
        "(tests/conftest.py) must be running the local services"
    )
    return {n: os.environ[n] for n in names}


@contextmanager
def cdc_home(home: Path, database: str, name: str, *, seed: str | None = None, doc: dict[str, Any] | None = None,
             **env: str | None) -> Iterator[tuple[Path, PlatformSpec]]:  # fmt: skip
    """A module's streaming setup: SKYFED_HOME (and `env`) pointing at `home` while it lasts, a fresh
    database (rows inserted by the `seed` SQL), and the spec (`doc`, default `spec_doc(database, name)`)
    written to home/skyfed.yaml; yields its path and the loaded spec."""
    with env_vars(SKYFED_HOME=str(home), **env):
        fresh_database(database)
        if seed:
            with pg(database) as con:
                con.execute(seed)
        path = write_spec(home / "skyfed.yaml", doc or spec_doc(database, name))
        yield path, load(path)


def pg(database: str = "skyfed", autocommit: bool = True) -> psycopg.Connection[Any]:
    env = need_env("SKYFED_PG_HOST", "SKYFED_PG_PORT", "SKYFED_PG_USER", "SKYFED_PG_PASSWORD")
    return psycopg.connect(
        host=env["SKYFED_PG_HOST"], port=env["SKYFED_PG_PORT"], user=env["SKYFED_PG_USER"],
        password=env["SKYFED_PG_PASSWORD"], dbname=database, autocommit=autocommit,
    )  # fmt: skip


def fresh_database(name: str) -> None:
    """Create (or re-create) a database for one test module."""
    with pg() as con:
        con.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = %s AND NOT active",
            (name,),
        )
        con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        con.execute(f'CREATE DATABASE "{name}"')
    with pg(name) as con:
        con.execute(
            "CREATE TABLE items (id integer PRIMARY KEY, qty integer, note text, big text, "
            "price numeric(12,2), updated_at timestamptz NOT NULL DEFAULT now())"
        )


def spec_doc(database: str, name: str = "streamtest") -> dict[str, Any]:
    return {
        "skyfed": 1,
        "name": name,
        "regions": {
            "latam": {
                "project": "p",
                "location": "southamerica-east1",
                "store": {"kind": "iceberg", "warehouse": "${SKYFED_HOME}/warehouse/latam"},
                "sources": {
                    "ops": {
                        "kind": "postgres", "host": "${SKYFED_PG_HOST}", "port": "${SKYFED_PG_PORT}",
                        "database": database, "user": "${SKYFED_PG_USER}", "password": "${SKYFED_PG_PASSWORD}",
                    },
                },
            }
        },
        "contracts": {
            CONTRACT: {
                "version": 1,
                "key": ["item_id"],
                "columns": {
                    "item_id": {"type": "string", "nullable": False},
                    "qty": {"type": "int32", "checks": {"min": 0}},
                    "note": {"type": "string"},
                    "big_len": {"type": "int64"},
                    "big_md5": {"type": "string"},
                    "price": {"type": "decimal(12,2)"},
                    "updated_at_utc": {"type": "timestamptz", "nullable": False},
                },
            }
        },
        "mappings": [
            {
                "name": MAPPING, "source": SOURCE, "table": "items", "contract": CONTRACT, "key": ["id"],
                "columns": {
                    "item_id": "'IT-' || CAST(id AS VARCHAR)", "qty": "qty", "note": "note",
                    "big_len": "length(big)", "big_md5": "md5(big)", "price": "price", "updated_at_utc": "updated_at",
                },
            }
        ],
    }  # fmt: skip


def write_spec(path: Path, doc: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def load(path: Path) -> PlatformSpec:
    return load_spec(path)


def expected_items(database: str) -> Any:
    """The curated `item` table as PostgreSQL itself computes it from `items` (not through skyfed's SQL)."""
    import pyarrow as pa

    from skyfed.contracts.types import contract_schema
    from skyfed.spec.models import Contract

    with pg(database) as con:
        rows = con.execute(
            "SELECT 'IT-' || id, qty, note, length(big)::bigint, md5(big), price, updated_at FROM items"
        ).fetchall()
    schema = contract_schema(Contract.model_validate(spec_doc(database)["contracts"][CONTRACT]))
    cols = list(zip(*rows)) if rows else [[] for _ in schema]
    return pa.table({f.name: pa.array(list(c), f.type) for f, c in zip(schema, cols)}, schema=schema)


def curated(spec: PlatformSpec) -> Any:
    from skyfed.ingest.stores import open_store

    return open_store("latam", spec.regions["latam"].store).read(CONTRACT)


def committed_position(spec: PlatformSpec) -> dict[str, Any] | None:
    from skyfed.errors import SkyfedError
    from skyfed.ingest.stores import open_store

    try:
        return open_store("latam", spec.regions["latam"].store).committed_position(CONTRACT, MAPPING)
    except SkyfedError:  # no table yet
        return None


def slot_confirmed(database: str, slot: str) -> int | None:
    from skyfed.stream.pgoutput import lsn_int

    with pg(database) as con:
        row = con.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
    return lsn_int(row[0]) if row and row[0] else None


EVENT_CONTRACT = {
    "version": 1,
    "description": "One flight status event from the event feed.",
    "key": ["event_id"],
    "columns": {
        "event_id": {"type": "string", "nullable": False},
        "region": {"type": "string", "nullable": False},
        "flight_id": {"type": "string", "nullable": False},
        "event_type": {"type": "string", "nullable": False,
                       "checks": {"allowed": ["departed", "arrived", "delayed", "diverted", "fuel_uplift"]}},
        "event_time_utc": {"type": "timestamptz", "nullable": False},
        "delay_min": {"type": "int32", "checks": {"min": 0, "max": 1440}},
        "diverted_to": {"type": "string"},
        "fuel_kg": {"type": "double", "checks": {"min": 0, "max": 400000}},
    },
}  # fmt: skip

EVENT_MAPPING_COLUMNS = {
    "event_id": "event_id",
    "region": "'na'",
    "flight_id": "'NA-' || flight_id",
    "event_type": "lower(type)",
    "event_time_utc": "TRY_CAST(occurred_at AS TIMESTAMPTZ)",
    "delay_min": "TRY_CAST(delay_minutes AS INTEGER)",
    "diverted_to": "diverted_to",
    "fuel_kg": "TRY_CAST(fuel_gal AS DOUBLE) * 3.785411784 * 0.8",
}


def events_spec_doc(name: str, topic: str) -> dict[str, Any]:
    return {
        "skyfed": 1,
        "name": name,
        "regions": {
            "na": {
                "project": "skyfed-na",
                "location": "us-east1",
                "store": {"kind": "iceberg", "warehouse": "${SKYFED_HOME}/warehouse/na"},
                "sources": {
                    "events": {"kind": "pubsub", "project": "skyfed-na", "topic": topic, "subscription": f"{topic}-skyfed",
                               "endpoint": "${PUBSUB_EMULATOR_HOST}", "max_message_bytes": 2000},
                },
            }
        },
        "contracts": {"flight_status_event": EVENT_CONTRACT},
        "mappings": [
            {"name": "na_flight_events", "source": "na.events", "table": topic, "contract": "flight_status_event",
             "key": ["event_id"], "columns": EVENT_MAPPING_COLUMNS},
        ],
    }  # fmt: skip
