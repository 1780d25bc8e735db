"""`--dry-run` / `Federation.estimate(sql)`: bytes scanned and shipped per region, and egress cost, before running.

Nothing here runs a region's query. Per region and fragment:

- **bytes scanned**
  - Iceberg: `table.scan(row_filter=...).plan_files()` (pyiceberg) prunes data files by
    partition and column statistics from the manifests, with the fragment's pushed
    conjuncts translated to pyiceberg expressions where they are plain
    `column <op> literal` / IN / IS [NOT] NULL / AND / OR (the others are dropped, which
    keeps more files: an upper bound). Bytes = the kept files' on-disk sizes of the
    projected columns (`column_sizes` in the manifest; the whole file when absent).
    Source: `iceberg manifests`.
  - BigQuery: a dry-run job's `total_bytes_processed`. The emulator answers 0, so then
    the table's metadata (`num_bytes` × the share of the projected columns' width, or
    `num_rows` × the projected row width) is used; `scanned_source` says which.
  - Live sources: the connector's size estimate (PostgreSQL `pg_class`, object sizes
    for files, BigQuery table metadata).
- **rows after filters** (before aggregation): the kept files' record counts (BigQuery:
  `num_rows`) × a selectivity per pushed conjunct that pruning cannot account for:
  `=`/IS NULL 0.1, ranges and LIKE 0.3, `<>`/IS NOT NULL 0.9, IN 0.1 per value (at most
  0.5), anything else 0.5; a conjunct on a `region` column selects 1.0 in the regions
  left after region pruning (every row there carries that region).
- **bytes crossing the boundary**: partial aggregation ships one row per group: groups
  = min(rows, Π ndv(key)) with ndv = 1 for `region`, 2 for a boolean expression, else
  √rows (no distinct counts in the manifests); top-N ships min(rows, limit + offset);
  a scan ships every filtered row. × the fragment's output row width from its DuckDB
  types (8 B for BIGINT/DOUBLE/TIMESTAMP, 4 for INTEGER/DATE, 1 for BOOLEAN, 16 for
  VARCHAR and the rest). Egress = those bytes / 1e9 × the region's price toward the
  coordinator's region.
- **what crosses into a region** (`account_transfers`, each assumption listed in the output's
  `assumptions`):
  - semi-join key shipping: the build fragment's rows crossing (an upper bound on its distinct
    keys) × the key's width go to every probe region, if under the engine's key limit (else the
    probe's filtered rows cross unreduced, as at run time); a probe region then keeps the
    build side's filter selectivity (rows after filters / table rows, all its regions) of its rows;
  - broadcast reference tables: a DuckDB region receives the table's uncompressed bytes (Parquet
    footer) on every run; a BigQuery region only when its `_skyfed_ref_<name>_<version>` copy does
    not exist yet (the file's size, loaded once);
  - both are priced at the coordinator's egress price toward the region (`inbound_egress_usd`).
- A governed caller's fragments wrap each table in a masking subquery; the estimate reads the
  fragment's SQL from before the policies (`Fragment.ungoverned_sql`: same tables, columns and
  filters), so Iceberg pruning works for every role.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from sqlglot import exp

from skyfed.query.catalog import BIGQUERY, split_region_alias
from skyfed.query.planner import Fragment, Plan, RegionQuery, _conjuncts

GB = 1e9
_WIDTH = {"BOOLEAN": 1, "TINYINT": 1, "SMALLINT": 2, "INTEGER": 4, "DATE": 4, "FLOAT": 4, "BIGINT": 8, "DOUBLE": 8,
          "TIMESTAMP": 8, "TIMESTAMP WITH TIME ZONE": 8, "TIMESTAMPTZ": 8, "HUGEINT": 16}  # fmt: skip


def type_width(duck_type: str) -> int:
    t = duck_type.upper()
    if t.startswith("DECIMAL"):
        return 16
    return _WIDTH.get(t, 16)


class _Fragment:
    """What the estimate needs from a fragment's DuckDB SQL: tables per alias, columns, conjuncts."""

    def __init__(self, frag: Fragment, catalog: Any):
        # a governed fragment wraps each table in a masking subquery that hides its columns and filters from
        # this reading: estimate from the SQL before the policies (same tables, columns and filters; row access
        # only removes rows, and the regions it removes whole are pruned by the planner)
        tree = exp.maybe_parse(frag.ungoverned_sql or frag.duckdb_sql, dialect="duckdb")
        self.tables: dict[str, str] = {}  # alias -> table name as the catalog knows it
        for t in tree.find_all(exp.Table):
            _, name = split_region_alias(t.name, catalog)
            self.tables[t.alias_or_name] = name
        self.columns: dict[str, list[str]] = {a: [] for a in self.tables}
        for c in tree.find_all(exp.Column):
            if c.table in self.columns and c.name not in self.columns[c.table]:
                self.columns[c.table].append(c.name)
        where = tree.args.get("where")
        conj = _conjuncts(where.this) if where is not None else []
        for j in tree.args.get("joins") or []:
            conj += _conjuncts(j.args.get("on"))
        self.conjuncts: dict[str, list[exp.Expression]] = {a: [] for a in self.tables}
        for c in conj:
            owners = {col.table for col in c.find_all(exp.Column)}
            if len(owners) == 1 and next(iter(owners)) in self.conjuncts:
                self.conjuncts[next(iter(owners))].append(c)
        group = tree.args.get("group")
        self.group_keys = list(group.expressions) if group is not None else []
        self.limit = None
        if tree.args.get("limit") is not None:
            lim = tree.args["limit"].expression
            self.limit = int(lim.this) if isinstance(lim, exp.Literal) and not lim.is_string else None


