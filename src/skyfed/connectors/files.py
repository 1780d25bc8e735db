"""Files in Cloud Storage (gcsfs) or a local folder: CSV, JSON lines, Parquet, Avro.

A logical table is the set of objects matching a glob pattern below the source's
bucket/prefix or folder. The read position is each object's generation (GCS) or
mtime_ns:size (local), so a run reads only new or replaced objects.

CSV and JSON lines are read raw: every column is a string, so a wrong type is not a
read failure but something harmonization can quarantine with a reason.
`table_info().schema` reports the types inferred from a sample instead. A CSV line
with the wrong number of fields, a line that is not valid UTF-8 and a JSON line that
does not parse go to the `rejects` callback with object, line number, raw text and
reason. Parquet and Avro keep their own types. Every batch carries `_source_object`
(the object's URI) and `_source_row` (its line number for CSV and JSON lines, counting
the CSV header as line 1; its 1-based row number for Parquet and Avro).

Columns that appear only in some objects (a column added part-way through history)
are read as the union of all objects' columns, missing ones null, so every batch of
one read has the same schema. Hive partition folders (dt=2024-01-01) become string
columns. The filter runs in DuckDB over each batch (files have no server to push to);
for raw CSV/JSON columns it compares strings, so cast in the predicate when needed.
"""

from __future__ import annotations

import contextlib
import csv
import glob as globmod
import io
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from skyfed.connectors import duck
from skyfed.connectors.base import (
    SOURCE_OBJECT,
    SOURCE_ROW,
    ReadPosition,
    ReadRequest,
    Reject,
    TableInfo,
    source_error,
    transpile_filter,
)
from skyfed.errors import SkyfedError
from skyfed.spec.models import FileTable, GcsSource

KIND = "gcs"
RAW_LIMIT = 2000  # characters of a rejected record kept for quarantine
CHUNK_BYTES = 32 << 20  # JSON lines are parsed in chunks of about this size
SAMPLE_BYTES = 1 << 20
_HIVE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


@dataclass(frozen=True)
class _Object:
    key: str  # path relative to the table root, used in positions
    path: str  # what the filesystem opens
    uri: str  # gs://bucket/... or the local path, for provenance
    version: str  # generation, or mtime_ns:size
    size: int


def _const(value: Any, n: int, typ: pa.DataType) -> pa.Array:
    """A column of n copies of value, without a Python loop."""
    return pa.array([value], typ).take(pa.array(np.zeros(n, dtype=np.int32)))


