"""Iceberg data files written by DuckDB straight from a query, for the Iceberg store's fast path.

pyiceberg writes Parquet single-threaded, one partition at a time, from Arrow tables
in Python. For an append into an empty or fully refreshed table nothing has to be
matched by key, so the store lets DuckDB write the files instead: one multi-threaded
`COPY (query) TO <table location>/data/skyfed-<uuid> (PARTITION_BY ...)` with the
Iceberg field ids in the Parquet schema (so that every Iceberg reader, pyiceberg and
DuckDB's iceberg_scan alike, maps columns by id), then one `DataFile` per file with
statistics and the partition value taken from the Parquet footer. The files stay
invisible until a snapshot that lists them is committed.

It also owns the Parquet layout of every data file the store writes, by either path
(`PARQUET_PROPERTIES`, chosen by bench/bench_scan_format.py): LZ4, row groups of
122,880 rows, pages of at most 20,480 rows, dictionaries up to 256 KiB per column chunk. Page rows that are a multiple of
DuckDB's 2,048-row vector let DuckDB's reader hand dictionary-encoded columns on as
dictionary vectors (it computes `date_trunc` or a GROUP BY key once per distinct
value); pyarrow's default of 20,000 rows per page made a vector straddle pages and
forced flat copies (3x the CPU for `date_trunc('month', dep_time_utc)`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow.parquet as pq
from pyiceberg.io.fileformat import FileFormatFactory
from pyiceberg.io.pyarrow import (
    ParquetFormatModel,
    ParquetFormatWriter,
    compute_statistics_plan,
    data_file_statistics_from_parquet_metadata,
    parquet_path_to_id_mapping,
)
from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
from pyiceberg.schema import Schema
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.transforms import (
    DayTransform,
    HourTransform,
    IdentityTransform,
    MonthTransform,
    YearTransform,
)
from pyiceberg.types import (
    BooleanType,
    DateType,
    DecimalType,
    DoubleType,
    IcebergType,
    IntegerType,
    ListType,
    LongType,
    StringType,
    TimestampType,
    TimestamptzType,
)

from skyfed.errors import SkyfedError

PART_COLUMN = "__skyfed_part"
DIR_PREFIX = "skyfed-"
PENDING_SUFFIX = ".pending"  # `data/skyfed-<id>.pending`: the run writing `data/skyfed-<id>/` has not committed (yet)
STAGING_SUFFIX = ".tmp"  # a marker being created (locked, then renamed to its name)

VECTOR_ROWS = 2048  # DuckDB's vector size: page and row-group row counts are multiples of it
# Iceberg table properties of every store table (set at creation, updated in place by the next
# ensure_table; they apply to files written from then on, older files keep their layout).
# Measured in bench/results/scan_format.json.
PARQUET_PROPERTIES: dict[str, str] = {
    # LZ4 (LZ4_RAW in the footer) decodes faster than zstd: ~-10% scan CPU; bytes +3.5% (pyarrow), +28% (DuckDB)
    "write.parquet.compression-codec": "lz4",
    "write.parquet.row-group-limit": str(60 * VECTOR_ROWS),  # 122,880 = DuckDB's own row group
    "write.parquet.page-row-limit": str(10 * VECTOR_ROWS),  # 20,480: pages end on vector boundaries
    # pyarrow's writer only: a column whose dictionary passes 256 KiB in a row group (near-unique
    # doubles, ids, update times) goes on PLAIN instead of filling a 2 MiB dictionary no query
    # profits from; up to 32k distinct 8-byte values (timestamps of a month, codes) stay dictionaries
    "write.parquet.dict-size-bytes": str(256 * 1024),
}
_DUCKDB_CODECS = {"zstd": "zstd", "lz4": "lz4", "snappy": "snappy", "gzip": "gzip", "uncompressed": "uncompressed"}


def copy_options(properties: dict[str, str]) -> str:
    """DuckDB COPY options giving the files the layout the table's Parquet properties ask for."""
    codec = properties.get("write.parquet.compression-codec", "zstd").lower()
    if codec not in _DUCKDB_CODECS:
        raise SkyfedError(
            f"the table's write.parquet.compression-codec {codec!r} is not one DuckDB writes",
            f"use one of {', '.join(sorted(_DUCKDB_CODECS))}",
        )
    out = [f"COMPRESSION {_DUCKDB_CODECS[codec]}"]
    level = properties.get("write.parquet.compression-level")
    if level and codec == "zstd":
        out.append(f"COMPRESSION_LEVEL {int(level)}")
    rows = properties.get("write.parquet.row-group-limit")
    if rows:
        out.append(f"ROW_GROUP_SIZE {int(rows)}")
    return ", ".join(out)


