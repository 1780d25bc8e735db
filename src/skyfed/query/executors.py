"""Region executors: run one region's SQL where the data lives and return Arrow.

One small interface (`RegionExecutor.run` / `cancel`), one implementation per engine:

- `DuckDBIcebergExecutor`: DuckDB with the iceberg extension (loaded offline through
  skyfed.connectors.duck) over `iceberg_scan(<current metadata.json>)`, one view per
  table named `<region>.<table>`. DuckDB pushes projections and filters into the scan
  (partition and file pruning from manifest statistics) and aggregates in C++; only
  the result becomes Arrow. The metadata location is taken from the SQL catalog at
  run time, so a query reads one consistent snapshot per table. A table scanned again at the same
  snapshot is copied (its hot columns, compressed) into the shared DuckDB and the view points at
  the copy (the region scan cache, scan_cache.py); `RegionRun.scan_cache` says per table hit,
  fill, miss or bypass.
- `BigQueryExecutor`: the official client runs the region's SQL as a query job in the
  dataset's location; the result comes back as Arrow (`create_bqstorage_client=False`,
  since the emulator cannot Storage-Read query results).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import duckdb
import pyarrow as pa

from skyfed.connectors import duck
from skyfed.errors import SkyfedError
from skyfed.query.scan_cache import BACKGROUND, ScanCache, columns_used, fill_in_background
from skyfed.spec.models import BigQueryStore, IcebergStore, PlatformSpec, Region


@dataclass
class RegionRun:
    """What one region returned for one fragment."""

    table: pa.Table
    seconds: float
    bytes_scanned: int | None = None
    snapshots: dict[str, Any] = field(default_factory=dict)  # table -> snapshot id read
    broadcast_bytes: int = 0  # reference-table bytes copied into the region for this run
    # seconds per phase of this run (duckdb: catalog, setup, execute, fetch; bigquery: client, broadcast,
    # submit, wait, fetch): what the region's time was spent on, for the report and the benchmark
    phases: dict[str, float] = field(default_factory=dict)
    # the region scan cache's decision per Iceberg table read (scan_cache.py): hit | fill | miss | bypass[: why]
    scan_cache: dict[str, str] = field(default_factory=dict)


class RegionExecutor(Protocol):
    region: str
    engine: str

    def run(self, sql: str, tables: list[str], timeout: float) -> RegionRun: ...

    def cancel(self) -> None: ...


def duckdb_session(con: Any) -> None:
    """Settings every DuckDB in a query shares, so regions and coordinator agree (time zone!)."""
    con.execute("SET TimeZone = 'UTC'")


_SHARED: dict[str, Any] = {}
_SHARED_LOCK = threading.Lock()
_REGION_LOCKS: dict[str, threading.Lock] = {}


def _shared_duckdb() -> tuple[Any, threading.Lock]:
    """One DuckDB database per process with iceberg loaded (LOAD takes ~0.4 s, so it is done once)."""
    with _SHARED_LOCK:
        if "db" not in _SHARED:
            con = duck.connect(["avro", "iceberg"])  # iceberg needs avro installed (it would autoinstall it)
            duckdb_session(con)
            _SHARED["db"] = con
        return _SHARED["db"], _SHARED_LOCK


def _region_lock(region: str) -> threading.Lock:
    with _SHARED_LOCK:
        return _REGION_LOCKS.setdefault(region, threading.Lock())


# copies of hot Iceberg snapshots in the shared DuckDB, filled and read under the per-region locks
SCAN_CACHE = ScanCache(_region_lock)


def _fill_in_background(region: str, jobs: list[tuple[str, str, Any, Any]]) -> None:
    """Fill the queued copies in a thread, under the region's lock, after the run that asked was answered.

    The next run of the region waits for the lock (as it would behind any run); the other
    regions do not. A copy whose table moved on in between is not made (the next scans decide
    again); a failed fill leaves nothing and is kept in `SCAN_CACHE.last_fill_error`.
    """

    def work() -> None:
        base, _ = _shared_duckdb()
        for name, location, snapshot_id, decision in jobs:
            try:
                with _region_lock(region):
                    con = base.cursor()
                    try:
                        SCAN_CACHE.fill_queued(con, decision, region, name, location, snapshot_id)
                    finally:
                        con.close()
            except Exception as exc:  # noqa: BLE001 - a background fill must not kill the process; queries read the files
                SCAN_CACHE.last_fill_error = f"{region}.{name}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            finally:
                SCAN_CACHE.pending_done(region, name, location)

    SCAN_CACHE.start(threading.Thread(target=work, daemon=True, name=f"skyfed-scan-cache-{region}"))


def clear_scan_cache() -> None:
    """Drop every region scan cache copy of this process (between queries: tests, benchmarks)."""
    SCAN_CACHE.wait_for_fills()  # a fill still running would add a copy after the clear
    base, _ = _shared_duckdb()
    con = base.cursor()
    try:
        SCAN_CACHE.clear(con)
    finally:
        con.close()


_ATTACHED: dict[str, str] = {}  # postgres sources ATTACHed in the shared DuckDB: name -> DSN
# what each `<region>.<table>` view of the shared DuckDB points at (metadata location, "empty:<location>"
# for a table never committed): a view is re-created only when its table got a new snapshot (binding iceberg_scan costs 5-15 ms)
_VIEWS: dict[tuple[str, str], str] = {}
# Iceberg stores (SQL catalog + SQLAlchemy engine) and BigQuery clients, one per process and target:
# opening either costs milliseconds to a quarter second per query; the snapshot is still read per run
_STORES: dict[tuple[str, ...], Any] = {}
_CLIENTS: dict[tuple[str, ...], Any] = {}


def iceberg_store(region: str, store: IcebergStore) -> Any:
    """The process's IcebergCuratedStore for a region (keyed by warehouse and metadata database URL)."""
    from skyfed.catalog import metadata as metadata_db
    from skyfed.ingest.stores.iceberg import IcebergCuratedStore

    key = (region, str(store.warehouse), metadata_db.metadata_url(None))
    with _SHARED_LOCK:
        found = _STORES.get(key)
    if found is None:
        found = IcebergCuratedStore(region, store)
        with _SHARED_LOCK:
            found = _STORES.setdefault(key, found)
    return found


