"""The quarantine: list, show and replay records that failed harmonization or quality rules.

Replay re-judges stored raw records with the *current* spec (after the spec or the
reference data was fixed). A record that now passes is inserted into its curated
table, unless a newer record with the same key has been loaded since (then it is
superseded and simply leaves the quarantine); one that still fails stays, with its
new reasons. Records the connector could not parse at all (malformed lines) cannot
be replayed from the quarantine: fix the object and the next ingest reads it again.

What a caller is shown goes through the policies (`read_quarantine_as`, with a role:
skyfed.governance.quarantine_view masks the raw fields of classified columns); replay
uses `read_quarantine`, the unmasked records.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from skyfed.connectors.registry import connector_for
from skyfed.contracts.harmonize import QUARANTINE, SEQ, compile_mapping, reason_rule
from skyfed.contracts.types import contract_schema, duckdb_types_of
from skyfed.errors import SkyfedError
from skyfed.ingest.reference import prepare_reference
from skyfed.ingest.stores import open_store
from skyfed.ingest.stores.base import QUARANTINE_TABLE
from skyfed.spec.issues import nearest
from skyfed.spec.models import Mapping, PlatformSpec

TYPED_SOURCES = ("postgres", "bigquery")  # raw JSON of these is re-typed from the source's schema


def read_quarantine(spec: PlatformSpec, region: str | None = None, mapping: str | None = None) -> pa.Table:
    """Every quarantine record of the selected regions (a region's store may have none yet)."""
    regions = [region] if region else list(spec.regions)
    for r in regions:
        if r not in spec.regions:
            raise SkyfedError(f"unknown region '{r}'" + (f" (did you mean '{g}'?)" if (g := nearest(r, spec.regions)) else ""))
    parts = []
    for r in regions:
        store = open_store(r, spec.regions[r].store)
        try:
            parts.append(store.read(QUARANTINE_TABLE))
        except SkyfedError:
            continue  # no quarantine table yet: nothing was ever quarantined there
    if not parts:
        return pa.table({})
    table = pa.concat_tables(parts, promote_options="permissive")
    if mapping:
        table = table.filter(pc.equal(table["mapping"], mapping))
    return table


def read_quarantine_as(
    spec: PlatformSpec,
    role: str | None,
    region: str | None = None,
    mapping: str | None = None,
    spec_path: str | None = None,
) -> pa.Table:
    """The quarantine records as `role` may see them (raw fields of classified columns masked).

    `role` None means $SKYFED_ROLE, else `anonymous` when the spec has a governance file.
    A mapping's records are read from its own region only.
    """
    from skyfed.governance.quarantine_view import apply_policy

    if mapping and region is None:
        region = _mapping(spec, mapping).source.partition(".")[0]
    return apply_policy(spec, read_quarantine(spec, region, mapping), role, spec_path)


def summarize(table: pa.Table) -> list[dict[str, Any]]:
    """Counts by region, mapping and rule (the reason without the offending value)."""
    if table.num_rows == 0:
        return []
    con = duckdb.connect()
    con.register("q", table)
    rows = con.execute(
        "SELECT region, mapping, reason, count(*) AS records FROM "
        "(SELECT region, mapping, unnest(reasons) AS reason FROM q) GROUP BY ALL"
    ).fetchall()
    con.close()
    counts: dict[tuple[str, str, str], int] = {}
    for region, mapping, reason, n in rows:
        k = (region, mapping, reason_rule(reason))
        counts[k] = counts.get(k, 0) + n
    return [
        {"region": r, "mapping": m, "reason": why, "records": n}
        for (r, m, why), n in sorted(counts.items(), key=lambda kv: (kv[0][0], kv[0][1], -kv[1]))
    ]


@dataclass
class ReplayResult:
    mapping: str
    replayed: int = 0
    loaded: int = 0
    superseded: int = 0
    still_failing: int = 0
    not_replayable: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    snapshot_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def replay(spec: PlatformSpec, mapping_name: str) -> ReplayResult:
    """Re-judge one mapping's quarantined records with the current spec."""
    mapping = _mapping(spec, mapping_name)
    region_name, _, source_name = mapping.source.partition(".")
    store = open_store(region_name, spec.regions[region_name].store)
    contract = spec.contracts[mapping.contract]
    result = ReplayResult(mapping.name)
    records = read_quarantine(spec, region_name, mapping.name)
    if records.num_rows == 0:
        return result
    run_id = "replay-" + uuid.uuid4().hex[:12]

    raws, locations, keep = [], [], []
    for i, raw in enumerate(records["raw"].to_pylist()):
        try:
            obj = json.loads(raw) if raw else None
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            raws.append(obj)
            keep.append(i)
        else:
            result.not_replayable += 1
    if not raws:
        return result
    kept = records.take(pa.array(keep, pa.int64()))
    locations = kept["location"].to_pylist()
    result.replayed = len(raws)

    source_spec = spec.regions[region_name].sources[source_name]
    batch = pa.Table.from_pylist([{k: (None if v is None else str(v)) for k, v in r.items()} for r in raws])
    batch = batch.append_column(SEQ, pa.array(range(len(raws)), pa.int64()))
    source_types: dict[str, str] = {}
    if source_spec.kind in TYPED_SOURCES:
        connector = connector_for(source_spec, mapping.source)
        try:
            info = connector.table_info(mapping.table)
        finally:
            connector.close()
        source_types = duckdb_types_of(info.schema)
    con = duckdb.connect()
    prepare_reference(con, spec)
    refs = {name: name for name in spec.reference} | {ref.contract: name for name, ref in spec.reference.items()}
    compiled = compile_mapping(mapping, contract, source_types, {c: "VARCHAR" for c in batch.column_names if c != SEQ} | {SEQ: "BIGINT"}, refs)
    con.register("__batch", batch)
    out = con.sql(compiled.select).to_arrow_table()
    seqs = out[SEQ].to_pylist()
    bad_mask = pc.greater(pc.list_value_length(out[QUARANTINE]), 0)
    good = out.filter(pc.invert(bad_mask))
    bad = out.filter(bad_mask)

    resolved: list[str] = []
    if good.num_rows:
        rows = good.select(list(contract_schema(contract).names)).cast(contract_schema(contract))
        existing = _existing_keys(store, mapping.contract, list(contract.key))
        fresh_mask = _not_in(rows, list(contract.key), existing)
        fresh = rows.filter(fresh_mask)
        result.superseded = rows.num_rows - fresh.num_rows
        if fresh.num_rows:
            fresh = _latest_per_key(fresh, list(contract.key))
            commit = store.commit(
                mapping.contract,
                fresh,
                key=list(contract.key),
                mapping=mapping.name,
                position=store.committed_position(mapping.contract, mapping.name) or {},
                run_id=run_id,
            )
            result.snapshot_id = str(commit.snapshot_id)
        result.loaded = fresh.num_rows
        good_seq = good[SEQ].to_pylist()
        resolved = [locations[s] for s in good_seq]
    if bad.num_rows:
        result.still_failing = bad.num_rows
        for reasons in bad[QUARANTINE].to_pylist():
            for r in reasons:
                result.reasons[r] = result.reasons.get(r, 0) + 1
        updated = kept.take(pa.array([s for s in bad[SEQ].to_pylist()], pa.int64()))
        updated = updated.set_column(updated.schema.get_field_index("reasons"), "reasons", bad[QUARANTINE])
        updated = updated.set_column(updated.schema.get_field_index("reason"), "reason", pc.binary_join(bad[QUARANTINE], "; "))
        store.commit_quarantine(updated, run_id=run_id)
    # records the mapping filter now drops are resolved too
    dropped = sorted(set(range(len(raws))) - set(seqs))
    resolved += [locations[s] for s in dropped]
    if resolved:
        store.clear_quarantine(mapping.name, run_id=run_id, locations=resolved)
    return result


def _mapping(spec: PlatformSpec, name: str) -> Mapping:
    for m in spec.mappings:
        if m.name == name:
            return m
    guess = nearest(name, [m.name for m in spec.mappings])
    raise SkyfedError(
        f"no mapping named '{name}'" + (f" (did you mean '{guess}'?)" if guess else ""),
        hint="`skyfed quarantine list` shows the mappings that have quarantined records",
    )


def _existing_keys(store: Any, contract: str, key: list[str]) -> pa.Table:
    try:
        return store.read(contract).select(key)
    except SkyfedError:
        return pa.table({k: pa.array([], pa.string()) for k in key})


def _not_in(rows: pa.Table, key: list[str], existing: pa.Table) -> pa.Array:
    """Mask of rows whose key is not in `existing`."""
    con = duckdb.connect()
    con.register("r", rows.select(key).append_column("__i", pa.array(range(rows.num_rows), pa.int64())))
    con.register("e", existing)
    on = " AND ".join(f'r."{k}" = e."{k}"' for k in key)
    present = {row[0] for row in con.execute(f"SELECT r.__i FROM r JOIN e ON {on}").fetchall()}
    con.close()
    return pa.array([i not in present for i in range(rows.num_rows)])


def _latest_per_key(rows: pa.Table, key: list[str]) -> pa.Table:
    con = duckdb.connect()
    con.register("r", rows.append_column("__i", pa.array(range(rows.num_rows), pa.int64())))
    part = ", ".join(f'"{k}"' for k in key)
    out = con.sql(f"SELECT * EXCLUDE (__i) FROM r QUALIFY row_number() OVER (PARTITION BY {part} ORDER BY __i DESC) = 1")
    return out.to_arrow_table().cast(rows.schema)
