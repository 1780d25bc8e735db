"""PostgreSQL change data capture: logical replication (`pgoutput`) into the curated stores.

One publication and one replication slot per source (`skyfed_<region>_<source>`),
covering the tables the source's mappings read.

Start: if every mapping of the source has a committed stream position and the slot
exists, streaming resumes from OUR committed LSN (the server's confirmed position
can rewind after a crash, so it is not trusted). Otherwise the slot is (re)created
with an exported snapshot; the tables are read inside that snapshot
(`SET TRANSACTION SNAPSHOT`) and committed with the slot's consistent point as the
position; streaming then starts at that point. Changes committed before it are in
the snapshot, changes after it come from the slot: no gap, no duplicate.

Positions: per mapping, committed with its data, `lsn` is the commit LSN of the last
applied transaction (pgoutput announces it in BEGIN, so it is known before the
transaction's rows) and `ordinal` the last applied change inside it when a large
transaction was split across micro-batches (None: the whole transaction).
`ack_lsn` is the end LSN of the last whole transaction; the server is acknowledged
with it (force=True) only after every mapping of the micro-batch has committed, and
a restart asks the slot for changes from there and skips what positions cover.

Unchanged TOASTed values (`u` in an UPDATE) are filled from the old row when the
table has REPLICA IDENTITY FULL, else from an earlier change of the same key in the
micro-batch, else read from the table by key (the current value; any later change
of the row follows in the stream). A table without a primary key and with the
default replica identity is refused with the fix to apply.

A relation message with a new shape of a mapped table (a column added, a type changed) goes
through the mapping's drift rules before any row of that shape (skyfed.stream.drift); under
`freeze` the stream stops with nothing of the batch in hand committed or acknowledged. A slot
the server invalidated (max_slot_wal_keep_size, wal_status lost) cannot resume: SourceGone,
with `skyfed stream reset` and a new snapshot as the way out.
"""

from __future__ import annotations

import contextlib
import csv
import select
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
import psycopg2
import psycopg2.extras
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from psycopg import sql

from skyfed.connectors.registry import connector_for
from skyfed.contracts.harmonize import SEQ
from skyfed.contracts.types import duckdb_types_of
from skyfed.errors import SkyfedError
from skyfed.governance.drift import DriftPlan, check_drift
from skyfed.home import sub_dir
from skyfed.ingest.stores import open_store
from skyfed.spec.models import Mapping, PlatformSpec, PostgresSource
from skyfed.stream import pgoutput as pgo
from skyfed.stream.apply import OP, ApplyResult, MappingApplier
from skyfed.stream.base import BatchReport, SourceGone, SourceLost, crash_point
from skyfed.stream.drift import apply_rules, apply_to_snapshot, relation_schema

POSITION_KIND = "pg_lsn"
_LSN, _ORD = "__lsn", "__ordinal"  # per change: its transaction's commit LSN and its place inside it


def slot_name(spec: PlatformSpec, source_ref: str) -> str:
    """The replication slot (and publication) name of a source: skyfed_<federation>_<region>_<source>.

    Slot names are global to a PostgreSQL server, so the federation's name is part of it.
    """
    return f"skyfed_{spec.name}_{source_ref.replace('.', '_')}"[:63]


def conninfo(spec: PostgresSource, **extra: str) -> str:
    parts = {
        "host": spec.host,
        "port": str(spec.port),
        "dbname": spec.database,
        "user": spec.user,
        "sslmode": spec.sslmode,
        "connect_timeout": "5",
        "application_name": "skyfed-stream",
        **extra,
    }
    if spec.password is not None:
        parts["password"] = spec.password.reveal()
    return " ".join(f"{k}='{v.replace(chr(39), chr(92) + chr(39))}'" for k, v in parts.items())


@dataclass
class _Pending:
    """Changes of one relation in the current micro-batch, row-wise until the batch closes."""

    relation: pgo.Relation
    rows: list[list[Any]] = field(default_factory=list)
    ops: list[str] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    lsns: list[int] = field(default_factory=list)
    ordinals: list[int] = field(default_factory=list)
    unchanged: bool = False


