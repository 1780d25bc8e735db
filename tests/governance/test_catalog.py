"""Catalog facts from a real Iceberg table in the metadata database and recorded runs."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.schema import Schema
from pyiceberg.types import NestedField, StringType

from skyfed.catalog import runs
from skyfed.catalog.metadata import metadata_url
from skyfed.errors import SkyfedError
from skyfed.governance.catalog import ICEBERG_CATALOG, search, show
from tests.governance.conftest import make_spec


def test_show_reads_the_iceberg_snapshot_and_runs(home: Path, tmp_path: Path) -> None:
    cat = SqlCatalog(ICEBERG_CATALOG, uri=metadata_url(), warehouse=f"file://{tmp_path / 'wh'}")
    cat.create_namespace("eu")
    table = cat.create_table(("eu", "booking"), schema=Schema(NestedField(1, "booking_id", StringType(), required=False)))
    table.append(pa.table({"booking_id": ["a", "b", "c"]}))
    for run_id, status, loaded, quarantined in [("r1", "ok", 3, 1), ("r2", "failed", 0, 0), ("r3", "ok", 6, 0)]:
        runs.record({"run_id": run_id, "mapping": "eu_bookings", "region": "eu", "source": "eu.ops", "source_table": "bookings",
                     "contract": "booking", "status": status, "started_at": runs.now(), "finished_at": runs.now(),
                     "rows_loaded": loaded, "rows_quarantined": quarantined})
    info = show(make_spec(), "booking")
    eu = info["regions"]["eu"]
    assert eu["snapshot"]["rows"] == 3 and eu["snapshot"]["snapshot_id"] == str(table.current_snapshot().snapshot_id)
    m = eu["mappings"]["eu_bookings"]
    assert (m["runs"], m["failed_runs"], m["rows_loaded"], m["rows_quarantined"], m["quality_pass_rate"]) == (3, 1, 9, 1, 0.9)
    with pytest.raises(SkyfedError, match="no contract named 'nope'"):
        show(make_spec(), "nope")


def test_search_covers_owners_descriptions_and_sources(home: Path) -> None:
    spec = make_spec()
    assert {(h["kind"], h["table"]) for h in search(spec, "commercial-data")} == {("table", "booking")}
    assert {h["column"] for h in search(spec, "usd")} == {"fare"}
    assert [(h["kind"], h["table"]) for h in search(spec, "bookings")] == [("source", "eu.ops.bookings")]
    assert search(spec, "no such words") == []
    with pytest.raises(SkyfedError):
        search(spec, "  ")
