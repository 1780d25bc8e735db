"""Drift rules in a stream: the mapping's modes (skyfed.governance.drift) applied when a source changes shape.

PostgreSQL announces a table's shape in a relation (R) message before the first row
of that shape; the streamer turns it into the Arrow schema the batch connector would
report (same type mapping, so batch and stream share one accepted schema per mapping)
and calls `check_drift` on it: decisions are recorded in the metadata database exactly
as for batch runs; `freeze` raises before any row of the new shape is applied. The
rules of the discard modes then run over every micro-batch of the mapping, here.
Deletes are never judged: they carry only the key (or the old row), not a new value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.compute as pc

from skyfed.connectors.base import Reject
from skyfed.connectors.postgres import arrow_type
from skyfed.governance.drift import DriftPlan
from skyfed.ingest.stores.base import quarantine_records
from skyfed.spec.models import Mapping
from skyfed.stream import pgoutput as pgo
from skyfed.stream.apply import OP

_TYPES_SQL = "SELECT oid::bigint, typname, typtype FROM pg_type WHERE oid = ANY(%s::oid[])"


def relation_schema(con: psycopg.Connection[Any], rel: pgo.Relation, cache: dict[int, tuple[str, str]]) -> pa.Schema:
    """The Arrow schema of a relation message, typed as the PostgreSQL connector types the table."""
    missing = [c.type_oid for c in rel.columns if c.type_oid not in cache]
    if missing:
        for oid, typname, typtype in con.execute(_TYPES_SQL, (missing,)).fetchall():
            cache[int(oid)] = (typname, typtype)
    fields = []
    for c in rel.columns:
        typname, typtype = cache.get(c.type_oid, ("text", "b"))
        fields.append(pa.field(c.name, arrow_type(typname, c.typmod, typtype)[0]))
    return pa.schema(fields)


def apply_rules(
    plan: DriftPlan, mapping: Mapping, region: str, changes: pa.Table, run_id: str
) -> tuple[pa.Table, pa.Table | None, dict[str, int]]:
    """(changes left, quarantine records, warnings) after the plan's per-row rules.

    Source values stay text (a type rule may hand back the old type; it is cast back,
    the mapping casts text itself). Inserts and updates only.
    """
    data = [c for c in changes.column_names if c in plan_columns(plan)]
    if not data or not changes.num_rows:
        return changes, None, {}
    is_delete = pc.equal(changes[OP], "D")
    deletes = changes.filter(is_delete)
    rows = changes.filter(pc.invert(is_delete))
    rejects: list[Reject] = []
    plan.warnings.clear()
    kept = plan.apply(rows, rejects.append)
    kept = kept.cast(pa.schema([pa.field(f.name, changes.schema.field(f.name).type) for f in kept.schema]))
    out = pa.concat_tables([kept, deletes]) if deletes.num_rows else kept
    quarantine = None
    if rejects:
        quarantine = quarantine_records(
            mapping, region, run_id, location=pa.array([r.location for r in rejects], pa.string()),
            reasons=[[r.reason] for r in rejects], raw=pa.array([r.raw for r in rejects], pa.string()), n=len(rejects),
        )  # fmt: skip
    return out, quarantine, dict(plan.warnings)


def plan_columns(plan: DriftPlan) -> set[str]:
    """The source columns the plan's rules act on."""
    return {c.column for c in plan.rules()}


def apply_to_snapshot(
    plan: DriftPlan, mapping: Mapping, region: str, run_id: str, batches: Iterator[pa.RecordBatch]
) -> tuple[Iterator[pa.RecordBatch], Callable[[], pa.Table | None]]:
    """The snapshot's batches through the plan's rules, and a call giving the rows they quarantined
    (once the batches are consumed, before the snapshot's commit)."""
    rejects: list[Reject] = []
    columns = plan_columns(plan)

    def run() -> Iterator[pa.RecordBatch]:
        for batch in batches:
            if not columns & set(batch.schema.names):
                yield batch
                continue
            kept = plan.apply(batch, rejects.append)
            yield kept.cast(pa.schema([pa.field(f.name, batch.schema.field(f.name).type) for f in kept.schema]))

    def quarantined() -> pa.Table | None:
        if not rejects:
            return None
        return quarantine_records(
            mapping, region, run_id, location=pa.array([r.location for r in rejects], pa.string()),
            reasons=[[r.reason] for r in rejects], raw=pa.array([r.raw for r in rejects], pa.string()), n=len(rejects),
        )  # fmt: skip

    return run(), quarantined