def forget_iceberg_store(region: str, store: IcebergStore) -> None:
    """Drop a cached store (after an error, the next run opens the catalog again)."""
    from skyfed.catalog import metadata as metadata_db

    with _SHARED_LOCK:
        _STORES.pop((region, str(store.warehouse), metadata_db.metadata_url(None)), None)


def bigquery_client(target: Any) -> Any:
    """The process's BigQuery client for a store or source spec (its HTTP session and connection are reused)."""
    import hashlib

    from skyfed.ingest.stores.bigquery import (
        _client,  # one way to build a client for a store spec
    )

    creds = getattr(target, "credentials_json", None)
    secret = hashlib.sha256(creds.reveal().encode()).hexdigest() if creds is not None else ""
    key = (str(target.project), str(target.location), str(getattr(target, "endpoint", None) or ""), secret)
    with _SHARED_LOCK:
        found = _CLIENTS.get(key)
    if found is None:
        found = _client(target)
        with _SHARED_LOCK:
            found = _CLIENTS.setdefault(key, found)
    return found


def _attach_postgres(base: Any, name: str, dsn: str) -> None:
    """ATTACH a PostgreSQL database READ_ONLY in the shared DuckDB once per process (the postgres extension, offline)."""
    with _SHARED_LOCK:
        if _ATTACHED.get(name) == dsn:
            return
        if not _SHARED.get("postgres_loaded"):
            duck.load(base, "postgres")
            _SHARED["postgres_loaded"] = True
        if name in _ATTACHED:
            base.execute(f'DETACH "{name}"')
        quoted = dsn.replace("'", "''")
        base.execute(f"ATTACH '{quoted}' AS \"{name}\" (TYPE postgres, READ_ONLY)")
        _ATTACHED[name] = dsn


