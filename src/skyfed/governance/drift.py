"""Drift at ingestion: what a mapping does when its source gains a column or changes a type.

Before reading, the runner compares the source's current Arrow schema (the
connector's `table_info`) with the schema the mapping accepts (kept per mapping in
the metadata database, see drift_store) and decides per change, by the mapping's
mode (governance file `drift:`; the modes and their meaning follow dlt's schema
contracts):

| mode | new source column | source type changed |
| --- | --- | --- |
| evolve | accepted: carried into the contract columns whose expressions read it, else ignored (said which) | accepted: the mapping reads the new type, the contract checks judge the result |
| freeze | refused: SkyfedError naming source, table, column, types and the options | refused, the same |
| discard_row | rows with a value in it are quarantined | rows whose value does not fit the old type are quarantined |
| discard_value | its values become NULL, with a warning | values that do not fit the old type become NULL, with a warning |

Under the discard modes the accepted schema keeps the old shape, so every later
run applies the same rule until the source reverts or the mode changes: a rerun
after a crash decides exactly as the crashed run did. Under evolve the accepted
schema takes the new shape; under freeze nothing is accepted.

The per-row rules are DuckDB SQL over the source batch (`DriftChange.value_sql`,
`quarantine_sql`, `warn_sql`), usable inside the harmonize SELECT, and
`DriftPlan.apply` runs them over an Arrow batch in one statement, handing rows to
quarantine through the connector's reject channel. Text sources (CSV, JSON lines)
keep delivering text: values are judged against the old type, not re-typed, since
their mappings cast text themselves.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from skyfed.connectors.base import SOURCE_OBJECT, SOURCE_ROW, Reject
from skyfed.contracts.harmonize import lit, q
from skyfed.contracts.types import duckdb_types_of
from skyfed.errors import SkyfedError
from skyfed.governance import drift_store
from skyfed.governance.config import Governance, governance_for
from skyfed.governance.lineage import expression_columns, mapping_columns
from skyfed.spec.issues import nearest
from skyfed.spec.models import Mapping, PlatformSpec

NEW, TYPE, REMOVED = "new_column", "type_change", "removed_column"
UNKNOWN = "NULL"  # an Arrow null column (e.g. empty in a file's sample): no type information
PROVENANCE = (SOURCE_OBJECT, SOURCE_ROW)
RAW_LIMIT = 2000
_NUMERIC = re.compile(r"^(TINYINT|SMALLINT|INTEGER|BIGINT|HUGEINT|UTINYINT|USMALLINT|UINTEGER|UBIGINT|UHUGEINT"
                      r"|FLOAT|DOUBLE|DECIMAL\(\d+,\s*\d+\))$")
OPTIONS = ("evolve (accept it)", "discard_row (quarantine the rows it affects)",
           "discard_value (set the values it affects to NULL, with a warning)")


@dataclass(frozen=True)
class DriftChange:
    """One difference between the accepted and the current source schema, and what was decided."""

    column: str
    change: str  # new_column | type_change | removed_column
    old_type: str | None  # DuckDB type names
    new_type: str | None
    mode: str
    decision: str  # carried | ignored | accepted | forgotten | noted | refused | quarantine_rows | null_values
    detail: str
    value_sql: str | None = None  # replaces the column in the batch (an expression over it)
    quarantine_sql: str | None = None  # a reason when the row must be quarantined, else NULL
    warn_sql: str | None = None  # a warning when the value was discarded, else NULL
    row_message: str | None = None  # the quarantine reason or warning those two expressions give

    def record(self) -> dict[str, Any]:
        """The fields stored in the metadata database."""
        return {k: v for k, v in asdict(self).items() if not k.endswith("_sql") and k != "row_message"}


@dataclass
class DriftPlan:
    """The decisions for one mapping's run and the per-row rules they need."""

    mapping: str
    source: str
    table: str
    key: tuple[str, ...] = ()
    changes: list[DriftChange] = field(default_factory=list)
    first_seen: bool = False
    warnings: dict[str, int] = field(default_factory=dict)  # warning text -> values discarded by apply()

    @property
    def notes(self) -> list[str]:
        """One line per change, for the run's notes."""
        return [f"drift ({c.mode}): {c.detail}" for c in self.changes]

    def rules(self, columns: list[str] | None = None) -> list[DriftChange]:
        """The changes that act on rows (of a batch with `columns`)."""
        return [c for c in self.changes if (c.value_sql or c.quarantine_sql or c.warn_sql)
                and (columns is None or c.column in columns)]

    def apply(self, batch: pa.RecordBatch | pa.Table,
              reject: Callable[[Reject], None] | None = None) -> pa.RecordBatch | pa.Table:
        """The batch with drifted values replaced and rows to quarantine removed (given to `reject`).

        One DuckDB statement computes the replaced columns and each row's reasons;
        the other columns are not touched. Without `reject`, a row to quarantine is a
        SkyfedError. Discarded values are counted in `warnings`.
        """
        rules = self.rules(batch.schema.names)
        if not rules:
            return batch
        table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
        con = duckdb.connect()
        try:
            con.execute("SET TimeZone = 'UTC'")
            con.register("__drift", table)
            parts = [f"{c.value_sql} AS {q(c.column)}" for c in rules if c.value_sql]
            reasons = [c.quarantine_sql for c in rules if c.quarantine_sql]
            parts.append(f"concat_ws('; ', {', '.join(reasons)}) AS __drift_q" if reasons else "'' AS __drift_q")
            warns = [c for c in rules if c.warn_sql]
            parts += [f"({c.warn_sql}) IS NOT NULL AS __drift_w{i}" for i, c in enumerate(warns)]
            out = con.sql(f"SELECT {', '.join(parts)} FROM __drift").to_arrow_table()
            bad = pc.not_equal(out["__drift_q"], "")
            n_bad = pc.sum(bad).as_py() or 0
            if n_bad:
                self._reject(con, table.filter(bad), out["__drift_q"].filter(bad), reject)
        finally:
            con.close()
        good = pc.invert(bad)
        for c in rules:
            if c.value_sql:
                i = table.schema.get_field_index(c.column)
                table = table.set_column(i, pa.field(c.column, out[c.column].type), out[c.column])
        for i, c in enumerate(warns):
            n = pc.sum(pc.and_(out[f"__drift_w{i}"], good)).as_py() or 0
            if n:
                text = c.row_message or c.detail
                self.warnings[text] = self.warnings.get(text, 0) + n
        if n_bad:
            table = table.filter(good)
        if isinstance(batch, pa.Table):
            return table
        table = table.combine_chunks()
        return table.to_batches()[0] if table.num_rows else pa.RecordBatch.from_pylist([], schema=table.schema)

    def _reject(self, con: duckdb.DuckDBPyConnection, bad: pa.Table, reasons: pa.ChunkedArray,
                reject: Callable[[Reject], None] | None) -> None:
        """Hand each row to quarantine: its location, its raw record as JSON, its reasons (rows to quarantine only)."""
        names = bad.schema.names
        if SOURCE_OBJECT in names and SOURCE_ROW in names:
            where = f"{q(SOURCE_OBJECT)} || ':' || CAST({q(SOURCE_ROW)} AS VARCHAR)"
        elif self.key and all(k in names for k in self.key):
            where = lit(",".join(self.key) + "=") + " || " + " || ',' || ".join(
                f"coalesce(CAST({q(k)} AS VARCHAR), 'NULL')" for k in self.key)
        else:
            where = lit(f"{self.source}.{self.table} (no key)")
        data = [n for n in names if n not in PROVENANCE]
        raw = "CAST(to_json(struct_pack(" + ", ".join(f"{q(n)} := {q(n)}" for n in data) + ")) AS VARCHAR)"
        con.register("__drift_bad", bad)
        found = con.sql(f"SELECT {where} AS loc, {raw} AS raw FROM __drift_bad").to_arrow_table()
        if reject is None:
            raise SkyfedError(
                f"mapping {self.mapping}: {bad.num_rows} row(s) of {self.source}.{self.table} must be quarantined "
                f"by its drift rules, first at {found['loc'][0].as_py()}: {reasons[0].as_py()}",
                "pass a reject callback (the runner's quarantine) to DriftPlan.apply",
            )
        for loc, text, why in zip(found["loc"].to_pylist(), found["raw"].to_pylist(), reasons.to_pylist(), strict=True):
            reject(Reject(self.table, loc or "", (text or "")[:RAW_LIMIT], why))

    def to_dict(self) -> dict[str, Any]:
        return {"mapping": self.mapping, "source": self.source, "table": self.table, "first_seen": self.first_seen,
                "changes": [c.record() for c in self.changes], "warnings": dict(self.warnings)}


