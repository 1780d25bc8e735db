"""Small reference tables broadcast to every region, so joins with them run where the data is.

"Small" is decided from the table's own statistics (the Parquet footer: no data read):
at most `BROADCAST_MAX_ROWS` rows and `BROADCAST_MAX_BYTES` uncompressed bytes
($SKYFED_BROADCAST_MAX_ROWS / $SKYFED_BROADCAST_MAX_BYTES override). A larger reference
table stays at the coordinator (the general strategy joins it there).

How the copy reaches a region:
- DuckDB (Iceberg) regions: the coordinator reads the Parquet file once per query and the
  region's DuckDB gets it as a registered Arrow relation `_sf_ref_<name>` (its bytes are
  counted as crossing into that region on every run).
- BigQuery regions: a load job puts the file into the region's dataset as
  `_skyfed_ref_<name>_<version>`, where version hashes the file's size and mtime; later
  queries reuse the copy (bytes are counted once, when loaded). A new file version gets a
  new table, and making it drops the older versions' copies of that reference table (a query
  still running on an old copy, planned before the file changed, can then fail; rerun it).
  Every copy also carries a table expiration (`expires`, $SKYFED_REF_COPY_TTL_DAYS, default 7
  days), pushed forward when a process first uses it (then at most hourly): a copy nobody reads
  any more, e.g. of a reference table removed from the spec, is deleted by BigQuery. The local
  emulator ignores `expires` (it stores none), so there the explicit drop is what cleans up.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

BROADCAST_MAX_ROWS = int(os.environ.get("SKYFED_BROADCAST_MAX_ROWS", "100000"))
BROADCAST_MAX_BYTES = int(os.environ.get("SKYFED_BROADCAST_MAX_BYTES", str(16 * 1024 * 1024)))
DUCKDB_PREFIX = "_sf_ref_"
BIGQUERY_PREFIX = "_skyfed_ref_"


@dataclass(frozen=True)
class BroadcastTable:
    name: str
    path: str
    version: str  # short hash of the file's size and mtime
    rows: int
    bytes: int  # uncompressed bytes from the Parquet footer

    @property
    def bigquery_table(self) -> str:
        return f"{BIGQUERY_PREFIX}{self.name}_{self.version}"

    @property
    def duckdb_name(self) -> str:
        return f"{DUCKDB_PREFIX}{self.name}"


_STATS: dict[tuple[str, int, int], tuple[int, int, str]] = {}  # (path, size, mtime_ns) -> footer stats


def table_stats(path: str | os.PathLike[str]) -> tuple[int, int, str] | None:
    """(rows, uncompressed bytes, version) from the Parquet footer; None if the file is missing or unreadable.
    The footer is read once per file version (size + mtime): planning stats the file, nothing more."""
    try:
        st = Path(path).stat()
    except OSError:
        return None
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key in _STATS:
        return _STATS[key]
    try:
        meta = pq.read_metadata(path)
    except (OSError, pa.ArrowException):
        return None
    size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    version = hashlib.sha1(f"{st.st_size}-{st.st_mtime_ns}".encode()).hexdigest()[:12]
    if len(_STATS) > 1024:
        _STATS.clear()
    _STATS[key] = (meta.num_rows, size, version)
    return _STATS[key]


def broadcastable(paths: dict[str, str], max_rows: int = BROADCAST_MAX_ROWS,
                  max_bytes: int = BROADCAST_MAX_BYTES) -> dict[str, BroadcastTable]:  # fmt: skip
    """The reference tables small enough to copy to every region."""
    out: dict[str, BroadcastTable] = {}
    for name, path in paths.items():
        stats = table_stats(path)
        if stats is None:
            continue
        rows, size, version = stats
        if rows <= max_rows and size <= max_bytes:
            out[name] = BroadcastTable(name, str(path), version, rows, size)
    return out


_ARROW: dict[tuple[str, str], pa.Table] = {}
_LOCK = threading.Lock()


def arrow_of(table: BroadcastTable) -> pa.Table:
    """The reference table's rows (read once per process and file version)."""
    key = (table.path, table.version)
    with _LOCK:
        if key not in _ARROW:
            _ARROW[key] = pq.read_table(table.path)
        return _ARROW[key]


REF_COPY_TTL_DAYS = float(os.environ.get("SKYFED_REF_COPY_TTL_DAYS", "7"))
RECHECK_SECONDS = 3600.0
# (project, dataset, table) known to exist -> when that was checked (time.monotonic)
_LOADED: dict[tuple[str, str, str], float] = {}


def _expires() -> dt.datetime:
    return dt.datetime.now(dt.UTC) + dt.timedelta(days=REF_COPY_TTL_DAYS)


def bigquery_copy_exists(client: Any, project: str, dataset: str, table: BroadcastTable) -> bool:
    """Whether the dataset holds this version's copy (metadata only)."""
    from google.api_core.exceptions import NotFound

    if (project, dataset, table.bigquery_table) in _LOADED:
        return True
    try:
        client.get_table(f"{project}.{dataset}.{table.bigquery_table}")
        return True
    except NotFound:
        return False


def old_copies(client: Any, project: str, dataset: str, table: BroadcastTable) -> list[str]:
    """Table ids of this reference table's copies of other file versions in the dataset."""
    pattern = re.compile(rf"{re.escape(BIGQUERY_PREFIX + table.name)}_[0-9a-f]{{12}}")
    return [t.table_id for t in client.list_tables(f"{project}.{dataset}")
            if pattern.fullmatch(t.table_id) and t.table_id != table.bigquery_table]  # fmt: skip


def ensure_bigquery_copy(client: Any, project: str, dataset: str, location: str | None, table: BroadcastTable,
                         contract: Any) -> int:  # fmt: skip
    """Make sure the region's dataset holds this version of the reference table; bytes loaded (0 if it was there)."""
    from google.api_core.exceptions import NotFound
    from google.cloud import bigquery

    from skyfed.ingest.stores.bigquery import bigquery_type

    ref = f"{project}.{dataset}.{table.bigquery_table}"
    key = (project, dataset, table.bigquery_table)
    checked = _LOADED.get(key)
    if checked is not None and time.monotonic() - checked < RECHECK_SECONDS:
        return 0
    try:
        existing = client.get_table(ref)
        if existing.expires is None or existing.expires < _expires() - dt.timedelta(days=REF_COPY_TTL_DAYS / 2):
            existing.expires = _expires()  # in use: push its expiration forward
            client.update_table(existing, ["expires"])
        _LOADED[key] = time.monotonic()
        return 0
    except NotFound:
        pass
    schema = []
    for name, col in contract.columns.items():
        typ, precision, scale = bigquery_type(col.type)
        schema.append(bigquery.SchemaField(name, typ, "NULLABLE", precision=precision, scale=scale))
    config = bigquery.LoadJobConfig(source_format="PARQUET", write_disposition="WRITE_TRUNCATE", schema=schema)
    with open(table.path, "rb") as fh:
        job = client.load_table_from_file(fh, ref, job_config=config, location=location)
    job.result()
    loaded = client.get_table(ref)
    loaded.expires = _expires()
    client.update_table(loaded, ["expires"])
    for old in old_copies(client, project, dataset, table):  # a new file version: the older copies are garbage
        client.delete_table(f"{project}.{dataset}.{old}", not_found_ok=True)
        _LOADED.pop((project, dataset, old), None)
    _LOADED[key] = time.monotonic()
    return Path(table.path).stat().st_size