class DuckDBIcebergExecutor:
    """Views `<region>.<table>` over iceberg_scan in a shared DuckDB; one run per region at a time.

    Live tables of the region are read by the same DuckDB: PostgreSQL databases ATTACHed
    READ_ONLY as `<region>__<source>` (the scanner pushes projections and filters into
    PostgreSQL), files tables read through the files connector and registered as Arrow.
    """

    engine = "duckdb"

    def __init__(self, region: str, store: IcebergStore | None, spec: PlatformSpec | None = None,
                 live: dict[str, Any] | None = None):  # fmt: skip
        self.region = region
        self.store_spec = store
        self.spec = spec
        self.live = live or {}
        self.broadcast: dict[str, Any] = {}  # reference name -> (BroadcastTable, contract), set per run
        self.keys: dict[str, pa.Table] = {}  # semi-join keys shipped into the region: relation name -> keys
        self.file_reads: dict[str, Any] = {}  # live files table -> pushed columns and filters (RegionQuery.file_reads)
        self._con: Any = None

    def run(self, sql: str, tables: list[str], timeout: float) -> RegionRun:
        started = time.perf_counter()
        store = iceberg_store(self.region, self.store_spec) if self.store_spec is not None and any(
            t not in self.live for t in tables) else None  # fmt: skip
        base, _ = _shared_duckdb()
        for name in tables:
            live = self.live.get(name)
            if live is not None and live.kind == "postgres":
                from skyfed.query.live import postgres_dsn

                _attach_postgres(base, live.ref[0], postgres_dsn(self.spec, live))
        later: list[tuple[str, str, Any, Any]] = []  # copies to fill once this run is answered
        with _region_lock(self.region):
            con = base.cursor()
            self._con = con
            try:
                return self._run(con, store, sql, tables, started, later)
            except Exception:
                if store is not None:  # a stale cached catalog must not stick: reopen it on the next run
                    forget_iceberg_store(self.region, self.store_spec)  # type: ignore[arg-type]
                raise
            finally:
                self._con = None
                con.close()
                if later:
                    _fill_in_background(self.region, later)

    def _run(self, con: Any, store: Any, sql: str, tables: list[str], started: float,
             later: list[tuple[str, str, Any, Any]]) -> RegionRun:  # fmt: skip
        from skyfed.query.broadcast import arrow_of

        phases = {"catalog": 0.0}
        duckdb_session(con)
        con.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.region}"')
        snapshots: dict[str, Any] = {}
        cached: dict[str, str] = {}
        sent = 0
        for info, _contract in self.broadcast.values():  # the reference copies this query joins with
            data = arrow_of(info)
            con.register(info.duckdb_name, data)
            sent += data.nbytes
        for name, keys in self.keys.items():
            con.register(name, keys)
        used: dict[str, frozenset[str]] | None = None
        parquet: dict[str, str] = {}  # table -> metadata location, for the views read from a copy
        slower = SCAN_CACHE.slower(self.region, sql)  # measured slower on copies: the files, without asking
        reading_copies: list[str] = []  # relations of the copies this run reads (never evicted by its own fills)
        for name in tables:
            live = self.live.get(name)
            if live is not None:
                snapshots[name] = "live"
                if live.kind == "gcs":
                    from skyfed.query.live import read_files_table

                    read = self.file_reads.get(name) or {}
                    data, _skipped = read_files_table(self.spec, live, read.get("columns"), read.get("filters"))
                    con.register(live.name, data)
                continue
            t0 = time.perf_counter()
            table = store._table(name)  # the catalog row and metadata.json: the current snapshot, every run
            snap = table.current_snapshot()
            phases["catalog"] += time.perf_counter() - t0
            snapshots[name] = snap.snapshot_id if snap else None
            view = (self.region, name)
            if snap is None:  # created but never committed: an empty table of the contract's shape
                if _VIEWS.get(view) != "empty:" + table.metadata_location:  # a schema change writes new metadata
                    empty = table.schema().as_arrow().empty_table()
                    cols = ", ".join(f'CAST(NULL AS {_duck_type(f.type)}) AS "{f.name}"' for f in empty.schema)
                    con.execute(f'CREATE OR REPLACE VIEW "{self.region}"."{name}" AS SELECT {cols} WHERE false')
                    _VIEWS[view] = "empty:" + table.metadata_location
                continue
            if used is None:
                used = columns_used(sql, self.region, [t for t in tables if t not in self.live]) or {}
            target = None
            if slower is not None:
                cached[name] = "bypass: " + slower
            else:
                target = self._scan_cache(con, name, table, snap, used.get(name) if used else None, cached, phases,
                                          list(reading_copies), later)  # fmt: skip
            if target is not None:
                reading_copies.append(target)
                parquet[name] = table.metadata_location
                self._point(con, name, "copy:" + target, f"SELECT * FROM {target}")
            else:
                location = table.metadata_location.replace("'", "''")
                self._point(con, name, table.metadata_location, f"SELECT * FROM iceberg_scan('{location}')")
        t0 = time.perf_counter()
        phases["setup"] = t0 - started - phases["catalog"] - phases.get("fill", 0.0)
        try:
            cursor = con.execute(sql)
        except (duckdb.BinderException, duckdb.CatalogException) as exc:
            if not parquet:
                raise
            # never a wrong answer, nor a new error: the copy lacks something the SQL reads: run it on the files
            for name, location in parquet.items():
                quoted = location.replace("'", "''")
                self._point(con, name, location, f"SELECT * FROM iceberg_scan('{quoted}')")
                cached[name] = f"bypass: the copy cannot answer this SQL ({type(exc).__name__})"
            t0 = time.perf_counter()
            cursor = con.execute(sql)
        t1 = time.perf_counter()
        result = cursor.to_arrow_table()
        t2 = time.perf_counter()
        phases.update(execute=t1 - t0, fetch=t2 - t1)
        states = {s.split(":")[0] for s in cached.values()}
        if states and states <= {"hit", "fill"}:
            SCAN_CACHE.record(self.region, sql, "copy", t2 - t0)
        elif states and not states & {"hit", "fill"}:
            SCAN_CACHE.record(self.region, sql, "files", t2 - t0)
        return RegionRun(result, t2 - started, None, snapshots, sent, phases, cached)

    def _point(self, con: Any, name: str, target: str, body: str) -> None:
        """(Re-)create the view `<region>.<name>` when it points elsewhere (binding iceberg_scan costs 5-15 ms)."""
        view = (self.region, name)
        if _VIEWS.get(view) != target:
            con.execute(f'CREATE OR REPLACE VIEW "{self.region}"."{name}" AS {body}')
            _VIEWS[view] = target

    def _scan_cache(self, con: Any, name: str, table: Any, snap: Any, used: frozenset[str] | None,
                    cached: dict[str, str], phases: dict[str, float], reading: list[str],
                    later: list[tuple[str, str, Any, Any]]) -> str | None:  # fmt: skip
        """The copy's relation when this run reads `name` from the scan cache (a hit, or a fill now), else None.
        In background mode a fill is queued in `later` and this run reads the files."""
        total = snap.summary.get("total-records") if snap.summary is not None else None
        rows = int(total) if total is not None else None
        location = table.metadata_location
        committed_at = snap.timestamp_ms / 1000 if getattr(snap, "timestamp_ms", None) else None
        decision = SCAN_CACHE.decide(con, self.region, name, location, snap.snapshot_id, used,
                                     table.schema().as_arrow(), rows, committed_at)  # fmt: skip
        if decision.state == "fill" and fill_in_background():
            SCAN_CACHE.pending(self.region, name, location)
            later.append((name, location, snap.snapshot_id, decision))
            cached[name] = "miss: " + BACKGROUND
            return None
        if decision.state == "fill":
            t0 = time.perf_counter()
            try:
                keep = frozenset(c.split('"')[1] for c in reading)  # copies this run already reads stay
                copy = SCAN_CACHE.fill(con, decision, self.region, name, location, snap.snapshot_id, keep)
            except duckdb.InterruptException:
                raise
            except duckdb.Error as exc:  # e.g. out of memory: the query still runs, on the files
                copy = None
                decision.reason = f"fill failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
            phases["fill"] = phases.get("fill", 0.0) + time.perf_counter() - t0
            if copy is None:
                decision.state = "bypass"
                decision.reason = decision.reason if decision.reason.startswith("fill failed") else \
                    "budget full: the copies to evict are in use"  # fmt: skip
            decision.copy = copy
        cached[name] = decision.label()
        if decision.state in ("hit", "fill") and decision.copy is not None:
            return decision.copy.relation
        return None

    def cancel(self) -> None:
        con = self._con
        if con is not None:
            try:
                con.interrupt()
            except Exception:  # noqa: BLE001 - best effort
                pass


