"""Apply one micro-batch of changes to a mapping's curated table, exactly once.

The same compiled mapping as batch ingestion (skyfed.contracts.harmonize) turns
source-shaped changes into contract rows. Per micro-batch:
1. de-duplicate by the source key: the last change of a key wins (arrival order);
2. inserts and updates are harmonized and checked; rows with reasons go to the
   quarantine (with the reason), the others are upserted;
3. deletes become contract keys through the mapping's key expressions (a delete
   carries only the replica identity columns);
4. quarantine first (idempotent by mapping and location), then rows, deletes and the
   source position in ONE store commit. A crash before that commit re-delivers the
   batch (the source position was not acknowledged); upsert by key and delete by key
   make the repeat idempotent.
All steps are DuckDB statements or Arrow kernels over the whole batch.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from skyfed.contracts.harmonize import (
    QUARANTINE,
    RAW,
    SEQ,
    compile_mapping,
    q,
    reason_rule,
)
from skyfed.contracts.types import contract_schema, duckdb_type
from skyfed.errors import SkyfedError
from skyfed.ingest.reference import prepare_reference
from skyfed.ingest.stores.base import (
    QUARANTINE_SCHEMA,
    CuratedStore,
    quarantine_records,
)
from skyfed.spec.models import Mapping, PlatformSpec

OP = "__op"  # I (insert), U (update), D (delete)


@dataclass
class ApplyResult:
    """What one micro-batch did to one mapping's table."""

    mapping: str
    changes: int = 0
    upserted: int = 0
    deleted: int = 0
    quarantined: int = 0
    filtered: int = 0
    superseded: int = 0  # changes replaced by a later change of the same key in the batch
    snapshot_id: str | None = None
    reasons: dict[str, int] = field(default_factory=dict)
    warnings: dict[str, int] = field(default_factory=dict)  # e.g. drift: values discarded (mode discard_value)
    notes: list[str] = field(default_factory=list)  # e.g. drift decisions taken before this batch


def store_takes_deletes(store: CuratedStore) -> bool:
    """Whether the store's commit accepts `deletes=` (key deletes in the same atomic commit)."""
    return "deletes" in inspect.signature(store.commit).parameters


