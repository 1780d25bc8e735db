"""Lineage: where every canonical column comes from, as OpenLineage events and a tree.

Column lineage is derived, not declared: for a mapping, each contract column's SQL
expression is parsed with sqlglot and its source columns collected; for a model,
sqlglot.lineage traces each output column of its SELECT to base-table columns.

Nodes are `table` or `table.column`, with tables named
- `region.source.table` for a source table (e.g. `latam.ops.voos`),
- `region.contract` for a region's curated table (e.g. `latam.flight_leg`),
- `contract` for the canonical (federated) table, the union of the regions',
- the model name for a model.

Events go through the openlineage-python client: a JSON-lines file under the state
folder by default (`lineage/openlineage.jsonl`), or HTTP when $OPENLINEAGE_URL is set
(`OPENLINEAGE_ENDPOINT` and `OPENLINEAGE_API_KEY` optional), which is what Marquez
or Google Cloud's Data Lineage API ingestion expects.
"""

from __future__ import annotations

import os
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, SqlglotError
from sqlglot.lineage import lineage as sql_lineage

from skyfed.catalog import audit as store
from skyfed.errors import SkyfedError
from skyfed.home import sub_dir
from skyfed.spec.models import Mapping, PlatformSpec

PRODUCER = "https://github.com/skyfed/skyfed"
URL_ENV = "OPENLINEAGE_URL"


@dataclass(frozen=True)
class Edge:
    """`src` feeds `dst` (columns None for a table-level edge), through `via`."""

    src_table: str
    src_column: str | None
    dst_table: str
    dst_column: str | None
    via: str

    @property
    def src(self) -> str:
        return f"{self.src_table}.{self.src_column}" if self.src_column else self.src_table

    @property
    def dst(self) -> str:
        return f"{self.dst_table}.{self.dst_column}" if self.dst_column else self.dst_table


def expression_columns(expression: str, dialect: str = "duckdb") -> list[str]:
    """The source columns a mapping expression reads (sorted, unique)."""
    try:
        tree = sqlglot.parse_one(expression, read=dialect)
    except ParseError as exc:
        raise SkyfedError(f"cannot parse the mapping expression {expression!r}: {exc}", "fix the expression") from None
    return sorted({c.name for c in tree.find_all(exp.Column)})


def mapping_columns(mapping: Mapping) -> dict[str, list[str]]:
    """Each contract column of `mapping` <- the source columns its expression reads."""
    return {col: expression_columns(expr) for col, expr in mapping.columns.items()}


def model_columns(sql: str, schema: dict[str, dict[str, str]] | None = None, dialect: str = "duckdb") -> dict[str, list[str]]:
    """Each output column of a model's SELECT <- the `table.column`s it is computed from."""
    try:
        select = sqlglot.parse_one(sql, read=dialect)
    except ParseError as exc:
        raise SkyfedError(f"cannot parse the model SQL: {exc}", "fix the SQL") from None
    out: dict[str, list[str]] = {}
    for proj in select.selects if isinstance(select, exp.Query) else []:
        name = proj.alias_or_name
        try:
            node = sql_lineage(name, select, schema=schema, dialect=dialect)
        except SqlglotError:
            out[name] = []
            continue
        leaves = set()
        for n in node.walk():
            if isinstance(n.source, exp.Table) and not n.downstream:
                col = n.name.split(".")[-1]
                leaves.add(f"{n.source.name}.{col}")
        out[name] = sorted(leaves)
    return out


def spec_edges(spec: PlatformSpec) -> list[Edge]:
    """Column and table edges implied by the spec: source -> region table -> canonical table."""
    edges: list[Edge] = []
    regional: set[tuple[str, str]] = set()
    for m in spec.mappings:
        region = m.source.split(".")[0]
        src, dst = f"{m.source}.{m.table}", f"{region}.{m.contract}"
        edges.append(Edge(src, None, dst, None, f"mapping {m.name}"))
        for col, sources in mapping_columns(m).items():
            via = f"mapping {m.name}: {m.columns[col]}"
            edges.extend(Edge(src, s, dst, col, via) for s in sources)
        regional.add((region, m.contract))
    for region, contract in sorted(regional):
        edges.append(Edge(f"{region}.{contract}", None, contract, None, "union of regions"))
        for col in spec.contracts[contract].columns if contract in spec.contracts else []:
            edges.append(Edge(f"{region}.{contract}", col, contract, col, "union of regions"))
    return edges