# --------------------------------------------------------------------------- checking


def schema_columns(schema: pa.Schema) -> list[dict[str, str]]:
    """The data columns of a source schema as {name, arrow, duckdb} (provenance columns left out)."""
    fields = [f for f in schema if f.name not in PROVENANCE]
    if not fields:
        return []
    types = duckdb_types_of(pa.schema(fields))
    return [{"name": f.name, "arrow": str(f.type), "duckdb": UNKNOWN if pa.types.is_null(f.type) else types[f.name]}
            for f in fields]


def check_drift(
    spec: PlatformSpec,
    mapping: Mapping,
    schema: pa.Schema,
    *,
    run_id: str | None = None,
    gov: Governance | None = None,
    spec_path: str | None = None,
) -> DriftPlan:
    """Compare `schema` (the source's now) with what `mapping` accepts; decide, record, and return the plan.

    The first check of a mapping records its schema as accepted. A change under
    `freeze` is recorded and raised as a SkyfedError; nothing is accepted then.
    """
    gov = gov if gov is not None else governance_for(spec_path)
    _check_names(gov, spec)
    modes = gov.drift.modes_for(mapping.name)
    plan = DriftPlan(mapping.name, mapping.source, mapping.table, tuple(mapping.key))
    current = schema_columns(schema)
    if not current:
        return plan  # no data yet (a file table with no object): nothing observed, nothing accepted
    accepted = drift_store.accepted_schema(mapping.name)
    if accepted is None:
        drift_store.save(mapping.name, mapping.source, mapping.table, current, [], run_id)
        plan.first_seen = True
        return plan

    text = _delivers_text(spec, mapping)
    before = {c["name"]: c for c in accepted}
    now = {c["name"]: c for c in current}
    keep: dict[str, dict[str, str]] = {}
    for col in current:
        name, new = col["name"], col["duckdb"]
        old = before.get(name)
        if old is None:
            plan.changes.append(_decide_new(mapping, name, new, modes.columns))
            if modes.columns == "evolve":
                keep[name] = col
        elif UNKNOWN in (old["duckdb"], new) or old["duckdb"] == new:
            keep[name] = col if new != UNKNOWN else old  # same type, or one side carries no type information
        else:
            plan.changes.append(_decide_type(mapping, name, old["duckdb"], new, modes.types, text))
            keep[name] = col if modes.types == "evolve" else old
    for name, old in before.items():
        if name not in now:
            evolve = modes.columns == "evolve"
            plan.changes.append(DriftChange(
                name, REMOVED, old["duckdb"], None, modes.columns, "forgotten" if evolve else "noted",
                f"source column {name} ({old['duckdb']}) of {mapping.source}.{mapping.table} is gone; "
                + ("it is no longer part of the accepted schema" if evolve else
                   "the accepted schema keeps it, so it may come back with its type")))
            if not evolve:
                keep[name] = old
    new_accepted = list(keep.values())
    refused = [c for c in plan.changes if c.decision == "refused"]
    if plan.changes or new_accepted != accepted:
        drift_store.save(mapping.name, mapping.source, mapping.table, None if refused else new_accepted,
                         [c.record() for c in plan.changes], run_id)
    if refused:
        raise _refusal(spec, mapping, refused)
    return plan


