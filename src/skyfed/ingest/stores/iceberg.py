"""Iceberg curated store: pyiceberg tables in a SQL catalog, data files in the region's warehouse.

One namespace per region, one table per contract plus `quarantine`. A commit is one
Iceberg transaction: copy-on-write upsert (rewrite the data files that hold keys
being replaced, add the new rows) and the mapping's source position in the snapshot
summary properties, all published by a single compare-and-swap of the table's
metadata pointer in the catalog database. Files written before the swap are
unreferenced until it happens, so a crash leaves the old state (plus orphan files)
or the new one, never half. Orphans of the DuckDB write path are removed by the next
commit on the table (iceberg_files.WriteDir / remove_abandoned).
"""

from __future__ import annotations

import itertools
import json
import os
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from skyfed.catalog import metadata as metadata_db
from skyfed.errors import SkyfedError
from skyfed.governance import evolution
from skyfed.home import state_dir
from skyfed.ingest.stores.base import (
    QUARANTINE_KEY,
    QUARANTINE_PARTITION,
    QUARANTINE_SCHEMA,
    QUARANTINE_TABLE,
    CommitResult,
    check_contract_name,
    check_unique,
    chunks,
    parse_partition,
    conform,
    crash_point,
    delete_keys,
    position_json,
    quarantine_rows,
    sort_by_key,
    table_schema,
)
from skyfed.spec.models import Contract, IcebergStore

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")  # else gcsfs probes gRPC for 60 s per call

from pyiceberg.catalog.sql import SqlCatalog  # noqa: E402
from pyiceberg.exceptions import (  # noqa: E402
    CommitFailedException,
    NamespaceAlreadyExistsError,
    NoSuchTableError,
    TableAlreadyExistsError,
)
from pyiceberg.expressions import AlwaysTrue, And, BooleanExpression, In  # noqa: E402
from pyiceberg.io import FileIO  # noqa: E402
from pyiceberg.io.pyarrow import ArrowScan, _check_pyarrow_schema_compatible, _dataframe_to_data_files  # noqa: E402
from pyiceberg.table import DataScan, Table, Transaction  # noqa: E402
from pyiceberg.table.metadata import TableMetadata  # noqa: E402
from pyiceberg.table.refs import MAIN_BRANCH  # noqa: E402
from pyiceberg.table.snapshots import Operation  # noqa: E402
from pyiceberg.table.update.snapshot import _OverwriteFiles  # noqa: E402

from skyfed.ingest.stores import iceberg_files as files_mod  # noqa: E402
from pyiceberg.transforms import (  # noqa: E402
    DayTransform,
    HourTransform,
    MonthTransform,
    Transform,
    YearTransform,
)
from pyiceberg.types import (  # noqa: E402
    BooleanType,
    DateType,
    DecimalType,
    DoubleType,
    IcebergType,
    IntegerType,
    LongType,
    StringType,
    TimestampType,
    TimestamptzType,
)

CATALOG_NAME = "skyfed"
PROP_CONTRACT = "skyfed.contract"  # table property: the contract JSON the table was last ensured with
PROP_KEY = "skyfed.key"  # table property: JSON list of key columns
PROP_BODY = "skyfed.contract_body"  # table property: canonical contract body (with field ids) of the table's shape
PROP_VERSION = "skyfed.contract_version"  # table property: registry version of that body ("" if unregistered)
SNAP_RUN = "skyfed.run_id"  # snapshot summary: marks a skyfed commit
SNAP_MAPPING = "skyfed.mapping"
SNAP_OPERATION = "skyfed.operation"  # upsert | replace | quarantine
SNAP_WRITE_DIR = "skyfed.write_dir"  # snapshot summary: the WriteDir folder whose files this commit added
SNAP_POSITION = "skyfed.position."  # + mapping name: JSON position; every mapping's is carried forward
CHUNK_ROWS = 500_000  # a RecordBatchReader is committed in chunks of this many rows (memory bound)
SMALL_FILE_ROWS = 50_000  # a file under this many rows counts as small (micro-batches write such files)
SMALL_FILES_MAX = 16  # more small files than this are folded into the next rewrite
IN_PRUNE_LIMIT = 200  # pyiceberg's metrics evaluator gives up on IN lists longer than this
COMMIT_ATTEMPTS = 5

_TRANSFORMS: dict[str, type[Transform[Any, Any]]] = {
    "year": YearTransform,
    "month": MonthTransform,
    "day": DayTransform,
    "hour": HourTransform,
}


def iceberg_type(type_name: str) -> IcebergType:
    """The Iceberg type of a canonical column type."""
    simple: dict[str, IcebergType] = {
        "string": StringType(),
        "int32": IntegerType(),
        "int64": LongType(),
        "double": DoubleType(),
        "bool": BooleanType(),
        "date": DateType(),
        "timestamp": TimestampType(),
        "timestamptz": TimestamptzType(),
    }
    if type_name in simple:
        return simple[type_name]
    if type_name.startswith("decimal("):
        p, s = type_name[len("decimal(") : -1].split(",")
        return DecimalType(int(p), int(s))
    raise SkyfedError(f"the column type {type_name!r} has no Iceberg equivalent")