def recorded_edges() -> list[Edge]:
    return [Edge(**e) for e in store.lineage_edges()]


def client() -> Any:
    """The OpenLineage client: HTTP if $OPENLINEAGE_URL is set, else a JSON-lines file in the state folder."""
    from openlineage.client import OpenLineageClient
    from openlineage.client.transport.file import FileConfig, FileTransport
    from openlineage.client.transport.http import (
        ApiKeyTokenProvider,
        HttpConfig,
        HttpTransport,
    )

    url = os.environ.get(URL_ENV)
    if url:
        auth = ApiKeyTokenProvider({"apiKey": os.environ["OPENLINEAGE_API_KEY"]}) if os.environ.get("OPENLINEAGE_API_KEY") else None
        cfg = HttpConfig(url=url, endpoint=os.environ.get("OPENLINEAGE_ENDPOINT", "api/v1/lineage"), timeout=5.0)
        if auth is not None:
            cfg.auth = auth
        return OpenLineageClient(transport=HttpTransport(cfg))
    path = sub_dir("lineage") / "openlineage.jsonl"
    return OpenLineageClient(transport=FileTransport(FileConfig(log_file_path=str(path), append=True)))


def events_path() -> str:
    return str(sub_dir("lineage") / "openlineage.jsonl")


def emit_run_lineage(
    *,
    run_id: str,
    job: str,
    inputs: list[str],
    outputs: list[str],
    columns: dict[str, dict[str, list[str]]] | None = None,
    event_type: str = "COMPLETE",
    namespace: str = "skyfed",
    job_kind: str = "ingest",
    event_time: datetime | None = None,
) -> dict[str, Any]:
    """Emit one OpenLineage run event and record its column edges for `skyfed lineage`.

    `columns` maps an output table to {output column: [`input_table.column`, ...]}.
    The run id is turned into a UUID (OpenLineage requires one) deterministically, so a
    retried emission describes the same run. Returns the event as a dict.
    """
    from openlineage.client import event_v2
    from openlineage.client.facet_v2 import column_lineage_dataset as cl
    from openlineage.client.facet_v2 import job_type_job
    from openlineage.client.serde import Serde

    columns = columns or {}
    in_tables = set(inputs)
    out_ds = []
    for table in outputs:
        fields = {}
        for col, srcs in sorted(columns.get(table, {}).items()):
            input_fields = []
            for s in srcs:
                t, _, c = s.rpartition(".")
                if t not in in_tables:
                    raise SkyfedError(f"lineage of {table}.{col} names {s}, whose table is not an input of the run")
                input_fields.append(cl.InputField(namespace=namespace, name=t, field=c))
            fields[col] = cl.Fields(inputFields=input_fields, transformationType="", transformationDescription="")
        facets = {"columnLineage": cl.ColumnLineageDatasetFacet(fields=fields)} if fields else {}
        out_ds.append(event_v2.OutputDataset(namespace=namespace, name=table, facets=facets))
    run_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"skyfed:{job}:{run_id}"))
    event = event_v2.RunEvent(
        eventType=event_v2.RunState[event_type],
        eventTime=(event_time or datetime.now(UTC)).isoformat(),
        run=event_v2.Run(runId=run_uuid),
        job=event_v2.Job(
            namespace=namespace,
            name=job,
            facets={"jobType": job_type_job.JobTypeJobFacet(processingType="BATCH", integration="SKYFED", jobType=job_kind.upper())},
        ),
        inputs=[event_v2.InputDataset(namespace=namespace, name=t) for t in sorted(in_tables)],
        outputs=out_ds,
        producer=PRODUCER,
    )
    client().emit(event)
    if event_type == "COMPLETE":
        edges = [
            {"src_table": t, "src_column": None, "dst_table": o, "dst_column": None, "via": f"{job_kind} {job}"}
            for o in outputs for t in sorted(in_tables)
        ]
        for o, cols in columns.items():
            for col, srcs in cols.items():
                for s in srcs:
                    t, _, c = s.rpartition(".")
                    edges.append({"src_table": t, "src_column": c, "dst_table": o, "dst_column": col, "via": f"{job_kind} {job}"})
        store.replace_lineage(job, edges)
    return Serde.to_dict(event)