class FilesConnector:
    """Reads the file tables (`tables:` in the spec) of one bucket or folder."""

    kind = KIND

    def __init__(self, spec: GcsSource, name: str | None = None):
        self.spec = spec
        self.local = spec.path is not None
        self.name = name or (spec.path if self.local else f"gs://{spec.bucket}/{spec.prefix}".rstrip("/"))
        self._fs: Any = None
        self._duck: Any = None
        self.notes: list[str] = []  # things a run report should say (empty matches, empty files)

    # ------------------------------------------------------------------ filesystem
    def _gcs(self) -> Any:
        if self._fs is None:
            os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")  # else a 60 s gRPC probe
            import gcsfs

            endpoint = self.spec.endpoint or os.environ.get("STORAGE_EMULATOR_HOST")
            kwargs: dict[str, Any] = {}
            if self.spec.credentials_json is not None:
                kwargs["token"] = json.loads(self.spec.credentials_json.reveal())
            elif endpoint:
                kwargs["token"] = "anon"
            if endpoint:
                kwargs["endpoint_url"] = endpoint if "://" in endpoint else f"http://{endpoint}"
                self._probe(kwargs["endpoint_url"])
            self._fs = gcsfs.GCSFileSystem(**kwargs)
        return self._fs

    def _probe(self, url: str) -> None:
        """Fail at once when an explicit endpoint (the emulator) refuses connections: gcsfs
        would retry every request with backoff for about half a minute first."""
        import socket
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            socket.create_connection((parts.hostname or "127.0.0.1", port), timeout=5).close()
        except OSError as exc:
            raise self._reach_error(exc, None) from None

    def _root(self) -> str:
        if self.local:
            return os.path.abspath(self.spec.path or ".")
        return f"{self.spec.bucket}/{self.spec.prefix.strip('/')}".rstrip("/")

    def _list(self, table: str) -> list[_Object]:
        spec = self._spec(table)
        root = self._root()
        pattern = spec.pattern.lstrip("/")
        found: list[_Object] = []
        if self.local:
            if not os.path.isdir(root):
                raise source_error(
                    KIND, self.name, f"folder {root} does not exist", "check `path` in the spec", table=table
                )
            for path in sorted(globmod.glob(os.path.join(root, pattern), recursive=True)):
                if not os.path.isfile(path):
                    continue
                st = os.stat(path)
                key = os.path.relpath(path, root)
                found.append(_Object(key, path, path, f"{st.st_mtime_ns}:{st.st_size}", st.st_size))
            return found
        fs = self._gcs()
        fs.invalidate_cache()
        try:
            listing = fs.glob(f"{root}/{pattern}", detail=True)
        except FileNotFoundError:
            listing = {}
        except Exception as exc:  # noqa: BLE001 - transport errors of many kinds
            raise self._reach_error(exc, table) from None
        if not listing and not self._bucket_exists():
            raise source_error(
                KIND, self.name, f"bucket {self.spec.bucket!r} does not exist",
                "check `bucket` in the spec (and the credentials' project)", table=table,
            )  # fmt: skip
        for path, info in sorted(listing.items()):
            if info.get("type") != "file":
                continue
            key = path[len(root) + 1 :] if root and path.startswith(root + "/") else path
            version = str(info.get("generation") or f"{info.get('mtime')}:{info.get('size')}")
            found.append(_Object(key, path, f"gs://{path}", version, int(info.get("size") or 0)))
        return found

    def _bucket_exists(self) -> bool:
        try:
            self._gcs().ls(self.spec.bucket)
            return True
        except FileNotFoundError:
            return False
        except Exception as exc:  # noqa: BLE001
            raise self._reach_error(exc, None) from None

    def _reach_error(self, exc: BaseException, table: str | None) -> SkyfedError:
        endpoint = self.spec.endpoint or os.environ.get("STORAGE_EMULATOR_HOST") or "Cloud Storage"
        return source_error(
            KIND, self.name, f"cannot list objects at {endpoint}: {type(exc).__name__}: {exc}",
            "check the endpoint and credentials (locally: `skyfed up`)", table=table,
        )  # fmt: skip

    def _open(self, obj: _Object) -> Any:
        return open(obj.path, "rb") if self.local else self._gcs().open(obj.path, "rb")

    def _spec(self, table: str) -> FileTable:
        spec = self.spec.tables.get(table)
        if spec is None:
            known = ", ".join(sorted(self.spec.tables)) or "none"
            raise source_error(
                KIND, self.name, f"table {table!r} is not declared", f"declared tables: {known}", table=table
            )
        return spec

    def close(self) -> None:
        if self._duck is not None:
            with contextlib.suppress(Exception):
                self._duck.close()
            self._duck = None

    def _duckdb(self) -> Any:
        if self._duck is None:
            self._duck = duck.connect(["avro"])
            if not self.local:
                self._duck.register_filesystem(self._gcs())
        return self._duck

    # ------------------------------------------------------------------ discovery
    def discover(self) -> list[TableInfo]:
        return [self.table_info(t) for t in self.spec.tables]

    def table_info(self, table: str) -> TableInfo:
        spec = self._spec(table)
        objects = self._list(table)
        partitions = self._partition_names(objects) if spec.hive_partitioning else []
        sample = [objects[0], objects[-1]] if len(objects) > 1 else objects
        schemas = [self._infer(obj, spec) for obj in sample]
        schema = _unify_inferred(schemas)
        for part in partitions:
            if part not in schema.names:
                schema = schema.append(pa.field(part, pa.string()))
        schema = schema.append(pa.field(SOURCE_OBJECT, pa.string())).append(pa.field(SOURCE_ROW, pa.int64()))
        total = sum(o.size for o in objects)
        rows = None
        if spec.format == "parquet" and objects:
            with contextlib.suppress(Exception):
                rows = 0
                for obj in objects:
                    with self._open(obj) as fh:
                        rows += pq.ParquetFile(fh).metadata.num_rows
        return TableInfo(table, schema, rows=rows, bytes=total, partitions=tuple(partitions))

    def _infer(self, obj: _Object, spec: FileTable) -> pa.Schema:
        """Column types as the format's reader infers them from the start of one object."""
        with self._open(obj) as fh:
            if spec.format == "parquet":
                return pq.ParquetFile(fh).schema_arrow
            if spec.format == "avro":
                import fastavro

                reader = fastavro.reader(fh)
                rows = [rec for _, rec in zip(range(1000), reader, strict=False)]
                return pa.Table.from_pylist(rows).schema if rows else pa.schema([])
            head = fh.read(SAMPLE_BYTES)
        head = head[: head.rfind(b"\n") + 1] or head
        try:
            if spec.format == "csv":
                return pacsv.read_csv(io.BytesIO(head), parse_options=self._csv_parse(spec, None)).schema
            import pyarrow.json as pajson

            return pajson.read_json(io.BytesIO(head)).schema
        except (pa.ArrowInvalid, UnicodeDecodeError):
            names = self._csv_header(head, spec) if spec.format == "csv" else []
            return pa.schema([pa.field(n, pa.string()) for n in names])

    @staticmethod
    def _partition_names(objects: list[_Object]) -> list[str]:
        names: list[str] = []
        for obj in objects:
            for part in obj.key.split("/")[:-1]:
                m = _HIVE.match(part)
                if m and m.group(1) not in names:
                    names.append(m.group(1))
        return names

    # ------------------------------------------------------------------ positions
    def position(self, request: ReadRequest) -> ReadPosition:
        objects = self._list(request.table)
        if not objects:
            self.notes.append(f"table {request.table}: pattern {self._spec(request.table).pattern!r} matched no objects")
        return ReadPosition(objects={o.key: o.version for o in objects})

    # ------------------------------------------------------------------ reading
    def read(
        self,
        request: ReadRequest,
        upto: ReadPosition,
        after: ReadPosition | None = None,
        rejects: Callable[[Reject], None] | None = None,
    ) -> Iterator[pa.RecordBatch]:
        spec = self._spec(request.table)
        seen = after.objects if after is not None else {}
        todo = [
            o for o in self._list(request.table)
            if o.key in upto.objects and seen.get(o.key) != upto.objects[o.key]
        ]  # fmt: skip
        if not todo:
            return
        if rejects is None:
            rejects = self._raise_reject
        partitions = self._partition_names(todo) if spec.hive_partitioning else []
        columns = self._union_columns(todo, spec, partitions)
        if request.columns is not None:
            missing = [c for c in request.columns if c not in columns]
            if missing:
                import difflib

                near = difflib.get_close_matches(missing[0], list(columns), n=1)
                raise source_error(
                    KIND, self.name, f"column {missing[0]!r} does not exist in any object of the table",
                    f"did you mean {near[0]!r}?" if near else f"the table has: {', '.join(columns)}",
                    table=request.table,
                )  # fmt: skip
            keep = list(request.columns)
        else:
            keep = list(columns)
        out_schema = pa.schema([pa.field(c, columns[c]) for c in keep]).append(
            pa.field(SOURCE_OBJECT, pa.string())
        ).append(pa.field(SOURCE_ROW, pa.int64()))
        predicate = transpile_filter(KIND, self.name, request.table, request.filter, "duckdb")
        for obj in todo:
            hive = {}
            for part in obj.key.split("/")[:-1]:
                m = _HIVE.match(part)
                if m and spec.hive_partitioning:
                    hive[m.group(1)] = m.group(2)
            for batch, rows in self._read_object(obj, spec, request, rejects):
                n = batch.num_rows
                if n == 0:
                    continue
                arrays = []
                for field in out_schema:
                    if field.name == SOURCE_OBJECT:
                        arrays.append(_const(obj.uri, n, pa.string()))
                    elif field.name == SOURCE_ROW:
                        arrays.append(pa.array(rows, pa.int64()))
                    elif field.name in batch.schema.names:
                        arrays.append(batch.column(field.name).cast(field.type))
                    elif field.name in hive:
                        arrays.append(_const(hive[field.name], n, pa.string()))
                    else:
                        arrays.append(pa.nulls(n, field.type))
                out = pa.RecordBatch.from_arrays(arrays, schema=out_schema)
                if predicate:
                    out = self._filter(out, predicate, request.table)
                if out.num_rows:
                    yield out

    def _raise_reject(self, reject: Reject) -> None:
        raise source_error(
            KIND, self.name, f"{reject.location}: {reject.reason}",
            "pass a rejects handler (ingestion quarantines these records)", table=reject.table,
        )  # fmt: skip

    def _filter(self, batch: pa.RecordBatch, predicate: str, table: str) -> pa.RecordBatch:
        con = self._duckdb()
        try:
            con.register("_skyfed_batch", batch)
            result = con.execute(f"SELECT * FROM _skyfed_batch WHERE {predicate}").to_arrow_table()
        except Exception as exc:  # noqa: BLE001 - duckdb binder/conversion errors
            raise source_error(
                KIND, self.name, f"the filter {predicate!r} failed: {exc}", "fix the mapping's filter", table=table
            ) from None
        finally:
            with contextlib.suppress(Exception):
                con.unregister("_skyfed_batch")
        result = result.cast(batch.schema)
        return result.combine_chunks().to_batches()[0] if result.num_rows else batch.slice(0, 0)

    def _union_columns(self, objects: list[_Object], spec: FileTable, partitions: list[str]) -> dict[str, pa.DataType]:
        """Every column of every object (first appearance order), with one type each."""
        cols: dict[str, pa.DataType] = {}
        for obj in objects:
            for field in self._object_schema(obj, spec):
                if field.name not in cols:
                    cols[field.name] = field.type
                elif cols[field.name] != field.type:
                    cols[field.name] = pa.unify_schemas(
                        [pa.schema([pa.field("x", cols[field.name])]), pa.schema([pa.field("x", field.type)])],
                        promote_options="permissive",
                    ).field("x").type
        for part in partitions:
            cols.setdefault(part, pa.string())
        return cols

    def _object_schema(self, obj: _Object, spec: FileTable) -> pa.Schema:
        if obj.size == 0:
            return pa.schema([])
        if spec.format == "csv":
            with self._open(obj) as fh:
                head = fh.readline()
            return pa.schema([pa.field(n, pa.string()) for n in self._csv_header(head, spec)])
        if spec.format == "jsonl":
            con = self._duckdb()
            keys: list[str] = []
            for raw, numbers in self._json_lines(obj, None, None):
                valid = list(_utf8_batches(
                    pa.RecordBatch.from_arrays([raw], ["line"]), numbers, obj, "", lambda r: None, lambda r: ""))  # fmt: skip
                if not valid:
                    continue
                con.register("_skyfed_lines", pa.table({
                    "line": pa.chunked_array([b.column(0) for b, _ in valid], pa.string()),
                    "n": pa.array(np.concatenate([n for _, n in valid]), pa.int64()),
                }))  # fmt: skip
                try:
                    found = con.execute(
                        "SELECT k FROM (SELECT n, unnest(json_keys(line)) AS k, unnest(range(len(json_keys(line)))) AS i "
                        "FROM _skyfed_lines WHERE json_valid(line) AND json_type(line) = 'OBJECT') "
                        "GROUP BY k ORDER BY min(n * 1000000 + i)"
                    ).fetchall()
                finally:
                    con.unregister("_skyfed_lines")
                keys += [k for (k,) in found if k not in keys]
            return pa.schema([pa.field(k, pa.string()) for k in keys])
        if spec.format == "parquet":
            with self._open(obj) as fh:
                return pq.ParquetFile(fh).schema_arrow
        con = self._duckdb()
        return con.execute(f"SELECT * FROM read_avro('{self._duck_path(obj)}') LIMIT 0").to_arrow_table().schema

    def _duck_path(self, obj: _Object) -> str:
        return (obj.path if self.local else f"gs://{obj.path}").replace("'", "''")

    # ------------------------------------------------------------------ per format
    def _read_object(
        self, obj: _Object, spec: FileTable, request: ReadRequest, rejects: Callable[[Reject], None]
    ) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
        if obj.size == 0:
            self.notes.append(f"table {request.table}: object {obj.uri} is empty")
            return
        if spec.format == "csv":
            yield from self._read_csv(obj, spec, request, rejects)
        elif spec.format == "jsonl":
            yield from self._read_jsonl(obj, request, rejects)
        elif spec.format == "parquet":
            with self._open(obj) as fh:
                start = 1
                for batch in pq.ParquetFile(fh).iter_batches(batch_size=request.batch_rows):
                    yield batch, np.arange(start, start + batch.num_rows, dtype=np.int64)
                    start += batch.num_rows
        else:  # avro, decoded by DuckDB's avro extension (no per-record Python)
            con = self._duckdb().cursor()
            try:
                reader = con.execute(f"SELECT * FROM read_avro('{self._duck_path(obj)}')").to_arrow_reader(
                    request.batch_rows
                )
                start = 1
                for batch in reader:
                    yield batch, np.arange(start, start + batch.num_rows, dtype=np.int64)
                    start += batch.num_rows
            finally:
                con.close()

    def _csv_parse(self, spec: FileTable, handler: Callable[[Any], str] | None) -> pacsv.ParseOptions:
        opts = spec.options
        return pacsv.ParseOptions(
            delimiter=str(opts.get("delimiter", ",")),
            quote_char=str(opts.get("quote", '"')) or False,
            invalid_row_handler=handler,
            ignore_empty_lines=False,
        )

    def _csv_header(self, head: bytes, spec: FileTable) -> list[str]:
        line = head.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", errors="replace")
        delimiter = str(spec.options.get("delimiter", ","))
        return next(csv.reader([line], delimiter=delimiter), [])

    def _read_csv(
        self, obj: _Object, spec: FileTable, request: ReadRequest, rejects: Callable[[Reject], None]
    ) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
        with self._open(obj) as fh:
            header = self._csv_header(fh.readline(), spec)
        if not header:
            self.notes.append(f"table {request.table}: object {obj.uri} has no header line")
            return
        bad_lines: list[int] = []
        failed: list[BaseException] = []  # pyarrow swallows exceptions raised in the handler

        def on_bad(row: Any) -> str:
            text = row.text or ""
            if text.strip():
                line = row.number if row.number is not None else -1
                bad_lines.append(line)
                try:
                    rejects(Reject(
                        request.table, f"{obj.uri}:{line}", text[:RAW_LIMIT],
                        f"expected {row.expected_columns} fields, found {row.actual_columns}",
                    ))  # fmt: skip
                except BaseException as exc:  # noqa: BLE001 - re-raised in the reading thread
                    failed.append(exc)
            else:
                bad_lines.append(row.number if row.number is not None else -1)
            return "skip"

        read_opts = pacsv.ReadOptions(use_threads=False, block_size=8 << 20)
        convert = pacsv.ConvertOptions(
            column_types={n: pa.binary() for n in header}, strings_can_be_null=False, quoted_strings_can_be_null=False
        )
        next_line = 2  # line 1 is the header
        with self._open(obj) as fh:
            try:
                reader = pacsv.open_csv(fh, read_options=read_opts, parse_options=self._csv_parse(spec, on_bad),
                                        convert_options=convert)  # fmt: skip
                for batch in reader:
                    if failed:
                        raise failed[0]
                    n = batch.num_rows
                    if n == 0:
                        continue
                    # line numbers of this batch's rows: the next n lines not taken by skipped bad lines
                    bad = np.fromiter((b for b in bad_lines if b >= next_line), dtype=np.int64)
                    cand = np.arange(next_line, next_line + n + len(bad), dtype=np.int64)
                    lines = cand[~np.isin(cand, bad)][:n]
                    next_line = int(lines[-1]) + 1
                    batch, lines = _drop_blank(batch, lines)
                    yield from _utf8_batches(batch, lines, obj, request.table, rejects, self._row_text_csv(spec))
                if next_line == 2 and not bad_lines:
                    self.notes.append(f"table {request.table}: object {obj.uri} has a header but no data lines")
            except pa.ArrowInvalid as exc:
                if failed:
                    raise failed[0] from None
                raise source_error(
                    KIND, self.name, f"object {obj.uri} is not readable as CSV: {exc}", table=request.table
                ) from None

    @staticmethod
    def _row_text_csv(spec: FileTable) -> Callable[[dict[str, bytes]], str]:
        delimiter = str(spec.options.get("delimiter", ","))

        def text(row: dict[str, bytes]) -> str:
            return delimiter.join((v or b"").decode("utf-8", errors="backslashreplace") for v in row.values())

        return text

    def _json_lines(
        self, obj: _Object, table: str | None, rejects: Callable[[Reject], None] | None
    ) -> Iterator[tuple[pa.Array, np.ndarray]]:
        """(lines as a binary array, their 1-based line numbers), in chunks at line boundaries."""
        first = 1
        carry = b""
        with self._open(obj) as fh:
            while True:
                chunk = fh.read(CHUNK_BYTES)
                data = carry + chunk
                if not chunk:
                    if not data:
                        return
                    if not data.endswith(b"\n"):
                        data += b"\n"
                    carry = b""
                else:
                    cut = data.rfind(b"\n") + 1
                    if cut == 0:
                        carry = data
                        continue
                    data, carry = data[:cut], data[cut:]
                buf = np.frombuffer(data, dtype=np.uint8)
                ends = np.flatnonzero(buf == 10)
                starts = np.concatenate(([0], ends[:-1] + 1))
                # each line is [start, end): a binary array whose values exclude the newline
                lengths = ends - starts
                offs = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
                body = np.delete(buf, ends).tobytes()
                lines = pa.Array.from_buffers(pa.large_binary(), len(ends), [None, pa.py_buffer(offs), pa.py_buffer(body)])
                numbers = np.arange(first, first + len(ends), dtype=np.int64)
                first += len(ends)
                yield lines, numbers
                if not chunk:
                    return

    def _read_jsonl(
        self, obj: _Object, request: ReadRequest, rejects: Callable[[Reject], None]
    ) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
        con = self._duckdb().cursor()
        keys = self._object_schema(obj, self._spec(request.table)).names
        try:
            for lines, numbers in self._json_lines(obj, request.table, rejects):
                for batch, nums in _utf8_batches(pa.RecordBatch.from_arrays([lines], ["line"]), numbers, obj,
                                                 request.table, rejects, lambda r: (r["line"] or b"").decode("utf-8", "backslashreplace")):  # fmt: skip
                    text = batch.column(0).cast(pa.large_string())
                    tbl = pa.table({"line": text, "n": pa.array(nums, pa.int64())})
                    con.register("_skyfed_lines", tbl)
                    try:
                        bad = con.execute(
                            "SELECT n, line FROM _skyfed_lines WHERE trim(line) <> '' AND "
                            "(NOT json_valid(line) OR json_type(line) <> 'OBJECT')"
                        ).fetchall()
                        for n, line in bad:
                            rejects(Reject(request.table, f"{obj.uri}:{n}", line[:RAW_LIMIT], "not a JSON object"))
                        sel = ", ".join(
                            f"json_extract_string(line, '$.\"{k.replace(chr(39), chr(39) * 2)}\"') AS \"{k.replace(chr(34), chr(34) * 2)}\""
                            for k in keys
                        )
                        result = con.execute(
                            f"SELECT n{', ' + sel if sel else ''} FROM _skyfed_lines WHERE trim(line) <> '' AND "
                            "json_valid(line) AND json_type(line) = 'OBJECT' ORDER BY n"
                        ).to_arrow_table()
                    finally:
                        con.unregister("_skyfed_lines")
                    if result.num_rows == 0:
                        continue
                    rows = result.column("n").to_numpy()
                    data = result.drop_columns(["n"])
                    for start in range(0, data.num_rows, request.batch_rows):
                        part = data.slice(start, request.batch_rows).combine_chunks()
                        part = part.cast(pa.schema([pa.field(k, pa.string()) for k in part.column_names]))
                        yield (part.to_batches()[0] if part.num_columns else pa.RecordBatch.from_pydict({}),
                               rows[start : start + request.batch_rows])  # fmt: skip
        finally:
            con.close()


