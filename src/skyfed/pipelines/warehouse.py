"""Where materialized models live: Parquet files under `<state_dir>/pipelines/warehouse/`.

A model's materialization is one or more parts: `all` for a global model, one per region
for a regional one (only each region's aggregated result has left the region). Each build
writes new files under `<model>/<build_id>/`; the metadata database's state row says which
build is current, so readers in any process see either the old or the new build, never a
half-written one. Files of builds that are no longer current are removed after the commit.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from skyfed.home import sub_dir


def root() -> Path:
    return sub_dir("pipelines", "warehouse")


def new_build_id() -> str:
    return uuid.uuid4().hex[:16]


def write_part(model: str, build_id: str, part: str, table: pa.Table) -> str:
    """Write one part durably (temp file, fsync, rename) and return its path."""
    folder = root() / model / build_id
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{part}.parquet"
    tmp = folder / f".{part}.parquet.tmp"
    pq.write_table(table, tmp, compression="zstd")
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return str(path)


def read_parts(parts: dict[str, Any]) -> pa.Table | None:
    tables = [pq.read_table(p["path"]) for p in parts.values() if p.get("path")]
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]


def cleanup(model: str, keep: set[str]) -> None:
    """Remove build folders of `model` that no current part points to."""
    folder = root() / model
    if not folder.is_dir():
        return
    for child in folder.iterdir():
        if child.is_dir() and child.name not in keep:
            shutil.rmtree(child, ignore_errors=True)


def session(models: dict[str, dict[str, Any]], extra: dict[str, pa.Table] | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB (UTC) with a view per materialized model over its current Parquet parts."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for name, st in models.items():
        paths = [p["path"] for p in st["parts"].values() if p.get("path")]
        if paths:
            files = ", ".join("'" + p.replace("'", "''") + "'" for p in paths)
            con.execute(f'CREATE VIEW "{name}" AS SELECT * FROM read_parquet([{files}], union_by_name = true)')
    for name, table in (extra or {}).items():
        con.register(name, table)
    return con
