"""A new source column during change capture: ALTER TABLE ... ADD COLUMN mid-stream, judged by the
mapping's drift mode (the governance file, as for batch ingestion) at the relation message that
announces the new shape.

evolve: the column is recorded as ignored (the mapping does not read it) and the stream goes on;
discard_row: rows with a value in it go to the quarantine with the drift reason; freeze: the
streamer stops with an error naming the column, and nothing after the last commit is committed
or acknowledged (switching to evolve then delivers every change: none was skipped).
"""

from __future__ import annotations

import pytest
from stream_kit import (
    cdc_home,
    committed_position,
    curated,
    expected_items,
    pg,
)

from skyfed.governance.drift import drift_decisions
from skyfed.ingest.stores import open_store, table_checksum
from skyfed.stream import runner

pytestmark = pytest.mark.services

DB = "skyfed_stream_drift"


@pytest.fixture(scope="module")
def setup(federation, tmp_path_factory):
    home = tmp_path_factory.mktemp("stream-drift-home")
    governance = home / "skyfed.governance.yaml"
    seed = "INSERT INTO items (id, qty, note) SELECT g, g, 'seed' FROM generate_series(1, 20) g"
    with cdc_home(home, DB, "drifttest", seed=seed, SKYFED_GOVERNANCE=str(governance)) as (path, spec):
        yield home, path, spec, governance


def _mode(governance, mode: str) -> None:
    governance.write_text(f"drift:\n  mappings:\n    latam_items: {{columns: {mode}}}\n", encoding="utf-8")


def _stream(spec) -> tuple[dict, list[str]]:
    events: list[str] = []
    stats = runner.run(spec, ["latam.ops"], until_idle=True, idle_seconds=0.5, on_event=lambda _, text: events.append(text))
    return stats["latam.ops"].to_dict(), events


def _same(spec) -> None:
    got, want = curated(spec), expected_items(DB)
    assert got.num_rows == want.num_rows, f"curated has {got.num_rows} rows, the source {want.num_rows}"
    assert table_checksum(got) == table_checksum(want)


def _decision(column: str) -> dict:
    found = [d for d in drift_decisions("latam_items") if d["column"] == column]
    assert found, f"no drift decision recorded for column {column}: {drift_decisions('latam_items')}"
    return found[-1]


def test_new_column_under_evolve_is_recorded_and_streaming_goes_on(setup):
    home, path, spec, governance = setup
    _mode(governance, "evolve")
    _stream(spec)  # the snapshot: the accepted schema is recorded
    with pg(DB) as con:
        con.execute("INSERT INTO items (id, qty, note) VALUES (100, 1, 'old shape')")
        con.execute("ALTER TABLE items ADD COLUMN extra text")
        con.execute("INSERT INTO items (id, qty, note, extra) VALUES (101, 2, 'new shape', 'x')")
        con.execute("UPDATE items SET extra = 'y', qty = 7 WHERE id <= 5")
        con.execute("DELETE FROM items WHERE id = 6")
    report, events = _stream(spec)
    assert report["changes"] == 8 and report["deleted"] == 1
    _same(spec)
    d = _decision("extra")
    assert (d["change"], d["mode"], d["decision"]) == ("new_column", "evolve", "ignored")
    assert any("extra" in e and "drift (evolve)" in e for e in events), events


def test_new_column_under_discard_row_quarantines_rows_with_a_value(setup):
    home, path, spec, governance = setup
    _mode(governance, "discard_row")
    with pg(DB) as con:
        con.execute("ALTER TABLE items ADD COLUMN flag text")
        con.execute("INSERT INTO items (id, qty, note) VALUES (200, 1, 'no flag')")
        con.execute("INSERT INTO items (id, qty, note, flag) VALUES (201, 1, 'flagged', 'F')")
    report, _ = _stream(spec)
    assert report["quarantined"] == 1
    ids = set(curated(spec)["item_id"].to_pylist())
    assert "IT-200" in ids and "IT-201" not in ids
    q = open_store("latam", spec.regions["latam"].store).read("quarantine").to_pylist()
    mine = [r for r in q if r["location"] == "id=201"]
    assert mine and "new source column flag" in mine[0]["reason"], q
    assert _decision("flag")["decision"] == "quarantine_rows"
    with pg(DB) as con:
        con.execute("UPDATE items SET flag = NULL WHERE id = 201")  # a row without a value comes through
    _stream(spec)
    _same(spec)
    with pg(DB) as con:
        con.execute("ALTER TABLE items DROP COLUMN flag")  # the source reverts to the accepted shape


def test_new_column_under_freeze_stops_before_the_new_shape(setup, run_cli):
    home, path, spec, governance = setup
    _mode(governance, "freeze")
    with pg(DB) as con:
        con.execute("INSERT INTO items (id, qty, note) VALUES (300, 3, 'before the change')")
    _stream(spec)
    _same(spec)
    before, position = table_checksum(curated(spec)), committed_position(spec)
    with pg(DB) as con:
        con.execute("ALTER TABLE items ADD COLUMN frozen integer")
        con.execute("INSERT INTO items (id, qty, note, frozen) VALUES (301, 1, 'new shape', 1)")
        con.execute("UPDATE items SET qty = 99 WHERE id = 300")
    res = run_cli("stream", "latam.ops", "--spec", str(path), "--until-idle", "--idle-seconds", "0.5")
    assert res.code == 1, res.stderr
    assert "new column frozen" in res.stderr and "freeze" in res.stderr, res.stderr
    assert "nothing after the last commit" in res.stderr
    assert table_checksum(curated(spec)) == before  # nothing committed
    assert committed_position(spec) == position
    assert _decision("frozen")["decision"] == "refused"
    # nothing acknowledged past it either: the server resumes a slot from its confirmed position, so an
    # acknowledged new-shape transaction would never come back. Accepting the column (evolve) delivers it.
    _mode(governance, "evolve")
    _stream(spec)
    _same(spec)
    assert {"IT-300", "IT-301"} <= set(curated(spec)["item_id"].to_pylist())
