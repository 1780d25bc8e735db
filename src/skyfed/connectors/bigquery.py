"""BigQuery tables as Arrow record batches, through the official client.

Reads go through the Storage Read API (a read session with `selected_fields` and
`row_restriction`, i.e. projection and filter evaluated by BigQuery, streamed as Arrow)
where the endpoint offers it: Google's, or the emulator's gRPC port (SKYFED_BQ_GRPC)
over an insecure channel. Otherwise the REST path runs a query with the projection and
the filter in its WHERE and pages through the result (`to_arrow_iterable` with
`create_bqstorage_client=False`). The filter is transpiled from DuckDB's dialect to
BigQuery's by sqlglot; on a partitioned table a filter on the partition column prunes
partitions in both paths (BigQuery does it for row restrictions and WHERE clauses).

Client construction: `endpoint` set -> that API endpoint with anonymous credentials
(the emulator); unset -> Google's default credentials (or `credentials_json`) for the
spec's project and location.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa

from skyfed.connectors.base import (
    ReadPosition,
    ReadRequest,
    Reject,
    TableInfo,
    check_columns,
    source_error,
    transpile_filter,
)
from skyfed.errors import SkyfedError
from skyfed.spec.models import BigQuerySource

KIND = "bigquery"


def _arrow_type(field: Any) -> pa.DataType:
    t = field.field_type.upper()
    if field.mode == "REPEATED":
        inner = type(field)(field.name, field.field_type, fields=field.fields)
        return pa.list_(_arrow_type(inner))
    simple = {
        "STRING": pa.string(), "BYTES": pa.binary(), "INTEGER": pa.int64(), "INT64": pa.int64(),
        "FLOAT": pa.float64(), "FLOAT64": pa.float64(), "BOOLEAN": pa.bool_(), "BOOL": pa.bool_(),
        "TIMESTAMP": pa.timestamp("us", tz="UTC"), "DATETIME": pa.timestamp("us"), "DATE": pa.date32(),
        "TIME": pa.time64("us"), "NUMERIC": pa.decimal128(38, 9), "BIGNUMERIC": pa.decimal256(76, 38),
        "JSON": pa.string(), "GEOGRAPHY": pa.string(),
    }  # fmt: skip
    if t in ("RECORD", "STRUCT"):
        return pa.struct([pa.field(f.name, _arrow_type(f)) for f in field.fields])
    return simple.get(t, pa.string())


class BigQueryConnector:
    """Reads the tables of one BigQuery dataset."""

    kind = KIND

    def __init__(self, spec: BigQuerySource, name: str | None = None, *, use_storage_api: bool | None = None):
        self.spec = spec
        self.name = name or f"{spec.project}.{spec.dataset}"
        self.use_storage_api = use_storage_api  # None: when the endpoint offers it
        self.retry_deadline = 60.0  # seconds of retries for metadata calls before "cannot reach"
        self._client: Any = None
        self._read_client: Any = None
        self.last_method: str | None = None  # "storage" or "rest", for tests and reports
        self.last_sql: str | None = None  # REST path: the query; Storage path: the row restriction

    # ------------------------------------------------------------------ clients
    def _credentials(self) -> Any:
        if self.spec.endpoint:
            from google.auth.credentials import AnonymousCredentials

            return AnonymousCredentials()
        if self.spec.credentials_json is not None:
            from google.oauth2 import service_account

            return service_account.Credentials.from_service_account_info(json.loads(self.spec.credentials_json.reveal()))
        return None  # default credentials

    def client(self) -> Any:
        if self._client is None:
            from google.api_core.client_options import ClientOptions
            from google.cloud import bigquery

            try:
                options = ClientOptions(api_endpoint=self.spec.endpoint) if self.spec.endpoint else None
                self._client = bigquery.Client(
                    project=self.spec.project, location=self.spec.location,
                    credentials=self._credentials(), client_options=options,
                )  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - google.auth raises several kinds
                raise source_error(
                    KIND, self.name, f"cannot create a BigQuery client: {exc}",
                    "set up application default credentials or `credentials_json` in the spec",
                ) from None
        return self._client

    def _grpc_target(self) -> str | None:
        if not self.spec.endpoint:
            return None
        return os.environ.get("SKYFED_BQ_GRPC") or None

    def read_client(self) -> Any:
        """A Storage Read client, or None when the endpoint has no Storage API."""
        if self._read_client is None:
            from google.cloud import bigquery_storage_v1

            if self.spec.endpoint:
                target = self._grpc_target()
                if target is None:
                    return None
                import grpc
                from google.cloud.bigquery_storage_v1.services.big_query_read.transports import BigQueryReadGrpcTransport

                # ReadRows responses exceed gRPC's default 4 MiB receive limit on large
                # tables (9.6 MB seen at 1M flights); Google's own transport lifts it too.
                channel = grpc.insecure_channel(
                    target,
                    options=[("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)],
                )
                self._read_client = bigquery_storage_v1.BigQueryReadClient(
                    transport=BigQueryReadGrpcTransport(channel=channel)
                )
            else:
                self._read_client = bigquery_storage_v1.BigQueryReadClient(credentials=self._credentials())
        return self._read_client

    def close(self) -> None:
        for attr in ("_client", "_read_client"):
            obj = getattr(self, attr)
            if obj is not None:
                with contextlib.suppress(Exception):
                    transport = getattr(obj, "_transport", None) or getattr(obj, "transport", None)
                    (obj.close if hasattr(obj, "close") else transport.close)()
            setattr(self, attr, None)

    def _error(self, exc: BaseException, table: str | None = None) -> SkyfedError:
        from google.api_core import exceptions as gexc

        text = getattr(exc, "message", None) or str(exc)
        text = str(text).strip().splitlines()[0] if str(text).strip() else type(exc).__name__
        if isinstance(exc, gexc.NotFound):
            return source_error(
                KIND, self.name, f"not found: {text}", f"check the dataset {self.spec.dataset!r} and table names",
                table=table,
            )  # fmt: skip
        if isinstance(exc, (gexc.Unauthorized, gexc.Forbidden)):
            return source_error(KIND, self.name, f"access denied: {text}", "check the credentials and their roles", table=table)
        if isinstance(exc, gexc.BadRequest):
            return source_error(KIND, self.name, f"BigQuery rejected the request: {text}",
                                "check column names and the filter", table=table)  # fmt: skip
        endpoint = self.spec.endpoint or "bigquery.googleapis.com"
        return source_error(
            KIND, self.name, f"cannot reach BigQuery at {endpoint}: {type(exc).__name__}: {text}",
            "check the endpoint and network (locally: `skyfed up`)", table=table,
        )  # fmt: skip

    def _call(self, fn: Callable[[], Any], table: str | None = None) -> Any:
        from google.api_core import exceptions as gexc

        try:
            return fn()
        except SkyfedError:
            raise
        except (gexc.GoogleAPIError, OSError, ConnectionError) as exc:
            raise self._error(exc, table) from None
        except Exception as exc:  # noqa: BLE001 - requests' transport errors
            if type(exc).__module__.startswith(("requests", "urllib3", "google")):
                raise self._error(exc, table) from None
            raise

    # ------------------------------------------------------------------ catalog
    def _ref(self, table: str) -> str:
        return f"{self.spec.project}.{self.spec.dataset}.{table}"

    def _get(self, table: str) -> Any:
        from google.cloud import bigquery

        retry = bigquery.DEFAULT_RETRY.with_deadline(self.retry_deadline)
        return self._call(lambda: self.client().get_table(self._ref(table), retry=retry, timeout=30), table)

    def _info(self, tbl: Any) -> TableInfo:
        schema = pa.schema([pa.field(f.name, _arrow_type(f), f.mode != "REQUIRED") for f in tbl.schema])
        parts: tuple[str, ...] = ()
        if tbl.time_partitioning is not None:
            parts = (tbl.time_partitioning.field or "_PARTITIONTIME",)
        elif tbl.range_partitioning is not None:
            parts = (tbl.range_partitioning.field,)
        return TableInfo(tbl.table_id, schema, rows=tbl.num_rows, bytes=tbl.num_bytes, partitions=parts)

    def discover(self) -> list[TableInfo]:
        from google.cloud import bigquery

        retry = bigquery.DEFAULT_RETRY.with_deadline(self.retry_deadline)
        dataset = f"{self.spec.project}.{self.spec.dataset}"
        items = self._call(lambda: list(self.client().list_tables(dataset, retry=retry, timeout=30)))
        return [self._info(self._get(item.table_id)) for item in items]

    def table_info(self, table: str) -> TableInfo:
        return self._info(self._get(table))

    # ------------------------------------------------------------------ reading
    def _literal(self, value: Any) -> str:
        """A BigQuery literal for a cursor value."""
        import datetime as dt
        from decimal import Decimal

        if value is None:
            return "NULL"
        if isinstance(value, bool):
            return "TRUE" if value else "FALSE"
        if isinstance(value, (int, float)):
            return repr(value)
        if isinstance(value, Decimal):
            return f"NUMERIC '{value}'"
        if isinstance(value, dt.datetime):
            if value.tzinfo is not None:
                return f"TIMESTAMP '{value.astimezone(dt.UTC).strftime('%Y-%m-%d %H:%M:%S.%f')}+00'"
            return f"DATETIME '{value.strftime('%Y-%m-%d %H:%M:%S.%f')}'"
        if isinstance(value, dt.date):
            return f"DATE '{value.isoformat()}'"
        text = str(value).replace("\\", "\\\\").replace("'", "\\'")
        return f"'{text}'"

    def _where(self, request: ReadRequest, upto: ReadPosition | None, after: ReadPosition | None) -> list[str]:
        conds = []
        pushed = transpile_filter(KIND, self.name, request.table, request.filter, "bigquery")
        if pushed:
            conds.append(f"({pushed})")
        if request.cursor:
            cur = f"`{request.cursor}`"
            if after is not None and after.cursor_value is not None:
                conds.append(f"{cur} > {self._literal(after.cursor_value)}")
            if upto is not None and upto.cursor_value is not None:
                conds.append(f"{cur} <= {self._literal(upto.cursor_value)}")
        return conds

    def position(self, request: ReadRequest) -> ReadPosition:
        if not request.cursor:
            return ReadPosition()
        info = self.table_info(request.table)
        check_columns(KIND, self.name, request.table, info.schema, (request.cursor,))
        conds = self._where(ReadRequest(request.table, filter=request.filter), None, None)
        text = f"SELECT MAX(`{request.cursor}`) AS m FROM `{self._ref(request.table)}`"
        if conds:
            text += " WHERE " + " AND ".join(conds)
        rows = self._call(lambda: list(self.client().query(text).result()), request.table)
        value = rows[0][0] if rows else None
        return ReadPosition(cursor_value=value)

    def read(
        self,
        request: ReadRequest,
        upto: ReadPosition,
        after: ReadPosition | None = None,
        rejects: Callable[[Reject], None] | None = None,
    ) -> Iterator[pa.RecordBatch]:
        info = self.table_info(request.table)
        if request.cursor and upto.cursor_value is None:
            return
        names = check_columns(KIND, self.name, request.table, info.schema, request.columns)
        if request.cursor:
            check_columns(KIND, self.name, request.table, info.schema, (request.cursor,))
        schema = pa.schema([info.schema.field(n) for n in names])
        conds = self._where(request, upto, after)
        use_storage = self.use_storage_api
        if use_storage is None:
            use_storage = not self.spec.endpoint or self._grpc_target() is not None
        if use_storage:
            batches = self._read_storage(request.table, names, conds)
        else:
            batches = self._read_rest(request, names, conds)
        for batch in batches:
            if batch.num_rows:
                yield _conform(batch, schema)

    def _read_storage(self, table: str, names: list[str], conds: list[str]) -> Iterator[pa.RecordBatch]:
        from google.cloud.bigquery_storage_v1 import types

        self.last_method = "storage"
        restriction = " AND ".join(conds)
        self.last_sql = restriction
        client = self.read_client()
        requested = types.ReadSession(
            table=f"projects/{self.spec.project}/datasets/{self.spec.dataset}/tables/{table}",
            data_format=types.DataFormat.ARROW,
            read_options=types.ReadSession.TableReadOptions(selected_fields=names, row_restriction=restriction),
        )
        session = self._call(
            lambda: client.create_read_session(
                parent=f"projects/{self.spec.project}", read_session=requested, max_stream_count=1
            ),
            table,
        )
        if not session.streams:
            return
        arrow_schema = pa.ipc.read_schema(pa.py_buffer(session.arrow_schema.serialized_schema))
        for stream in session.streams:
            reader = self._call(lambda s=stream: client.read_rows(s.name), table)
            pages = self._call(lambda r=reader: iter(r.rows(session).pages), table)
            while True:
                page = self._call(lambda p=pages: next(p, None), table)
                if page is None:
                    break
                with warnings.catch_warnings():  # the page's own Arrow decoding is what we want
                    warnings.simplefilter("ignore", PendingDeprecationWarning)
                    batch = page.to_arrow()
                if batch.schema.names != arrow_schema.names and batch.num_rows:
                    batch = batch.select(names)
                yield batch

    def _read_rest(self, request: ReadRequest, names: list[str], conds: list[str]) -> Iterator[pa.RecordBatch]:
        self.last_method = "rest"
        cols = ", ".join(f"`{n}`" for n in names)
        text = f"SELECT {cols} FROM `{self._ref(request.table)}`"
        if conds:
            text += " WHERE " + " AND ".join(conds)
        self.last_sql = text
        job = self._call(lambda: self.client().query(text), request.table)
        rows = self._call(lambda: job.result(page_size=request.batch_rows), request.table)
        it = self._call(lambda: iter(rows.to_arrow_iterable(bqstorage_client=None)), request.table)
        while True:
            batch = self._call(lambda: next(it, None), request.table)
            if batch is None:
                break
            yield batch


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    if batch.schema.equals(schema):
        return batch
    arrays = []
    for field in schema:
        col = batch.column(field.name)
        if pa.types.is_decimal(field.type) and pa.types.is_decimal(col.type) and col.type != field.type:
            arrays.append(col)  # keep the precision BigQuery sent
            continue
        arrays.append(col.cast(field.type) if col.type != field.type else col)
    fields = [pa.field(f.name, a.type, f.nullable) for f, a in zip(schema, arrays, strict=True)]
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))
