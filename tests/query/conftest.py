"""A seeded, ingested airline world for federated queries, with its own state folder.

As in tests/ingest/conftest.py: a fresh SKYFED_HOME per module on top of the session's
running services (`federation`), a small world seeded, and every source ingested with
a full refresh. `colocated` loads every region's curated tables (store.read) into one
DuckDB database: the oracle the federated answers must equal.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from envkit import env_vars

from skyfed.demo.seed import seed
from skyfed.demo.world import WorldConfig
from skyfed.ingest.batch import ingest
from skyfed.ingest.stores import open_store
from skyfed.query import Federation, connect
from skyfed.spec import PlatformSpec, load_spec

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "airline" / "skyfed.yaml"
CONTRACTS = ("flight_leg", "booking", "customer_feedback")


class World:
    def __init__(self, home: Path, spec: PlatformSpec):
        self.home = home
        self.spec = spec


@pytest.fixture(scope="module")
def ingested_world(federation, tmp_path_factory) -> Iterator[World]:
    home = tmp_path_factory.mktemp("query-home")
    # snapshots here are seconds old: copy them at once, so these suites also read the region scan cache's copies
    with env_vars(SKYFED_HOME=str(home), SKYFED_SCAN_CACHE_MIN_AGE="0"):
        seed(WorldConfig(flights=800, seed=11), home)
        spec = load_spec(EXAMPLE)
        _, _, failures = ingest(spec, full_refresh=True)
        assert failures == [], [(m.name, e.message) for m, e in failures]
        yield World(home, spec)


@pytest.fixture(scope="module")
def fed(ingested_world: World) -> Federation:
    return connect(ingested_world.spec, timeout=120, cache=False)  # the differential suite must run every query


@pytest.fixture(scope="module")
def colocated(ingested_world: World) -> Iterator[duckdb.DuckDBPyConnection]:
    """All regions' curated rows in one DuckDB (TimeZone UTC, like every DuckDB in a federated query)."""
    spec = ingested_world.spec
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for contract in CONTRACTS:
        parts = {r: open_store(r, spec.regions[r].store).read(contract) for r in spec.regions}
        con.register(f"_{contract}", pa.concat_tables(parts.values()))
        con.execute(f"CREATE TABLE {contract} AS SELECT * FROM _{contract}")
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {'_x'}")
        for region, table in parts.items():
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {region}")
            con.register(f"_{region}_{contract}", table)
            con.execute(f"CREATE TABLE {region}.{contract} AS SELECT * FROM _{region}_{contract}")
    for name, ref in spec.reference.items():
        con.register(f"_{name}", pq.read_table(ref.path))
        con.execute(f"CREATE TABLE {name} AS SELECT * FROM _{name}")
    yield con
    con.close()
