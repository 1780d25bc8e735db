"""BigQuery curated store: a dataset in the region's location, written through the official client.

A commit loads the rows as Parquet into a staging table, then runs ONE multi-statement
transaction: MERGE staging into the target by key (or DELETE all + INSERT for a full
refresh) and INSERT the commit record (mapping, position JSON, run id) into
`_skyfed_commits`. Both land or neither does, so the position always matches the
data. MERGE by key is idempotent as well: re-applying a range after a crash before
the transaction yields the same table. Staging tables are dropped afterwards; ones
orphaned by a crash are dropped by later commits after STAGE_TTL.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from skyfed.errors import SkyfedError
from skyfed.ingest.stores.base import (
    QUARANTINE_KEY,
    QUARANTINE_PARTITION,
    QUARANTINE_SCHEMA,
    QUARANTINE_TABLE,
    CommitResult,
    check_contract_name,
    check_unique,
    chunks as _chunks,
    parse_partition,
    conform,
    crash_point,
    delete_keys,
    position_json,
    quarantine_rows,
    sort_by_key,
    table_schema,
)
from skyfed.spec.models import BigQueryStore, Contract

COMMITS_TABLE = "_skyfed_commits"
TABLES_TABLE = "_skyfed_tables"
STAGE_PREFIX = "_skyfed_stage_"
STAGE_TTL = timedelta(hours=6)
SEQ_COLUMN = "_skyfed_seq"
CHUNK_ROWS = 500_000
_PARTITION_TYPES = {"year": "YEAR", "month": "MONTH", "day": "DAY", "hour": "HOUR"}


def bigquery_type(type_name: str) -> tuple[str, int | None, int | None]:
    """(BigQuery type, precision, scale) of a canonical column type."""
    simple = {
        "string": "STRING",
        "int32": "INT64",
        "int64": "INT64",
        "double": "FLOAT64",
        "bool": "BOOL",
        "date": "DATE",
        "timestamp": "DATETIME",
        "timestamptz": "TIMESTAMP",
    }
    if type_name in simple:
        return simple[type_name], None, None
    if type_name.startswith("decimal("):
        p, s = (int(x) for x in type_name[len("decimal(") : -1].split(","))
        # NUMERIC holds up to 29 integer and 9 fractional digits; beyond that BIGNUMERIC
        # (which the emulator does not support: see docs/stores.md).
        return ("NUMERIC" if s <= 9 and p - s <= 29 else "BIGNUMERIC"), p, s
    raise SkyfedError(f"the column type {type_name!r} has no BigQuery equivalent")


class BigQueryCuratedStore:
    """A region's tables in one BigQuery dataset (see the module docstring for the commit protocol)."""

    kind = "bigquery"

    def __init__(self, region: str, spec: BigQueryStore):
        from google.api_core.retry import Retry
        from google.cloud import bigquery

        self.region = region
        self.spec = spec
        self.location = spec.location
        self.dataset = f"{spec.project}.{spec.dataset}"
        self._bq = bigquery
        self._retry = Retry(deadline=60)  # the emulator answers 500 to unsupported requests: do not retry for 10 min
        self.client = _client(spec)
        self._schemas: dict[str, tuple[pa.Schema, list[str]]] = {}
        self._ensure_dataset()

    def __repr__(self) -> str:
        return f"BigQueryCuratedStore(region={self.region!r}, dataset={self.dataset!r}, location={self.location!r})"

    # ------------------------------------------------------------------ plumbing

    def _ref(self, name: str) -> str:
        return f"{self.dataset}.{name}"

    def _sql_ref(self, name: str) -> str:
        return f"`{self.dataset}.{name}`"

    def _query(self, sql: str, params: dict[str, Any] | None = None) -> list[Any]:
        bq = self._bq
        config = bq.QueryJobConfig(
            query_parameters=[bq.ScalarQueryParameter(k, "STRING", v) for k, v in (params or {}).items()]
        )
        try:
            job = self.client.query(sql, job_config=config, location=self.location, retry=self._retry)
            return list(job.result(retry=self._retry))
        except Exception as exc:
            raise _error(exc, f"BigQuery dataset {self.dataset} ({self.location})") from exc

    def _ensure_dataset(self) -> None:
        from google.api_core.exceptions import Conflict, NotFound

        try:
            try:
                ds = self.client.get_dataset(self.dataset, retry=self._retry)
            except NotFound:
                ds = self._bq.Dataset(self.dataset)
                ds.location = self.location
                try:
                    ds = self.client.create_dataset(ds, retry=self._retry)
                except Conflict:
                    ds = self.client.get_dataset(self.dataset, retry=self._retry)
        except SkyfedError:
            raise
        except Exception as exc:
            raise _error(exc, f"BigQuery dataset {self.dataset}") from exc
        if ds.location and ds.location.lower() != self.location.lower():
            raise SkyfedError(
                f"region {self.region}: the BigQuery dataset {self.dataset} is in {ds.location}, not {self.location}",
                "data must stay in its region: point the store at a dataset in the region's location",
            )
        bq = self._bq
        self._create_if_missing(
            COMMITS_TABLE,
            [
                bq.SchemaField("contract", "STRING", "REQUIRED"),
                bq.SchemaField("commit_id", "STRING", "REQUIRED"),
                bq.SchemaField("seq", "INT64", "REQUIRED"),
                bq.SchemaField("mapping", "STRING"),
                bq.SchemaField("position", "STRING"),
                bq.SchemaField("run_id", "STRING"),
                bq.SchemaField("operation", "STRING"),
                bq.SchemaField("rows_written", "INT64"),
                bq.SchemaField("rows_deleted", "INT64"),
                bq.SchemaField("committed_at", "TIMESTAMP"),
            ],
        )
        self._create_if_missing(
            TABLES_TABLE,
            [
                bq.SchemaField("table_name", "STRING", "REQUIRED"),
                bq.SchemaField("contract_json", "STRING"),
                bq.SchemaField("key_json", "STRING"),
                bq.SchemaField("updated_at", "TIMESTAMP"),
            ],
        )

    def _create_if_missing(self, name: str, schema: list[Any], partition: tuple[str, str] | None = None,
                           clustering: list[str] | None = None) -> bool:  # fmt: skip
        from google.api_core.exceptions import Conflict, NotFound

        try:
            self.client.get_table(self._ref(name), retry=self._retry)
            return False
        except NotFound:
            pass
        table = self._bq.Table(self._ref(name), schema=schema)
        if partition:
            transform, column = partition
            if transform in _PARTITION_TYPES:
                table.time_partitioning = self._bq.TimePartitioning(type_=_PARTITION_TYPES[transform], field=column)
            else:  # identity on a column: BigQuery partitions only by time or integer range; cluster instead
                clustering = [column, *(c for c in (clustering or []) if c != column)]
        if clustering:
            table.clustering_fields = clustering[:4]
        try:
            self.client.create_table(table, retry=self._retry)
        except Conflict:
            return False
        except Exception as exc:
            raise _error(exc, f"creating BigQuery table {self._ref(name)}") from exc
        return True

    # ------------------------------------------------------------------ tables

    def ensure_table(self, contract_name: str, contract: Contract) -> None:

        check_contract_name(contract_name)
        schema = table_schema(contract)
        types = {n: c.type for n, c in contract.columns.items()}
        fields = [self._field(f, types[f.name]) for f in schema]
        part = parse_partition(contract.partition_by, schema.names)
        created = self._create_if_missing(contract_name, fields, part, list(contract.key))
        if not created:
            self._evolve_by_id(contract_name, contract)
            self._evolve(contract_name, fields)
        self._schemas[contract_name] = (schema, list(contract.key))
        self._query(
            f"MERGE {self._sql_ref(TABLES_TABLE)} T USING (SELECT @t AS table_name, @c AS contract_json, "
            f"@k AS key_json) S ON T.table_name = S.table_name "
            f"WHEN MATCHED THEN UPDATE SET contract_json = S.contract_json, key_json = S.key_json, "
            f"updated_at = CURRENT_TIMESTAMP() "
            f"WHEN NOT MATCHED THEN INSERT (table_name, contract_json, key_json, updated_at) "
            f"VALUES (S.table_name, S.contract_json, S.key_json, CURRENT_TIMESTAMP())",
            {"t": contract_name, "c": contract.model_dump_json(by_alias=True), "k": json.dumps(list(contract.key))},
        )

    def _field(self, f: pa.Field, type_name: str) -> Any:
        if pa.types.is_list(f.type):
            return self._bq.SchemaField(f.name, "STRING", "REPEATED")
        bq_type, precision, scale = bigquery_type(type_name)
        desc = (f.metadata or {}).get(b"description", b"").decode() or None
        return self._bq.SchemaField(
            f.name, bq_type, "NULLABLE" if f.nullable else "REQUIRED", description=desc, precision=precision, scale=scale
        )

    def _evolve(self, name: str, fields: list[Any]) -> None:
        """Add the contract's new columns (NULLABLE: existing rows have no value)."""
        table = self.client.get_table(self._ref(name), retry=self._retry)
        have = {f.name: f for f in table.schema}
        for f in fields:
            if f.name in have and have[f.name].field_type != f.field_type and not (
                {have[f.name].field_type, f.field_type} <= {"INTEGER", "INT64"}
                or {have[f.name].field_type, f.field_type} <= {"FLOAT", "FLOAT64"}
                or {have[f.name].field_type, f.field_type} <= {"BOOLEAN", "BOOL"}
            ):
                raise SkyfedError(
                    f"table {self._ref(name)}: column {f.name} is {have[f.name].field_type} in the store but "
                    f"{f.field_type} in the contract",
                    "keep the type, or add a new column and a new contract version",
                )
        new = [f for f in fields if f.name not in have]
        relax = [f for f in fields if f.name in have and have[f.name].mode == "REQUIRED" and f.mode == "NULLABLE"]
        if relax:
            self._relax(name, relax)
        if not new:
            return
        for f in new:
            # DDL changes the stored table on the emulator and on BigQuery alike...
            decl = f.field_type if f.precision is None else f"{f.field_type}({f.precision}, {f.scale})"
            self._query(f"ALTER TABLE {self._sql_ref(name)} ADD COLUMN IF NOT EXISTS `{f.name}` {decl}")
        # ...but the emulator does not reflect it in the table metadata: patch that too (no-op on BigQuery).
        table = self.client.get_table(self._ref(name), retry=self._retry)
        names = {f.name for f in table.schema}
        missing = [
            self._bq.SchemaField(f.name, f.field_type, "NULLABLE", description=f.description,
                                 precision=f.precision, scale=f.scale)  # fmt: skip
            for f in new
            if f.name not in names
        ]
        if missing:
            table.schema = [*table.schema, *missing]
            self.client.update_table(table, ["schema"], retry=self._retry)

    def _evolve_by_id(self, name: str, contract: Contract) -> None:
        """Refuse what cannot change in place and apply declared renames (skyfed.governance.evolution).

        The old shape is the contract recorded in `_skyfed_tables`; the new one the
        registry's version (or the contract with the governance file's renames), so a
        rename is `ALTER TABLE ... RENAME COLUMN` and keeps the data.
        """
        from skyfed.governance import evolution
        from skyfed.governance.config import governance_for

        rows = self._query(f"SELECT contract_json FROM {self._sql_ref(TABLES_TABLE)} WHERE table_name = @t", {"t": name})
        if not rows:
            return
        settings = governance_for().contracts.get(name)
        stored = Contract.model_validate_json(rows[0][0])
        old, new, _ = evolution.table_bodies(name, contract, None, stored, settings.renames if settings else None)
        refused = evolution.refusals(old, new)
        if refused:
            raise SkyfedError(
                f"table {self._ref(name)}: the contract change cannot be applied in place: {'; '.join(refused)}",
                "keep or widen the type and keep the key; or publish a new contract (NAME_v2), "
                "or set compatibility NONE and rebuild the table",
            )
        renames = [(op.column, op.detail) for op in evolution.plan(old, new) if op.action == "rename"]
        if not renames:
            return
        table = self.client.get_table(self._ref(name), retry=self._retry)
        have = {f.name for f in table.schema}
        for before, after in renames:
            if before not in have:
                continue  # done already (a rerun after a crash)
            try:
                self._query(f"ALTER TABLE {self._sql_ref(name)} RENAME COLUMN `{before}` TO `{after}`")
            except SkyfedError:
                self._query(f"SELECT `{after}` FROM {self._sql_ref(name)} LIMIT 0")  # renamed by an earlier, cut-off run
        # The emulator keeps the old names in the table metadata (BigQuery itself has the new ones already).
        table = self.client.get_table(self._ref(name), retry=self._retry)
        names = dict(renames)
        if any(f.name in names for f in table.schema):
            table.schema = [
                self._bq.SchemaField(names[f.name], f.field_type, f.mode, description=f.description, fields=f.fields,
                                     precision=f.precision, scale=f.scale)  # fmt: skip
                if f.name in names else f
                for f in table.schema
            ]
            self.client.update_table(table, ["schema"], retry=self._retry)

    def _relax(self, name: str, fields: list[Any]) -> None:
        """REQUIRED -> NULLABLE in place: DDL on the stored table, then the table metadata (as for new columns)."""
        for f in fields:
            self._query(f"ALTER TABLE {self._sql_ref(name)} ALTER COLUMN `{f.name}` DROP NOT NULL")
        table = self.client.get_table(self._ref(name), retry=self._retry)
        wanted = {f.name for f in fields}
        if any(f.name in wanted and f.mode == "REQUIRED" for f in table.schema):
            table.schema = [
                self._bq.SchemaField(f.name, f.field_type, "NULLABLE", description=f.description, fields=f.fields,
                                     precision=f.precision, scale=f.scale)  # fmt: skip
                if f.name in wanted else f
                for f in table.schema
            ]
            self.client.update_table(table, ["schema"], retry=self._retry)

    def table_names(self) -> list[str]:
        tables = self.client.list_tables(self.dataset, retry=self._retry)
        return sorted(
            t.table_id for t in tables if not t.table_id.startswith("_") and t.table_id != QUARANTINE_TABLE
        )

    def _schema_and_key(self, name: str) -> tuple[pa.Schema, list[str]]:
        if name in self._schemas:
            return self._schemas[name]
        if name == QUARANTINE_TABLE:
            return QUARANTINE_SCHEMA, QUARANTINE_KEY
        rows = self._query(
            f"SELECT contract_json FROM {self._sql_ref(TABLES_TABLE)} WHERE table_name = @t", {"t": name}
        )
        if not rows:
            raise SkyfedError(
                f"the curated table {self._ref(name)} does not exist",
                "run `skyfed ingest` for a source that maps to it first",
            )
        contract = Contract.model_validate_json(rows[0][0])
        self._schemas[name] = (table_schema(contract), list(contract.key))
        return self._schemas[name]

    # ------------------------------------------------------------------ reads

    def snapshot_id(self, contract_name: str) -> str | None:
        rows = self._query(
            f"SELECT commit_id FROM {self._sql_ref(COMMITS_TABLE)} WHERE contract = @c ORDER BY seq DESC LIMIT 1",
            {"c": contract_name},
        )
        return rows[0][0] if rows else None

    def row_count(self, contract_name: str) -> int:
        self._schema_and_key(contract_name)
        return int(self._query(f"SELECT COUNT(*) FROM {self._sql_ref(contract_name)}")[0][0])

    def read(self, contract_name: str, snapshot_id: int | str | None = None) -> pa.Table:
        schema, key = self._schema_and_key(contract_name)
        if snapshot_id is not None and str(snapshot_id) != self.snapshot_id(contract_name):
            raise SkyfedError(
                f"{self._ref(contract_name)}: reading an earlier commit ({snapshot_id}) is not supported by the BigQuery store",
                "read the current state (snapshot_id=None)",
            )
        cols = ", ".join(f"`{n}`" for n in schema.names)
        try:
            job = self.client.query(
                f"SELECT {cols} FROM {self._sql_ref(contract_name)}", location=self.location, retry=self._retry
            )
            data = job.result(retry=self._retry).to_arrow(create_bqstorage_client=False)
        except Exception as exc:
            raise _error(exc, f"reading {self._ref(contract_name)}") from exc
        return sort_by_key(conform(data, schema, self._ref(contract_name)), key)

    def committed_position(self, contract_name: str, mapping: str) -> dict[str, Any] | None:
        # The newest commit of this mapping that no full refresh by another mapping has superseded.
        rows = self._query(
            f"SELECT position FROM {self._sql_ref(COMMITS_TABLE)} "
            f"WHERE contract = @c AND mapping = @m AND seq > COALESCE((SELECT MAX(seq) FROM "
            f"{self._sql_ref(COMMITS_TABLE)} WHERE contract = @c AND operation = 'replace' AND mapping != @m), -1) "
            f"ORDER BY seq DESC LIMIT 1",
            {"c": contract_name, "m": mapping},
        )
        return json.loads(rows[0][0]) if rows and rows[0][0] is not None else None

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
            operation="replace" if replace else "upsert", deletes=deletes,
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
        """`commit` of the rows of a DuckDB query on `con`, streamed in chunks (unique by key)."""
        reader = con.sql(query).to_arrow_reader(CHUNK_ROWS)
        return self.commit(contract_name, reader, key=key, mapping=mapping, position=position, run_id=run_id,
                           replace=replace)  # fmt: skip

    def commit_quarantine(self, rows: pa.Table, *, run_id: str) -> int:
        if QUARANTINE_TABLE not in self._schemas:

            fields = [
                self._field(f, "timestamptz" if pa.types.is_timestamp(f.type) else "string") for f in QUARANTINE_SCHEMA
            ]
            part = parse_partition(QUARANTINE_PARTITION, QUARANTINE_SCHEMA.names)
            self._create_if_missing(QUARANTINE_TABLE, fields, part, QUARANTINE_KEY)
            self._schemas[QUARANTINE_TABLE] = (QUARANTINE_SCHEMA, QUARANTINE_KEY)
        table = quarantine_rows(rows, run_id=run_id, region=self.region, now=datetime.now(timezone.utc))
        if table.num_rows == 0:
            return 0
        result = self._commit(
            QUARANTINE_TABLE, table, key=QUARANTINE_KEY, mapping=None, position=None, run_id=run_id,
            operation="quarantine",
        )  # fmt: skip
        return result.rows_written

    def clear_quarantine(self, mapping: str, *, run_id: str, locations: list[str] | None = None) -> None:
        """Forget a mapping's quarantine records (all, or those at `locations`)."""
        from google.api_core.exceptions import NotFound

        try:
            self.client.get_table(self._ref(QUARANTINE_TABLE), retry=self._retry)
        except NotFound:
            return
        bq = self._bq
        params = [bq.ScalarQueryParameter("mapping", "STRING", mapping)]
        sql = f"DELETE FROM {self._sql_ref(QUARANTINE_TABLE)} WHERE mapping = @mapping"
        if locations is not None:
            if not locations:
                return
            params.append(bq.ArrayQueryParameter("locations", "STRING", list(locations)))
            sql += " AND location IN UNNEST(@locations)"
        try:
            job = self.client.query(
                sql, job_config=bq.QueryJobConfig(query_parameters=params), location=self.location, retry=self._retry
            )
            job.result(retry=self._retry)
        except Exception as exc:
            raise _error(exc, f"BigQuery dataset {self.dataset} ({self.location})") from exc

    def _commit(
        self,
        name: str,
        rows: pa.Table | pa.RecordBatchReader,
        *,
        key: list[str],
        mapping: str | None,
        position: str | None,
        run_id: str,
        operation: str,
        deletes: pa.Table | None = None,
    ) -> CommitResult:
        started = time.perf_counter()
        crash_point("bigquery.before_write")
        schema, _ = self._schema_and_key(name)
        what = self._ref(name)
        if not key:
            raise SkyfedError(f"{what}: a commit needs the key columns to upsert by", "set `key` on the contract")
        replace = operation == "replace"
        gone = None if replace else delete_keys(deletes, schema, key, what)
        self._drop_stale_stages()
        stage = f"{STAGE_PREFIX}{name}_{uuid.uuid4().hex[:12]}"
        del_stage = f"{stage}_del" if gone is not None else None
        try:
            written, chunks = self._load_stage(name, stage, rows, schema, key, what)
            if del_stage is not None:
                self._load_keys(name, del_stage, gone, what)
            crash_point("bigquery.after_stage")
            deleted = self._count_replaced(name, stage, key, replace, del_stage)
            commit_id, seq = _commit_id()
            cols = schema.names
            col_list = ", ".join(f"`{c}`" for c in cols)
            # Several chunks may repeat a key: the later chunk wins, as in the Iceberg store.
            source = self._sql_ref(stage)
            if chunks > 1:
                part = ", ".join(f"`{k}`" for k in key)
                source = (
                    f"(SELECT * EXCEPT({SEQ_COLUMN}) FROM {source} WHERE TRUE "
                    f"QUALIFY ROW_NUMBER() OVER (PARTITION BY {part} ORDER BY {SEQ_COLUMN} DESC) = 1)"
                )
            target = self._sql_ref(name)
            if replace:
                write = (
                    f"DELETE FROM {target} WHERE TRUE;\n"
                    f"INSERT INTO {target} ({col_list}) SELECT {col_list} FROM {source} AS S;"
                )
            else:
                on = " AND ".join(f"T.`{k}` = S.`{k}`" for k in key)
                sets = ", ".join(f"`{c}` = S.`{c}`" for c in cols if c not in key) or f"`{key[0]}` = S.`{key[0]}`"
                # Deletes first, in the same transaction: a key also in the rows gets its new row back.
                removal = (
                    f"DELETE FROM {target} T WHERE EXISTS (SELECT 1 FROM {self._sql_ref(del_stage)} S WHERE {on});\n"
                    if del_stage is not None
                    else ""
                )
                write = (
                    f"{removal}MERGE {target} T USING {source} S ON {on}\n"
                    f"WHEN MATCHED THEN UPDATE SET {sets}\n"
                    f"WHEN NOT MATCHED THEN INSERT ({col_list}) VALUES ({', '.join(f'S.`{c}`' for c in cols)});"
                )
            record = (
                f"INSERT INTO {self._sql_ref(COMMITS_TABLE)} (contract, commit_id, seq, mapping, position, run_id, "
                f"operation, rows_written, rows_deleted, committed_at) VALUES ({_lit(name)}, {_lit(commit_id)}, {seq}, "
                f"{_lit(mapping)}, {_lit(position)}, {_lit(run_id)}, {_lit(operation)}, {written}, {deleted}, "
                f"CURRENT_TIMESTAMP());"
            )
            # Query parameters do not reach the statements of a script on the emulator: literals only.
            self._query(f"BEGIN TRANSACTION;\n{write}\n{record}\nCOMMIT TRANSACTION;")
            crash_point("bigquery.after_commit")
        finally:
            self._drop(stage)
            if del_stage is not None:
                self._drop(del_stage)
        return CommitResult(
            snapshot_id=commit_id, rows_written=written, rows_deleted=deleted, seconds=time.perf_counter() - started
        )

    def _load_stage(
        self, name: str, stage: str, rows: pa.Table | pa.RecordBatchReader, schema: pa.Schema, key: list[str], what: str
    ) -> tuple[int, int]:
        """Write the rows to one Parquet file (streamed, chunk by chunk) and load it into `stage`."""
        types = {f.name: f for f in self.client.get_table(self._ref(name), retry=self._retry).schema}
        stage_fields = [
            self._bq.SchemaField(f.name, types[f.name].field_type, "REPEATED" if types[f.name].mode == "REPEATED" else "NULLABLE",
                                 precision=types[f.name].precision, scale=types[f.name].scale)  # fmt: skip
            for f in schema
        ] + [self._bq.SchemaField(SEQ_COLUMN, "INT64")]
        written = chunks = 0
        with tempfile.TemporaryDirectory(prefix="skyfed-stage-") as tmp:
            path = os.path.join(tmp, "stage.parquet")
            out_schema = pa.schema([pa.field(f.name, f.type, True) for f in schema]).append(pa.field(SEQ_COLUMN, pa.int64()))
            with pq.ParquetWriter(path, out_schema, compression="zstd") as writer:
                for chunk in _chunks(rows, CHUNK_ROWS):
                    data = conform(chunk, schema, what)
                    check_unique(data, key, what)
                    seq = pa.array(range(written, written + data.num_rows), pa.int64())
                    data = pa.Table.from_arrays([*data.columns, seq], schema=out_schema)
                    writer.write_table(data)
                    written += data.num_rows
                    chunks += 1
            config = self._bq.LoadJobConfig(
                source_format="PARQUET", write_disposition="WRITE_TRUNCATE", schema=stage_fields
            )
            config.parquet_options = self._bq.ParquetOptions()
            config.parquet_options.enable_list_inference = True
            try:
                with open(path, "rb") as fh:
                    job = self.client.load_table_from_file(fh, self._ref(stage), job_config=config, location=self.location)
                job.result(retry=self._retry)
            except Exception as exc:
                raise _error(exc, f"loading rows into a staging table for {what}") from exc
        return written, chunks

    def _load_keys(self, name: str, stage: str, keys: pa.Table, what: str) -> None:
        """Load the keys to delete into their own staging table (typed as the target's key columns)."""
        types = {f.name: f for f in self.client.get_table(self._ref(name), retry=self._retry).schema}
        fields = [
            self._bq.SchemaField(k, types[k].field_type, "NULLABLE", precision=types[k].precision, scale=types[k].scale)
            for k in keys.column_names
        ]
        config = self._bq.LoadJobConfig(source_format="PARQUET", write_disposition="WRITE_TRUNCATE", schema=fields)
        with tempfile.TemporaryDirectory(prefix="skyfed-stage-") as tmp:
            path = os.path.join(tmp, "deletes.parquet")
            pq.write_table(keys, path, compression="zstd")
            try:
                with open(path, "rb") as fh:
                    job = self.client.load_table_from_file(fh, self._ref(stage), job_config=config, location=self.location)
                job.result(retry=self._retry)
            except Exception as exc:
                raise _error(exc, f"loading the keys to delete into a staging table for {what}") from exc

    def _count_replaced(self, name: str, stage: str, key: list[str], replace: bool, del_stage: str | None = None) -> int:
        """Existing rows this commit removes: replaced by the upsert or deleted (each row counted once)."""
        if replace:
            return int(self._query(f"SELECT COUNT(*) FROM {self._sql_ref(name)}")[0][0])
        on = " AND ".join(f"T.`{k}` = S.`{k}`" for k in key)
        part = ", ".join(f"`{k}`" for k in key)
        keys = f"SELECT {part} FROM {self._sql_ref(stage)}"
        if del_stage is not None:
            keys += f" UNION ALL SELECT {part} FROM {self._sql_ref(del_stage)}"
        sql = f"SELECT COUNT(*) FROM {self._sql_ref(name)} T JOIN (SELECT DISTINCT {part} FROM ({keys})) S ON {on}"
        return int(self._query(sql)[0][0])

    def _drop(self, name: str) -> None:
        try:
            self.client.delete_table(self._ref(name), not_found_ok=True, retry=self._retry)
        except Exception:  # best effort: a later commit drops stale stages
            pass

    def _drop_stale_stages(self) -> None:
        """Drop staging tables left behind by crashed commits (older than STAGE_TTL, so never a live one)."""
        cutoff = datetime.now(timezone.utc) - STAGE_TTL
        try:
            for item in self.client.list_tables(self.dataset, retry=self._retry):
                if item.table_id.startswith(STAGE_PREFIX) and item.created and item.created < cutoff:
                    self._drop(item.table_id)
        except Exception:
            pass