class _Catalog(SqlCatalog):
    """SqlCatalog with a crash hook between writing metadata.json and swapping the catalog pointer."""

    @staticmethod
    def _write_metadata(metadata: TableMetadata, io: FileIO, metadata_path: str) -> None:  # type: ignore[override]
        SqlCatalog._write_metadata(metadata, io, metadata_path)
        crash_point("iceberg.after_metadata")


class IcebergCuratedStore:
    """A region's Iceberg tables (see the module docstring for the commit protocol)."""

    kind = "iceberg"

    def __init__(
        self, region: str, spec: IcebergStore, metadata_url: str | None = None, *, parquet: dict[str, str] | None = None
    ):
        """`parquet`: the tables' Parquet writer properties (default files_mod.PARQUET_PROPERTIES; benchmarks vary it)."""
        self.region = region
        self.parquet = dict(files_mod.PARQUET_PROPERTIES if parquet is None else parquet)
        self.url = metadata_db.prepare(metadata_db.metadata_url(metadata_url))
        self.warehouse = _warehouse(spec.warehouse)
        props: dict[str, str] = {"uri": self.url, "warehouse": self.warehouse, "init_catalog_tables": "true"}
        if self.warehouse.startswith("gs://"):
            props.update(_gcs_properties())
        try:
            self.catalog = _Catalog(CATALOG_NAME, **props)
            try:
                self.catalog.create_namespace(region, {"location": f"{self.warehouse}/{region}"})
            except NamespaceAlreadyExistsError:
                pass
        except SkyfedError:
            raise
        except Exception as exc:  # sqlalchemy and driver errors: name the database
            raise SkyfedError(
                f"cannot open the Iceberg catalog in the metadata database {metadata_db.redact(self.url)}: {exc}",
                f"check {metadata_db.ENV_VAR} (unset means the SQLite file under the state folder)",
            ) from exc
        self._schemas: dict[str, tuple[pa.Schema, list[str]]] = {}

    def __repr__(self) -> str:
        return f"IcebergCuratedStore(region={self.region!r}, warehouse={self.warehouse!r})"

    # ------------------------------------------------------------------ tables

    def ensure_table(self, contract_name: str, contract: Contract) -> None:
        check_contract_name(contract_name)
        self._ensure(contract_name, table_schema(contract), list(contract.key), contract.partition_by, contract)

    def _ensure(
        self,
        name: str,
        schema: pa.Schema,
        key: list[str],
        partition_by: str | None,
        contract: Contract | None,
    ) -> Table:
        ident = (self.region, name)
        types = _column_types(contract) if contract else _quarantine_types()
        props = {**self.parquet, PROP_KEY: json.dumps(key)}
        if contract is not None:
            props[PROP_CONTRACT] = contract.model_dump_json(by_alias=True)
        try:
            table = self.catalog.load_table(ident)
        except NoSuchTableError:
            if contract is not None:
                _, body, version = evolution.table_bodies(name, contract, None, contract, None)
                props.update({PROP_BODY: json.dumps(body), PROP_VERSION: str(version or "")})
            table = self._create(ident, schema, key, partition_by, types, props)
        else:
            if contract is not None and (PROP_BODY in table.properties or PROP_CONTRACT in table.properties):
                table = self._evolve_contract(name, table, contract, props)
            else:
                table = self._evolve(table, schema, types, props)
        self._schemas[name] = (schema, key)
        return table

    def _evolve_contract(self, name: str, table: Table, contract: Contract, props: dict[str, str]) -> Table:
        """Evolve a contract table in place by field id (skyfed.governance.evolution): no data rewrite.

        The old shape is the body stored with the table; the new one the registry's (or
        the contract's with the governance file's renames), so a declared rename keeps
        its column's data. A change no table can take in place is refused here even if
        the registry check was skipped.
        """
        from skyfed.governance.config import governance_for

        what = f"table {self.region}.{name}"
        raw_body = table.properties.get(PROP_BODY)
        stored = Contract.model_validate_json(table.properties[PROP_CONTRACT]) if PROP_CONTRACT in table.properties else None
        settings = governance_for().contracts.get(name)
        old, new, version = evolution.table_bodies(
            name, contract, json.loads(raw_body) if raw_body else None, stored, settings.renames if settings else None
        )
        refused = evolution.refusals(old, new)
        if refused:
            raise SkyfedError(
                f"{what}: the contract change cannot be applied in place: {'; '.join(refused)}",
                "keep or widen the type and keep the key; or publish a new contract (NAME_v2), "
                "or set compatibility NONE and rebuild the table",
            )
        stored_names = {f.name for f in table.schema().fields}
        missing = [n for n in old["columns"] if n not in stored_names]
        if missing:
            raise SkyfedError(
                f"{what}: the stored contract names column(s) {', '.join(missing)} that the table does not have",
                "the table was changed outside skyfed; rebuild it",
            )
        ops = evolution.plan(old, new)
        clash = [op.column for op in ops if op.action == "add" and op.column in stored_names]
        if clash:
            raise SkyfedError(
                f"{what}: new column(s) {', '.join(clash)} reuse the name of a dropped column still in storage",
                "choose another name, or declare a rename (renames: {new: old}) if it is the same column",
            )
        props = {**props, PROP_BODY: json.dumps(new), PROP_VERSION: str(version or "")}
        changed = {k: v for k, v in props.items() if table.properties.get(k) != v}
        if not changed and all(op.action == "keep_dropped" for op in ops):
            return table
        tx = table.transaction()
        evolution.evolve_iceberg(tx, old, new)
        if changed:
            tx.set_properties(changed)
        try:
            return tx.commit_transaction()
        except CommitFailedException:  # someone evolved it concurrently: take theirs
            return self.catalog.load_table(table.name())

    def _create(
        self,
        ident: tuple[str, str],
        schema: pa.Schema,
        key: list[str],
        partition_by: str | None,
        types: dict[str, str],
        props: dict[str, str],
    ) -> Table:
        from pyiceberg.schema import Schema
        from pyiceberg.types import NestedField

        fields = [
            NestedField(
                field_id=i + 1,
                name=f.name,
                field_type=_iceberg_field_type(f, types),
                required=not f.nullable,
                doc=(f.metadata or {}).get(b"description", b"").decode() or None,
            )
            for i, f in enumerate(schema)
        ]
        ice_schema = Schema(*fields)
        part = parse_partition(partition_by, schema.names)
        try:
            tx = self.catalog.create_table_transaction(
                ident, schema=ice_schema, location=f"{self.warehouse}/{ident[0]}/{ident[1]}", properties=props
            )
            if part:
                transform, column = part
                with tx.update_spec() as spec:
                    if transform == "identity":
                        spec.add_identity(column)
                    else:
                        spec.add_field(column, _TRANSFORMS[transform](), f"{column}_{transform}")
            if key and all(not schema.field(k).nullable for k in key):
                with tx.update_schema() as upd:
                    upd.set_identifier_fields(*key)
            return tx.commit_transaction()
        except TableAlreadyExistsError:  # a concurrent writer created it first
            return self.catalog.load_table(ident)

    def _evolve(self, table: Table, schema: pa.Schema, types: dict[str, str], props: dict[str, str]) -> Table:
        current = {f.name: f for f in table.schema().fields}
        new = [f for f in schema if f.name not in current]
        changed = {k: v for k, v in props.items() if table.properties.get(k) != v}
        for f in schema:
            if f.name in current:
                want = _iceberg_field_type(f, types)
                have = current[f.name].field_type
                if not _same_type(want, have) and not _promotable(have, want):
                    raise SkyfedError(
                        f"table {self.region}.{table.name()[-1]}: column {f.name} is {have} in the store but "
                        f"{want} in the contract, and Iceberg cannot change it in place",
                        "keep the type, or add a new column and a new contract version",
                    )
        if not new and not changed and all(_same_type(_iceberg_field_type(f, types), current[f.name].field_type) for f in schema):
            return table
        tx = table.transaction()
        with tx.update_schema() as upd:
            for f in schema:
                if f.name in current and not _same_type(_iceberg_field_type(f, types), current[f.name].field_type):
                    upd.update_column(f.name, field_type=_iceberg_field_type(f, types))  # type: ignore[arg-type]
            for f in new:
                # Existing rows have no value: new columns are optional in storage even if the contract
                # says required (quality rules still check the rows loaded from now on).
                doc = (f.metadata or {}).get(b"description", b"").decode() or None
                upd.add_column(f.name, _iceberg_field_type(f, types), doc=doc, required=False)
        if changed:
            tx.set_properties(changed)
        try:
            return tx.commit_transaction()
        except CommitFailedException:  # someone evolved it concurrently: take theirs if it fits
            return self.catalog.load_table(table.name())

    def table_names(self) -> list[str]:
        return sorted(
            ident[-1]
            for ident in self.catalog.list_tables(self.region)
            if ident[-1] != QUARANTINE_TABLE and not ident[-1].startswith("_")
        )

    def _table(self, name: str) -> Table:
        try:
            return self.catalog.load_table((self.region, name))
        except NoSuchTableError:
            raise SkyfedError(
                f"the curated table {self.region}.{name} does not exist",
                "run `skyfed ingest` for a source that maps to it first",
            ) from None

    def _schema_and_key(self, name: str, table: Table) -> tuple[pa.Schema, list[str]]:
        if name in self._schemas:
            return self._schemas[name]
        if name == QUARANTINE_TABLE:
            return QUARANTINE_SCHEMA, QUARANTINE_KEY
        raw = table.properties.get(PROP_CONTRACT)
        if raw:
            contract = Contract.model_validate_json(raw)
            return table_schema(contract), list(contract.key)
        return table.schema().as_arrow(), json.loads(table.properties.get(PROP_KEY, "[]"))

    # ------------------------------------------------------------------ reads

    def snapshot_id(self, contract_name: str) -> int | None:
        snap = self._table(contract_name).current_snapshot()
        return snap.snapshot_id if snap else None

    def row_count(self, contract_name: str) -> int:
        return _total_records(self._table(contract_name).current_snapshot())

    def read(self, contract_name: str, snapshot_id: int | str | None = None) -> pa.Table:
        table = self._table(contract_name)
        schema, key = self._schema_and_key(contract_name, table)
        if snapshot_id is not None and table.snapshot_by_id(int(snapshot_id)) is None:
            raise SkyfedError(f"table {self.region}.{contract_name} has no snapshot {snapshot_id}")
        scan = table.scan(snapshot_id=int(snapshot_id) if snapshot_id is not None else None)
        # An earlier snapshot is read in the current schema (columns matched by field id), so a
        # renamed column has its old values under its new name.
        data = ArrowScan(table.metadata, table.io, table.schema(), AlwaysTrue()).to_table(scan.plan_files())
        return sort_by_key(conform(_drop_unknown(data, schema), schema, f"{self.region}.{contract_name}"), key)

    def committed_position(self, contract_name: str, mapping: str) -> dict[str, Any] | None:
        props = self._skyfed_summary(self._table(contract_name))
        raw = props.get(SNAP_POSITION + mapping) if props else None
        return json.loads(raw) if raw is not None else None

    @staticmethod
    def _skyfed_summary(table: Table, metadata: TableMetadata | None = None) -> dict[str, str]:
        """Summary properties of the newest snapshot in the current ancestry written by skyfed.

        Every skyfed commit carries all mappings' positions forward, so the newest one is
        enough; walking the ancestry skips snapshots made by other tools (compaction).
        """
        meta = metadata or table.metadata
        snap = meta.current_snapshot()
        while snap is not None:
            props = snap.summary.additional_properties if snap.summary else {}
            if SNAP_RUN in props:
                return dict(props)
            snap = meta.snapshot_by_id(snap.parent_snapshot_id) if snap.parent_snapshot_id is not None else None
        return {}

    # ------------------------------------------------------------------ writes

    def commit(
        self,
        contract_name: str,
        rows: pa.Table | pa.RecordBatchReader,
        *,
        key: list[str],
        mapping: str,
        position: dict[str, Any],
        run_id: str,
        replace: bool = False,
        deletes: pa.Table | None = None,
    ) -> CommitResult:
        check_contract_name(contract_name)
        return self._commit(
            contract_name, rows, key=key, mapping=mapping, position=position_json(position), run_id=run_id,
            replace=replace, operation="replace" if replace else "upsert", deletes=deletes,
        )  # fmt: skip

    def commit_query(
        self,
        contract_name: str,
        con: Any,
        query: str,
        *,
        key: list[str],
        mapping: str,
        position: dict[str, Any],
        run_id: str,
        replace: bool = False,
    ) -> CommitResult:
        """`commit` of the rows of a DuckDB query on `con` (unique by key: the caller de-duplicates).

        Into an empty table or for a full refresh of a local warehouse, DuckDB writes the
        data files itself (iceberg_files.py) and they are added in the same transaction
        that carries the position: no key matching, no rows through Python. Otherwise the
        rows stream through the copy-on-write `commit`.
        """
        check_contract_name(contract_name)
        started = time.perf_counter()
        what = f"{self.region}.{contract_name}"
        table = self._table(contract_name)
        fresh = replace or _total_records(table.metadata.current_snapshot()) == 0
        partition = files_mod.partition_expression(table.metadata)
        select = files_mod.select_for(table.schema(), con.sql(query).columns, query, what)
        if not fresh or partition is False or select is None or "://" in self.warehouse or not key:
            reader = con.sql(query).to_arrow_reader(CHUNK_ROWS)
            return self.commit(contract_name, reader, key=key, mapping=mapping, position=position, run_id=run_id,
                               replace=replace)  # fmt: skip
        self._remove_abandoned(contract_name, table)
        crash_point("iceberg.before_write")
        write_dir = files_mod.WriteDir(table.metadata.location)
        done = False
        try:
            with write_dir:
                files = files_mod.write_data_files(con, select, table.metadata, partition or None, what, write_dir.path)
                result = self._commit_files(contract_name, table, files, write_dir.name, run_id=run_id, mapping=mapping,
                                            position=position_json(position), replace=replace, started=started)  # fmt: skip
                write_dir.committed()
                done = True
                return result
        finally:
            if not done:  # nothing committed (or unsure): the folder goes unless a snapshot lists it
                try:
                    self._remove_abandoned(contract_name)
                except Exception:  # noqa: BLE001 - keep the original error; the next commit cleans up
                    pass

    def _commit_files(
        self, name: str, table: Table, files: list[Any], write_dir: str, *, run_id: str, mapping: str, position: str,
        replace: bool, started: float,
    ) -> CommitResult:  # fmt: skip
        """Commit data files already written (the DuckDB path) with the position.

        The files stay valid on top of a newer snapshot only for a full refresh, or while
        the table is still empty (else their keys would have to be matched): only then is
        a lost race retried.
        """

        def stage(table: Table, tx: Transaction, props: dict[str, str], attempt: int) -> tuple[int, int]:
            deleted = _truncate(tx, props) if replace else 0
            if files:
                with tx.update_snapshot(snapshot_properties=props).fast_append() as append:
                    for f in files:
                        append.append_data_file(f)
            else:
                tx.append(self._schema_and_key(name, table)[0].empty_table(), snapshot_properties=props)
            return sum(f.record_count for f in files), deleted

        def may_retry(table: Table) -> bool:
            return replace or _total_records(table.metadata.current_snapshot()) == 0

        return self._commit_retrying(name, table, stage, may_retry, started=started, run_id=run_id, mapping=mapping,
                                     position=position, replace=replace, operation="replace" if replace else "upsert",
                                     extra={SNAP_WRITE_DIR: write_dir})  # fmt: skip

    def _remove_abandoned(self, name: str, table: Table | None = None) -> list[str]:
        """Delete data folders of DuckDB-path runs on this table that died before committing (iceberg_files.WriteDir).

        Each candidate is checked against the table's metadata loaded after its marker was
        locked, so a folder that any snapshot lists is never removed.
        """
        if "://" in self.warehouse:
            return []
        location = (table or self._table(name)).metadata.location
        return files_mod.remove_abandoned(location, lambda folder: _lists_files_under(self._table(name), folder))

    def commit_quarantine(self, rows: pa.Table, *, run_id: str) -> int:
        if QUARANTINE_TABLE not in self._schemas:
            self._ensure(QUARANTINE_TABLE, QUARANTINE_SCHEMA, QUARANTINE_KEY, QUARANTINE_PARTITION, None)
        table = quarantine_rows(rows, run_id=run_id, region=self.region, now=datetime.now(timezone.utc))
        if table.num_rows == 0:
            return 0
        result = self._commit(
            QUARANTINE_TABLE, table, key=QUARANTINE_KEY, mapping=None, position=None, run_id=run_id,
            replace=False, operation="quarantine",
        )  # fmt: skip
        return result.rows_written

    def clear_quarantine(self, mapping: str, *, run_id: str, locations: list[str] | None = None) -> None:
        """Forget a mapping's quarantine records (all, or those at `locations`)."""
        from pyiceberg.expressions import EqualTo

        try:
            table = self.catalog.load_table((self.region, QUARANTINE_TABLE))
        except NoSuchTableError:
            return
        where: BooleanExpression = EqualTo("mapping", mapping)
        if locations is not None:
            if not locations:
                return
            where = And(where, In("location", set(locations)))
        with warnings.catch_warnings():  # "did not match any records" is the normal case here
            warnings.simplefilter("ignore", UserWarning)
            table.delete(where, snapshot_properties={"skyfed.run_id": run_id})

    def _commit(
        self,
        name: str,
        rows: pa.Table | pa.RecordBatchReader,
        *,
        key: list[str],
        mapping: str | None,
        position: str | None,
        run_id: str,
        replace: bool,
        operation: str,
        deletes: pa.Table | None = None,
    ) -> CommitResult:
        started = time.perf_counter()
        crash_point("iceberg.before_write")
        what = f"{self.region}.{name}"
        if not key:
            raise SkyfedError(f"{what}: a commit needs the key columns to upsert by", "set `key` on the contract")
        replayable = isinstance(rows, pa.Table)
        table = self._table(name)
        self._remove_abandoned(name, table)

        def stage(table: Table, tx: Transaction, props: dict[str, str], attempt: int) -> tuple[int, int]:
            schema, _ = self._schema_and_key(name, table)
            written = deleted = 0
            # Into an empty (or truncated) table, rows whose keys no earlier chunk had are
            # appended as they are: no file needs to be searched for their keys.
            fresh = replace or _total_records(table.metadata.current_snapshot()) == 0
            # Deletes ride on the first chunk's rewrite: the union of its keys and the deleted
            # keys is matched once per file and each file rewritten once (a key in both keeps
            # its new row). An empty table has nothing to delete.
            gone = None if replace else delete_keys(deletes, schema, key, what)
            pending = None if fresh else gone
            pieces = chunks(rows, CHUNK_ROWS) if replayable or attempt == 0 else iter(())
            first = True
            seen: list[pa.Array] = []
            for chunk in pieces:
                data = conform(chunk, schema, what)
                check_unique(data, key, what)
                if first and replace:
                    deleted += _truncate(tx, props)
                if fresh and len(key) == 1 and not _overlaps(data[key[0]], seen):
                    tx.append(data, snapshot_properties=props)
                    seen.append(data[key[0]].combine_chunks())
                else:
                    deleted += _upsert(tx, table.io, data, key, props, gone=pending)
                    if pending is not None:
                        pending = None
                        crash_point("iceberg.after_deletes")
                    fresh = False
                written += data.num_rows
                first = False
            staged = False
            if pending is not None:  # no chunk carried the deletes (no rows): a rewrite of their own
                removed = _remove_keys(tx, table.io, pending, key, props)
                deleted += removed
                staged = removed > 0
                crash_point("iceberg.after_deletes")
            if first and not staged:  # no rows at all: still commit the position (and the truncation for replace)
                if replace:
                    deleted += _truncate(tx, props)
                tx.append(schema.empty_table(), snapshot_properties=props)
            return written, deleted

        # a lost race is retried only if the rows can be read again (a reader is consumed by the first attempt)
        return self._commit_retrying(name, table, stage, lambda _table: replayable, started=started, run_id=run_id,
                                     mapping=mapping, position=position, replace=replace, operation=operation)  # fmt: skip

    def _commit_retrying(
        self,
        name: str,
        table: Table,
        stage: Callable[[Table, Transaction, dict[str, str], int], tuple[int, int]],
        may_retry: Callable[[Table], bool],
        *,
        started: float,
        run_id: str,
        mapping: str | None,
        position: str | None,
        replace: bool,
        operation: str,
        extra: dict[str, str] | None = None,
    ) -> CommitResult:
        """The one commit loop of both write paths: stage, swap the metadata pointer, retry a lost race.

        `stage(table, tx, props, attempt)` stages this commit's snapshot(s) in `tx` and returns
        (rows written, rows deleted). When another writer wins the swap, the table is loaded
        again and, if `may_retry(table)`, the commit is staged again on top of it (up to
        COMMIT_ATTEMPTS times); else nothing was committed and the caller is told to rerun.
        """
        what = f"{self.region}.{name}"
        for attempt in range(COMMIT_ATTEMPTS):
            if attempt:
                table = self._table(name)
            tx = table.transaction()
            props = self._snapshot_props(table, run_id=run_id, mapping=mapping, position=position,
                                         replace=replace, operation=operation)  # fmt: skip
            props.update(extra or {})
            written, deleted = stage(table, tx, props, attempt)
            crash_point("iceberg.after_data_files")
            try:
                committed = tx.commit_transaction()
            except CommitFailedException as exc:
                if not may_retry(self._table(name)):
                    raise SkyfedError(
                        f"{what}: another writer committed to the table during this commit; nothing was committed",
                        "run the ingestion again (it resumes from the last committed position)",
                    ) from exc
                time.sleep(0.05 * (attempt + 1))
                continue
            crash_point("iceberg.after_commit")
            snap = committed.current_snapshot()
            return CommitResult(
                snapshot_id=snap.snapshot_id if snap else None,
                rows_written=written,
                rows_deleted=deleted,
                seconds=time.perf_counter() - started,
            )
        raise SkyfedError(
            f"{what}: {COMMIT_ATTEMPTS} commit attempts lost to concurrent writers; nothing was committed",
            "run fewer writers per table at once, then run the ingestion again",
        )

    def _snapshot_props(
        self,
        table: Table,
        *,
        run_id: str,
        mapping: str | None,
        position: str | None,
        replace: bool,
        operation: str,
    ) -> dict[str, str]:
        """Summary properties of this commit: run, mapping and every mapping's position carried forward."""
        previous = self._skyfed_summary(table)
        props = {
            k: v
            for k, v in previous.items()
            if k.startswith(SNAP_POSITION) and not replace  # a full refresh forgets the other mappings
        }
        props[SNAP_RUN] = run_id
        props[SNAP_OPERATION] = operation
        if mapping is not None and position is not None:
            props[SNAP_MAPPING] = mapping
            props[SNAP_POSITION + mapping] = position
        return props


