"""Batch ingestion of one mapping: extract, harmonize, check, stage, de-duplicate, commit.

Stages, each with clear state (after dlt's extract/normalize/load):
1. extract: the connector streams record batches in (committed position, position
   taken now]; records it cannot parse come back as rejects;
2. harmonize: one compiled DuckDB statement per batch maps and checks every row
   (skyfed.contracts.harmonize); rows with reasons go to the quarantine stage;
3. stage: good rows go to an on-disk DuckDB staging table, so a run never holds a
   whole table in memory;
4. commit: the staged rows, de-duplicated by key (latest cursor wins, then the
   latest arrival; only repeated keys go through the window), are upserted into the
   region's curated store together with the new source position in one atomic
   commit. The store gets the de-dup SQL, not rows (`commit_query`): into an empty
   Iceberg table or on a full refresh DuckDB writes the data files itself. Quarantine records are committed
   first and idempotently, so a crash between the two commits repeats, never
   doubles, them.
Nothing before step 4 is visible to readers, so a crash anywhere leaves the store as
it was, and the rerun reads the same range again.

For a PostgreSQL table, steps 1-3 are one DuckDB statement where that gives the same
result (skyfed.ingest.fused: DuckDB scans the table and runs the compiled mapping into
staging; fail, warnings and quarantine are then read out by SQL); step 4 is unchanged.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sqlglot import exp, parse_one

from skyfed.connectors import duck
from skyfed.connectors.base import ReadRequest, Reject
from skyfed.connectors.registry import connector_for
from skyfed.contracts.harmonize import (
    CURSOR,
    FAIL,
    PROVENANCE,
    QUARANTINE,
    RAW,
    SEQ,
    WARN,
    compile_mapping,
    q,
    reason_rule,
)
from skyfed.contracts.key_origin import unique_by
from skyfed.contracts.types import contract_schema, duckdb_type, duckdb_types_of
from skyfed.errors import SkyfedError
from skyfed.governance.drift import check_drift
from skyfed.home import sub_dir
from skyfed.ingest import fused
from skyfed.ingest.positions import position_from_json, position_to_json
from skyfed.ingest.reference import prepare_reference
from skyfed.ingest.stores import open_store
from skyfed.ingest.stores.base import QUARANTINE_SCHEMA, quarantine_records
from skyfed.spec.issues import nearest
from skyfed.spec.models import Mapping, PlatformSpec

ProgressFn = Callable[[int, int | None], None]  # rows so far, total estimate
POSITION_FROM_READ_NOTE = "source position: the greatest cursor among the rows read (no separate max(cursor) query)"

@dataclass
class MappingResult:
    """What one mapping's run did; the counts satisfy read = loaded + quarantined + filtered."""

    run_id: str
    mapping: str
    region: str
    source: str
    source_table: str
    contract: str
    status: str = "ok"
    rows_read: int = 0
    rows_loaded: int = 0
    rows_quarantined: int = 0
    rows_filtered: int = 0
    rows_superseded: int = 0
    rows_committed: int = 0
    bytes_read: int = 0
    seconds: float = 0.0
    snapshot_id: str | None = None
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    warnings: dict[str, int] = field(default_factory=dict)
    position_from: dict[str, Any] | None = None
    position_to: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def rows_per_second(self) -> float:
        return self.rows_read / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items()}
        d["rows_per_second"] = round(self.rows_per_second, 1)
        return d


def referenced_columns(mapping: Mapping) -> set[str]:
    """Source columns that the mapping's expressions, filter, key and cursor use."""
    names: set[str] = set(mapping.key)
    if mapping.cursor:
        names.add(mapping.cursor)
    for text in [*mapping.columns.values(), *([mapping.filter] if mapping.filter else [])]:
        tree = parse_one(f"SELECT {text} FROM __t", dialect="duckdb")
        for col in tree.find_all(exp.Column):
            if not col.table:
                names.add(col.name)
    return names