class PostgresCDC:
    """Streams one PostgreSQL source's mapped tables into the curated stores."""

    kind = "postgres"

    def __init__(self, spec: PlatformSpec, source_ref: str, mappings: list[Mapping]):
        self.spec = spec
        self.source_ref = source_ref
        self.region, _, _ = source_ref.partition(".")
        source = spec.source(source_ref)
        assert isinstance(source, PostgresSource)
        self.source = source
        self.mappings = mappings
        self.slot = slot_name(spec, source_ref)
        self.publication = self.slot
        self.store = open_store(self.region, spec.regions[self.region].store)
        connector = connector_for(source, source_ref)
        try:
            self._catalog = {t: connector.table_info(t).schema for t in {m.table for m in mappings}}
        finally:
            connector.close()
        self.appliers = {m.name: MappingApplier(spec, m, self.store, duckdb_types_of(self._catalog[m.table])) for m in mappings}
        self.tables = sorted({m.table for m in mappings})
        self._repl: Any = None
        self._cur: Any = None
        self._relations: dict[int, pgo.Relation] = {}
        self._positions: dict[str, dict[str, Any]] = {}
        self._txn: pgo.Begin | None = None
        self._ordinal = 0
        self._last_complete: tuple[int, int] | None = None  # (final_lsn, end_lsn) of the last whole transaction read
        self._last_commit_time: datetime | None = None
        self._idle_acked = 0
        self._idle_ack_at = 0.0
        # drift: the shape last checked per relation, each mapping's plan, pg_type names by oid
        self._shapes: dict[int, tuple[tuple[str, int, int], ...]] = {}
        self._plans: dict[str, DriftPlan] = {}
        self._notes: dict[str, list[str]] = {}
        self._type_names: dict[int, tuple[str, str]] = {}

    # ------------------------------------------------------------------ setup

    def _sql(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(conninfo(self.source), autocommit=True)
        except psycopg.Error as exc:
            raise SkyfedError(
                f"cannot reach PostgreSQL source {self.source_ref} at {self.source.host}:{self.source.port}: {exc}".strip(),
                "check that the server runs (locally: `skyfed up`)",
            ) from None

    def check_tables(self, con: psycopg.Connection[Any]) -> None:
        """Every mapped table must exist and have a replica identity that carries its key."""
        for table in self.tables:
            row = con.execute(
                "SELECT c.relreplident, EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) "
                "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
                (self.source.schema_, table),
            ).fetchone()
            if row is None:
                raise SkyfedError(
                    f"{self.source_ref}: table {self.source.schema_}.{table} does not exist",
                    "check the mapping's `table` and the source's `schema`",
                )
            ident, has_pk = row
            if ident == "n" or (ident == "d" and not has_pk):
                raise SkyfedError(
                    f"{self.source_ref}: table {self.source.schema_}.{table} has no primary key and no replica identity, "
                    "so PostgreSQL cannot send which row an UPDATE or DELETE changed (and refuses both on a published table)",
                    f"add a primary key, or run ALTER TABLE {self.source.schema_}.{table} REPLICA IDENTITY FULL",
                )

    def ensure_publication(self, con: psycopg.Connection[Any]) -> None:
        names = sql.SQL(", ").join(sql.Identifier(self.source.schema_, t) for t in self.tables)
        exists = con.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (self.publication,)).fetchone()
        if exists:
            con.execute(sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(sql.Identifier(self.publication), names))
        else:
            con.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(sql.Identifier(self.publication), names))

    def slot_info(self, con: psycopg.Connection[Any]) -> dict[str, Any] | None:
        row = con.execute(
            "SELECT confirmed_flush_lsn::text, restart_lsn::text, active, wal_status, "
            "(pg_current_wal_lsn() - confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = %s",
            (self.slot,),
        ).fetchone()
        if row is None:
            return None
        return {"confirmed_flush_lsn": row[0], "restart_lsn": row[1], "active": row[2], "wal_status": row[3],
                "lag_bytes": int(row[4]) if row[4] is not None else None}  # fmt: skip

    def _drop_slot(self, con: psycopg.Connection[Any]) -> None:
        for _ in range(50):  # an old streamer's walsender may need a moment to go after a kill
            try:
                con.execute("SELECT pg_drop_replication_slot(%s) FROM pg_replication_slots WHERE slot_name = %s", (self.slot, self.slot))
                return
            except psycopg.errors.ObjectInUse:
                con.execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = %s AND active_pid IS NOT NULL", (self.slot,))
                time.sleep(0.2)
        raise SkyfedError(f"{self.source_ref}: replication slot {self.slot} stays in use", "stop the other `skyfed stream` of this source")

    def _replication(self) -> Any:
        try:
            conn = psycopg2.connect(conninfo(self.source), connection_factory=psycopg2.extras.LogicalReplicationConnection)
        except psycopg2.Error as exc:
            raise SkyfedError(f"cannot open a replication connection to {self.source_ref}: {exc}".strip(),
                              "the server needs wal_level=logical and a free replication slot/wal sender") from None  # fmt: skip
        return conn, conn.cursor()

    # ------------------------------------------------------------------ start

    def _slot_gone(self, slot: dict[str, Any] | None) -> SourceGone:
        since = f" since {slot['confirmed_flush_lsn']}" if slot and slot.get("confirmed_flush_lsn") else ""
        return SourceGone(
            f"{self.source_ref}: replication slot {self.slot} was invalidated (wal_status lost): its consumer was "
            f"gone for so long that the server removed WAL the slot still needed (max_slot_wal_keep_size), so the "
            f"changes{since} cannot be streamed any more",
            f"run `skyfed stream reset {self.source_ref}` and then `skyfed stream {self.source_ref}`, which takes a "
            "fresh snapshot (see docs/streaming.md, 'A consumer gone for long')",
        )

    def start(self, *, batch_rows: int = 100_000, reopen: bool = False) -> list[ApplyResult]:
        """Resume from the committed positions, or take the initial snapshot; returns the snapshot's results.

        An invalidated slot (wal_status lost) with committed positions is SourceGone: the changes
        since our position are gone and only `skyfed stream reset` plus a new snapshot recovers.
        """
        with self._sql() as con:
            self.check_tables(con)
            self.ensure_publication(con)
            slot = self.slot_info(con)
            positions = {m.name: self.store.committed_position(m.contract, m.name) for m in self.mappings}
            resumable = slot is not None and all(
                p is not None and p.get("kind") == POSITION_KIND and p.get("slot") == self.slot for p in positions.values()
            )
            results: list[ApplyResult] = []
            if resumable and slot is not None and slot["wal_status"] == "lost":
                raise self._slot_gone(slot)
            if resumable:
                self._positions = {k: v for k, v in positions.items() if v is not None}
                start = min(int(p["ack_lsn"]) for p in self._positions.values())
            else:
                if slot is not None:
                    self._drop_slot(con)
                results, start = self._snapshot(batch_rows)
        if self._repl is None:
            self._repl, self._cur = self._replication()
        for attempt in range(50):
            try:
                self._cur.start_replication(
                    slot_name=self.slot, decode=False, start_lsn=start,
                    options={"proto_version": "1", "publication_names": self.publication},
                )  # fmt: skip
                break
            except psycopg2.errors.ObjectNotInPrerequisiteState as exc:  # invalidated between the check and here
                if "can no longer get changes" in str(exc):
                    raise self._slot_gone(None) from None
                raise
            except psycopg2.errors.ObjectInUse:  # the killed predecessor's walsender is still exiting
                if attempt == 49:
                    raise SkyfedError(f"{self.source_ref}: replication slot {self.slot} is in use by another process",
                                      "stop the other `skyfed stream` of this source") from None  # fmt: skip
                time.sleep(0.2)
                self._repl.close()
                self._repl, self._cur = self._replication()
        self._last_complete = None
        return results

    def _snapshot(self, batch_rows: int) -> tuple[list[ApplyResult], int]:
        """Create the slot with an exported snapshot and commit every mapped table as of it."""
        self._repl, self._cur = self._replication()
        try:
            self._cur.execute(f'CREATE_REPLICATION_SLOT "{self.slot}" LOGICAL pgoutput EXPORT_SNAPSHOT')
        except psycopg2.Error as exc:
            raise SkyfedError(f"{self.source_ref}: cannot create replication slot {self.slot}: {exc}".strip(),
                              "check max_replication_slots and that the user has the REPLICATION attribute") from None  # fmt: skip
        _, consistent, snapshot, _ = self._cur.fetchone()
        lsn = pgo.lsn_int(consistent)
        position = {"kind": POSITION_KIND, "slot": self.slot, "lsn": lsn, "ordinal": None, "ack_lsn": lsn,
                    "lsn_text": consistent, "snapshot": True}  # fmt: skip
        results = []
        with psycopg.connect(conninfo(self.source)) as con:
            con.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            con.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
            by_table: dict[str, list[Mapping]] = {}
            for m in self.mappings:
                by_table.setdefault(m.table, []).append(m)
            for table, mappings in by_table.items():
                path = sub_dir("tmp") / f"snapshot-{self.slot}-{table}-{uuid.uuid4().hex[:8]}.csv"
                try:
                    with open(path, "wb") as f, con.cursor().copy(
                        sql.SQL("COPY (SELECT * FROM {}) TO STDOUT (FORMAT csv, HEADER true)").format(
                            sql.Identifier(self.source.schema_, table)
                        )
                    ) as copy:
                        for chunk in copy:
                            f.write(chunk)
                    for m in mappings:
                        run_id = f"stream-{uuid.uuid4().hex[:12]}"
                        replace = sum(1 for x in self.spec.mappings if x.contract == m.contract
                                      and x.source.partition(".")[0] == self.region) == 1  # fmt: skip
                        plan = self._check_drift(m, self._catalog[table], run_id)
                        batches, drifted = apply_to_snapshot(plan, m, self.region, run_id, _csv_batches(path, batch_rows))
                        results.append(
                            self.appliers[m.name].apply_snapshot(
                                batches, position=position, run_id=run_id, replace=replace, late_quarantine=drifted
                            )
                        )
                        self._positions[m.name] = position
                        crash_point("after_snapshot_commit")
                finally:
                    path.unlink(missing_ok=True)
            con.execute("COMMIT")
        return results, lsn

    # ------------------------------------------------------------------ stream

    def read_batch(self, max_rows: int, max_seconds: float, idle_seconds: float | None = None) -> BatchReport | None:
        """See _read_batch; a broken connection becomes SourceLost (nothing of the batch was committed)."""
        try:
            return self._read_batch(max_rows, max_seconds, idle_seconds)
        except (psycopg2.Error, psycopg.OperationalError) as exc:  # the replication stream or a lookup broke
            raise SourceLost(
                f"{self.source_ref}: the connection to PostgreSQL broke: {str(exc).strip() or type(exc).__name__}",
                "the streamer reconnects and resumes from its committed position",
            ) from None

    def _read_batch(self, max_rows: int, max_seconds: float, idle_seconds: float | None = None) -> BatchReport | None:
        """Read changes until `max_rows` changes, `max_seconds`, or (when set) `idle_seconds` without data;
        apply them to every mapping, commit, then acknowledge. None when nothing arrived."""
        started = time.monotonic()
        deadline = started + max_seconds
        pending: dict[int, _Pending] = {}
        truncated: set[int] = set()
        n = 0
        seq = 0
        last_data = started
        ack: int | None = None
        split: tuple[int, int] | None = None  # (final_lsn, ordinal) when the batch ends inside a transaction
        cur = self._cur
        while True:
            msg = cur.read_message()
            if msg is None:
                now = time.monotonic()
                if n == 0 and self._txn is None and not truncated and cur.wal_end > self._idle_acked and now - self._idle_ack_at > 0.5:
                    # Nothing in hand and every transaction sent so far is committed: acknowledge the
                    # server's WAL position, so the slot does not hold WAL of unrelated tables.
                    cur.send_feedback(flush_lsn=cur.wal_end, reply=True, force=True)
                    self._idle_acked, self._idle_ack_at = cur.wal_end, now
                if now >= deadline and self._txn is None:
                    break
                if idle_seconds is not None and self._txn is None and now - last_data >= idle_seconds:
                    break
                if n >= max_rows and self._txn is not None:
                    break  # a large transaction: commit what we have (the position says where inside it)
                select.select([cur], [], [], min(0.05, max(0.0, deadline - now)) or 0.01)
                continue
            last_data = time.monotonic()
            m = pgo.decode(msg.payload)
            if isinstance(m, pgo.Begin):
                self._txn = m
                self._ordinal = 0
            elif isinstance(m, pgo.Commit):
                ack = m.end_lsn
                self._last_complete = (self._txn.final_lsn if self._txn else m.commit_lsn, m.end_lsn)
                self._last_commit_time = m.commit_time
                self._txn = None
                split = None
                if n >= max_rows or time.monotonic() >= deadline:
                    break
            elif isinstance(m, pgo.Relation):
                self._relations[m.relid] = m
                self._relation_drift(m)  # a freeze refusal raises here: nothing of this batch is committed or acked
                if m.relid in pending and [c.name for c in pending[m.relid].relation.columns] != [c.name for c in m.columns]:
                    # a new shape (a column added or dropped): the rows so far keep their own columns;
                    # both parts are concatenated by name in _apply
                    pending[-(len(pending) + 1) * (1 << 32) - m.relid] = pending.pop(m.relid)
            elif isinstance(m, (pgo.Insert, pgo.Update, pgo.Delete)):
                self._ordinal += 1
                txn = self._txn
                assert txn is not None
                p = pending.get(m.relid)
                if p is None:
                    p = pending[m.relid] = _Pending(self._relations[m.relid])
                if isinstance(m, pgo.Insert):
                    row, op = m.new, "I"
                elif isinstance(m, pgo.Update):
                    row, op = m.new, "U"
                    if pgo.UNCHANGED in row:
                        if m.old is not None and not m.old_is_key_only:
                            row = [o if v is pgo.UNCHANGED else v for v, o in zip(row, m.old)]
                        else:
                            p.unchanged = True
                else:
                    row, op = m.old, "D"
                p.rows.append(row)
                p.ops.append(op)
                p.seqs.append(seq)
                p.lsns.append(txn.final_lsn)
                p.ordinals.append(self._ordinal)
                seq += 1
                n += 1
                split = (txn.final_lsn, self._ordinal)
                if n >= max_rows:
                    break  # inside a large transaction: commit what we have, the position says where
            elif isinstance(m, pgo.Truncate):
                truncated.update(m.relids)
                for relid in m.relids:
                    pending.pop(relid, None)
        if n == 0 and not truncated:
            if ack is not None and self._txn is None:
                # only transactions without published changes (or the tail of a split one): nothing to
                # commit, and everything up to here is applied
                cur.send_feedback(flush_lsn=ack, reply=True, force=True)
            return None
        results = self._apply(pending, truncated, split)
        crash_point("before_ack")
        if self._last_complete is not None:
            cur.send_feedback(flush_lsn=self._last_complete[1], reply=True, force=True)
        return BatchReport(self.source_ref, n, results, ack, time.monotonic() - started, self._last_commit_time)

    def _apply(self, pending: dict[int, _Pending], truncated: set[int], split: tuple[int, int] | None) -> list[ApplyResult]:
        if split is not None:
            final_lsn, ordinal = split
            ack_lsn = self._last_complete[1] if self._last_complete else min(int(p["ack_lsn"]) for p in self._positions.values())
        elif self._last_complete is not None:
            final_lsn, ordinal = self._last_complete[0], None
            ack_lsn = self._last_complete[1]
        else:
            return []
        position = {"kind": POSITION_KIND, "slot": self.slot, "lsn": final_lsn, "ordinal": ordinal,
                    "ack_lsn": ack_lsn, "lsn_text": pgo.lsn_text(final_lsn),
                    "commit_time": self._last_commit_time.isoformat() if self._last_commit_time else None}  # fmt: skip
        tables = {}
        for p in pending.values():
            rel = p.relation
            if p.unchanged:
                self._fill_unchanged(p)
            cols = list(zip(*p.rows)) if p.rows else [() for _ in rel.columns]
            data = {c.name: pa.array(list(v), pa.string()) for c, v in zip(rel.columns, cols)}
            data[OP] = pa.array(p.ops, pa.string())
            data[SEQ] = pa.array(p.seqs, pa.int64())
            data[_LSN] = pa.array(p.lsns, pa.int64())
            data[_ORD] = pa.array(p.ordinals, pa.int64())
            table = pa.table(data)
            if rel.name in tables:
                table = pa.concat_tables([tables[rel.name], table], promote_options="permissive")
            tables[rel.name] = table
        truncated_names = {self._relations[r].name for r in truncated if r in self._relations}
        results = []
        for i, m in enumerate(self.mappings):
            applier = self.appliers[m.name]
            run_id = f"stream-{uuid.uuid4().hex[:12]}"
            changes = tables.get(m.table)
            drifted, warnings = None, {}
            if changes is not None:
                if self._positions.get(m.name):
                    changes = self._unseen(m.name, changes)
                changes = changes.drop_columns([_LSN, _ORD])
                if m.name in self._plans:
                    changes, drifted, warnings = apply_rules(self._plans[m.name], m, self.region, changes, run_id)
            rel_key = next((r.key for r in self._relations.values() if r.name == m.table), [])
            key = list(m.key) or rel_key
            if m.table in truncated_names:
                # with the position as it was: a crash before the rows after the TRUNCATE are committed
                # must re-deliver the whole batch
                applier.truncate(position=self._positions.get(m.name) or position, run_id=run_id)
            if changes is None:
                changes = pa.table({OP: pa.array([], pa.string()), SEQ: pa.array([], pa.int64()), **{k: pa.array([], pa.string()) for k in key}})
            res = applier.apply(changes, source_key=key, position=position, run_id=run_id, extra_quarantine=drifted)
            if drifted is not None:
                res.quarantined += drifted.num_rows
                for reason in drifted["reason"].to_pylist():
                    res.reasons[reason] = res.reasons.get(reason, 0) + 1
            res.warnings.update(warnings)
            res.notes.extend(self._notes.pop(m.name, []))
            results.append(res)
            self._positions[m.name] = position
            if i == 0:
                crash_point("between_mappings")
        return results

    def _check_drift(self, mapping: Mapping, schema: pa.Schema, run_id: str) -> DriftPlan:
        """The mapping's drift decisions for the source's shape `schema` (recorded like batch runs');
        a refusal (freeze) stops the stream with the column named."""
        try:
            plan = check_drift(self.spec, mapping, schema, run_id=run_id)
        except SkyfedError as exc:
            last = self._positions.get(mapping.name)
            where = f" (LSN {last['lsn_text']})" if last and last.get("lsn_text") else ""
            raise SourceGone(
                f"{self.source_ref}: {exc.message.replace('; nothing was read', '')}; the stream stopped before "
                f"any change of the new shape: nothing after the last commit{where} was committed or acknowledged",
                exc.hint,
            ) from None
        self._plans[mapping.name] = plan
        if plan.changes:
            self._notes.setdefault(mapping.name, []).extend(plan.notes)
        if not plan.rules():  # evolve (or no change): the mapping reads the source as it is now
            self.appliers[mapping.name].set_source_types(duckdb_types_of(schema))
        return plan

    def _relation_drift(self, rel: pgo.Relation) -> None:
        """A relation message: check a new shape of a mapped table against each mapping's drift rules."""
        shape = tuple((c.name, c.type_oid, c.typmod) for c in rel.columns)
        if self._shapes.get(rel.relid) == shape:
            return
        mappings = [m for m in self.mappings if m.table == rel.name]
        if mappings:
            try:
                with self._sql() as con:
                    schema = relation_schema(con, rel, self._type_names)
            except SkyfedError as exc:  # the server went away: reconnect, the relation comes again
                raise SourceLost(exc.message, exc.hint) from None
            for m in mappings:
                self._check_drift(m, schema, f"stream-{uuid.uuid4().hex[:12]}")
        self._shapes[rel.relid] = shape

    def _unseen(self, mapping: str, changes: pa.Table) -> pa.Table:
        """Changes the mapping has not committed yet: a redelivery after a crash (or a restart from the
        slot's older position) repeats transactions that positions already cover."""
        pos = self._positions[mapping]
        lsn, done = int(pos["lsn"]), pos.get("ordinal")
        newer = pc.greater(changes[_LSN], lsn)
        if done is not None:
            newer = pc.or_(newer, pc.and_(pc.equal(changes[_LSN], lsn), pc.greater(changes[_ORD], int(done))))
        return changes.filter(newer)

    def _fill_unchanged(self, p: _Pending) -> None:
        """Fill 'u' values: from an earlier change of the same key in the batch, else the table's current value."""
        names = [c.name for c in p.relation.columns]
        key_idx = [names.index(k) for k in p.relation.key]
        latest: dict[tuple[Any, ...], list[Any]] = {}
        missing: dict[tuple[Any, ...], list[int]] = {}
        for i, row in enumerate(p.rows):
            k = tuple(row[j] for j in key_idx)
            if pgo.UNCHANGED in row:
                prev = latest.get(k)
                if prev is not None:
                    row = [prev[j] if v is pgo.UNCHANGED else v for j, v in enumerate(row)]
                    p.rows[i] = row
                if pgo.UNCHANGED in row:
                    missing.setdefault(k, []).append(i)
            latest[k] = row
        if not missing:
            return
        cols = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(n)) for n in names)
        keyexpr = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(k)) for k in p.relation.key)
        with self._sql() as con:
            current = {}
            for k in missing:
                row = con.execute(
                    sql.SQL("SELECT {} FROM {} WHERE ({}) = ({})").format(
                        cols, sql.Identifier(p.relation.namespace, p.relation.name), keyexpr,
                        sql.SQL(", ").join(sql.Literal(v) for v in k),
                    )
                ).fetchone()  # fmt: skip
                current[k] = row
        for k, rows in missing.items():
            for i in rows:
                now = current.get(k)
                p.rows[i] = [(now[j] if now is not None else None) if v is pgo.UNCHANGED else v for j, v in enumerate(p.rows[i])]

    def lag(self) -> dict[str, Any]:
        with self._sql() as con:
            return self.slot_info(con) or {}

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self._repl is not None:
                self._repl.close()
        for a in self.appliers.values():
            a.close()