class _PageRowLimitWriter(ParquetFormatWriter):
    """pyiceberg's Parquet writer, honouring `write.parquet.page-row-limit` as Iceberg defines it.

    pyiceberg passes the property only as pyarrow's write_batch_size; pyarrow then cuts
    pages at its own default of 20,000 rows, which no table property reaches.
    """

    def __init__(self, output_file: Any, file_schema: Schema, properties: dict[str, str]) -> None:
        super().__init__(output_file, file_schema, properties)
        limit = self._parquet_writer_kwargs.get("write_batch_size")
        if limit:
            self._parquet_writer_kwargs["max_rows_per_page"] = limit


class _PageRowLimitModel(ParquetFormatModel):
    def create_writer(self, output_file: Any, file_schema: Schema, properties: dict[str, str]) -> ParquetFormatWriter:
        return _PageRowLimitWriter(output_file, file_schema, properties)


def use_page_row_limit() -> None:
    """Make pyiceberg's Parquet writes in this process use `_PageRowLimitWriter` (idempotent).

    pyiceberg's format registry refuses a second model for a format, so the stock one is
    replaced in its table directly (checked on upgrades by tests/ingest/stores/test_parquet_layout.py).
    """
    registry = FileFormatFactory._registry
    if not isinstance(registry.get(FileFormat.PARQUET), _PageRowLimitModel):
        registry[FileFormat.PARQUET] = _PageRowLimitModel()


use_page_row_limit()


def duckdb_type(t: IcebergType) -> str | None:
    """The DuckDB type that DuckDB's Parquet writer stores as Iceberg's `t`; None if there is none here."""
    simple = {
        StringType: "VARCHAR",
        IntegerType: "INTEGER",
        LongType: "BIGINT",
        DoubleType: "DOUBLE",
        BooleanType: "BOOLEAN",
        DateType: "DATE",
        TimestampType: "TIMESTAMP",
        TimestamptzType: "TIMESTAMPTZ",
    }
    if type(t) in simple:
        return simple[type(t)]
    if isinstance(t, DecimalType):
        return f"DECIMAL({t.precision},{t.scale})"
    if isinstance(t, ListType) and isinstance(t.element_type, StringType):
        return "VARCHAR[]"
    return None


def partition_expression(meta: TableMetadata) -> str | None | bool:
    """DuckDB SQL grouping rows by the table's partition (None: unpartitioned; False: not supported here).

    Only time transforms are supported: their values are exact from the files' min/max
    statistics, which is where the partition values of the data files are taken from.
    """
    spec = meta.spec()
    if not spec.fields:
        return None
    if len(spec.fields) > 1:
        return False
    field = spec.fields[0]
    source = meta.schema().find_field(field.source_id)
    col = '"' + source.name.replace('"', '""') + '"'
    if isinstance(source.field_type, TimestamptzType):  # UTC wall time without ICU's calendar (2x cheaper)
        col = f"make_timestamp(epoch_us({col}))"
    elif not isinstance(source.field_type, (TimestampType, DateType)):
        return False
    transform = field.transform
    if isinstance(transform, YearTransform):
        return f"year({col}) - 1970"
    if isinstance(transform, MonthTransform):
        return f"(year({col}) - 1970) * 12 + month({col}) - 1"
    if isinstance(transform, DayTransform):
        return f"datediff('day', DATE '1970-01-01', CAST({col} AS DATE))"
    if isinstance(transform, HourTransform) and not isinstance(source.field_type, DateType):
        return f"datediff('hour', TIMESTAMP '1970-01-01', {col})"
    if isinstance(transform, IdentityTransform):
        return False
    return False


def select_for(schema: Schema, query_columns: list[str], query: str, what: str) -> str | None:
    """`query` cast to the table's columns in order (missing ones NULL); None if a type has no DuckDB twin."""
    extra = [c for c in query_columns if schema.find_field(c, case_sensitive=True) is None] if query_columns else []
    if extra:
        raise SkyfedError(
            f"{what}: column(s) {', '.join(extra)} are not in the table",
            "add them to the contract or drop them in the mapping",
        )
    parts = []
    for field in schema.fields:
        t = duckdb_type(field.field_type)
        if t is None:
            return None
        name = '"' + field.name.replace('"', '""') + '"'
        value = name if field.name in query_columns else "NULL"
        parts.append(f"CAST({value} AS {t}) AS {name}")
    return f"SELECT {', '.join(parts)} FROM ({query})"