def run_mapping(
    spec: PlatformSpec,
    mapping: Mapping,
    *,
    full_refresh: bool = False,
    run_id: str | None = None,
    on_progress: ProgressFn | None = None,
    batch_rows: int | None = None,
) -> MappingResult:
    """Ingest one mapping end to end; raises SkyfedError with nothing committed on failure.

    `batch_rows` (default $SKYFED_INGEST_BATCH_ROWS, else 200,000) bounds the rows
    harmonized and staged per step.
    """
    started = time.perf_counter()
    batch_rows = batch_rows or _batch_rows_from_env()
    run_id = run_id or uuid.uuid4().hex[:16]
    region_name, _, source_name = mapping.source.partition(".")
    region = spec.regions[region_name]
    source_spec = region.sources[source_name]
    contract = spec.contracts[mapping.contract]
    result = MappingResult(run_id, mapping.name, region_name, mapping.source, mapping.table, mapping.contract)

    store = open_store(region_name, region.store)
    store.ensure_table(mapping.contract, contract)
    connector = connector_for(source_spec, mapping.source)
    stage_dir = sub_dir("tmp", f"run-{run_id}-{mapping.name}")
    try:
        info = connector.table_info(mapping.table)
        # Values are taken with the types the source delivers. Text formats (CSV, JSON
        # lines) deliver text: types inferred from a sample are a guess that a later
        # file can prove wrong, so casting is the mapping's job (TRY_CAST) and a value
        # that does not fit becomes NULL, which the contract's rules then judge.
        source_types: dict[str, str] = {}
        missing = sorted(referenced_columns(mapping) - set(info.schema.names))
        if not set(info.schema.names) - set(PROVENANCE):
            missing = []  # no object with data yet (files): nothing to check the mapping against, nothing to read
        if missing:
            col = missing[0]
            raise SkyfedError(
                f"mapping {mapping.name}: source table {mapping.source}.{mapping.table} has no column '{col}'"
                + (f" (did you mean '{s}'?)" if (s := nearest(col, info.schema.names)) else ""),
                hint="fix the mapping's expressions in the spec, then rerun `skyfed ingest`",
            )
        drift = check_drift(spec, mapping, info.schema, run_id=run_id)
        unused = sorted(set(info.schema.names) - referenced_columns(mapping) - set(PROVENANCE) - {"dt"})
        if unused:
            result.notes.append(f"source columns not used by the mapping: {', '.join(unused)}")

        previous = None if full_refresh else store.committed_position(mapping.contract, mapping.name)
        after = position_from_json(previous)
        request = ReadRequest(table=mapping.table, cursor=mapping.cursor, batch_rows=batch_rows)
        fused_wanted = fused.wanted(mapping, connector, drift)
        # The fused path takes the position from the rows its one-snapshot read returns
        # (no separate max(cursor) scan of the table); every other read asks for it first.
        upto = None if fused_wanted and fused.position_from_read(request, info.schema) else connector.position(request)
        result.position_from = previous

        # Staging lives in memory up to a limit and spills to disk beyond it: a
        # persistent database file made every staged batch a disk write.
        con = duck.connect(["postgres"]) if fused_wanted else duckdb.connect()
        con.execute(f"SET temp_directory = '{stage_dir / 'spill'}'")
        con.execute(f"SET memory_limit = '{os.environ.get('SKYFED_INGEST_MEMORY', '320MB')}'")
        con.execute("SET preserve_insertion_order = false")
        prepare_reference(con, spec)
        ref_tables = {name: name for name in spec.reference}
        ref_tables.update({ref.contract: name for name, ref in spec.reference.items()})

        rejects: list[Reject] = []
        seq = 0
        batch_no = 0
        compiled = None
        staged = False
        keys_unique = False  # the read cannot hold a key twice (fused path over a unique source key)
        scan = fused.scan(con, connector, request, upto, after, info.schema) if fused_wanted else None
        if scan is not None:
            result.notes.append("read and harmonized in one DuckDB statement (fused PostgreSQL path)")
            source_key = _unique_in_read(connector, mapping, contract, info)
            if source_key is not None:
                keys_unique = True
                result.notes.append(
                    f"contract key follows the source's unique key ({', '.join(source_key)}) and the read is one "
                    "snapshot: no key can repeat, so the search for repeated keys was skipped"
                )
            staged = _run_fused(con, connector, scan, mapping, contract, ref_tables, info, result, run_id, on_progress,
                                seq_columns=source_key)  # fmt: skip
            if upto is None:
                upto = fused.read_position(con, after)
                result.notes.append(POSITION_FROM_READ_NOTE)
        if upto is None:  # the fused path did not apply after all
            upto = connector.position(request)
        result.position_to = position_to_json(upto)
        batches = () if scan is not None else _sliced(connector.read(request, upto, after, rejects.append), batch_rows)
        for batch in batches:
            batch = drift.apply(batch, rejects.append)  # drifted rows to quarantine, drifted values per mode
            result.rows_read += batch.num_rows
            result.bytes_read += batch.nbytes
            batch = pa.Table.from_batches([batch]).append_column(SEQ, pa.array(np.arange(seq, seq + batch.num_rows, dtype=np.int64)))
            seq += batch.num_rows
            batch_types = duckdb_types_of(batch.schema)
            if compiled is None or compiled[0] != batch_types:
                compiled = (batch_types, compile_mapping(mapping, contract, source_types, batch_types, ref_tables))
            con.register("__batch", batch)
            out = con.sql(compiled[1].select).to_arrow_table()
            con.unregister("__batch")
            result.rows_filtered += batch.num_rows - out.num_rows
            _raise_on_fail(mapping, out, source_spec.kind)
            _count(result.warnings, out[WARN])
            bad_mask = pc.greater(pc.list_value_length(out[QUARANTINE]), 0)
            bad = out.filter(bad_mask)
            good = out.filter(pc.invert(bad_mask))
            if bad.num_rows:
                _stage_quarantine(con, _quarantine_rows(bad, mapping, run_id, region_name))
                _count(result.quarantine_reasons, bad[QUARANTINE])
                result.rows_quarantined += bad.num_rows
            if good.num_rows:
                keep = list(compiled[1].contract_columns) + [CURSOR, SEQ]
                con.register("__good", good.select(keep))
                if not staged:
                    con.execute("CREATE OR REPLACE TABLE stage AS SELECT * FROM __good")
                    staged = True
                else:
                    con.execute("INSERT INTO stage SELECT * FROM __good")
                con.unregister("__good")
                result.rows_loaded += good.num_rows
            if on_progress:
                on_progress(result.rows_read, info.rows)
            batch_no += 1
            crash_point(f"batch:{batch_no}")

        crash_point("after_extract")
        result.warnings.update(drift.warnings)
        result.notes.extend(drift.notes)
        result.notes.extend(getattr(connector, "notes", []))  # e.g. a pattern that matched nothing, an empty object
        if rejects:
            result.rows_read += len(rejects)
            result.rows_quarantined += len(rejects)
            _stage_quarantine(con, _reject_rows(rejects, mapping, run_id, region_name))
            for r in rejects:
                result.quarantine_reasons[r.reason] = result.quarantine_reasons.get(r.reason, 0) + 1

        # 4. commit: quarantine (idempotent), then data + position atomically
        if full_refresh:
            store.clear_quarantine(mapping.name, run_id=run_id)
        if _has_table(con, "quarantine_stage"):
            qrows = con.sql("SELECT * FROM quarantine_stage").to_arrow_table().cast(QUARANTINE_SCHEMA)
            store.commit_quarantine(qrows, run_id=run_id)
            crash_point("after_quarantine_commit")
        if full_refresh or result.rows_read or position_to_json(upto) != previous:
            # The batch loop is done (no Arrow batches in flight): the de-dup query and
            # DuckDB's partitioned Parquet writes get the larger budget, spilling less.
            con.execute(f"SET memory_limit = '{os.environ.get('SKYFED_INGEST_COMMIT_MEMORY', '800MB')}'")
            commit = store.commit_query(
                mapping.contract,
                con,
                _deduplicated(con, contract, staged, unique=keys_unique),
                key=list(contract.key),
                mapping=mapping.name,
                position=position_to_json(upto),
                run_id=run_id,
                replace=full_refresh,
            )
            result.rows_committed = commit.rows_written
            result.rows_superseded = result.rows_loaded - commit.rows_written
            result.snapshot_id = None if commit.snapshot_id is None else str(commit.snapshot_id)
            crash_point("after_commit")
        if result.rows_read == 0:
            result.status = "no_new_data"
        con.close()
    finally:
        connector.close()
        shutil.rmtree(stage_dir, ignore_errors=True)
    result.seconds = time.perf_counter() - started
    return result