# --------------------------------------------------------------------------- Iceberg


def _py_value(node: exp.Expression) -> Any:
    """A literal's Python value for pyiceberg, or raise ValueError."""
    if isinstance(node, exp.Paren):
        return _py_value(node.this)
    if isinstance(node, exp.Literal):
        if node.is_string:
            return node.this
        text = node.this
        return float(text) if any(ch in text for ch in ".eE") else int(text)
    if isinstance(node, exp.Neg):
        return -_py_value(node.this)
    if isinstance(node, exp.Boolean):
        return bool(node.this)
    if isinstance(node, exp.Cast) and isinstance(node.this, exp.Literal) and node.this.is_string:
        to = node.to.sql("duckdb").upper()
        if to in ("TIMESTAMPTZ", "TIMESTAMP WITH TIME ZONE"):
            value = dt.datetime.fromisoformat(node.this.this)
            if value.tzinfo is None:
                value = value.replace(tzinfo=dt.UTC)
            return value.isoformat()
        if to == "DATE":
            return dt.date.fromisoformat(node.this.this).isoformat()
    raise ValueError(f"not a literal: {node.sql()}")


def iceberg_filter(conjuncts: list[exp.Expression]) -> tuple[Any, list[exp.Expression]]:
    """(pyiceberg expression for the translatable conjuncts, the ones translated)."""
    from pyiceberg import expressions as ie

    ops = {exp.EQ: ie.EqualTo, exp.NEQ: ie.NotEqualTo, exp.GT: ie.GreaterThan, exp.GTE: ie.GreaterThanOrEqual,
           exp.LT: ie.LessThan, exp.LTE: ie.LessThanOrEqual}  # fmt: skip
    flip = {exp.GT: exp.LT, exp.GTE: exp.LTE, exp.LT: exp.GT, exp.LTE: exp.GTE, exp.EQ: exp.EQ, exp.NEQ: exp.NEQ}

    def tr(node: exp.Expression) -> Any:
        if isinstance(node, exp.Paren):
            return tr(node.this)
        if isinstance(node, exp.And):
            return ie.And(tr(node.left), tr(node.right))
        if isinstance(node, exp.Or):
            return ie.Or(tr(node.left), tr(node.right))
        if isinstance(node, exp.Not) and isinstance(node.this, exp.Is) and isinstance(node.this.this, exp.Column):
            return ie.NotNull(node.this.this.name)
        if isinstance(node, exp.Is) and isinstance(node.this, exp.Column) and isinstance(node.expression, exp.Null):
            return ie.IsNull(node.this.name)
        if isinstance(node, exp.In) and isinstance(node.this, exp.Column) and not node.args.get("query"):
            return ie.In(node.this.name, [_py_value(v) for v in node.expressions])
        if isinstance(node, exp.Between) and isinstance(node.this, exp.Column):
            col = node.this.name
            return ie.And(ie.GreaterThanOrEqual(col, _py_value(node.args["low"])),
                          ie.LessThanOrEqual(col, _py_value(node.args["high"])))  # fmt: skip
        for cls, make in ops.items():
            if type(node) is cls:
                left, right = node.left, node.right
                if isinstance(left, exp.Column):
                    return make(left.name, _py_value(right))
                if isinstance(right, exp.Column):
                    return ops[flip[cls]](right.name, _py_value(left))
        raise ValueError(f"not translatable: {node.sql()}")

    out: Any = ie.AlwaysTrue()
    used: list[exp.Expression] = []
    for c in conjuncts:
        try:
            part = tr(c)
        except (ValueError, TypeError, KeyError):
            continue
        out = part if not used else ie.And(out, part)
        used.append(c)
    return out, used