# --------------------------------------------------------------------------- copy-on-write upsert


def _upsert(
    tx: Transaction, io: FileIO, data: pa.Table, key: list[str], props: dict[str, str], gone: pa.Table | None = None
) -> int:
    """Stage one snapshot that removes rows with the keys of `data` or `gone` and adds `data`; returns rows removed.

    Only key columns are read to find the files holding those keys (the union of both
    sets, matched once); only those files are read whole and rewritten, once, without
    the matched rows. Partition values are not used for pruning: an update may move a
    row to another partition (a rescheduled flight), and the old row must still go.
    """
    meta = tx.table_metadata
    snap = meta.current_snapshot()
    if _total_records(snap) == 0:
        tx.append(data, snapshot_properties=props)
        return 0
    _check_pyarrow_schema_compatible(meta.schema(), provided_schema=data.schema, format_version=meta.format_version)
    keys = data.select(key)
    if gone is not None and gone.num_rows:
        keys = pa.concat_tables([keys, gone.select(key).cast(keys.schema)])
    if keys.num_rows == 0:
        tx.append(data, snapshot_properties=props)
        return 0
    hits, planned = _files_with_keys(meta, io, keys.combine_chunks(), key)
    return _rewrite(tx, io, hits + _small_files_to_fold(hits, planned), props, data)