def drift_decisions(mapping: str | None = None) -> list[dict[str, Any]]:
    """Every recorded drift decision of `mapping` (or of all mappings), oldest first."""
    return drift_store.listed(mapping)


def accept_schema(mapping: Mapping, schema: pa.Schema, run_id: str | None = None) -> None:
    """Accept the source's current schema as it is (the way out of a freeze refusal without changing the mode)."""
    drift_store.save(mapping.name, mapping.source, mapping.table, schema_columns(schema), [], run_id)


# --------------------------------------------------------------------------- decisions


def _references(mapping: Mapping, column: str) -> tuple[list[str], list[str]]:
    """(contract columns whose expression reads `column`, other uses: key, cursor, filter)."""
    into = [c for c, srcs in mapping_columns(mapping).items() if column in srcs]
    other = [w for w, hit in (("key", column in mapping.key), ("cursor", column == mapping.cursor),
                              ("filter", bool(mapping.filter) and column in expression_columns(mapping.filter or "")))
             if hit]
    return into, other


def _used(mapping: Mapping, column: str) -> str | None:
    into, other = _references(mapping, column)
    parts = ([f"into {mapping.contract}.{', '.join(into)}"] if into else []) + [f"as the {w}" for w in other]
    return " and ".join(parts) or None


def _decide_new(mapping: Mapping, name: str, new: str, mode: str) -> DriftChange:
    what = f"new source column {name} ({new}) of {mapping.source}.{mapping.table}"
    c = q(name)
    if mode == "evolve":
        used = _used(mapping, name)
        if used:
            return DriftChange(name, NEW, None, new, mode, "carried", f"{what} is carried by mapping {mapping.name} {used}")
        return DriftChange(name, NEW, None, new, mode, "ignored",
                           f"{what} is ignored: mapping {mapping.name} does not read it; to keep it, add an optional "
                           f"column to contract {mapping.contract} (a compatible change) and its expression to the mapping")
    if mode == "freeze":
        return DriftChange(name, NEW, None, new, mode, "refused", f"{what} is refused (mode freeze)")
    if new == UNKNOWN:  # an all-NULL column: there is no value to discard
        return DriftChange(name, NEW, None, new, mode, "noted", f"{what} has no values yet; nothing to discard")
    if mode == "discard_row":
        reason = f"drift: new source column {name} is not accepted by mapping {mapping.name} (mode discard_row)"
        return DriftChange(name, NEW, None, new, mode, "quarantine_rows",
                           f"{what}: rows with a value in it are quarantined",
                           quarantine_sql=f"CASE WHEN {c} IS NOT NULL THEN {lit(reason)} END", row_message=reason)
    warn = f"drift: new source column {name}: value dropped (mode discard_value)"
    return DriftChange(name, NEW, None, new, mode, "null_values", f"{what}: its values are dropped (NULL), with a warning",
                       value_sql=f"CASE WHEN false THEN {c} END",
                       warn_sql=f"CASE WHEN {c} IS NOT NULL THEN {lit(warn)} END", row_message=warn)