class MappingApplier:
    """Harmonizes and commits micro-batches for one mapping; holds the compiled SQL and reference tables."""

    def __init__(self, spec: PlatformSpec, mapping: Mapping, store: CuratedStore, source_types: dict[str, str]):
        self.spec = spec
        self.mapping = mapping
        self.store = store
        self.contract = spec.contracts[mapping.contract]
        self.key = list(self.contract.key)
        if not self.key:
            raise SkyfedError(
                f"mapping {mapping.name}: contract {mapping.contract} has no key, so changes cannot be applied by key",
                "set `key` on the contract",
            )
        self.source_types = {k: v for k, v in source_types.items()}
        self.schema = contract_schema(self.contract)
        self.region = mapping.source.partition(".")[0]
        self.con = duckdb.connect()
        self.con.execute("SET preserve_insertion_order = false")
        prepare_reference(self.con, spec)
        refs = {name: name for name in spec.reference}
        refs.update({ref.contract: name for name, ref in spec.reference.items()})
        self.refs = refs
        self._compiled: tuple[dict[str, str], str] | None = None
        store.ensure_table(mapping.contract, self.contract)

    def close(self) -> None:
        self.con.close()

    def set_source_types(self, source_types: dict[str, str]) -> None:
        """The source's declared types changed (a drift accepted under evolve): recompile on the next batch."""
        if source_types != self.source_types:
            self.source_types = dict(source_types)
            self._compiled = None

    # ------------------------------------------------------------------ steps

    def _select(self, batch_types: dict[str, str]) -> str:
        if self._compiled is None or self._compiled[0] != batch_types:
            sql = compile_mapping(self.mapping, self.contract, self.source_types, batch_types, self.refs).select
            self._compiled = (batch_types, sql)
        return self._compiled[1]

    def _delete_keys(self, deletes: pa.Table) -> pa.Table:
        """Contract keys of deleted source rows, through the mapping's expressions for the key columns."""
        parsed = ", ".join(
            f"TRY_CAST({q(c)} AS {self.source_types[c]}) AS {q(c)}" if c in self.source_types else q(c)
            for c in deletes.column_names
            if c not in (OP, SEQ)
        )
        cols = ", ".join(
            f"TRY_CAST(({self.mapping.columns[k]}) AS {duckdb_type(self.contract.columns[k].type)}) AS {q(k)}"
            for k in self.key
        )
        self.con.register("__del", deletes)
        try:
            out = self.con.sql(f"SELECT DISTINCT {cols} FROM (SELECT {parsed} FROM __del)").to_arrow_table()
        finally:
            self.con.unregister("__del")
        nulls = pc.sum(pc.is_null(out[self.key[0]])).as_py() if out.num_rows else 0
        if nulls:
            raise SkyfedError(
                f"mapping {self.mapping.name}: {nulls} delete(s) arrived without the source key columns "
                f"{', '.join(self.mapping.key)}",
                "the table's replica identity must include the mapping's key: give it a primary key, "
                "or ALTER TABLE ... REPLICA IDENTITY FULL",
            )
        return out.select(self.key).cast(pa.schema([self.schema.field(k) for k in self.key]))

    def apply(
        self,
        changes: pa.Table,
        *,
        source_key: list[str],
        position: dict[str, Any],
        run_id: str,
        location_prefix: str = "key",
        extra_quarantine: pa.Table | None = None,
        commit_empty: bool = True,
    ) -> ApplyResult:
        """Harmonize `changes` (source columns + __op + __seq) and commit them with `position`.

        `source_key`: the source columns identifying a record (the mapping's key, else
        the table's replica identity). `extra_quarantine`: dead letters of this batch
        (QUARANTINE_SCHEMA rows) committed with the batch's quarantine.
        """
        result = ApplyResult(self.mapping.name, changes=changes.num_rows)
        upserts = deletes = None
        if changes.num_rows:
            missing = [k for k in source_key if k not in changes.column_names]
            if missing:
                raise SkyfedError(f"mapping {self.mapping.name}: the changes lack the key column(s) {', '.join(missing)}")
            self.con.register("__changes", changes)
            part = ", ".join(q(k) for k in source_key)
            latest = self.con.sql(
                f"SELECT * FROM __changes QUALIFY row_number() OVER (PARTITION BY {part} ORDER BY {SEQ} DESC) = 1"
            ).to_arrow_table()
            self.con.unregister("__changes")
            result.superseded = changes.num_rows - latest.num_rows
            is_delete = pc.equal(latest[OP], "D")
            upserts = latest.filter(pc.invert(is_delete)).drop_columns([OP])
            deletes = latest.filter(is_delete)

        good = self.schema.empty_table()
        quarantine: list[pa.Table] = [extra_quarantine] if extra_quarantine is not None and extra_quarantine.num_rows else []
        if upserts is not None and upserts.num_rows:
            batch_types = {c: ("BIGINT" if c == SEQ else "VARCHAR") for c in upserts.column_names}
            upserts = upserts.cast(pa.schema([pa.field(c, pa.int64() if c == SEQ else pa.string()) for c in upserts.column_names]))
            self.con.register("__batch", upserts)
            try:
                out = self.con.sql(self._select(batch_types)).to_arrow_table()
            finally:
                self.con.unregister("__batch")
            result.filtered = upserts.num_rows - out.num_rows
            bad_mask = pc.greater(pc.list_value_length(out[QUARANTINE]), 0)
            bad = out.filter(bad_mask)
            ok = out.filter(pc.invert(bad_mask))
            if bad.num_rows:
                quarantine.append(self._quarantine(bad, source_key, run_id, location_prefix))
                for reason in pc.list_flatten(bad[QUARANTINE]).to_pylist():
                    rule = reason_rule(reason)
                    result.reasons[rule] = result.reasons.get(rule, 0) + 1
                result.quarantined += bad.num_rows
            if ok.num_rows:
                self.con.register("__ok", ok)
                key = ", ".join(q(k) for k in self.key)
                cols = ", ".join(q(c) for c in self.schema.names)
                ok = self.con.sql(
                    f"SELECT {cols} FROM __ok QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY {SEQ} DESC) = 1"
                ).to_arrow_table()
                self.con.unregister("__ok")
                good = ok.cast(self.schema)
        delete_keys = self._delete_keys(deletes) if deletes is not None and deletes.num_rows else None
        if delete_keys is not None and good.num_rows:
            # an upsert wins over a delete of the same contract key in the batch (it came from a later change)
            key0 = self.key[0]
            if len(self.key) == 1:
                delete_keys = delete_keys.filter(pc.invert(pc.is_in(delete_keys[key0], value_set=good[key0])))
        if quarantine:
            qrows = pa.concat_tables([t.cast(QUARANTINE_SCHEMA) for t in quarantine])
            self.store.commit_quarantine(qrows, run_id=run_id)
        if not commit_empty and good.num_rows == 0 and delete_keys is None:
            return result
        kwargs: dict[str, Any] = {}
        if delete_keys is not None and delete_keys.num_rows:
            if not store_takes_deletes(self.store):
                raise SkyfedError(
                    f"the {self.store.kind} curated store of region {self.region} cannot apply deletes yet "
                    "(CuratedStore.commit has no `deletes` keyword)",
                    "update skyfed; until then streaming sources with deletes cannot be applied",
                )
            kwargs["deletes"] = delete_keys
        commit = self.store.commit(
            self.mapping.contract,
            good,
            key=self.key,
            mapping=self.mapping.name,
            position=position,
            run_id=run_id,
            **kwargs,
        )
        result.upserted = good.num_rows
        result.deleted = 0 if delete_keys is None else delete_keys.num_rows
        result.snapshot_id = None if commit.snapshot_id is None else str(commit.snapshot_id)
        return result

    def apply_snapshot(
        self, batches: Iterator[pa.RecordBatch], *, position: dict[str, Any], run_id: str, replace: bool,
        late_quarantine: Callable[[], pa.Table | None] | None = None,
    ) -> ApplyResult:
        """The initial snapshot as ONE commit: batches (text columns) harmonized and staged in DuckDB
        (spills to disk), quarantine committed first, then every good row with `position`.
        `late_quarantine`: records known only once the batches are consumed (drift rules).

        `replace`: the snapshot is the whole table (the mapping is the only one of its
        contract in the region), so rows deleted since an earlier load disappear too.
        """
        result = ApplyResult(self.mapping.name)
        staged = False
        quarantine: list[pa.Table] = []
        seq = 0
        for batch in batches:
            n = batch.num_rows
            if not n:
                continue
            result.changes += n
            table = pa.Table.from_batches([batch]).append_column(SEQ, pa.array(range(seq, seq + n), pa.int64()))
            seq += n
            batch_types = {c: ("BIGINT" if c == SEQ else "VARCHAR") for c in table.column_names}
            self.con.register("__batch", table)
            try:
                out = self.con.sql(self._select(batch_types)).to_arrow_table()
            finally:
                self.con.unregister("__batch")
            result.filtered += n - out.num_rows
            bad_mask = pc.greater(pc.list_value_length(out[QUARANTINE]), 0)
            bad = out.filter(bad_mask)
            if bad.num_rows:
                quarantine.append(self._quarantine(bad, list(self.mapping.key), run_id, "key"))
                result.quarantined += bad.num_rows
            self.con.register("__good", out.filter(pc.invert(bad_mask)).select(list(self.schema.names)))
            self.con.execute(("INSERT INTO snap_stage" if staged else "CREATE OR REPLACE TEMP TABLE snap_stage AS") + " SELECT * FROM __good")
            self.con.unregister("__good")
            staged = True
        late = late_quarantine() if late_quarantine is not None else None  # e.g. rows the drift rules refused
        if late is not None and late.num_rows:
            quarantine.append(late)
            result.quarantined += late.num_rows
        if quarantine:
            self.store.commit_quarantine(pa.concat_tables([t.cast(QUARANTINE_SCHEMA) for t in quarantine]), run_id=run_id)
        if staged:
            reader = self.con.sql("SELECT * FROM snap_stage").to_arrow_reader(200_000)
            rows: pa.Table | pa.RecordBatchReader = pa.RecordBatchReader.from_batches(
                self.schema, (b.cast(self.schema) for b in reader)
            )
        else:
            rows = self.schema.empty_table()
        commit = self.store.commit(
            self.mapping.contract, rows, key=self.key, mapping=self.mapping.name, position=position,
            run_id=run_id, replace=replace,
        )  # fmt: skip
        if staged:
            self.con.execute("DROP TABLE snap_stage")
        result.upserted = commit.rows_written
        result.snapshot_id = None if commit.snapshot_id is None else str(commit.snapshot_id)
        return result

    def truncate(self, *, position: dict[str, Any], run_id: str) -> None:
        """A TRUNCATE of the source table: the mapping's table becomes empty (a full replace)."""
        self.store.commit(
            self.mapping.contract, self.schema.empty_table(), key=self.key, mapping=self.mapping.name,
            position=position, run_id=run_id, replace=True,
        )  # fmt: skip

    def _quarantine(self, bad: pa.Table, source_key: list[str], run_id: str, prefix: str) -> pa.Table:
        n = bad.num_rows
        self.con.register("__bad", bad.select([RAW]))
        try:
            parts = " || ',' || ".join(
                f"coalesce(json_extract_string({RAW}, '$.\"{k}\"'), 'NULL')" for k in source_key
            )
            loc = self.con.sql(f"SELECT '{prefix}=' || {parts} AS loc FROM __bad").to_arrow_table()["loc"]
        finally:
            self.con.unregister("__bad")
        return quarantine_records(
            self.mapping, self.region, run_id, location=loc, reasons=bad[QUARANTINE], raw=bad[RAW], n=n
        )
