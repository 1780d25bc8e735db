"""Iceberg copy-on-write as the streamer uses it: one rewrite per commit, files and manifests that stay bounded."""

from __future__ import annotations

import pyarrow as pa
from stores_testdata import CONTRACT, flights, store_spec
from test_stores_deletes import KEY, keys_of, same

from skyfed.ingest.stores import open_store


def _store(tmp_path):  # type: ignore[no-untyped-def]
    store = open_store("latam", store_spec("iceberg", str(tmp_path)))
    store.ensure_table("legs", CONTRACT)
    return store


def _files_and_manifests(store) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    table = store.catalog.load_table(("latam", "legs"))
    snap = table.current_snapshot()
    return len(list(table.scan().plan_files())), len(snap.manifests(table.io))


def test_upserts_and_deletes_are_one_snapshot(tmp_path, iceberg_env) -> None:
    store = _store(tmp_path)
    first = flights(range(300))
    store.commit("legs", first, key=KEY, mapping="m", position={"p": 1}, run_id="a")
    before = len(store.catalog.load_table(("latam", "legs")).metadata.snapshots)
    # 250 keys: more than the IN-list pruning takes, so every file's keys are scanned
    upserts = flights(range(100, 350), 1)
    result = store.commit("legs", upserts, key=KEY, mapping="m", position={"p": 2}, run_id="b",
                          deletes=keys_of([*range(10), 120, 400]))  # fmt: skip
    table = store.catalog.load_table(("latam", "legs"))
    assert len(table.metadata.snapshots) == before + 1, "deletes and upserts were staged as separate snapshots"
    # rows removed: the 10 deleted keys and the 200 replaced old rows (120 both; 400 and 300..349 had no row)
    assert result.rows_deleted == 10 + 200 and result.rows_written == 250
    kept = first.filter(pa.compute.is_in(first["flight_id"], value_set=keys_of(range(10, 100))["flight_id"]))
    assert same(store.read("legs"), kept, upserts)  # 120 was deleted and upserted: its new row stays
    assert store.committed_position("legs", "m") == {"p": 2}


def test_many_small_commits_keep_files_and_manifests_bounded(tmp_path, iceberg_env) -> None:
    store = _store(tmp_path)
    store.commit("legs", flights(range(1000)), key=KEY, mapping="m", position={"p": 0}, run_id="seed")
    generation = dict.fromkeys(range(1000), 0)
    commits = 40
    for n in range(1, commits + 1):
        new = list(range(1000 + 20 * (n - 1), 1000 + 20 * n))
        updated = list(range((n * 37) % 700, (n * 37) % 700 + 250))
        deleted = [i for i in range(1000 + 20 * n - 45, 1000 + 20 * n - 40) if i not in updated]
        rows = flights(sorted(set(new) | set(updated)), n)
        store.commit("legs", rows, key=KEY, mapping="m", position={"p": n}, run_id=f"r{n}", deletes=keys_of(deleted))
        generation.update(dict.fromkeys(new + updated, n))
        for i in deleted:
            generation.pop(i, None)
    files, manifests = _files_and_manifests(store)
    # Without folding small files and dropping manifests of deleted entries, both grow by at least one per commit.
    assert files < commits // 2, files
    assert manifests < commits // 2, manifests
    by_gen: dict[int, list[int]] = {}
    for i, g in generation.items():
        by_gen.setdefault(g, []).append(i)
    assert same(store.read("legs"), *[flights(sorted(ids), g) for g, ids in by_gen.items()])
