"""The Iceberg store's Parquet layout (iceberg_files.PARQUET_PROPERTIES) reaches the files of both write paths.

New tables get the properties; existing tables get them in place on the next
ensure_table (files written before keep their layout); pyiceberg's writer cuts pages at
`write.parquet.page-row-limit` rows (pyarrow's own default otherwise), and DuckDB's COPY
uses the same codec and row-group size.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow.parquet as pq
from pyiceberg.io.fileformat import FileFormatFactory
from pyiceberg.manifest import FileFormat
from stores_testdata import CONTRACT, flights, store_spec

from skyfed.ingest.stores import open_store
from skyfed.ingest.stores.iceberg import IcebergCuratedStore
from skyfed.ingest.stores.iceberg_files import PARQUET_PROPERTIES

KEY = list(CONTRACT.key)
CODECS = {"zstd": "ZSTD", "lz4": "LZ4", "snappy": "SNAPPY"}  # Iceberg codec -> pyarrow footer name (LZ4 is LZ4_RAW)


def _files(store, table: str) -> list[str]:
    return [t.file.file_path for t in store._table(table).scan().plan_files()]


def test_both_write_paths_write_the_chosen_layout(tmp_path, iceberg_env) -> None:
    store = open_store("latam", store_spec("iceberg", str(tmp_path)))
    store.ensure_table("via_duckdb", CONTRACT)
    store.ensure_table("via_pyarrow", CONTRACT)
    for table in ("via_duckdb", "via_pyarrow"):
        props = store._table(table).properties
        assert {k: props.get(k) for k in PARQUET_PROPERTIES} == PARQUET_PROPERTIES

    rows = flights(range(3000))
    con = duckdb.connect()
    con.register("rows", rows)
    store.commit_query("via_duckdb", con, "SELECT * FROM rows", key=KEY, mapping="m", position={"c": 1}, run_id="r")
    store.commit("via_pyarrow", rows, key=KEY, mapping="m", position={"c": 1}, run_id="r")
    codec = CODECS[PARQUET_PROPERTIES["write.parquet.compression-codec"]]
    limit = int(PARQUET_PROPERTIES["write.parquet.row-group-limit"])
    for table, writer in (("via_duckdb", "DuckDB"), ("via_pyarrow", "parquet-cpp-arrow")):
        paths = _files(store, table)
        assert paths, table
        for path in paths:
            footer = pq.read_metadata(path)
            assert writer in footer.created_by, (table, footer.created_by)
            for g in range(footer.num_row_groups):
                group = footer.row_group(g)
                assert group.num_rows <= limit
                assert {group.column(c).compression for c in range(group.num_columns)} == {codec}, (table, path)


def test_pyiceberg_pages_follow_the_page_row_limit(tmp_path) -> None:
    from pyiceberg.io.pyarrow import PyArrowFileIO
    from pyiceberg.schema import Schema
    from pyiceberg.types import LongType, NestedField

    schema = Schema(NestedField(1, "x", LongType(), required=True))
    out = PyArrowFileIO().new_output(str(tmp_path / "x.parquet"))
    model = FileFormatFactory.get(FileFormat.PARQUET)
    kwargs = model.create_writer(out, schema, {"write.parquet.page-row-limit": "4096"})._parquet_writer_kwargs
    assert kwargs.get("max_rows_per_page") == 4096, kwargs
    default = model.create_writer(out, schema, dict(PARQUET_PROPERTIES))._parquet_writer_kwargs
    assert default["max_rows_per_page"] == int(PARQUET_PROPERTIES["write.parquet.page-row-limit"])
    assert default["max_rows_per_page"] % 2048 == 0  # whole DuckDB vectors per page


def test_existing_tables_get_the_layout_in_place(tmp_path, iceberg_env) -> None:
    spec = store_spec("iceberg", str(tmp_path))
    old = IcebergCuratedStore("latam", spec, iceberg_env, parquet={"write.parquet.compression-codec": "snappy"})
    old.ensure_table("flight_leg", CONTRACT)
    old.commit("flight_leg", flights(range(100)), key=KEY, mapping="m", position={"c": 1}, run_id="r")
    before = _files(old, "flight_leg")
    assert {pq.read_metadata(p).row_group(0).column(0).compression for p in before} == {"SNAPPY"}

    new = open_store("latam", spec)
    new.ensure_table("flight_leg", CONTRACT)  # what every ingest or stream run does first
    props = new._table("flight_leg").properties
    assert {k: props.get(k) for k in PARQUET_PROPERTIES} == PARQUET_PROPERTIES
    new.commit("flight_leg", flights(range(100, 200)), key=KEY, mapping="m", position={"c": 2}, run_id="r")
    added = [p for p in _files(new, "flight_leg") if p not in before]
    codec = CODECS[PARQUET_PROPERTIES["write.parquet.compression-codec"]]
    assert added and {pq.read_metadata(p).row_group(0).column(0).compression for p in added} == {codec}
    assert all(Path(p).exists() for p in before)  # older files are not rewritten
    assert new.row_count("flight_leg") == 200