def iceberg_scan_estimate(table: Any, columns: list[str], conjuncts: list[exp.Expression]) -> dict[str, Any]:
    """Bytes of the projected columns and records in the data files left after manifest pruning."""
    row_filter, used = iceberg_filter(conjuncts)
    try:
        tasks = list(table.scan(row_filter=row_filter).plan_files())
    except Exception:  # noqa: BLE001 - a filter pyiceberg cannot bind (type mismatch): no pruning
        tasks, used = list(table.scan().plan_files()), []
    schema = table.schema()
    ids = []
    for c in columns:
        try:
            ids.append(schema.find_field(c).field_id)
        except ValueError:
            pass
    scanned = records = 0
    for task in tasks:
        f = task.file
        records += f.record_count
        sizes = f.column_sizes or {}
        if sizes and ids:
            scanned += sum(sizes.get(i, 0) for i in ids)
        else:
            scanned += f.file_size_in_bytes
    return {"bytes": scanned, "rows": records, "files": len(tasks), "pruning_filters": [c.sql("duckdb") for c in used]}


# --------------------------------------------------------------------------- heuristics


def selectivity(conjunct: exp.Expression) -> float:
    node = conjunct.this if isinstance(conjunct, exp.Paren) else conjunct
    cols = {c.name for c in node.find_all(exp.Column)}
    if cols == {"region"}:
        return 1.0  # region pruning already removed the other regions; in the ones left every row matches
    if isinstance(node, exp.EQ) or (isinstance(node, exp.Is)):
        return 0.1
    if isinstance(node, exp.Not) and isinstance(node.this, exp.Is):
        return 0.9
    if isinstance(node, exp.NEQ):
        return 0.9
    if isinstance(node, (exp.GT, exp.GTE, exp.LT, exp.LTE, exp.Between, exp.Like)):
        return 0.3
    if isinstance(node, exp.In):
        return min(0.5, 0.1 * max(1, len(node.expressions)))
    return 0.5


def ndv(key: exp.Expression, rows: float) -> float:
    if isinstance(key, exp.Column) and key.name == "region":
        return 1.0
    if isinstance(key, (exp.Predicate, exp.Not, exp.Is)):
        return 2.0
    return max(1.0, math.sqrt(rows))


# --------------------------------------------------------------------------- per region


def estimate_region(fed: Any, plan: Plan, frag: Fragment, info: _Fragment, rq: RegionQuery,
                    out_width: int, iceberg_tables: dict[tuple[str, str], Any]) -> dict[str, Any]:  # fmt: skip
    """One region's estimate for one fragment (never runs the region's query)."""
    row: dict[str, Any] = {"region": rq.region, "fragment": frag.name, "strategy": frag.strategy, "engine": rq.engine,
                           "tables": rq.tables, "egress_usd_per_gb": fed._price(rq.region)}  # fmt: skip
    scanned = 0
    rows = 0.0
    table_rows = 0.0  # before any filter or file pruning (the semi-join estimate's selectivity needs it)
    sources: list[str] = []
    try:
        for alias, table in info.tables.items():
            if table in fed.catalog.reference and table not in fed.catalog.contracts:
                continue  # a broadcast reference table: counted as bytes into the region (account_transfers)
            cols = info.columns.get(alias, [])
            conj = info.conjuncts.get(alias, [])
            if table in fed.catalog.live:
                live = fed.catalog.live[table]
                est = fed._live_size(live)
                width = sum(type_width(live.columns.get(c, "VARCHAR")) for c in cols) or 8
                full = sum(type_width(t) for t in live.columns.values()) or 8
                t_rows = float(est.get("rows") or 0)
                t_bytes = est.get("bytes")
                scanned += int(t_bytes * width / full) if t_bytes else int(t_rows * width)
                sources.append(f"{live.kind} source metadata")
            elif fed.catalog.regions[rq.region].engine == BIGQUERY:
                t_rows, t_bytes, src = _bigquery_estimate(fed, rq, table, cols)
                scanned += t_bytes
                sources.append(src)
            else:
                key = (rq.region, table)
                if key not in iceberg_tables:
                    from skyfed.ingest.stores.iceberg import IcebergCuratedStore

                    iceberg_tables[key] = IcebergCuratedStore(rq.region, fed.spec.regions[rq.region].store)._table(table)
                est = iceberg_scan_estimate(iceberg_tables[key], cols, conj)
                scanned += est["bytes"]
                t_rows = float(est["rows"])
                table_rows = max(table_rows, _iceberg_total_rows(iceberg_tables[key], t_rows))
                row.setdefault("files", 0)
                row["files"] += est["files"]
                if est["pruning_filters"]:
                    row.setdefault("pruning_filters", []).extend(est["pruning_filters"])
                sources.append("iceberg manifests")
            if table in fed.catalog.live or fed.catalog.regions[rq.region].engine == BIGQUERY:
                table_rows = max(table_rows, t_rows)  # their row counts are the whole table's
            for c in conj:
                t_rows *= selectivity(c)
            rows = t_rows if rows == 0 else max(rows, t_rows)  # a co-located join: about the larger side
    except Exception as exc:  # noqa: BLE001 - an estimate failure is reported, not raised
        text = getattr(exc, "message", None) or str(exc).strip()
        msg = f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
        row.update(error=msg[:300], bytes_scanned=None, rows_after_filters=None, boundary_rows=None,
                   boundary_bytes=None, egress_usd=None)  # fmt: skip
        return row
    if frag.strategy == "partial_aggregate":
        groups = 1.0
        for k in info.group_keys:
            groups *= ndv(k, rows)
        ship_rows = min(rows, groups) if info.group_keys else 1.0
        basis = "groups estimate x row width"
    elif frag.strategy == "top_n" and info.limit is not None:
        ship_rows = min(rows, float(info.limit))
        basis = "min(rows, limit + offset) x row width"
    else:
        ship_rows = rows
        basis = "rows after filters x projected row width"
    ship_bytes = int(math.ceil(ship_rows) * out_width)
    row.update(
        bytes_scanned=int(scanned), scanned_source=", ".join(dict.fromkeys(sources)),
        rows_after_filters=int(round(rows)), table_rows=int(table_rows), boundary_rows=int(math.ceil(ship_rows)), boundary_bytes=ship_bytes,
        boundary_basis=basis, row_width=out_width, egress_usd=ship_bytes / GB * row["egress_usd_per_gb"],
    )  # fmt: skip
    return row


