"""kill -9 in the middle of a commit: the table is the old or the new state, and the position matches it.

Each case runs the commit in a child process that SIGKILLs itself at one point of the
commit protocol (SKYFED_STORE_CRASH_AT), then reruns the commit the way the runner
would (from `committed_position`) and compares checksums with an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from skyfed.ingest.stores import CuratedStore, table_checksum
from skyfed.ingest.stores.base import CRASH_ENV
from stores_testdata import CONTRACT, flights

CHILD = Path(__file__).with_name("crash_child.py")
KEY = list(CONTRACT.key)

# point -> does the new state survive? (None: the point is never reached for this kind)
POINTS = {
    "iceberg": {
        "iceberg.before_write": False,
        "iceberg.after_data_files": False,  # data files and manifests written, catalog untouched
        "iceberg.after_metadata": False,  # new metadata.json written, pointer not swapped
        "iceberg.after_commit": True,  # pointer swapped in the catalog database
    },
    "bigquery": {
        "bigquery.before_write": False,
        "bigquery.after_stage": False,  # rows loaded into the staging table, no transaction yet
        "bigquery.after_commit": True,  # MERGE + position committed, staging table not dropped yet
    },
}

# the batches of a run: (ids, generation, position)
FIRST = ((0, 3000), 0, {"cursor": 1})
SECOND = ((2500, 4000), 1, {"cursor": 2})  # 500 updates, 1000 new rows
THIRD_REPLACE = ((1000, 1800), 2, {"cursor": 3})


def _child(store: CuratedStore, table: str, batch: tuple, run_id: str, crash: str | None, replace: bool = False,
           deletes: list[int] | None = None, query: bool = False):  # fmt: skip
    spec = store.test_spec  # type: ignore[attr-defined]
    args = {
        "spec": spec.model_dump(mode="json", by_alias=True),
        "region": store.region,
        "table": table,
        "ids": list(batch[0]),
        "generation": batch[1],
        "position": batch[2],
        "run_id": run_id,
        "replace": replace,
        "deletes": deletes,
        "query": query,
    }
    env = os.environ.copy()
    env.pop(CRASH_ENV, None)
    if crash:
        env[CRASH_ENV] = crash
    return subprocess.run(
        [sys.executable, str(CHILD), json.dumps(args)],
        env=env,
        cwd=str(CHILD.parent),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _commit(store: CuratedStore, table: str, batch: tuple, run_id: str, replace: bool = False):
    ids, gen, pos = batch
    return store.commit(table, flights(range(*ids), gen), key=KEY, mapping="ops", position=pos, run_id=run_id,
                        replace=replace)  # fmt: skip


def _resume(store: CuratedStore, table: str, plan: list[tuple[tuple, bool]]) -> None:
    """What the runner does after a crash: apply every batch past the committed position."""
    done = (store.committed_position(table, "ops") or {}).get("cursor", 0)
    for batch, replace in plan:
        if batch[2]["cursor"] > done:
            _commit(store, table, batch, f"rerun-{batch[2]['cursor']}", replace)


@pytest.mark.parametrize("replace", [False, True], ids=["upsert", "replace"])
def test_kill_minus_nine_during_commit(store: CuratedStore, replace: bool) -> None:
    plan = [(FIRST, False), (SECOND, False), (THIRD_REPLACE, True)] if replace else [(FIRST, False), (SECOND, False)]
    crashing = plan[-1]

    # the uninterrupted run, in its own table
    store.ensure_table("reference", CONTRACT)
    states = []
    for batch, rep in plan:
        _commit(store, "reference", batch, "ref", rep)
        states.append(table_checksum(store.read("reference")))
    old, new = states[-2], states[-1]

    for i, (point, survives) in enumerate(POINTS[store.kind].items()):
        table = f"crash_{'r' if replace else 'u'}{i}"
        store.ensure_table(table, CONTRACT)
        for batch, rep in plan[:-1]:
            _commit(store, table, batch, "before", rep)
        snap_before = store.snapshot_id(table)

        proc = _child(store, table, crashing[0], "crashed", point, crashing[1])
        assert proc.returncode == -signal.SIGKILL, f"{point}: child was not killed: {proc.returncode} {proc.stderr[-2000:]}"

        state = table_checksum(store.read(table))
        position = store.committed_position(table, "ops")
        if survives:
            assert state == new, f"{point}: expected the new state"
            assert position == crashing[0][2], point
            assert store.snapshot_id(table) != snap_before
        else:
            assert state == old, f"{point}: expected the old state"
            assert position == plan[-2][0][2], point
            assert store.snapshot_id(table) == snap_before

        _resume(store, table, plan)
        assert table_checksum(store.read(table)) == new, f"{point}: rerun differs from an uninterrupted run"
        assert store.committed_position(table, "ops") == crashing[0][2]


def test_child_commit_without_crash(store: CuratedStore) -> None:
    store.ensure_table("plain", CONTRACT)
    proc = _child(store, "plain", FIRST, "child", None)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["rows_written"] == 3000
    assert store.committed_position("plain", "ops") == {"cursor": 1}
    assert store.row_count("plain") == 3000