# --------------------------------------------------------------------------- fused path


def _run_fused(
    con: duckdb.DuckDBPyConnection,
    connector: Any,
    scan: fused.FusedScan,
    mapping: Mapping,
    contract: Any,
    ref_tables: dict[str, str],
    info: Any,
    result: MappingResult,
    run_id: str,
    on_progress: ProgressFn | None,
    *,
    seq_columns: tuple[str, ...] | None = None,
) -> bool:
    """Scan + harmonize in one statement (skyfed.ingest.fused), then the batch loop's
    bookkeeping over the result with SQL: fail, warnings, quarantine, counters, `stage`.
    `seq_columns`: the source's unique key when no key can repeat; the arrival order of a
    parallel read is then a hash of it alone (it breaks no tie, it only orders quarantine
    records the same way every run), not of the whole record. Returns whether the `stage`
    relation exists."""
    types = fused.batch_types(info.schema)
    compiled = compile_mapping(mapping, contract, {}, types, ref_tables)
    # the statement holds no Arrow batches: it gets the commit's larger memory budget
    con.execute(f"SET memory_limit = '{os.environ.get('SKYFED_INGEST_COMMIT_MEMORY', '800MB')}'")
    data_columns = list(seq_columns) if seq_columns else [c for c in types if c != SEQ]
    result.rows_read = fused.stage(
        con, scan, compiled.select, data_columns, total=info.rows, on_progress=on_progress,
        activity=lambda: connector.scan_activity(mapping.table),
        crash=crash_point,
    )  # fmt: skip
    if info.rows and info.bytes:  # an estimate: the table's size in proportion to the rows read
        result.bytes_read = int(info.bytes * min(1.0, result.rows_read / info.rows))
    crash_point("fused:after_stage")
    if fused.count_with(con, FAIL):
        _raise_on_fail(mapping, fused.rows_with(con, FAIL), "postgres", ordinal=scan.ordinal)
    for reason, n in fused.reason_counts(con, WARN):
        group = reason_rule(reason)
        result.warnings[group] = result.warnings.get(group, 0) + n
    bad_rows = fused.count_with(con, QUARANTINE)
    if bad_rows:
        bad = fused.rows_with(con, QUARANTINE)
        _stage_quarantine(con, _quarantine_rows(bad, mapping, run_id, result.region))
        for reason, n in fused.reason_counts(con, QUARANTINE):
            group = reason_rule(reason)
            result.quarantine_reasons[group] = result.quarantine_reasons.get(group, 0) + n
        result.rows_quarantined += bad_rows
    result.rows_loaded += result.rows_read - bad_rows
    fused.create_stage_view(con, compiled.contract_columns)
    return True