def fits_sql(column: str, old: str, new: str) -> str:
    """SQL true when the column's value converts to `old` without loss (numbers must round-trip exactly)."""
    c = q(column)
    cond = f"TRY_CAST({c} AS {old}) IS NOT NULL"
    if _NUMERIC.match(old):  # TRY_CAST rounds ('3.5' and 3.5 become 4): compare with the value read exactly
        exact = new if _NUMERIC.match(new) else "DOUBLE"
        cond += f" AND TRY_CAST({c} AS {old}) = TRY_CAST({c} AS {exact})"
    return f"coalesce({cond}, false)"


def _decide_type(mapping: Mapping, name: str, old: str, new: str, mode: str, text: bool) -> DriftChange:
    what = f"source column {name} of {mapping.source}.{mapping.table} changed type from {old} to {new}"
    c = q(name)
    if mode == "evolve":
        used = _used(mapping, name)
        tail = (f"; accepted: mapping {mapping.name} reads the new type {used}, and values the contract cannot "
                f"hold are quarantined by its checks") if used else f"; accepted (mapping {mapping.name} does not read it)"
        return DriftChange(name, TYPE, old, new, mode, "accepted", what + tail)
    if mode == "freeze":
        return DriftChange(name, TYPE, old, new, mode, "refused", f"{what}; refused (mode freeze)")
    fits = fits_sql(name, old, new)
    as_old = c if text else f"TRY_CAST({c} AS {old})"
    if mode == "discard_row":
        reason = f"drift: source column {name} changed type {old} -> {new} and the value does not fit {old} (mode discard_row)"
        return DriftChange(name, TYPE, old, new, mode, "quarantine_rows",
                           f"{what}; rows whose value does not fit {old} are quarantined",
                           value_sql=None if text else as_old,
                           quarantine_sql=f"CASE WHEN {c} IS NOT NULL AND NOT {fits} THEN {lit(reason)} END",
                           row_message=reason)
    warn = f"drift: source column {name} changed type {old} -> {new}: a value that does not fit {old} was set to NULL (mode discard_value)"
    return DriftChange(name, TYPE, old, new, mode, "null_values",
                       f"{what}; values that do not fit {old} become NULL, with a warning",
                       value_sql=f"CASE WHEN {fits} THEN {as_old} END",
                       warn_sql=f"CASE WHEN {c} IS NOT NULL AND NOT {fits} THEN {lit(warn)} END", row_message=warn)


def _refusal(spec: PlatformSpec, mapping: Mapping, refused: list[DriftChange]) -> SkyfedError:
    first = refused[0]
    region, _, source = mapping.source.partition(".")
    kind = spec.regions[region].sources[source].kind
    if first.change == NEW:
        what = f"new column {first.column} ({first.new_type}) appeared"
    else:
        what = f"column {first.column} changed type from {first.old_type} to {first.new_type}"
    more = f" (and {len(refused) - 1} more change(s))" if len(refused) > 1 else ""
    return SkyfedError(
        f"mapping {mapping.name} ({kind} source {mapping.source}, table {mapping.table}): {what}{more}, "
        f"and the mapping's drift mode is freeze; nothing was read",
        f"revert the source, or set `drift: mappings: {{{mapping.name}: MODE}}` in the governance file with MODE one of "
        f"{'; '.join(OPTIONS)}, or accept the schema once (skyfed.governance.drift.accept_schema)",
    )


def _delivers_text(spec: PlatformSpec, mapping: Mapping) -> bool:
    """CSV and JSON-lines sources deliver every value as text, whatever their sample suggests."""
    region, _, name = mapping.source.partition(".")
    source = spec.regions[region].sources[name]
    table = getattr(source, "tables", {}).get(mapping.table)
    return source.kind == "gcs" and table is not None and table.format in ("csv", "jsonl")


def _check_names(gov: Governance, spec: PlatformSpec) -> None:
    names = [m.name for m in spec.mappings]
    for name in gov.drift.mappings:
        if name not in names:
            guess = nearest(name, names)
            raise SkyfedError(
                f"the governance file's drift modes name a mapping {name!r} that the spec does not have"
                + (f" (did you mean {guess!r}?)" if guess else ""),
                f"mappings of the spec: {', '.join(names)}",
            )