def _remove_keys(tx: Transaction, io: FileIO, keys: pa.Table, key: list[str], props: dict[str, str]) -> int:
    """Stage one snapshot without the rows whose keys are in `keys` (copy-on-write); returns rows removed.

    Keys no row has change nothing (no snapshot is staged for them)."""
    meta = tx.table_metadata
    if _total_records(meta.current_snapshot()) == 0:
        return 0
    hits, planned = _files_with_keys(meta, io, keys, key)
    return _rewrite(tx, io, hits + _small_files_to_fold(hits, planned), props, None) if hits else 0


def _small_files_to_fold(hits: list[tuple[Any, pa.BooleanArray]], planned: list[Any]) -> list[tuple[Any, pa.BooleanArray]]:
    """Small files no key hit, to fold into this rewrite when there are many (each with an all-false mask).

    Every micro-batch adds a small file; left alone, their count (and with it the key
    scan, the manifests and the readers' file opens) grows with every commit. Folding
    them into a rewrite that happens anyway keeps the count bounded, in the same
    atomic snapshot. `planned` are all files the key scan read, so their rows are
    known to be unaffected.
    """
    small = [t for t in planned if t.file.record_count < SMALL_FILE_ROWS]
    if len(small) <= SMALL_FILES_MAX:
        return []
    hit = {t.file.file_path for t, _ in hits}
    return [(t, pa.array(np.zeros(t.file.record_count, dtype=bool))) for t in small if t.file.file_path not in hit]


