"""An order-independent checksum of a table's content, to prove two stores hold the same rows.

Used by the crash tests: after kill -9 and a rerun the curated table must be
identical to the one an uninterrupted run produced, whatever the row order or the
file layout. Column names, types and values count; order, chunking, field metadata
and nullability flags do not.
"""

from __future__ import annotations

import decimal
import hashlib
import json

import pyarrow as pa
import pyarrow.compute as pc


def table_checksum(table: pa.Table) -> str:
    """SHA-256 of the table sorted by all its columns, hashed as normalized Arrow IPC.

    Normalized: chunks combined, null slots filled with a fixed value (their bytes are
    otherwise undefined) and validity hashed as separate boolean columns, nested
    columns (lists) as canonical JSON text.
    """
    schema = pa.schema([pa.field(f.name, f.type) for f in table.schema])  # content only: no metadata, no nullability flags
    table = table.cast(schema)
    sortable = [f.name for f in schema if not pa.types.is_nested(f.type)]
    if table.num_rows and sortable:
        order = pc.sort_indices(table, sort_keys=[(name, "ascending", "at_end") for name in sortable])
        table = table.take(order)
    names, arrays = [], []
    for field in schema:
        col = table.column(field.name).combine_chunks()
        if pa.types.is_nested(field.type):
            col = pa.array([json.dumps(v, sort_keys=True, default=str) for v in col.to_pylist()], pa.string())
        names += [field.name, f"{field.name}.valid"]
        arrays += [_filled(col), pc.is_valid(col)]
    canonical = pa.Table.from_arrays(arrays, names=names) if arrays else pa.table({})
    digest = hashlib.sha256()
    digest.update(schema.to_string(show_field_metadata=False, show_schema_metadata=False).encode())
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, canonical.schema) as writer:
        for batch in canonical.to_batches(max_chunksize=1 << 16):
            writer.write_batch(batch)
    digest.update(sink.getvalue().to_pybytes())
    return digest.hexdigest()


def _filled(col: pa.Array) -> pa.Array:
    """`col` with every null replaced by the type's zero, so null slots hash the same everywhere."""
    if col.null_count == 0:
        return col
    t = col.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        zero = pa.scalar("", t)
    elif pa.types.is_binary(t) or pa.types.is_large_binary(t):
        zero = pa.scalar(b"", t)
    elif pa.types.is_boolean(t):
        zero = pa.scalar(False)
    elif pa.types.is_null(t):
        return col
    elif pa.types.is_decimal(t):
        zero = pa.scalar(decimal.Decimal(0), t)
    elif pa.types.is_timestamp(t) or pa.types.is_date(t) or pa.types.is_time(t) or pa.types.is_duration(t):
        zero = pa.scalar(0, pa.int64()).cast(t)
    else:
        zero = pa.scalar(0, pa.int8()).cast(t)
    return pc.fill_null(col, zero)