def _unify_inferred(schemas: list[pa.Schema]) -> pa.Schema:
    """The union of sampled objects' inferred schemas; a column inferred as two types that do
    not promote (int64 in one CSV object, string in one whose lines did not all parse) is text."""
    if not schemas:
        return pa.schema([])
    try:
        return pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        pass
    types: dict[str, pa.DataType] = {}
    for schema in schemas:
        for f in schema:
            types[f.name] = f.type if types.get(f.name, f.type) == f.type else pa.string()
    return pa.schema([pa.field(n, t) for n, t in types.items()])


def _drop_blank(batch: pa.RecordBatch, lines: np.ndarray) -> tuple[pa.RecordBatch, np.ndarray]:
    """Drop rows whose every field is empty (blank lines): they hold no record."""
    if batch.num_columns == 0:
        return batch, lines
    blank = None
    for col in batch.columns:
        empty = pc.equal(pc.binary_length(col), 0)
        blank = empty if blank is None else pc.and_(blank, empty)
    if not pc.any(blank).as_py():
        return batch, lines
    keep = pc.invert(blank)
    return batch.filter(keep), lines[keep.to_numpy(zero_copy_only=False)]


def _utf8_batches(
    batch: pa.RecordBatch,
    lines: np.ndarray,
    obj: _Object,
    table: str,
    rejects: Callable[[Reject], None],
    raw_text: Callable[[dict[str, bytes]], str],
) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
    """Binary columns as UTF-8 strings; rows with invalid UTF-8 go to rejects (found by bisection)."""
    try:
        yield _as_strings(batch), lines
        return
    except pa.ArrowInvalid:
        pass
    if batch.num_rows == 1:
        row = {k: v for k, v in batch.to_pylist()[0].items()}
        rejects(Reject(table, f"{obj.uri}:{int(lines[0])}", raw_text(row)[:RAW_LIMIT], "invalid UTF-8"))
        return
    mid = batch.num_rows // 2
    yield from _utf8_batches(batch.slice(0, mid), lines[:mid], obj, table, rejects, raw_text)
    yield from _utf8_batches(batch.slice(mid), lines[mid:], obj, table, rejects, raw_text)


def _as_strings(batch: pa.RecordBatch) -> pa.RecordBatch:
    large = any(pa.types.is_large_binary(c.type) for c in batch.columns)
    target = pa.large_string() if large else pa.string()
    arrays = [c.cast(target).cast(pa.string()) if large else c.cast(target) for c in batch.columns]
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)