def _files_with_keys(
    meta: TableMetadata, io: FileIO, keys: pa.Table, key: list[str]
) -> tuple[list[tuple[Any, pa.BooleanArray]], list[Any]]:
    """The data files holding any of `keys`, each with the mask of its matching rows; and every file scanned.

    Only key columns are read to find them."""
    tasks = list(DataScan(table_metadata=meta, io=io, row_filter=_prune_filter(keys, key)).plan_files())
    key_schema = meta.schema().select(*key)

    def matches(task: Any) -> tuple[Any, pa.BooleanArray | None]:
        file_keys = ArrowScan(meta, io, key_schema, AlwaysTrue()).to_table([task])
        mask = _match_mask(file_keys, keys, key)
        return task, (mask if pc.any(mask).as_py() else None)

    with ThreadPoolExecutor(max_workers=min(8, max(1, len(tasks)))) as pool:
        return [(t, m) for t, m in pool.map(matches, tasks) if m is not None], tasks


def _rewrite(
    tx: Transaction, io: FileIO, hits: list[tuple[Any, pa.BooleanArray]], props: dict[str, str], data: pa.Table | None
) -> int:
    """Stage one overwrite snapshot: each hit file replaced by a copy without its matched rows, plus `data`.

    What is kept of small files is written together with `data` (fewer, larger files);
    a large file's remainder is written on its own, so memory holds one large file at a time.
    """
    meta = tx.table_metadata
    removed = 0
    counter = itertools.count(0)
    together: list[pa.Table] = []
    with _DroppingOverwrite(tx, io, props) as producer:
        for task, mask in hits:
            whole = ArrowScan(meta, io, meta.schema(), AlwaysTrue()).to_table([task])
            keep = whole.filter(pc.invert(mask))
            removed += whole.num_rows - keep.num_rows
            producer.delete_data_file(task.file)
            if not keep.num_rows:
                continue
            if task.file.record_count < SMALL_FILE_ROWS:
                together.append(keep)
                continue
            for f in _dataframe_to_data_files(meta, keep, io, write_uuid=producer.commit_uuid, counter=counter):
                producer.append_data_file(f)
        if data is not None:
            together.append(data.cast(together[0].schema) if together and data.schema != together[0].schema else data)
        if together:
            rows = pa.concat_tables(together) if len(together) > 1 else together[0]
            for f in _dataframe_to_data_files(meta, rows, io, write_uuid=producer.commit_uuid, counter=counter):
                producer.append_data_file(f)
    return removed


