"""Iceberg data files written by DuckDB straight from a query, for the Iceberg store's fast path.

pyiceberg writes Parquet single-threaded, one partition at a time, from Arrow tables
in Python. For an append into an empty or fully refreshed table nothing has to be
matched by key, so the store lets DuckDB write the files instead: one multi-threaded
`COPY (query) TO <table location>/data/skyfed-<uuid> (PARTITION_BY ...)` with the
Iceberg field ids in the Parquet schema (so that every Iceberg reader, pyiceberg and
DuckDB's iceberg_scan alike, maps columns by id), then one `DataFile` per file with
statistics and the partition value taken from the Parquet footer. The files stay
invisible until a snapshot that lists them is committed.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import pyarrow.parquet as pq
from pyiceberg.io.pyarrow import (
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


def write_data_files(con: Any, query: str, meta: TableMetadata, partition: str | None, what: str) -> list[DataFile]:
    """Write the rows of `query` (already in the table's column order and types) as Parquet data files
    under the table's location, and describe them for a snapshot. Checks required columns have no nulls."""
    schema = meta.schema()
    directory = f"{meta.location.rstrip('/')}/data/{DIR_PREFIX}{uuid.uuid4().hex}"
    os.makedirs(os.path.dirname(directory), exist_ok=True)
    ids = ", ".join(f"'{f.name.replace(chr(39), chr(39) * 2)}': {f.field_id}" for f in schema.fields)
    options = f"FORMAT parquet, COMPRESSION zstd, FIELD_IDS {{{ids}}}"
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