def _iceberg_total_rows(table: Any, fallback: float) -> float:
    """The table's record count from its current snapshot's summary (no manifest read)."""
    try:
        snap = table.current_snapshot()
        return float(snap.summary["total-records"]) if snap is not None else 0.0
    except (KeyError, TypeError, ValueError, AttributeError):
        return fallback


# --------------------------------------------------------------------------- into regions


def account_transfers(fed: Any, plan: Plan, rows: list[dict[str, Any]]) -> list[str]:
    """Add semi-join keys and broadcast copies shipped INTO regions to the per-region rows (and shrink a
    probe region's boundary estimate by the keys' filtering); returns the assumptions made."""
    from skyfed.query.engine import SEMI_JOIN_MAX_INLINE, SEMI_JOIN_MAX_KEYS

    assumptions: list[str] = []
    for r in rows:
        if r.get("error") is None:
            r.update(semi_join_key_bytes=0, broadcast_bytes=0, inbound_egress_usd=0.0)
    for frag in plan.fragments:
        sj = frag.semi_join
        if sj is None:
            continue
        build = next(f for f in plan.fragments if f.name == sj["build"])
        built = [r for r in rows if r["fragment"] == build.name]
        probes = [r for r in rows if r["fragment"] == frag.name and r.get("error") is None]
        if any(r.get("error") is not None for r in built) or not built:
            assumptions.append(f"{frag.name}: semi-join keys from {build.name} assumed NOT shipped (its estimate failed)")
            continue
        keys = sum(r["boundary_rows"] for r in built)  # rows crossing >= distinct keys
        after = sum(r["rows_after_filters"] for r in built)
        total = sum(r["table_rows"] for r in built)
        kept = min(1.0, after / total) if total else 1.0
        width = type_width(fed.catalog.duckdb_types.get(build.tables[0], {}).get(sj["build_column"], "VARCHAR"))
        for r in probes:
            bigquery = r["engine"] == BIGQUERY
            limit = min(SEMI_JOIN_MAX_KEYS, SEMI_JOIN_MAX_INLINE) if bigquery else SEMI_JOIN_MAX_KEYS
            if keys > limit:
                r["semi_join"] = f"keys not shipped (~{keys} > {limit}): every filtered row crosses"
                continue
            key_bytes = keys * (width + 3 if bigquery else width)  # BigQuery: an inline literal list
            r["semi_join_key_bytes"] = key_bytes
            r["boundary_rows"] = math.ceil(r["boundary_rows"] * kept)
            r["boundary_bytes"] = r["boundary_rows"] * r["row_width"]
            r["egress_usd"] = r["boundary_bytes"] / GB * r["egress_usd_per_gb"]
            r["semi_join"] = (f"~{keys} {sj['build_column']} keys of {build.name} shipped in ({key_bytes} B); "
                              f"keeps ~{100 * kept:.1f}% of its rows")  # fmt: skip
        assumptions.append(
            f"{frag.name}: semi-join on {sj['column']}: the keys are {build.name}'s ~{keys} rows crossing (an upper "
            f"bound on distinct keys, {width} B each); a probe region keeps the build side's filter selectivity "
            f"({100 * kept:.1f}% = rows after filters / table rows) of its rows"
        )
    by_task = {(r["fragment"], r["region"]): r for r in rows if r.get("error") is None}
    for frag in plan.fragments:
        for rq in frag.regions:
            r = by_task.get((frag.name, rq.region))
            if r is None or not rq.broadcast:
                continue
            for name in rq.broadcast:
                info = fed.catalog.broadcast[name]
                if rq.engine == BIGQUERY:
                    loaded = _bigquery_copy_exists(fed, rq.region, info)
                    add = 0 if loaded else _file_size(info.path)
                    what = "exists (0 B)" if loaded else f"does not exist yet: loaded once ({add} B)"
                    assumptions.append(f"{rq.region}: BigQuery copy {info.bigquery_table} of {name} {what}")
                else:
                    add = info.bytes
                    assumptions.append(f"{rq.region}: reference table {name} broadcast as Arrow on every run "
                                       f"({info.bytes} B uncompressed, from its Parquet footer)")  # fmt: skip
                r["broadcast_bytes"] += add
    for r in by_task.values():
        price = float(fed.spec.regions[fed.coordinator].egress_usd_per_gb.get(r["region"], 0.0))
        if r["region"] != fed.coordinator:
            r["inbound_egress_usd"] = (r["semi_join_key_bytes"] + r["broadcast_bytes"]) / GB * price
    return list(dict.fromkeys(assumptions))