class _DroppingOverwrite(_OverwriteFiles):
    """pyiceberg's overwrite, minus earlier manifests that list only deleted files.

    pyiceberg keeps every earlier overwrite's manifest of DELETED entries in each new
    snapshot, so a streamer's manifest list grew by one per commit and every commit and
    scan read them all; they describe only the snapshot that made them (Iceberg's Java
    writer drops them the same way).
    """

    def __init__(self, tx: Transaction, io: FileIO, props: dict[str, str]):
        exists = tx.table_metadata.snapshot_by_name(name=MAIN_BRANCH) is not None
        super().__init__(
            operation=Operation.OVERWRITE if exists else Operation.APPEND, transaction=tx, io=io,
            branch=MAIN_BRANCH, snapshot_properties=props,
        )  # fmt: skip

    def _existing_manifests(self) -> list[Any]:
        return [m for m in super()._existing_manifests() if m.has_added_files() or m.has_existing_files()]


def _overlaps(keys: pa.ChunkedArray, seen: list[pa.Array]) -> bool:
    """Whether any of `keys` occurs in the earlier chunks' keys."""
    if not seen:
        return False
    return bool(pc.any(pc.is_in(keys, value_set=pa.concat_arrays(seen))).as_py())


def _truncate(tx: Transaction, props: dict[str, str]) -> int:
    """Stage the removal of every row (whole files, nothing rewritten); returns the rows removed."""
    snap = tx.table_metadata.current_snapshot()
    total = _total_records(snap)
    if total:
        tx.delete(AlwaysTrue(), snapshot_properties=props)
    return total


