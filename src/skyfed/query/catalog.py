"""The names a federated query can use, derived from the platform spec (pure, no I/O).

- a canonical table (`flight_leg`) is the union of that contract's table in every
  region that has a mapping onto it;
- `region.table` (`eu.flight_leg`) is one region's table;
- a reference table (`airport`) is the spec's small Parquet file, read at the
  coordinator (phase 1: joins with it run at the coordinator).

Live source tables (`latam.ops.voos`) are not addressable yet (phase 2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sqlglot import exp

from skyfed.contracts.types import duckdb_type
from skyfed.errors import SkyfedError
from skyfed.spec.models import BigQueryStore, Contract, IcebergStore, PlatformSpec

DUCKDB = "duckdb"
BIGQUERY = "bigquery"


@dataclass(frozen=True)
class RegionTarget:
    """How the planner addresses one region: its executor's engine and its tables."""

    name: str
    engine: str  # "duckdb" (Iceberg store) | "bigquery" (BigQuery dataset store)
    tables: frozenset[str]  # canonical contracts with a mapping in this region
    # contracts whose every row in this region carries region = '<name>' (all mappings set that literal)
    region_pinned: frozenset[str]
    project: str | None = None
    dataset: str | None = None

    def table_ref(self, table: str, alias: str | None) -> exp.Table:
        """The region's table as it is named in that region's SQL."""
        if self.engine == BIGQUERY:
            node = exp.Table(
                this=exp.to_identifier(table),
                db=exp.to_identifier(self.dataset),
                catalog=exp.to_identifier(self.project, quoted=True),
            )
        else:
            node = exp.Table(this=exp.to_identifier(table), db=exp.to_identifier(self.name))
        if alias:
            node.set("alias", exp.TableAlias(this=exp.to_identifier(alias)))
        return node


@dataclass
class Catalog:
    """Canonical and reference tables with their columns, and the regions that hold them."""

    contracts: dict[str, Contract]  # canonical (mapped) contracts
    reference: dict[str, Contract]  # reference tables by name
    reference_paths: dict[str, str]
    regions: dict[str, RegionTarget]
    duckdb_types: dict[str, dict[str, str]] = field(default_factory=dict)  # table -> column -> DuckDB type

    @classmethod
    def from_spec(cls, spec: PlatformSpec) -> Catalog:
        mapped: dict[str, set[str]] = {}
        pinned_bad: dict[str, set[str]] = {}
        for m in spec.mappings:
            region = m.source.split(".", 1)[0]
            mapped.setdefault(region, set()).add(m.contract)
            expr = (m.columns.get("region") or "").strip()
            if not re.fullmatch(rf"'{re.escape(region)}'", expr):
                pinned_bad.setdefault(region, set()).add(m.contract)
        contracts = {
            name: spec.contracts[name]
            for name in sorted({c for cs in mapped.values() for c in cs})
            if name in spec.contracts
        }
        regions: dict[str, RegionTarget] = {}
        for name, region in spec.regions.items():
            tables = frozenset(mapped.get(name, set()) & set(contracts))
            pinned = frozenset(
                t for t in tables if "region" in contracts[t].columns and t not in pinned_bad.get(name, set())
            )
            store = region.store
            if isinstance(store, BigQueryStore):
                regions[name] = RegionTarget(name, BIGQUERY, tables, pinned, store.project, store.dataset)
            elif isinstance(store, IcebergStore):
                regions[name] = RegionTarget(name, DUCKDB, tables, pinned)
            else:  # pragma: no cover - the spec model admits only these two
                raise SkyfedError(f"region {name}: the query planner does not know store kind {store.kind!r}")
        reference = {n: spec.contracts[r.contract] for n, r in spec.reference.items() if r.contract in spec.contracts}
        paths = {n: r.path for n, r in spec.reference.items()}
        cat = cls(contracts, reference, paths, regions)
        for name, contract in {**contracts, **reference}.items():
            cat.duckdb_types[name] = _duckdb_types(contract)
        return cat

    def regions_of(self, table: str) -> list[str]:
        return [r for r, t in self.regions.items() if table in t.tables]

    def qualify_schema(self) -> dict[str, dict[str, str]]:
        """Flat sqlglot schema: canonical, `region__table` and reference names -> column types."""
        schema: dict[str, dict[str, str]] = {}
        for name in self.contracts:
            schema[name] = self.duckdb_types[name]
            for region in self.regions_of(name):
                schema[region_alias_name(region, name)] = self.duckdb_types[name]
        for name in self.reference:
            schema[name] = self.duckdb_types[name]
        return schema


def region_alias_name(region: str, table: str) -> str:
    """The internal name of `region.table` (one region's canonical table)."""
    return f"{region}__{table}"


def split_region_alias(name: str, catalog: Catalog) -> tuple[str | None, str]:
    region, sep, table = name.partition("__")
    if sep and region in catalog.regions and table in catalog.contracts:
        return region, table
    return None, name


def _duckdb_types(contract: Contract) -> dict[str, str]:
    return {name: duckdb_type(col.type) for name, col in contract.columns.items()}