def ingest_lineage(spec: PlatformSpec, mapping_name: str, run_id: str, status: str = "ok") -> dict[str, Any]:
    """Emit the lineage of one mapping's ingest run (call it where the run result is recorded)."""
    m = next((m for m in spec.mappings if m.name == mapping_name), None)
    if m is None:
        raise SkyfedError(f"no mapping named {mapping_name!r}", "check the spec's mappings")
    region = m.source.split(".")[0]
    src, dst = f"{m.source}.{m.table}", f"{region}.{m.contract}"
    cols = {dst: {c: [f"{src}.{s}" for s in srcs] for c, srcs in mapping_columns(m).items()}}
    return emit_run_lineage(
        run_id=run_id, job=m.name, inputs=[src], outputs=[dst], columns=cols,
        event_type="COMPLETE" if status in ("ok", "no_new_data") else "FAIL",
    )


def model_lineage(name: str, sql: str, run_id: str, schema: dict[str, dict[str, str]] | None = None,
                  status: str = "ok") -> dict[str, Any]:
    """Emit the lineage of one model build: its output columns traced through its SQL."""
    cols = model_columns(sql, schema)
    inputs = sorted({s.rpartition(".")[0] for srcs in cols.values() for s in srcs})
    try:
        inputs = sorted(set(inputs) | {t.name for t in sqlglot.parse_one(sql, read="duckdb").find_all(exp.Table)
                                       if t.name not in {c.alias_or_name for c in sqlglot.parse_one(sql, read="duckdb").find_all(exp.CTE)}})
    except ParseError:
        pass
    return emit_run_lineage(run_id=run_id, job=name, inputs=inputs, outputs=[name], columns={name: cols},
                            job_kind="model", event_type="COMPLETE" if status == "ok" else "FAIL")


# ------------------------------------------------------------------ the tree


def resolve(node: str, edges: list[Edge]) -> tuple[str, str | None]:
    """Split TABLE[.COLUMN] using the known tables (table names contain dots)."""
    tables = {e.src_table for e in edges} | {e.dst_table for e in edges}
    if node in tables:
        return node, None
    table, _, col = node.rpartition(".")
    if table in tables:
        return table, col
    raise SkyfedError(
        f"{node!r} is not a table or column in the lineage graph",
        "use a canonical table (flight_leg), a region table (eu.flight_leg) or a source table (eu.ops.flights), optionally .column",
    )


def walk(node: str, edges: list[Edge], upstream: bool = True) -> dict[str, Any]:
    """The lineage tree of `node` as nested dicts {name, via, children}; cycles are cut."""
    table, col = resolve(node, edges)
    index: dict[str, list[Edge]] = defaultdict(list)
    seen_pairs: set[tuple[str, str]] = set()
    for e in edges:  # the spec and the recorded runs may both know an edge: keep the first
        if (e.src, e.dst) in seen_pairs:
            continue
        seen_pairs.add((e.src, e.dst))
        if (e.dst_column is None) == (col is None):
            index[e.dst if upstream else e.src].append(e)

    def visit(name: str, via: str | None, seen: frozenset[str]) -> dict[str, Any]:
        kids = []
        for e in sorted(index.get(name, []), key=lambda e: (e.src, e.dst)):
            nxt = e.src if upstream else e.dst
            if nxt not in seen:
                kids.append(visit(nxt, e.via, seen | {nxt}))
        return {"name": name, "via": via, "children": kids}

    start = f"{table}.{col}" if col else table
    return visit(start, None, frozenset({start}))