class BigQueryExecutor:
    """A query job in the location of the dataset it reads: the region's store, or a live BigQuery source."""

    engine = "bigquery"

    def __init__(self, region: str, store: Any, spec: PlatformSpec | None = None, live: dict[str, Any] | None = None):
        self.region = region
        self.store_spec = store
        self.spec = spec
        self.live = live or {}
        self.broadcast: dict[str, Any] = {}  # reference name -> (BroadcastTable, contract), set per run
        self._job: Any = None

    def run(self, sql: str, tables: list[str], timeout: float) -> RegionRun:
        from google.api_core.retry import Retry
        from google.cloud import bigquery

        started = time.perf_counter()
        target = self.store_spec
        lives = [self.live[t] for t in tables if t in self.live]
        if lives and len(lives) == len(tables) and len({(x.source) for x in lives}) == 1:
            from skyfed.query.live import live_source_spec

            target = live_source_spec(self.spec, lives[0])  # a BigQuery source dataset: a job in its location
        if target is None:
            raise SkyfedError(f"region {self.region}: no BigQuery dataset to run this part in")
        client = bigquery_client(target)
        t_client = time.perf_counter()
        sent = 0
        if self.broadcast:
            from skyfed.query.broadcast import ensure_bigquery_copy

            for info, contract in self.broadcast.values():
                sent += ensure_bigquery_copy(client, target.project, target.dataset, target.location, info, contract)
        retry = Retry(deadline=max(1.0, min(timeout, 60.0)))
        config = bigquery.QueryJobConfig(use_legacy_sql=False)
        t_submit = time.perf_counter()
        job = client.query(sql, job_config=config, location=target.location, retry=retry,
                           timeout=timeout, job_retry=None)  # fmt: skip
        self._job = job
        t_wait = time.perf_counter()
        rows = job.result(timeout=timeout, retry=retry)
        t_fetch = time.perf_counter()
        table = rows.to_arrow(create_bqstorage_client=False)
        done = time.perf_counter()
        scanned = getattr(job, "total_bytes_processed", None)
        phases = {"client": t_client - started, "broadcast": t_submit - t_client, "submit": t_wait - t_submit,
                  "wait": t_fetch - t_wait, "fetch": done - t_fetch}  # fmt: skip
        return RegionRun(table, done - started, scanned, {t: "live" for t in tables if t in self.live}, sent, phases)

    def cancel(self) -> None:
        job = self._job
        if job is not None:
            try:
                job.cancel()
            except Exception:  # noqa: BLE001 - best effort
                pass


