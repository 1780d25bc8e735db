"""The names a federated query can use, derived from the platform spec (pure, no I/O).

- a canonical table (`flight_leg`) is the union of that contract's table in every
  region that has a mapping onto it;
- `region.table` (`eu.flight_leg`) is one region's table;
- a reference table (`airport`) is the spec's Parquet file; when small (broadcast.py) it is
  copied into every region so joins with it run there, else read at the coordinator.

- a live source table (`latam.ops.voos`, region.source.table) is read in its region at
  query time; Federation.plan resolves its columns through the source's connector and
  adds it (`add_live`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

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

    def table_ref(self, table: str, alias: str | None, live: LiveTable | None = None) -> exp.Table:
        """The region's table as it is named in that region's SQL (a live table: as its engine names it)."""
        if live is not None:
            parts = live.ref or (live.name,)
            node = exp.Table(this=exp.to_identifier(parts[-1]))
            if len(parts) > 1:
                node.set("db", exp.to_identifier(parts[-2]))
            if len(parts) > 2:
                node.set("catalog", exp.to_identifier(parts[-3], quoted=live.kind == "bigquery"))
            if alias:
                node.set("alias", exp.TableAlias(this=exp.to_identifier(alias)))
            return node
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


@dataclass(frozen=True)
class LiveTable:
    """A source table (`latam.ops.voos`) read where it lives, at query time (no snapshot)."""

    region: str
    source: str
    table: str
    kind: str  # postgres | bigquery | gcs
    engine: str  # the executor that reads it: duckdb (postgres extension, files) | bigquery (a job)
    columns: dict[str, str]  # column -> DuckDB type, in source order
    # the name parts its engine uses: postgres (<region>__<source> (the ATTACHed db), schema, table);
    # bigquery (project, dataset, table); files (internal name,) registered by the executor
    ref: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return live_name(self.region, self.source, self.table)

    @property
    def dotted(self) -> str:
        return f"{self.region}.{self.source}.{self.table}"


def live_name(region: str, source: str, table: str) -> str:
    """The internal name of the live table `region.source.table`."""
    return f"{region}__{source}__{table}"


@dataclass
class Catalog:
    """Canonical and reference tables with their columns, and the regions that hold them."""

    contracts: dict[str, Contract]  # canonical (mapped) contracts
    reference: dict[str, Contract]  # reference tables by name
    reference_paths: dict[str, str]
    regions: dict[str, RegionTarget]
    duckdb_types: dict[str, dict[str, str]] = field(default_factory=dict)  # table -> column -> DuckDB type
    live: dict[str, LiveTable] = field(default_factory=dict)  # internal name (region__source__table) -> live table
    # reference tables small enough to copy to every region (broadcast.py); set by Federation.plan
    broadcast: dict[str, Any] = field(default_factory=dict)
    # the caller's policies (governed.Governor), set by Federation when a governance file applies
    governor: Any = None
    # what a plan depends on in the spec (contracts with versions and types, regions, reference contracts): from_spec
    fingerprint: str = ""

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
        cat.fingerprint = _fingerprint(cat)
        return cat

    def add_live(self, live: LiveTable) -> None:
        """Make a live source table addressable (its region's target then holds it)."""
        import dataclasses

        self.live[live.name] = live
        self.duckdb_types[live.name] = dict(live.columns)
        target = self.regions[live.region]
        if live.name not in target.tables:
            self.regions[live.region] = dataclasses.replace(target, tables=target.tables | {live.name})

    def columns_of(self, table: str) -> list[str]:
        if table in self.live:
            return list(self.live[table].columns)
        if table in self.contracts:
            return list(self.contracts[table].columns)
        return list(self.reference[table].columns)

    def engine_of(self, region: str, table: str) -> str:
        """The engine that reads `table` in `region`: the live table's, else the region store's."""
        return self.live[table].engine if table in self.live else self.regions[region].engine

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
        for name in self.live:
            schema[name] = self.duckdb_types[name]
        return schema


def region_alias_name(region: str, table: str) -> str:
    """The internal name of `region.table` (one region's canonical table)."""
    return f"{region}__{table}"


def split_region_alias(name: str, catalog: Catalog) -> tuple[str | None, str]:
    if name in catalog.live:
        return catalog.live[name].region, name
    region, sep, table = name.partition("__")
    if sep and region in catalog.regions and table in catalog.contracts:
        return region, table
    return None, name


def _fingerprint(cat: Catalog) -> str:
    """A hash of everything in the catalog a plan depends on: each contract's whole definition (version,
    columns, types, keys), the regions' engines and tables, the reference tables and their paths."""
    import hashlib
    import json

    body = {
        "contracts": {n: c.model_dump(mode="json") for n, c in sorted(cat.contracts.items())},
        "reference": {n: c.model_dump(mode="json") for n, c in sorted(cat.reference.items())},
        "paths": dict(sorted(cat.reference_paths.items())),
        "regions": {n: [t.engine, sorted(t.tables), sorted(t.region_pinned), t.project, t.dataset]
                    for n, t in sorted(cat.regions.items())},  # fmt: skip
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def _duckdb_types(contract: Contract) -> dict[str, str]:
    return {name: duckdb_type(col.type) for name, col in contract.columns.items()}