def _file_size(path: str) -> int:
    import os

    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _bigquery_copy_exists(fed: Any, region: str, info: Any) -> bool:
    """Whether the region's dataset already holds this version's copy (metadata only; unknown: assume not)."""
    from skyfed.query.broadcast import bigquery_copy_exists

    store = fed.spec.regions[region].store
    try:
        from skyfed.ingest.stores.bigquery import _client

        return bigquery_copy_exists(_client(store), store.project, store.dataset, info)
    except Exception:  # noqa: BLE001 - an unreachable region: count the load (an upper bound)
        return False


def _bigquery_estimate(fed: Any, rq: RegionQuery, table: str, cols: list[str]) -> tuple[float, int, str]:
    """(rows, bytes scanned, where the number came from) for a BigQuery region's table."""
    from google.api_core.retry import Retry
    from google.cloud import bigquery

    from skyfed.ingest.stores.bigquery import _client

    store = fed.spec.regions[rq.region].store
    client = _client(store)
    retry = Retry(deadline=10.0)
    ref = f"{store.project}.{store.dataset}.{table}"
    meta = client.get_table(ref, retry=retry, timeout=10)
    rows = float(meta.num_rows or 0)
    types = fed.catalog.duckdb_types.get(table, {})
    width = sum(type_width(types.get(c, "VARCHAR")) for c in cols) or 8
    full = sum(type_width(t) for t in types.values()) or 8
    try:
        job = client.query(rq.sql, job_config=bigquery.QueryJobConfig(dry_run=True, use_query_cache=False),
                           location=store.location, retry=retry, timeout=10, job_retry=None)  # fmt: skip
        dry = int(job.total_bytes_processed or 0)
    except Exception:  # noqa: BLE001 - the emulator may refuse dry runs: fall back to metadata
        dry = 0
    source = "bigquery table num_rows"
    if not rows:  # the emulator keeps no table statistics: net rows from the store's commit log (metadata, not data)
        from skyfed.ingest.stores.bigquery import COMMITS_TABLE

        log = f"`{store.project}.{store.dataset}.{COMMITS_TABLE}`"
        name = table.replace("'", "")
        job = client.query(f"SELECT SUM(rows_written - rows_deleted) FROM {log} WHERE contract = '{name}'",
                           location=store.location, retry=retry, timeout=10, job_retry=None)  # fmt: skip
        rows = float(next(iter(job.result(timeout=10)))[0] or 0)
        source = "bigquery store commit log rows (_skyfed_commits)"
    if dry > 0:
        return rows, dry, "bigquery dry run"
    if meta.num_bytes:
        return rows, int(meta.num_bytes * width / full), "bigquery table num_bytes x projected share (dry run said 0)"
    return rows, int(rows * width), f"{source} x projected width (dry run said 0)"