# --------------------------------------------------------------------------- helpers


def _client(spec: BigQueryStore) -> Any:
    from google.api_core.client_options import ClientOptions
    from google.cloud import bigquery

    if spec.endpoint:
        from google.auth.credentials import AnonymousCredentials

        return bigquery.Client(
            project=spec.project,
            location=spec.location,
            credentials=AnonymousCredentials(),
            client_options=ClientOptions(api_endpoint=spec.endpoint),
        )
    if spec.credentials_json is not None:
        from google.oauth2 import service_account

        info = json.loads(spec.credentials_json.reveal())
        creds = service_account.Credentials.from_service_account_info(info)
        return bigquery.Client(project=spec.project, location=spec.location, credentials=creds)
    return bigquery.Client(project=spec.project, location=spec.location)


def _commit_id() -> tuple[str, int]:
    """A commit id that sorts by time: nanoseconds since the epoch plus a random suffix."""
    seq = time.time_ns()
    return f"{seq}-{uuid.uuid4().hex[:8]}", seq


def _lit(value: str | None) -> str:
    """A SQL string literal safe for any text: base64 decoded by the server (no quoting pitfalls)."""
    if value is None:
        return "CAST(NULL AS STRING)"
    encoded = base64.b64encode(value.encode()).decode()
    return f"SAFE_CONVERT_BYTES_TO_STRING(FROM_BASE64('{encoded}'))"


def _error(exc: Exception, what: str) -> SkyfedError:
    if isinstance(exc, SkyfedError):
        return exc
    message = getattr(exc, "message", None) or str(exc)
    return SkyfedError(f"{what}: {message.splitlines()[0][:500]}", "check the BigQuery endpoint, project and credentials")


__all__ = ["BigQueryCuratedStore", "bigquery_type"]