def _csv_batches(path: Any, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """A COPY ... (FORMAT csv) file as batches of text columns: an unquoted empty field is NULL, "" is ''."""
    with open(path, "rb") as f:
        header = f.readline().decode().rstrip("\r\n")
    names = next(csv.reader([header]))
    reader = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(block_size=1 << 22),
        convert_options=pacsv.ConvertOptions(
            column_types={n: pa.string() for n in names}, strings_can_be_null=True, quoted_strings_can_be_null=False,
            null_values=[""],
        ),
    )  # fmt: skip
    yield from reader


def reset(spec: PlatformSpec, source_ref: str) -> dict[str, Any]:
    """Drop the source's replication slot and publication (the next `skyfed stream` snapshots again)."""
    source = spec.source(source_ref)
    assert isinstance(source, PostgresSource)
    name = slot_name(spec, source_ref)
    with psycopg.connect(conninfo(source), autocommit=True) as con:
        dropped = False
        for _ in range(50):
            try:
                row = con.execute("SELECT pg_drop_replication_slot(%s) FROM pg_replication_slots WHERE slot_name = %s", (name, name)).fetchone()
                dropped = row is not None
                break
            except psycopg.errors.ObjectInUse:
                con.execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = %s", (name,))
                time.sleep(0.2)
        con.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(name)))
    return {"source": source_ref, "slot": name, "slot_dropped": dropped, "publication_dropped": True}


def slot_lag(spec: PlatformSpec, source_ref: str) -> dict[str, Any]:
    """The slot's distance behind the server's current WAL, in bytes (None if there is no slot)."""
    source = spec.source(source_ref)
    assert isinstance(source, PostgresSource)
    name = slot_name(spec, source_ref)
    try:
        with psycopg.connect(conninfo(source), autocommit=True) as con:
            row = con.execute(
                "SELECT confirmed_flush_lsn::text, active, wal_status, (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint, "
                "safe_wal_size FROM pg_replication_slots WHERE slot_name = %s",
                (name,),
            ).fetchone()
    except psycopg.Error as exc:
        return {"slot": name, "error": str(exc).strip()}
    if row is None:
        return {"slot": name, "lag_bytes": None, "slot_exists": False}
    return {"slot": name, "slot_exists": True, "confirmed_flush_lsn": row[0], "slot_active": row[1],
            "wal_status": row[2], "lag_bytes": int(row[3]) if row[3] is not None else None,
            "safe_wal_size": int(row[4]) if row[4] is not None else None}  # fmt: skip
