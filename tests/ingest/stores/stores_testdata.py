"""Shared test data for the curated store tests (also imported by the crash child process)."""

from __future__ import annotations

import os
import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import numpy as np
import pyarrow as pa

from skyfed.spec.models import BigQueryStore, Contract, IcebergStore

CONTRACT = Contract.model_validate(
    {
        "version": 1,
        "key": ["flight_id"],
        "partition_by": "month(dep_time_utc)",
        "columns": {
            "flight_id": {"type": "string", "nullable": False, "description": "region prefix and source id"},
            "dep_time_utc": {"type": "timestamptz", "nullable": False},
            "dep_date": {"type": "date"},
            "seats": {"type": "int32", "nullable": False},
            "fuel_kg": {"type": "double"},
            "revenue_usd": {"type": "decimal(18,2)"},
            "cancelled": {"type": "bool"},
            "status": {"type": "string"},
        },
    }
)

# A composite key, as fx_rate has.
FX = Contract.model_validate(
    {
        "version": 1,
        "key": ["currency", "rate_date"],
        "columns": {
            "currency": {"type": "string", "nullable": False},
            "rate_date": {"type": "date", "nullable": False},
            "usd_per_unit": {"type": "decimal(18,6)", "nullable": False},
        },
    }
)

BASE = datetime(2024, 1, 1, tzinfo=timezone.utc)


def flights(ids: list[int] | np.ndarray, generation: int = 0) -> pa.Table:
    """Deterministic flight rows: the same ids and generation give the same rows."""
    ids = np.asarray(ids, dtype=np.int64)
    dep = [BASE + timedelta(days=int(i % 400), minutes=int(i % 1440) + generation) for i in ids]
    return pa.table(
        {
            "flight_id": pa.array([f"LA-{i:07d}" for i in ids], pa.string()),
            "dep_time_utc": pa.array(dep, pa.timestamp("us", tz="UTC")),
            "dep_date": pa.array([d.date() for d in dep], pa.date32()),
            "seats": pa.array((ids % 300 + 1 + generation).astype(np.int32), pa.int32()),
            "fuel_kg": pa.array(ids * 1.5 + generation, pa.float64()),
            "revenue_usd": pa.array(
                [Decimal(int(i) * 100 + generation).scaleb(-2) for i in ids], pa.decimal128(18, 2)
            ),
            "cancelled": pa.array(ids % 7 == 0),
            "status": pa.array([None if i % 11 == 0 else f"s{generation}" for i in ids], pa.string()),
        }
    )


def fx_rows(currencies: list[str], days: int, rate: str) -> pa.Table:
    cur, day = zip(*[(c, date(2024, 1, 1) + timedelta(days=d)) for c in currencies for d in range(days)])
    return pa.table(
        {
            "currency": pa.array(cur, pa.string()),
            "rate_date": pa.array(day, pa.date32()),
            "usd_per_unit": pa.array([Decimal(rate)] * len(cur), pa.decimal128(18, 6)),
        }
    )


def quarantine(locations: list[str], mapping: str = "ops_flights") -> pa.Table:
    n = len(locations)
    return pa.table(
        {
            "mapping": [mapping] * n,
            "contract": ["flight_leg"] * n,
            "source": ["latam.ops"] * n,
            "source_table": ["voos"] * n,
            "location": locations,
            "cursor": [f"2024-01-0{1 + i % 9}" for i in range(n)],
            "reasons": pa.array([["seats: below min 1", "status: not allowed"]] * n, pa.list_(pa.string())),
            "raw": ['{"id": %d, "seats": -1}' % i for i in range(n)],
        }
    )


def store_spec(kind: str, root: str) -> IcebergStore | BigQueryStore:
    """An Iceberg store under `root`, or a fresh BigQuery dataset on the emulator (SKYFED_BQ_ENDPOINT)."""
    if kind == "iceberg":
        return IcebergStore(kind="iceberg", warehouse=os.path.join(root, "warehouse"))
    endpoint = os.environ.get("SKYFED_BQ_ENDPOINT")
    assert endpoint, "SKYFED_BQ_ENDPOINT is not set: the `federation` fixture must run first"
    return BigQueryStore(
        kind="bigquery",
        project="skyfed-eu",
        dataset=f"curated_{uuid.uuid4().hex[:10]}",
        location="europe-west1",
        endpoint=endpoint,
    )