def _unique_in_read(connector: Any, mapping: Mapping, contract: Any, info: Any) -> tuple[str, ...] | None:
    """The source's unique key when the contract keys of a fused read cannot repeat: the read
    is one snapshot of the table, and the contract key determines that unique key
    (contracts.key_origin). None: keys may repeat."""
    unique_keys = getattr(connector, "unique_keys", None)
    if unique_keys is None or not contract.key:
        return None
    return unique_by(mapping, contract, duckdb_types_of(info.schema), unique_keys(mapping.table))


# --------------------------------------------------------------------------- helpers


def _batch_rows_from_env() -> int:
    text = os.environ.get("SKYFED_INGEST_BATCH_ROWS", "").strip()
    if not text:
        return 200_000
    if not text.isdigit() or int(text) < 1:
        raise SkyfedError(
            f"SKYFED_INGEST_BATCH_ROWS={text!r} is not a positive number of rows", "unset it or set e.g. 100000"
        )
    return int(text)


def _sliced(batches: Any, size: int) -> Any:
    """Batches of about `size` rows: large ones are cut (connectors treat batch_rows as a
    target only), small ones (one per small file) are combined, since every batch pays
    for planning the harmonize statement. A read's batches share one schema."""
    pending: list[pa.RecordBatch] = []
    rows = 0
    for batch in batches:
        for offset in range(0, batch.num_rows, size):
            piece = batch.slice(offset, size)
            pending.append(piece)
            rows += piece.num_rows
            if rows >= size:
                yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]
                pending, rows = [], 0
    if rows:
        yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]

def _raise_on_fail(mapping: Mapping, out: pa.Table, kind: str, *, ordinal: bool = True) -> None:
    """`ordinal`: whether SEQ numbers the rows in arrival order (not in a parallel fused read)."""
    has_fail = pc.greater(pc.list_value_length(out[FAIL]), 0)
    if pc.any(has_fail).as_py():
        failing = out.filter(has_fail).slice(0, 1)
        first = failing.to_pylist()[0]
        where = _location_of(first) if ordinal else f"raw {str(first.get(RAW))[:200]}"
        if first.get("_source_object") is None and mapping.key:
            where = f"{_key_location(failing, mapping)[0].as_py()} ({where})"
        n = pc.sum(has_fail).as_py()
        raise SkyfedError(
            f"mapping {mapping.name} ({kind} source {mapping.source}, table {mapping.table}): {n} row(s) break "
            f"a rule of severity 'fail', first at {where}: {first[FAIL][0]}",
            hint="nothing was committed; fix the source data or relax the rule's severity, then rerun",
        )


def _location_of(row: dict[str, Any]) -> str:
    if row.get("_source_object") is not None:
        return f"{row['_source_object']}:{row.get('_source_row')}"
    return f"row {row.get(SEQ, -1) + 1} of this run, raw {str(row.get(RAW))[:200]}"


