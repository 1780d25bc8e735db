"""Curated stores: where harmonized, validated rows land, per region and contract, exactly once.

`open_store(region, store_spec)` gives the region's store behind the small
`CuratedStore` interface (base.py): Iceberg (default; pyiceberg with the SQL catalog in
the metadata database) or a BigQuery dataset. See docs/stores.md for how each commit
is atomic and why exactly-once holds.
"""

from __future__ import annotations

from skyfed.errors import SkyfedError
from skyfed.ingest.stores.base import (
    QUARANTINE_KEY,
    QUARANTINE_SCHEMA,
    QUARANTINE_TABLE,
    CommitResult,
    CuratedStore,
)
from skyfed.ingest.stores.checksum import table_checksum
from skyfed.spec.models import BigQueryStore, IcebergStore, Store


def open_store(region_name: str, store_spec: Store, metadata_url: str | None = None) -> CuratedStore:
    """The curated store of region `region_name` as its spec describes it.

    `metadata_url` (SQLAlchemy URL of the metadata database) defaults to
    $SKYFED_METADATA_URL, else the SQLite file under the state folder; only Iceberg uses it.
    """
    if isinstance(store_spec, IcebergStore):
        from skyfed.ingest.stores.iceberg import IcebergCuratedStore

        return IcebergCuratedStore(region_name, store_spec, metadata_url)
    if isinstance(store_spec, BigQueryStore):
        from skyfed.ingest.stores.bigquery import BigQueryCuratedStore

        return BigQueryCuratedStore(region_name, store_spec)
    raise SkyfedError(f"region {region_name}: unknown store kind {getattr(store_spec, 'kind', store_spec)!r}")


__all__ = [
    "QUARANTINE_KEY",
    "QUARANTINE_SCHEMA",
    "QUARANTINE_TABLE",
    "CommitResult",
    "CuratedStore",
    "open_store",
    "table_checksum",
]