def _prune_filter(new_keys: pa.Table, key: list[str]) -> BooleanExpression:
    """A superset filter on key values that lets file statistics skip files, when the key list is short."""
    if new_keys.num_rows > IN_PRUNE_LIMIT:
        return AlwaysTrue()
    parts: list[BooleanExpression] = []
    for k in key:
        values = pc.unique(new_keys.column(k)).drop_null().to_pylist()
        parts.append(In(k, set(values)))
    return parts[0] if len(parts) == 1 else And(*parts)


def _match_mask(file_keys: pa.Table, new_keys: pa.Table, key: list[str]) -> pa.BooleanArray:
    """For each row of `file_keys`, whether its key is among `new_keys` (vectorized)."""
    if file_keys.num_rows == 0:
        return pa.array([], pa.bool_())
    file_keys = file_keys.select(key).cast(new_keys.schema)
    if len(key) == 1:
        return pc.is_in(file_keys.column(0), value_set=new_keys.column(0)).combine_chunks()
    idx = file_keys.append_column("__row", pa.array(range(file_keys.num_rows), pa.int64()))
    hit = idx.join(new_keys, keys=key, join_type="inner").column("__row")
    return pc.is_in(pa.array(range(file_keys.num_rows), pa.int64()), value_set=hit.combine_chunks())