def _count(counter: dict[str, int], reasons: pa.ChunkedArray) -> None:
    """Add reason counts, grouped by rule; vectorized over the distinct reasons."""
    flat = pc.list_flatten(reasons)
    if len(flat) == 0:
        return
    for item in pc.value_counts(flat).to_pylist():
        group = reason_rule(item["values"])
        counter[group] = counter.get(group, 0) + item["counts"]


def _quarantine_rows(bad: pa.Table, mapping: Mapping, run_id: str, region: str) -> pa.Table:
    n = bad.num_rows
    if "_source_object" in bad.column_names:
        location = pc.binary_join_element_wise(
            bad["_source_object"], pc.cast(bad["_source_row"], pa.string()), ":"
        )
    else:
        location = _key_location(bad, mapping)
    cursor = pc.cast(bad[CURSOR], pa.string()) if bad[CURSOR].type != pa.null() else None
    return quarantine_records(
        mapping, region, run_id, location=location, reasons=bad[QUARANTINE], raw=bad[RAW], n=n, cursor=cursor
    )


def _key_location(bad: pa.Table, mapping: Mapping) -> pa.ChunkedArray:
    """`key=<source key values>` read from the raw record (the source's own key)."""
    con = duckdb.connect()
    con.register("__bad", bad.select([RAW, SEQ]))
    keys = mapping.key or []
    if keys:
        parts = " || ',' || ".join(f"coalesce(json_extract_string({RAW}, {_json_path(k)}), 'NULL')" for k in keys)
        expr = f"'{','.join(keys)}=' || {parts}"
    else:
        expr = f"'row ' || CAST({SEQ} AS VARCHAR)"
    out = con.sql(f"SELECT {expr} AS loc FROM __bad").to_arrow_table()["loc"]
    con.close()
    return out


def _json_path(key: str) -> str:
    return "'$.\"" + key.replace('"', '\\"') + "\"'"


def _reject_rows(rejects: list[Reject], mapping: Mapping, run_id: str, region: str) -> pa.Table:
    return quarantine_records(
        mapping, region, run_id,
        location=pa.array([r.location for r in rejects], pa.string()),
        reasons=[[r.reason] for r in rejects],
        raw=pa.array([r.raw for r in rejects], pa.string()),
        n=len(rejects),
    )  # fmt: skip


def _stage_quarantine(con: duckdb.DuckDBPyConnection, rows: pa.Table) -> None:
    con.register("__q", rows)
    if _has_table(con, "quarantine_stage"):
        con.execute("INSERT INTO quarantine_stage SELECT * FROM __q")
    else:
        con.execute("CREATE TABLE quarantine_stage AS SELECT * FROM __q")
    con.unregister("__q")


def _has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    return bool(con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]).fetchone()[0])


def _deduplicated(con: duckdb.DuckDBPyConnection, contract: Any, staged: bool, *, unique: bool = False) -> str:
    """SQL of the staged rows, one per key (the latest cursor wins, then the latest arrival).

    The store runs it on the staging connection: DuckDB either writes the data files
    itself or streams batches, so the whole table is never held in Python. Only keys
    that repeat go through the window: finding them needs the key columns alone, and
    most loads have none. `unique`: the read cannot repeat a key (see `_unique_in_read`),
    so even that search is skipped."""
    schema = contract_schema(contract)
    if not staged:
        types = ", ".join(f"CAST(NULL AS {duckdb_type(c.type)}) AS {q(n)}" for n, c in contract.columns.items())
        return f"SELECT {types} WHERE false"
    cols = ", ".join(q(c) for c in schema.names)
    if not contract.key or unique:
        return f"SELECT {cols} FROM stage"
    key = ", ".join(q(k) for k in contract.key)
    con.execute(f"CREATE OR REPLACE TABLE repeated AS SELECT {key} FROM stage GROUP BY ALL HAVING count(*) > 1")
    latest = (
        f"QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY {CURSOR} DESC NULLS LAST, {SEQ} DESC) = 1"
    )
    if not con.execute("SELECT count(*) FROM repeated").fetchone()[0]:
        return f"SELECT {cols} FROM stage"
    return (
        f"SELECT {cols} FROM stage ANTI JOIN repeated USING ({key}) "
        f"UNION ALL SELECT {cols} FROM (SELECT * FROM stage SEMI JOIN repeated USING ({key}) {latest})"
    )



def crash_point(name: str) -> None:
    """Test hook: SKYFED_CRASH_AT=<name> kills this process (SIGKILL) at that point.

    A fault of our own making, used only because "the process dies between two
    steps" cannot be produced from outside with any precision.
    """
    if os.environ.get("SKYFED_CRASH_AT") == name:
        os.kill(os.getpid(), 9)
