"""Governance tests run on a SQLite metadata database in a fresh SKYFED_HOME: no services."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from skyfed.spec.models import PlatformSpec

BOOKING: dict[str, Any] = {
    "version": 1,
    "compatibility": "BACKWARD",
    "description": "One passenger booking.",
    "owner": "commercial-data@airline.example",
    "key": ["booking_id"],
    "columns": {
        "booking_id": {"type": "string", "nullable": False},
        "region": {"type": "string", "nullable": False, "checks": {"allowed": ["latam", "eu", "na"]}},
        "passenger_name": {"type": "string", "nullable": False, "classification": "pii.name"},
        "email": {"type": "string", "classification": "pii.email", "tags": ["contact"]},
        "phone": {"type": "string", "classification": "pii.phone"},
        "seats": {"type": "int32", "nullable": False, "checks": {"min": 1, "max": 9}},
        "fare": {"type": "decimal(10,2)", "description": "Fare paid, USD."},
    },
}


def spec_doc(**contracts: dict[str, Any]) -> dict[str, Any]:
    return {
        "skyfed": 1,
        "name": "airline",
        "regions": {
            "eu": {
                "project": "p",
                "location": "europe-west1",
                "store": {"kind": "iceberg", "warehouse": "/tmp/wh"},
                "sources": {"ops": {"kind": "postgres", "database": "eu_ops", "user": "u"}},
            }
        },
        "contracts": contracts or {"booking": copy.deepcopy(BOOKING)},
        "mappings": [
            {
                "name": "eu_bookings",
                "source": "eu.ops",
                "table": "bookings",
                "contract": "booking",
                "columns": {
                    "booking_id": "'EU-' || CAST(id AS VARCHAR)",
                    "region": "'eu'",
                    "passenger_name": "trim(first_name) || ' ' || upper(last_name)",
                    "email": "lower(mail)",
                    "phone": "phone",
                    "seats": "CAST(seat_count AS INTEGER)",
                    "fare": "to_usd(fare_eur, 'EUR', utc_day(booked_at))",
                },
            }
        ],
    }


def make_spec(**contracts: dict[str, Any]) -> PlatformSpec:
    return PlatformSpec.model_validate(spec_doc(**contracts))


def booking(**changes: Any) -> dict[str, Any]:
    """BOOKING with top-level keys replaced and columns edited (a column value None drops it)."""
    doc = copy.deepcopy(BOOKING)
    cols = changes.pop("columns", {})
    doc.update(changes)
    for name, col in cols.items():
        if col is None:
            doc["columns"].pop(name)
        else:
            doc["columns"][name] = col
    return doc


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh SKYFED_HOME whose metadata database is SQLite."""
    monkeypatch.setenv("SKYFED_HOME", str(tmp_path))
    monkeypatch.delenv("SKYFED_METADATA_URL", raising=False)
    monkeypatch.delenv("SKYFED_GOVERNANCE", raising=False)
    monkeypatch.delenv("OPENLINEAGE_URL", raising=False)
    yield tmp_path


def write_spec(folder: Path, doc: dict[str, Any], governance: dict[str, Any] | None = None) -> Path:
    path = folder / "skyfed.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    if governance is not None:
        (folder / "skyfed.governance.yaml").write_text(yaml.safe_dump(governance, sort_keys=False), encoding="utf-8")
    return path