# --------------------------------------------------------------------------- helpers


def _lists_files_under(table: Table, folder: str) -> bool:
    """Whether any snapshot of `table` (current or not) lists a data file under `folder`."""
    name = os.path.basename(folder.rstrip("/"))
    snaps = table.metadata.snapshots
    if any(s.summary is not None and s.summary.additional_properties.get(SNAP_WRITE_DIR) == name for s in snaps):
        return True
    prefix = folder.rstrip("/") + "/"
    seen: set[str] = set()
    for snap in snaps:  # e.g. files added by a commit made without the summary mark
        for manifest in snap.manifests(table.io):
            if manifest.manifest_path in seen:
                continue
            seen.add(manifest.manifest_path)
            entries = manifest.fetch_manifest_entry(table.io, discard_deleted=False)
            if any(e.data_file.file_path.startswith(prefix) for e in entries):
                return True
    return False


def _total_records(snap: Any) -> int:
    """Rows in a snapshot, from its summary (pyiceberg keeps `total-records` up to date)."""
    if snap is None or snap.summary is None:
        return 0
    return int(snap.summary["total-records"] or 0)


def _drop_unknown(data: pa.Table, schema: pa.Schema) -> pa.Table:
    """Columns still stored but no longer in the contract are not part of the table's contract view."""
    return data.select([n for n in data.column_names if schema.get_field_index(n) >= 0])


def _column_types(contract: Contract) -> dict[str, str]:
    return {name: col.type for name, col in contract.columns.items()}


def _quarantine_types() -> dict[str, str]:
    return {f.name: "timestamptz" if pa.types.is_timestamp(f.type) else "string" for f in QUARANTINE_SCHEMA}


def _iceberg_field_type(field: pa.Field, types: dict[str, str]) -> IcebergType:
    if pa.types.is_list(field.type):
        from pyiceberg.types import ListType

        return ListType(element_id=-1, element_type=StringType(), element_required=False)
    return iceberg_type(types[field.name])


def _promotable(have: IcebergType, want: IcebergType) -> bool:
    """Iceberg's allowed in-place type promotions."""
    if isinstance(have, IntegerType) and isinstance(want, LongType):
        return True
    if isinstance(have, DecimalType) and isinstance(want, DecimalType):
        return have.scale == want.scale and want.precision >= have.precision
    from pyiceberg.types import ListType

    return isinstance(have, ListType) and isinstance(want, ListType)


def _warehouse(value: str) -> str:
    """The warehouse as a URI-ish location: gs://... kept, a local folder made absolute (relative to the state folder)."""
    if "://" in value:
        return value.rstrip("/")
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = state_dir() / path
    path.mkdir(parents=True, exist_ok=True)
    return str(path.resolve())


def _gcs_properties() -> dict[str, str]:
    """FileIO settings for gs:// warehouses: the emulator when STORAGE_EMULATOR_HOST is set, else Google's defaults."""
    host = os.environ.get("STORAGE_EMULATOR_HOST")
    if not host:
        return {"py-io-impl": "pyiceberg.io.fsspec.FsspecFileIO"}
    if "://" not in host:
        host = f"http://{host}"
    return {
        "py-io-impl": "pyiceberg.io.fsspec.FsspecFileIO",
        "gcs.service.host": host,
        "gcs.oauth2.token": "anon",
        "gcs.project-id": "skyfed-local",
    }


def _same_type(a: object, b: object) -> bool:
    """Iceberg types equal up to field ids (a list's element id differs between a
    freshly built type and the stored one)."""
    return a == b or str(a) == str(b)