class WriteDir:
    """One run's folder of data files, `<table>/data/skyfed-<id>/`, and its pending marker.

    The marker `skyfed-<id>.pending` is created and locked (flock, exclusive) before the
    first file is written and unlinked right after the snapshot listing the files is
    committed; the lock is held until then. The kernel drops the lock when the writer
    dies (kill -9 included), so a marker that can be locked belongs to a run that will
    never commit: `remove_abandoned` may then delete its folder, unless a snapshot lists
    its files (a crash between the commit and the unlink).
    """

    def __init__(self, table_location: str):
        self.name = f"{DIR_PREFIX}{uuid.uuid4().hex}"
        self.path = f"{table_location.rstrip('/')}/data/{self.name}"
        self.marker = self.path + PENDING_SUFFIX
        self._fd: int | None = None

    def __enter__(self) -> WriteDir:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        # locked before it gets its name, so no other process ever sees the marker unlocked while we live
        staging = self.marker + STAGING_SUFFIX
        fd = os.open(staging, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.rename(staging, self.marker)
        self._fd = fd
        return self

    def committed(self) -> None:
        """The snapshot listing this folder's files is committed: it is an ordinary data folder from now on."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.marker)

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock; a marker left behind is for remove_abandoned
            self._fd = None


@contextmanager
def _locked(marker: str) -> Iterator[bool]:
    """Whether `marker` could be locked (its writer is gone) and still exists once locked."""
    try:
        fd = os.open(marker, os.O_RDONLY)
    except FileNotFoundError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            got = True
        except BlockingIOError:  # its run is writing or committing right now
            got = False
        # a marker gone once locked: its run committed and unmarked it before we got the lock
        yield got and os.path.exists(marker)
    finally:
        os.close(fd)


def remove_abandoned(table_location: str, referenced: Callable[[str], bool]) -> list[str]:
    """Delete the folders of runs on this table that died before committing; returns the folders removed.

    `referenced(folder)` must say, from table metadata loaded after the call, whether any
    snapshot lists a file under `folder`: such a folder is kept (its marker is dropped).
    Only local warehouses (the DuckDB write path's) have markers.
    """
    data = f"{table_location.rstrip('/')}/data"
    try:
        names = [e.path for e in os.scandir(data) if e.name.startswith(DIR_PREFIX)]
    except FileNotFoundError:
        return []
    for staging in sorted(n for n in names if n.endswith(PENDING_SUFFIX + STAGING_SUFFIX)):
        with _locked(staging) as abandoned:  # died before naming its marker: nothing was written
            if abandoned:
                os.unlink(staging)
    removed = []
    for marker in sorted(n for n in names if n.endswith(PENDING_SUFFIX)):
        folder = marker[: -len(PENDING_SUFFIX)]
        with _locked(marker) as abandoned:
            if not abandoned:
                continue
            if not referenced(folder):
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
            os.unlink(marker)
    return removed


def write_data_files(con: Any, query: str, meta: TableMetadata, partition: str | None, what: str,
                     directory: str | None = None) -> list[DataFile]:  # fmt: skip
    """Write the rows of `query` (already in the table's column order and types) as Parquet data files
    under the table's location (in `directory`, a WriteDir's path, or a new folder), and describe them
    for a snapshot. Checks required columns have no nulls."""
    schema = meta.schema()
    directory = directory or f"{meta.location.rstrip('/')}/data/{DIR_PREFIX}{uuid.uuid4().hex}"
    os.makedirs(os.path.dirname(directory), exist_ok=True)
    ids = ", ".join(f"'{f.name.replace(chr(39), chr(39) * 2)}': {f.field_id}" for f in schema.fields)
    options = f"FORMAT parquet, {copy_options(meta.properties)}, FIELD_IDS {{{ids}}}"
    if partition is not None:
        sql = (
            f"COPY (SELECT *, {partition} AS {PART_COLUMN} FROM ({query})) TO '{directory}' "
            f"({options}, PARTITION_BY ({PART_COLUMN}), FILENAME_PATTERN 'data_{{i}}')"
        )
    else:
        os.makedirs(directory, exist_ok=True)
        sql = f"COPY ({query}) TO '{directory}/data_0.parquet' ({options})"
    con.execute(sql)
    plan = compute_statistics_plan(schema, meta.properties)
    mapping = parquet_path_to_id_mapping(schema)
    spec = meta.spec()
    files: list[DataFile] = []
    for root, _dirs, names in os.walk(directory):
        for name in sorted(names):
            if not name.endswith(".parquet"):
                continue
            path = os.path.join(root, name)
            footer = pq.read_metadata(path)
            if footer.num_rows == 0:
                continue
            stats = data_file_statistics_from_parquet_metadata(footer, plan, mapping)
            files.append(
                DataFile.from_args(
                    content=DataFileContent.DATA,
                    file_path=path,
                    file_format=FileFormat.PARQUET,
                    partition=stats.partition(spec, schema),
                    file_size_in_bytes=os.path.getsize(path),
                    sort_order_id=None,
                    spec_id=meta.default_spec_id,
                    equality_ids=None,
                    key_metadata=None,
                    **stats.to_serialized_dict(),
                )
            )
    required = {f.field_id: f.name for f in schema.fields if f.required}
    for f in files:
        for field_id, nulls in (f.null_value_counts or {}).items():
            if field_id in required and nulls:
                raise SkyfedError(f"{what}: required column {required[field_id]} has {nulls} null value(s)")
    return files
