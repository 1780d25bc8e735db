"""The pgoutput decoder against real messages from the real PostgreSQL of the `federation` fixture.

Messages are taken with pg_logical_slot_peek_binary_changes from a pgoutput slot,
the same bytes the replication protocol carries.
"""

from __future__ import annotations

import pytest
from stream_kit import pg

from skyfed.errors import SkyfedError
from skyfed.stream import pgoutput as pgo

pytestmark = pytest.mark.services

DB = "skyfed_pgoutput"


@pytest.fixture(scope="module")
def messages(federation) -> list[pgo.Message]:
    with pg() as con:
        con.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'pgo_test'")
        con.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
        con.execute(f'CREATE DATABASE "{DB}"')
    with pg(DB) as con:
        con.execute("CREATE TABLE t (id integer PRIMARY KEY, amount numeric(20,6), note text, big text, at timestamptz)")
        con.execute("ALTER TABLE t ALTER COLUMN big SET STORAGE EXTERNAL")
        con.execute("CREATE TABLE nokey (a integer, b text)")
        con.execute("ALTER TABLE nokey REPLICA IDENTITY FULL")
        con.execute("CREATE PUBLICATION pgo_pub FOR TABLE t, nokey")
        con.execute("SELECT pg_create_logical_replication_slot('pgo_test', 'pgoutput')")
        con.execute("INSERT INTO t VALUES (1, 12345678901234.123456, 'héllo', repeat('x', 5000), '2024-03-01 10:00:00+00'), (2, NULL, '', NULL, NULL)")
        con.execute("UPDATE t SET note = 'changed' WHERE id = 1")  # big is TOASTed and unchanged: sent as 'u'
        con.execute("DELETE FROM t WHERE id = 2")
        con.execute("INSERT INTO nokey VALUES (7, 'seven')")
        con.execute("UPDATE nokey SET b = 'SEVEN' WHERE a = 7")
        con.execute("TRUNCATE t")
        rows = con.execute(
            "SELECT data FROM pg_logical_slot_peek_binary_changes('pgo_test', NULL, NULL, "
            "'proto_version', '1', 'publication_names', 'pgo_pub')"
        ).fetchall()
        con.execute("SELECT pg_drop_replication_slot('pgo_test')")
    return [pgo.decode(r[0]) for r in rows]


def _of(messages: list[pgo.Message], kind: type) -> list:
    return [m for m in messages if isinstance(m, kind)]


def test_transactions_are_framed_by_begin_and_commit(messages):
    begins, commits = _of(messages, pgo.Begin), _of(messages, pgo.Commit)
    assert len(begins) == len(commits) == 6
    for b, c in zip(begins, commits):
        assert b.final_lsn == c.commit_lsn  # BEGIN announces the commit's LSN
        assert c.end_lsn > c.commit_lsn
        assert b.commit_time == c.commit_time
    assert [c.commit_lsn for c in commits] == sorted(c.commit_lsn for c in commits)


def test_relation_carries_columns_key_and_identity(messages):
    rels = {r.name: r for r in _of(messages, pgo.Relation)}
    t = rels["t"]
    assert t.namespace == "public"
    assert [c.name for c in t.columns] == ["id", "amount", "note", "big", "at"]
    assert t.key == ["id"]
    assert t.replica_identity == "d"
    assert t.columns[1].type_oid == 1700  # numeric
    assert rels["nokey"].replica_identity == "f"


def test_insert_values_are_exact_text_and_nulls(messages):
    inserts = _of(messages, pgo.Insert)
    first, second = inserts[0].new, inserts[1].new
    assert first[:3] == ["1", "12345678901234.123456", "héllo"]  # numeric kept exact, UTF-8 decoded
    assert first[3] == "x" * 5000
    assert first[4].startswith("2024-03-01 10:00:00")
    assert second == ["2", None, "", None, None]  # NULL and the empty string stay different


def test_update_sends_unchanged_toast_as_marker(messages):
    updates = [u for u in _of(messages, pgo.Update) if u.new[0] == "1"]
    assert len(updates) == 1
    u = updates[0]
    assert u.new[2] == "changed"
    assert u.new[3] is pgo.UNCHANGED
    assert u.old is None  # default identity: no old row when the key did not change


def test_delete_carries_the_key_only(messages):
    (d,) = [m for m in _of(messages, pgo.Delete)]
    assert d.old_is_key_only
    assert d.old[0] == "2" and d.old[1:] == [None, None, None, None]


def test_full_identity_update_carries_the_old_row(messages):
    rels = {r.relid: r.name for r in _of(messages, pgo.Relation)}
    (u,) = [m for m in _of(messages, pgo.Update) if rels[m.relid] == "nokey"]
    assert u.old == ["7", "seven"] and not u.old_is_key_only
    assert u.new == ["7", "SEVEN"]


def test_truncate_names_the_relation(messages):
    rels = {r.name: r.relid for r in _of(messages, pgo.Relation)}
    (t,) = _of(messages, pgo.Truncate)
    assert t.relids == (rels["t"],)
    assert not t.cascade


def test_lsn_text_round_trip_and_unknown_message():
    assert pgo.lsn_text(pgo.lsn_int("1A/2B3C4D")) == "1A/2B3C4D"
    assert pgo.lsn_int("0/1AF7778") == 0x1AF7778
    with pytest.raises(SkyfedError, match="unknown message type"):
        pgo.decode(b"Z\x00")