def _duck_type(t: pa.DataType) -> str:
    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ" if t.tz else "TIMESTAMP"
    return {"string": "VARCHAR", "large_string": "VARCHAR", "int32": "INTEGER", "int64": "BIGINT", "double": "DOUBLE",
            "bool": "BOOLEAN", "date32[day]": "DATE"}.get(str(t), "VARCHAR")  # fmt: skip


def executor_for(region_name: str, region: Region, engine: str | None = None, spec: PlatformSpec | None = None,
                 live: dict[str, Any] | None = None) -> RegionExecutor:  # fmt: skip
    """The executor for one region's part: `engine` (duckdb | bigquery) defaults to the store's."""
    store = region.store
    if engine is None:
        engine = "duckdb" if isinstance(store, IcebergStore) else "bigquery" if isinstance(store, BigQueryStore) else None
    if engine == "duckdb":
        return DuckDBIcebergExecutor(region_name, store if isinstance(store, IcebergStore) else None, spec, live)
    if engine == "bigquery":
        return BigQueryExecutor(region_name, store if isinstance(store, BigQueryStore) else None, spec, live)
    raise SkyfedError(f"region {region_name}: no query executor for store kind {store.kind!r}")


def executors(spec: PlatformSpec) -> dict[str, RegionExecutor]:
    return {name: executor_for(name, region) for name, region in spec.regions.items()}


# --------------------------------------------------------------------------- table versions (for the result cache)


def table_versions(region_name: str, region: Region, tables: list[str], timeout: float = 10.0) -> dict[str, Any]:
    """The version each of `tables` is at in the region's store, without reading data.

    Iceberg: the current snapshot id (the SQL catalog row and the metadata.json, no manifests).
    BigQuery: the id of the table's last commit in `_skyfed_commits` (one small query job,
    retried for at most `timeout` seconds, so a dead endpoint fails fast).
    """
    store = region.store
    if isinstance(store, IcebergStore):
        ice = iceberg_store(region_name, store)
        out: dict[str, Any] = {}
        for name in tables:
            snap = ice._table(name).current_snapshot()
            out[name] = snap.snapshot_id if snap else None
        return out
    if isinstance(store, BigQueryStore):
        from google.api_core.retry import Retry

        from skyfed.ingest.stores.bigquery import COMMITS_TABLE

        client = bigquery_client(store)
        ref = f"`{store.project}.{store.dataset}.{COMMITS_TABLE}`"
        names = ", ".join("'" + t.replace("'", "") + "'" for t in sorted(set(tables)))  # contract names (spec Name)
        sql = (
            f"SELECT c.contract, c.commit_id FROM {ref} c JOIN (SELECT contract, MAX(seq) AS seq FROM {ref} "
            f"WHERE contract IN ({names}) GROUP BY contract) m ON c.contract = m.contract AND c.seq = m.seq"
        )
        retry = Retry(deadline=max(1.0, timeout))
        job = client.query(sql, location=store.location, retry=retry, timeout=timeout, job_retry=None)
        found = {row[0]: row[1] for row in job.result(timeout=timeout, retry=retry)}
        return {name: found.get(name) for name in tables}
    raise SkyfedError(f"region {region_name}: no version lookup for store kind {store.kind!r}")
