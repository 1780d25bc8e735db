"""The data catalog: search the spec's metadata, describe a table, export to Dataplex.

Everything here is read from the spec (names, descriptions, owners, tags,
classifications), the contract registry (versions), the recorded ingest runs
(freshness, row counts, quality pass rate from quarantine counts) and, for Iceberg
stores, the table's current snapshot in the metadata database.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from skyfed.catalog import registry, runs
from skyfed.catalog.metadata import metadata_url
from skyfed.errors import SkyfedError
from skyfed.governance.config import Governance, governed_spec
from skyfed.spec.models import IcebergStore, PlatformSpec

ICEBERG_CATALOG = "skyfed"  # the name the Iceberg store registers its tables under


def search(spec: PlatformSpec, text: str) -> list[dict[str, Any]]:
    """Tables and columns whose name, description, owner, tags or classification contain `text`."""
    needle = text.lower().strip()
    if not needle:
        raise SkyfedError("an empty search matches everything", "give a word, e.g. `skyfed catalog search email`")
    hits: list[dict[str, Any]] = []

    def match(kind: str, table: str, column: str | None, fields: dict[str, Any]) -> None:
        for field, value in fields.items():
            values = value if isinstance(value, list) else [value]
            for v in values:
                if v is not None and needle in str(v).lower():
                    hits.append({"kind": kind, "table": table, "column": column, "field": field, "text": str(v)})
                    return

    for name, c in spec.contracts.items():
        match("table", name, None, {"name": name, "description": c.description, "owner": c.owner})
        for col_name, col in c.columns.items():
            match("column", name, col_name, {"name": col_name, "description": col.description, "tags": col.tags,
                                             "classification": col.classification})
    for m in spec.mappings:
        match("source", f"{m.source}.{m.table}", None, {"name": f"{m.source}.{m.table}", "mapping": m.name})
    for rname, region in spec.regions.items():
        for sname, src in region.sources.items():
            match("source", f"{rname}.{sname}", None, {"name": f"{rname}.{sname}", "description": src.description})
    return hits


def _iceberg_snapshot(region: str, table: str) -> dict[str, Any] | None:
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError

    try:
        cat = SqlCatalog(ICEBERG_CATALOG, uri=metadata_url())
        snap = cat.load_table((region, table)).current_snapshot()
    except (NoSuchTableError, NoSuchNamespaceError):
        return None
    if snap is None:
        return {"snapshot_id": None, "rows": 0, "committed_at": None}
    summary = snap.summary.additional_properties if snap.summary else {}
    return {
        "snapshot_id": str(snap.snapshot_id),
        "rows": int(summary.get("total-records", 0)),
        "committed_at": datetime.fromtimestamp(snap.timestamp_ms / 1000, tz=UTC).isoformat(),
    }


def show(spec: PlatformSpec, table: str, gov: Governance | None = None) -> dict[str, Any]:
    """Schema, versions, freshness, row counts and quality of canonical table `table`."""
    spec = governed_spec(spec, gov) if gov is not None else spec
    if table not in spec.contracts:
        raise SkyfedError(f"no contract named {table!r}", f"contracts: {', '.join(spec.contracts)}")
    c = spec.contracts[table]
    gov = gov or Governance()
    masks = {r: {col: p.mask_for(x.classification) for col, x in c.columns.items() if x.classification}
             for r, p in gov.roles.items()}
    regions: dict[str, Any] = {}
    for m in spec.mappings:
        if m.contract != table:
            continue
        region = m.source.split(".")[0]
        results = [r for r in runs.recent(limit=1000, mapping=m.name)]
        ok = [r for r in results if r["status"] in ("ok", "no_new_data")]
        loaded = sum(int(r["rows_loaded"] or 0) for r in ok)
        quarantined = sum(int(r["rows_quarantined"] or 0) for r in ok)
        entry = regions.setdefault(region, {"mappings": {}, "store": spec.regions[region].store.kind})
        entry["mappings"][m.name] = {
            "runs": len(results),
            "failed_runs": sum(1 for r in results if r["status"] == "failed"),
            "last_success": max((r["finished_at"] for r in ok if r["finished_at"]), default=None),
            "rows_loaded": loaded,
            "rows_quarantined": quarantined,
            "quality_pass_rate": round(loaded / (loaded + quarantined), 4) if loaded + quarantined else None,
        }
        if isinstance(spec.regions[region].store, IcebergStore) and "snapshot" not in entry:
            entry["snapshot"] = _iceberg_snapshot(region, table)
    return {
        "table": table,
        "description": c.description,
        "owner": c.owner,
        "declared_version": c.version,
        "compatibility": c.compatibility,
        "key": c.key,
        "partition_by": c.partition_by,
        "columns": [
            {"name": n, "type": x.type, "nullable": x.nullable, "classification": x.classification,
             "description": x.description, "tags": x.tags}
            for n, x in c.columns.items()
        ],
        "versions": [
            {"version": v["version"], "hash": v["hash"][:12], "registered_at": v["registered_at"],
             "declared_version": v["declared_version"], "spec_path": v["spec_path"]}
            for v in registry.history(table)
        ],
        "masks_by_role": masks,
        "regions": regions,
    }


_BQ_TYPES = {"string": "STRING", "int32": "INT64", "int64": "INT64", "double": "FLOAT64", "bool": "BOOL",
             "date": "DATE", "timestamp": "DATETIME", "timestamptz": "TIMESTAMP"}


def export_dataplex(spec: PlatformSpec, gov: Governance | None = None, entry_group: str = "skyfed") -> list[dict[str, Any]]:
    """One Dataplex Catalog entry per curated table per region (see docs/governance.md for the mapping)."""
    gov = gov or Governance()
    spec = governed_spec(spec, gov)
    entries = []
    placed = sorted({(m.source.split(".")[0], m.contract) for m in spec.mappings})
    for region_name, contract_name in placed:
        region, c = spec.regions[region_name], spec.contracts.get(contract_name)
        if c is None:
            continue
        store = region.store
        if store.kind == "bigquery":
            fqn = f"bigquery:{store.project}.{store.dataset}.{contract_name}"
            system = "BIGQUERY"
        else:
            fqn = f"custom:skyfed.{region_name}.{contract_name}"
            system = "skyfed-iceberg"
        fields = [
            {"name": n, "dataType": _BQ_TYPES.get(x.type, "NUMERIC"), "metadataType": x.type.upper(),
             "mode": "NULLABLE" if x.nullable else "REQUIRED", "description": x.description or ""}
            for n, x in c.columns.items()
        ]
        classified = {n: x.classification for n, x in c.columns.items() if x.classification}
        entry_id = f"{region_name}.{contract_name}"
        aspects: dict[str, Any] = {
            "dataplex-types.global.schema": {"data": {"fields": fields}},
            "dataplex-types.global.overview": {"data": {"content": c.description or ""}},
            f"{region.project}.{region.location}.skyfed-governance": {
                "data": {
                    "contract": contract_name,
                    "contract_version": c.version,
                    "compatibility": c.compatibility,
                    "key": c.key,
                    "classifications": classified,
                    "restricted_columns": sorted(n for n, k in classified.items() if gov.residency.is_restricted(k)),
                    "min_group_size": gov.residency.min_group_size,
                    "masks_by_role": {r: {n: p.mask_for(k) for n, k in classified.items()} for r, p in gov.roles.items()},
                }
            },
        }
        if c.owner:
            aspects["dataplex-types.global.contacts"] = {"data": {"identities": [{"role": "Owner", "name": c.owner}]}}
        entries.append(
            {
                "name": f"projects/{region.project}/locations/{region.location}/entryGroups/{entry_group}/entries/{entry_id}",
                "entryType": "projects/dataplex-types/locations/global/entryTypes/generic"
                if system != "BIGQUERY" else "projects/dataplex-types/locations/global/entryTypes/bigquery-table",
                "fullyQualifiedName": fqn,
                "entrySource": {
                    "resource": fqn.split(":", 1)[1],
                    "system": system,
                    "platform": "GCP",
                    "displayName": contract_name,
                    "description": c.description or "",
                    "labels": {"skyfed-region": region_name, "skyfed-contract": contract_name},
                    "location": region.location,
                },
                "aspects": aspects,
            }
        )
    return entries
