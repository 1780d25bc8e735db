"""Data files of DuckDB-path commits that never committed are cleaned up, and nothing else is.

A kill -9 of `commit_query` (SKYFED_STORE_CRASH_AT) after DuckDB wrote the files leaves a
folder no snapshot lists, with its pending marker; the next commit on the table removes
both. A kill right after the catalog swap (the files are the table now) must keep the
folder and only drop the marker. A run that is still writing (its marker locked by a live
process) is never touched.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pytest
from stores_testdata import CONTRACT, flights, store_spec
from test_stores_behaviour import expected
from test_stores_crash import _child

from skyfed.errors import SkyfedError
from skyfed.ingest.stores import open_store, table_checksum
from skyfed.ingest.stores.iceberg_files import DIR_PREFIX, PENDING_SUFFIX

KEY = list(CONTRACT.key)
FIRST = ((0, 600), 0, {"cursor": 1})
REFRESH = ((200, 500), 2, {"cursor": 2})


@pytest.fixture
def ice(tmp_path, iceberg_env):
    spec = store_spec("iceberg", str(tmp_path))
    store = open_store("latam", spec)
    store.test_spec = spec  # type: ignore[attr-defined]  # the crash child opens the same store
    return store


def _commit_query(store, table: str, batch: tuple, replace: bool = True):
    con = duckdb.connect()
    con.register("rows", flights(range(*batch[0]), batch[1]))
    return store.commit_query(table, con, "SELECT * FROM rows", key=KEY, mapping="ops", position=batch[2],
                              run_id="rerun", replace=replace)  # fmt: skip


def _data_dir(store, table: str) -> Path:
    return Path(store._table(table).metadata.location) / "data"


def _referenced(store, table: str) -> set[str]:
    """Every data file any snapshot of the table lists (deleted entries included)."""
    t = store._table(table)
    out: set[str] = set()
    for snap in t.metadata.snapshots:
        for manifest in snap.manifests(t.io):
            out.update(e.data_file.file_path for e in manifest.fetch_manifest_entry(t.io, discard_deleted=False))
    return out


def _unreferenced(store, table: str) -> set[str]:
    on_disk = {str(p) for p in _data_dir(store, table).rglob("*.parquet")}
    return on_disk - _referenced(store, table)


def _markers(store, table: str) -> list[Path]:
    return sorted(_data_dir(store, table).glob(f"{DIR_PREFIX}*{PENDING_SUFFIX}"))


@pytest.mark.parametrize("point", ["iceberg.after_data_files", "iceberg.after_metadata"])
def test_kill_minus_nine_before_the_swap_leaves_files_the_next_commit_removes(ice, point: str) -> None:
    table = "flight_leg"
    ice.ensure_table(table, CONTRACT)
    _commit_query(ice, table, FIRST)
    assert not _unreferenced(ice, table) and not _markers(ice, table)

    proc = _child(ice, table, REFRESH, "crashed", point, replace=True, query=True)
    assert proc.returncode == -signal.SIGKILL, f"child was not killed: {proc.returncode} {proc.stderr[-2000:]}"
    orphans = _unreferenced(ice, table)
    markers = _markers(ice, table)
    assert orphans, "the crashed run wrote no data files (the DuckDB path was not taken)"
    assert len(markers) == 1, markers
    folder = Path(str(markers[0])[: -len(PENDING_SUFFIX)])
    assert all(Path(o).is_relative_to(folder) for o in orphans), (orphans, folder)
    assert store_rows(ice, table) == table_checksum(expected(flights(range(*FIRST[0]), FIRST[1])))

    # the next commit on the table, through the copy-on-write path: it cleans up before writing
    ice.commit(table, flights(range(590, 610), 3), key=KEY, mapping="ops", position={"cursor": 3}, run_id="next")
    assert not folder.exists() and not _markers(ice, table)
    assert not _unreferenced(ice, table)
    assert store_rows(ice, table) == table_checksum(
        expected(flights(range(*FIRST[0]), FIRST[1]), flights(range(590, 610), 3))
    )


def store_rows(store, table: str) -> str:
    return table_checksum(store.read(table))


def test_kill_minus_nine_after_the_swap_keeps_the_committed_files(ice) -> None:
    table = "flight_leg"
    ice.ensure_table(table, CONTRACT)
    _commit_query(ice, table, FIRST)
    proc = _child(ice, table, REFRESH, "crashed", "iceberg.after_commit", replace=True, query=True)
    assert proc.returncode == -signal.SIGKILL, f"child was not killed: {proc.returncode} {proc.stderr[-2000:]}"
    markers = _markers(ice, table)
    assert len(markers) == 1, "the commit's marker should still be there (killed before unmarking)"
    folder = Path(str(markers[0])[: -len(PENDING_SUFFIX)])
    refreshed = table_checksum(expected(flights(range(*REFRESH[0]), REFRESH[1])))
    assert store_rows(ice, table) == refreshed

    _commit_query(ice, table, ((0, 0), 0, {"cursor": 3}), replace=False)  # the next run: an empty batch
    assert folder.exists() and any(folder.rglob("*.parquet")), "a committed folder was removed"
    assert not _markers(ice, table) and not _unreferenced(ice, table)
    assert store_rows(ice, table) == refreshed
    assert ice.committed_position(table, "ops") == {"cursor": 3}


def test_a_run_still_writing_is_never_cleaned_up(ice, tmp_path) -> None:
    """A live process holding its marker's lock (mid-write) keeps its folder through another writer's commit."""
    table = "flight_leg"
    ice.ensure_table(table, CONTRACT)
    _commit_query(ice, table, FIRST)
    location = ice._table(table).metadata.location
    holder = textwrap.dedent(f"""
        import sys
        from skyfed.ingest.stores.iceberg_files import WriteDir
        with WriteDir({location!r}) as w:
            import os
            os.makedirs(w.path)
            open(os.path.join(w.path, "data_0.parquet"), "wb").write(b"in flight")
            print(w.path, flush=True)
            sys.stdin.readline()  # hold the lock until the test says so
    """)
    proc = subprocess.Popen([sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        folder = Path(proc.stdout.readline().strip())  # type: ignore[union-attr]
        assert folder.is_dir(), f"the holder did not start: {proc.poll()}"
        ice.commit(table, flights(range(10), 4), key=KEY, mapping="ops", position={"cursor": 5}, run_id="other")
        _commit_query(ice, table, REFRESH)
        assert (folder / "data_0.parquet").exists(), "the files of a run still in flight were removed"
        assert len(_markers(ice, table)) == 1
    finally:
        proc.communicate("go\n", timeout=60)  # the holder exits without committing: its lock goes
    assert proc.returncode == 0
    ice.commit(table, flights(range(10), 5), key=KEY, mapping="ops", position={"cursor": 6}, run_id="after")
    assert not folder.exists() and not _markers(ice, table)
    assert not _unreferenced(ice, table)


def test_a_failed_query_commit_leaves_no_files(ice) -> None:
    table = "flight_leg"
    ice.ensure_table(table, CONTRACT)
    con = duckdb.connect()
    con.register("rows", flights(range(10)))
    with pytest.raises(SkyfedError, match="required column seats"):
        ice.commit_query(table, con, "SELECT * REPLACE (CAST(NULL AS INTEGER) AS seats) FROM rows",
                         key=KEY, mapping="ops", position={"c": 1}, run_id="q")  # fmt: skip
    data = _data_dir(ice, table)
    assert not list(data.rglob("*.parquet")) and not _markers(ice, table), list(data.rglob("*"))
