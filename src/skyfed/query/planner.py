"""Federated query planner: split one SQL statement into per-region SQL plus a coordinator merge.

Pure (sqlglot only, no I/O). The user's SQL is DuckDB SQL over the catalog's names
(see catalog.py). The plan holds, per *fragment*, the SQL each region runs (in that
region's executor dialect) and the coordinator SQL (DuckDB) that runs over the
fragments' unioned results. Strategies, chosen per query:

- `single_region`: every table is in one region and read by one engine there (DuckDB with
  a live table; BigQuery when the whole statement is BigQuery-safe): it runs there whole.
- `partial_aggregate`: one canonical table (or an inner join of canonical tables on
  equal `region` columns, which is co-located, plus small reference tables broadcast to
  every region) with GROUP BY and decomposable
  aggregates. Regions compute partial aggregates per group; the coordinator merges
  them (sum of sums and counts, min of mins, avg = sum/count, count(DISTINCT x) by
  shipping the distinct (group, x) pairs) and evaluates HAVING, ORDER BY and LIMIT.
- `top_n`: one canonical table, no aggregation, ORDER BY + LIMIT. Each region returns
  its own first (limit + offset) rows; the coordinator re-runs the query over them.
- `scan` (general fallback, always correct): each canonical table reference becomes a
  fragment that ships only the referenced columns and the rows passing the WHERE / ON
  conjuncts that mention only that table; the coordinator runs the original query
  over the union of those reduced rows. A join of a filtered fragment with an unfiltered
  one ships the filtered side's distinct keys to the other side's regions (semi-join).

Region pruning applies to all three: a top-level conjunct `region = 'eu'` or
`region IN (...)` on a table whose rows in every region carry that region's name
(every mapping sets the literal) touches only the named regions.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlglot import exp
from sqlglot import parse_one as sqlglot_parse
from sqlglot.errors import OptimizeError, SqlglotError
from sqlglot.optimizer.pushdown_projections import pushdown_projections
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import Scope, traverse_scope

from skyfed.errors import SkyfedError
from skyfed.query.catalog import (
    BIGQUERY,
    DUCKDB,
    Catalog,
    RegionTarget,
    live_name,
    region_alias_name,
    split_region_alias,
)
from skyfed.query.guard import check_read_only

PREFIX = "_sf"  # names the planner invents (relations and columns) start with this
VOLATILE = (exp.Rand, exp.CurrentTimestamp, exp.CurrentDate, exp.CurrentTime, exp.Uuid)
_VOLATILE_NAMES = {"random", "now", "uuid", "gen_random_uuid", "current_timestamp", "nextval", "setseed", "get_current_time"}


# --------------------------------------------------------------------------- the plan


@dataclass
class RegionQuery:
    region: str
    engine: str  # duckdb | bigquery
    sql: str  # in the engine's dialect
    tables: list[str]  # canonical tables read in that region
    broadcast: list[str] = field(default_factory=list)  # reference tables copied into the region for this query
    # live files tables: what the region reads of them ({table: {"columns": [...], "filters": [...]}}):
    # only these columns, only objects whose hive partition values pass, only rows passing the filters
    file_reads: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    # the caller's policy decisions applied inside this SQL (governed.py): masks, row access, residency
    policy: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Fragment:
    """One relation the coordinator reads: the union of what each region returns for it."""

    name: str  # relation name in the coordinator SQL
    tables: list[str]  # canonical tables it reads (several for a co-located join)
    strategy: str  # scan | partial_aggregate | top_n | single_region
    columns: list[str]  # columns that cross region boundaries
    duckdb_sql: str  # the regional SQL over canonical names, DuckDB dialect (also run on empty tables for types)
    regions: list[RegionQuery] = field(default_factory=list)
    pruned: dict[str, str] = field(default_factory=dict)  # region -> why it is not read
    pushed_filters: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # semi-join key shipping: {"build": fragment name, "build_column": its column, "column": this fragment's
    # column}: after the build fragment ran, its distinct keys go to this fragment's regions, which return only
    # rows whose `column` is among them (engine.py decides at run time whether the keys are few enough)
    semi_join: dict[str, str] | None = None
    reduced: bool = False  # a pushed filter (other than a region pick) drops rows of the table
    # duckdb_sql before the caller's policies wrapped each table in a masking subquery (the same tables,
    # columns and filters: what --dry-run estimates from; empty when ungoverned)
    ungoverned_sql: str = ""


@dataclass
class Plan:
    sql: str  # the user's SQL
    strategy: str  # single_region | partial_aggregate | top_n | scan
    fragments: list[Fragment]
    coordinator_sql: str  # DuckDB, over the fragments (and reference tables)
    bind_sql: str  # the qualified query over canonical names: run on empty tables it gives the result schema
    reference_tables: list[str]
    notes: list[str]
    plan_seconds: float = 0.0
    plan_cache: str = "off"  # hit | miss (planned, stored) | off (plan_cache.py)

    def regions(self) -> list[str]:
        seen: list[str] = []
        for f in self.fragments:
            for rq in f.regions:
                if rq.region not in seen:
                    seen.append(rq.region)
        return seen

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"plan_ms": round(self.plan_seconds * 1000, 2)}


# --------------------------------------------------------------------------- entry point


def plan_query(sql: str, catalog: Catalog, pushdown: bool = True) -> Plan:
    """Plan `sql` (DuckDB dialect) over `catalog`; raises SkyfedError for refused or invalid queries.

    `pushdown=False` plans only the general strategy (each region ships every needed row:
    referenced columns, rows passing the pushed filters; the coordinator computes the rest):
    the naive-federation baseline of the benchmark.
    """
    started = time.perf_counter()
    tree = check_read_only(sql)
    tree = _resolve_names(tree, catalog)
    bind_sql = tree.sql("duckdb")  # before qualify: DuckDB names the result columns as the user wrote them
    try:
        tree = qualify(
            tree, schema=catalog.qualify_schema(), dialect="duckdb", identify=False,
            validate_qualify_columns=True, expand_stars=True,
        )  # fmt: skip
        tree = pushdown_projections(tree)  # CTEs and subqueries keep only the columns used above them
    except (OptimizeError, SqlglotError) as exc:
        raise SkyfedError(f"cannot resolve the query: {exc}", _names_hint(catalog)) from None
    scopes = traverse_scope(tree)
    _check_tables(scopes, catalog)
    planner = _Planner(catalog, tree, scopes, pushdown)
    if catalog.governor is not None:
        catalog.governor.start_plan()
    reads = planner.file_reads()  # before a strategy rewrites the tree
    if pushdown:
        plan = planner.single_region() or planner.partial_aggregate() or planner.top_n() or planner.scan()
    else:
        plan = planner.scan()
    for frag in plan.fragments:
        for rq in frag.regions:
            rq.file_reads = {t: reads[t] for t in rq.tables if t in reads}
    if catalog.governor is not None:  # the coordinator's types come from the governed shape (a mask may change a type)
        for frag in plan.fragments:
            governed, _ = catalog.governor.fragment(sqlglot_parse(frag.duckdb_sql, read="duckdb"), catalog.governor.coordinator,
                                                    planner._canonical, catalog.live)
            frag.ungoverned_sql = frag.duckdb_sql
            frag.duckdb_sql = governed.sql("duckdb")
    plan.sql = sql
    plan.bind_sql = bind_sql
    plan.plan_seconds = time.perf_counter() - started
    return plan


def _names_hint(catalog: Catalog) -> str:
    names = list(catalog.contracts) + [f"{r}.{t}" for r in catalog.regions for t in sorted(catalog.regions[r].tables)
                                       if t in catalog.contracts]  # fmt: skip
    return (f"tables: {', '.join(names)}; reference: {', '.join(catalog.reference) or 'none'}; "
            "live source tables: region.source.table (e.g. latam.ops.voos)")  # fmt: skip


def _resolve_names(tree: exp.Expression, catalog: Catalog) -> exp.Expression:
    """`eu.flight_leg` -> internal `eu__flight_leg AS flight_leg`; `latam.ops.voos` -> the live
    table's internal name (Federation.plan resolved it first); refuse names no region holds."""
    for table in list(tree.find_all(exp.Table)):
        if not isinstance(table.this, exp.Identifier):
            continue
        db, catalog_part, name = table.db, table.catalog, table.name.lower()
        if catalog_part:
            internal = live_name(catalog_part.lower(), db.lower(), table.name)
            if internal not in catalog.live:
                raise SkyfedError(f"{table.sql('duckdb')}: no such live source table", _names_hint(catalog))
            alias = table.alias or table.name
            table.set("catalog", None)
            table.set("db", None)
            table.set("this", exp.to_identifier(internal))
            table.set("alias", exp.TableAlias(this=exp.to_identifier(alias)))
            continue
        if not db:
            continue
        region = db.lower()
        if region not in catalog.regions:
            raise SkyfedError(f"{table.sql('duckdb')}: there is no region {db!r}", _names_hint(catalog))
        if name not in catalog.regions[region].tables:
            raise SkyfedError(f"{table.sql('duckdb')}: region {region} has no table {name!r}", _names_hint(catalog))
        alias = table.alias or name
        table.set("db", None)
        table.set("this", exp.to_identifier(region_alias_name(region, name)))
        table.set("alias", exp.TableAlias(this=exp.to_identifier(alias)))
    return tree


def _check_tables(scopes: list[Scope], catalog: Catalog) -> None:
    known = set(catalog.qualify_schema())
    for scope in scopes:
        for source in scope.sources.values():
            if isinstance(source, exp.Table) and isinstance(source.this, exp.Identifier) and source.name not in known:
                raise SkyfedError(f"unknown table {source.name!r}", _names_hint(catalog))


# --------------------------------------------------------------------------- helpers


def _conjuncts(node: exp.Expression | None) -> list[exp.Expression]:
    if node is None:
        return []
    if isinstance(node, exp.And):
        return _conjuncts(node.left) + _conjuncts(node.right)
    if isinstance(node, exp.Paren):
        return _conjuncts(node.this)
    return [node]


def _and(parts: list[exp.Expression]) -> exp.Expression | None:
    if not parts:
        return None
    out = parts[0].copy()
    for p in parts[1:]:
        out = exp.and_(out, p.copy())
    return out


def _is_volatile(node: exp.Expression) -> bool:
    for n in node.walk():
        if isinstance(n, VOLATILE):
            return True
        if isinstance(n, exp.Anonymous) and str(n.this).lower() in _VOLATILE_NAMES:
            return True
    return False


def _only_columns_of(node: exp.Expression, aliases: set[str]) -> bool:
    """Pushable into a region: deterministic, no subquery/aggregate/window, columns only of `aliases`."""
    if _is_volatile(node):
        return False
    for n in node.walk():
        if isinstance(n, (exp.Subquery, exp.Select, exp.Exists, exp.AggFunc, exp.Window, exp.Placeholder)):
            return False
        if isinstance(n, exp.Column) and (not n.table or n.table not in aliases):
            return False
    return True


# BigQuery: expression shapes whose DuckDB -> BigQuery transpilation keeps the meaning.
_BQ_NODES = (
    exp.Column, exp.Identifier, exp.Literal, exp.Boolean, exp.Null, exp.Paren, exp.And, exp.Or, exp.Not,
    exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.Is, exp.In, exp.Between, exp.Like,
    exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Neg, exp.Coalesce, exp.Case, exp.If, exp.Cast, exp.DataType,
    exp.TimestampTrunc, exp.Var, exp.Lower, exp.Upper, exp.Count, exp.Sum, exp.Min, exp.Max, exp.Star,
    exp.Distinct, exp.Ordered, exp.Tuple,
)  # fmt: skip
# a whole statement run by BigQuery (single_region) may also use these
_BQ_STATEMENT_NODES = (
    exp.Select, exp.From, exp.Where, exp.Group, exp.Having, exp.Order, exp.Limit, exp.Offset, exp.Alias,
    exp.TableAlias, exp.Table, exp.Join, exp.Avg,
)  # fmt: skip
_BQ_CAST_TYPES = {"VARCHAR", "TEXT", "BIGINT", "INT", "DOUBLE", "DATE", "TIMESTAMPTZ", "BOOLEAN"}
_BQ_TRUNC_UNITS = {"YEAR", "QUARTER", "MONTH", "DAY", "HOUR"}
_FAMILY = {"VARCHAR": "str", "INTEGER": "num", "BIGINT": "num", "DOUBLE": "num", "BOOLEAN": "bool",
           "DATE": "date", "TIMESTAMPTZ": "ts", "TIMESTAMP": "naive_ts"}  # fmt: skip


class _Planner:
    def __init__(self, catalog: Catalog, tree: exp.Expression, scopes: list[Scope], pushdown: bool = True):
        self.pushdown = pushdown
        self.catalog = catalog
        self.tree = tree
        self.scopes = scopes
        self.counter = 0

    # ----------------------------------------------------------------- sources

    def _canonical(self, source: Any) -> tuple[str | None, str] | None:
        """(region or None for all, contract) if `source` is a canonical table reference."""
        if not isinstance(source, exp.Table) or not isinstance(source.this, exp.Identifier):
            return None
        region, name = split_region_alias(source.name, self.catalog)
        if region is not None:
            return region, name
        if name in self.catalog.contracts:
            return None, name
        return None

    def _new_name(self) -> str:
        name = f"{PREFIX}_f{self.counter}"
        self.counter += 1
        return name

    # ----------------------------------------------------------------- region choice

    def _regions_for(self, tables: list[tuple[str | None, str]], conjuncts: list[exp.Expression],
                     aliases: dict[str, str]) -> tuple[list[str], dict[str, str]]:  # fmt: skip
        """Regions that hold all `tables`, after region pruning; and why the others are skipped."""
        pruned: dict[str, str] = {}
        candidates: list[str] = []
        for r, target in self.catalog.regions.items():
            missing = [t for _, t in tables if t not in target.tables]
            fixed = {reg for reg, _ in tables if reg is not None}
            if missing:
                pruned[r] = f"has no {', '.join(missing)}"
            elif fixed and fixed != {r}:
                first = tables[0][1]
                shown = self.catalog.live[first].dotted if first in self.catalog.live else f"{', '.join(sorted(fixed))}.{first}"
                pruned[r] = f"the query names {shown}"
            else:
                candidates.append(r)
        wanted = self._region_predicate(conjuncts, aliases)
        if wanted is not None:
            for r in list(candidates):
                pinned = all(t in self.catalog.regions[r].region_pinned for _, t in tables)
                if r not in wanted and pinned:
                    candidates.remove(r)
                    pruned[r] = f"region filter keeps only {', '.join(sorted(wanted)) or 'no region'}"
        governor = self.catalog.governor
        if governor is not None:
            for r in list(candidates):
                pinned = all(t in self.catalog.regions[r].region_pinned for _, t in tables)
                if pinned and not governor.region_allowed(r):
                    candidates.remove(r)
                    pruned[r] = f"role {governor.role} has no row access in {r}"
        return candidates, pruned

    def _region_predicate(self, conjuncts: list[exp.Expression], aliases: dict[str, str]) -> set[str] | None:
        """Regions allowed by `region = '..'` / `region IN (..)` conjuncts on the given aliases (None: no such conjunct)."""
        allowed: set[str] | None = None
        for c in conjuncts:
            values: set[str] | None = None
            if isinstance(c, exp.EQ):
                col, lit = (c.left, c.right) if isinstance(c.left, exp.Column) else (c.right, c.left)
                if _is_region_col(col, aliases) and isinstance(lit, exp.Literal) and lit.is_string:
                    values = {lit.this}
            elif isinstance(c, exp.In) and _is_region_col(c.this, aliases) and not c.args.get("query"):
                items = c.expressions
                if items and all(isinstance(i, exp.Literal) and i.is_string for i in items):
                    values = {i.this for i in items}
            if values is not None:
                allowed = values if allowed is None else allowed & values
        return allowed

    # ----------------------------------------------------------------- BigQuery safety

    def _types_of(self, aliases: dict[str, str]) -> dict[tuple[str, str], str]:
        out = {}
        for alias, table in aliases.items():
            for col, typ in self.catalog.duckdb_types[table].items():
                out[(alias, col)] = typ
        return out

    def _bq_safe(self, node: exp.Expression, aliases: dict[str, str], extra: tuple[type, ...] = ()) -> bool:
        types = self._types_of(aliases)
        for n in node.walk():
            if not isinstance(n, _BQ_NODES) and not isinstance(n, extra):
                return False
            if isinstance(n, exp.Cast):
                to = n.to.sql("duckdb").upper()
                if to not in _BQ_CAST_TYPES:
                    return False
            if isinstance(n, exp.TimestampTrunc):
                unit = n.args.get("unit")
                if unit is None or unit.name.upper() not in _BQ_TRUNC_UNITS:
                    return False
                if self._family(n.this, types) != "ts":
                    return False
            if isinstance(n, exp.Column) and types.get((n.table, n.name)) == "TIMESTAMP":
                return False
            if isinstance(n, exp.Like) and "\\" in n.expression.sql():
                return False  # BigQuery's LIKE escapes with a backslash, DuckDB's does not
            if isinstance(n, (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE)):
                if not _compatible(self._family(n.left, types), self._family(n.right, types)):
                    return False
            if isinstance(n, exp.Between):
                fam = self._family(n.this, types)
                if not all(_compatible(fam, self._family(x, types)) for x in (n.args["low"], n.args["high"])):
                    return False
            if isinstance(n, exp.In):
                fam = self._family(n.this, types)
                if n.args.get("query") or not all(_compatible(fam, self._family(x, types)) for x in n.expressions):
                    return False
        return True

    def _family(self, node: exp.Expression, types: dict[tuple[str, str], str]) -> str:
        if isinstance(node, exp.Paren):
            return self._family(node.this, types)
        if isinstance(node, exp.Column):
            return _FAMILY.get(types.get((node.table, node.name), ""), "?")
        if isinstance(node, exp.Literal):
            return "strlit" if node.is_string else "num"
        if isinstance(node, exp.Cast):
            return {"VARCHAR": "str", "TEXT": "str", "DATE": "date", "TIMESTAMPTZ": "ts", "BOOLEAN": "bool"}.get(
                node.to.sql("duckdb").upper(), "num"
            )
        if isinstance(node, exp.TimestampTrunc):
            return "ts"
        if isinstance(node, (exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Neg)):
            return "num"
        if isinstance(node, (exp.Lower, exp.Upper)):
            return "str"
        if isinstance(node, exp.Coalesce):
            return self._family(node.this, types)
        if isinstance(node, (exp.Count, exp.Sum, exp.Avg)):
            return "num"
        if isinstance(node, (exp.Min, exp.Max)):
            return self._family(node.this, types)
        return "?"

    def _engine_ok(self, regions: list[str], nodes: list[exp.Expression], aliases: dict[str, str]) -> bool:
        engines = {self.catalog.engine_of(r, t) for r in regions for t in aliases.values()
                   if t in self.catalog.regions[r].tables}  # fmt: skip
        if BIGQUERY not in engines:
            return True
        return all(self._bq_safe(n, aliases) for n in nodes)

    # ----------------------------------------------------------------- region SQL

    def _region_queries(self, select: exp.Expression, regions: list[str], tables: list[str]) -> list[RegionQuery]:
        out = []
        for r in regions:
            target = self.catalog.regions[r]
            copy = select.copy()
            engines = {self.catalog.engine_of(r, t) for t in tables}
            engine = engines.pop() if len(engines) == 1 else target.engine
            broadcast: set[str] = set()
            decisions: list[dict[str, Any]] = []
            if self.catalog.governor is not None:  # masks, row access, residency: inside the region's SQL
                copy, decisions = self.catalog.governor.fragment(copy, r, self._canonical, self.catalog.live)
            for t in list(copy.find_all(exp.Table)):
                hit = self._canonical(t)
                if hit is not None:
                    t.replace(target.table_ref(hit[1], t.alias_or_name, self.catalog.live.get(hit[1])))
                elif self._broadcast_source(t):
                    broadcast.add(t.name)
                    t.replace(self._broadcast_ref(target, engine, t))
            dialect = "bigquery" if engine == BIGQUERY else "duckdb"
            if decisions and engine == BIGQUERY:
                from skyfed.query.governed import to_bigquery_masks

                copy = to_bigquery_masks(copy)
            # copy=False: this tree is the region's private copy, dropped after generation (saves a deep copy)
            sql = copy.sql(dialect, copy=False)
            out.append(RegionQuery(r, engine, sql, sorted(set(tables)), sorted(broadcast), policy=decisions))
        return out

    def _broadcast_ref(self, target: RegionTarget, engine: str, t: exp.Table) -> exp.Table:
        """A reference table's copy in the region: a BigQuery table in its dataset, or a DuckDB relation."""
        info = self.catalog.broadcast[t.name]
        alias = t.alias_or_name
        if engine == BIGQUERY:
            node = exp.Table(this=exp.to_identifier(info.bigquery_table), db=exp.to_identifier(target.dataset),
                             catalog=exp.to_identifier(target.project, quoted=True))  # fmt: skip
        else:
            node = exp.Table(this=exp.to_identifier(info.duckdb_name))
        node.set("alias", exp.TableAlias(this=exp.to_identifier(alias)))
        return node

    # ----------------------------------------------------------------- single-block queries

    def _block(self) -> tuple[exp.Select, dict[str, str], list[tuple[str | None, str]]] | None:
        """The query as one SELECT over canonical tables inner-joined on equal region columns, plus
        broadcast reference tables inner-joined on anything (each region holds a full copy)."""
        tree = self.tree
        if not isinstance(tree, exp.Select) or tree.args.get("with") or len(self.scopes) != 1:
            return None
        scope = self.scopes[0]
        if not scope.sources:
            return None
        if tree.find(exp.Window) or _is_volatile(tree) or tree.args.get("qualify"):
            return None
        aliases: dict[str, str] = {}
        tables: list[tuple[str | None, str]] = []
        refs: set[str] = set()
        for alias, source in scope.sources.items():
            hit = self._canonical(source)
            if hit is None:
                if self._broadcast_source(source):
                    aliases[alias] = source.name
                    refs.add(alias)
                    continue
                return None
            aliases[alias] = hit[1]
            tables.append(hit)
        if not tables:
            return None
        canonical = {a: t for a, t in aliases.items() if a not in refs}
        if len(aliases) == 1:
            return (tree, aliases, tables) if not tree.args.get("joins") else None
        # co-located join: every join inner; a canonical table after the first one is linked by an
        # equality of region columns to an earlier canonical table; a broadcast table joins on anything
        if len(canonical) > 1 and not all(
            t in self.catalog.regions[r].region_pinned for r in self.catalog.regions for _, t in tables
            if t in self.catalog.regions[r].tables
        ):  # fmt: skip
            return None
        first = tree.args["from_"].this.alias_or_name
        joined = {first} if first in canonical else set()
        for join in tree.args.get("joins") or []:
            if join.side or join.kind not in ("", "INNER", None) or join.args.get("method"):
                return None
            right = join.this.alias_or_name
            if right in refs:
                continue
            if join.args.get("using") or (joined and not join.args.get("on")):
                return None
            if not joined:
                joined.add(right)
                continue
            linked = False
            for c in _conjuncts(join.args.get("on")):
                if isinstance(c, exp.EQ) and all(_is_region_col(x, canonical) for x in (c.left, c.right)):
                    pair = {c.left.table, c.right.table}
                    if right in pair and pair - {right} and (pair - {right}) <= joined:
                        linked = True
            if not linked:
                return None
            joined.add(right)
        return tree, aliases, tables

    def _broadcast_source(self, source: Any) -> bool:
        return (isinstance(source, exp.Table) and isinstance(source.this, exp.Identifier)
                and source.name in self.catalog.reference and source.name in self.catalog.broadcast)  # fmt: skip

    def _canonical_aliases(self, aliases: dict[str, str]) -> dict[str, str]:
        return {a: t for a, t in aliases.items() if t not in self.catalog.broadcast or t in self.catalog.contracts}

    def single_region(self) -> Plan | None:
        """A query that reads only one region's tables runs whole in that region.

        - DuckDB regions: when it reads a live table of region R (and only R's tables, all read by
          DuckDB there: Iceberg, PostgreSQL through the postgres extension, files).
        - BigQuery regions: when every table is `R.table` of R's BigQuery store (or every table is
          a live table of one BigQuery source) and the whole statement is built from the shapes
          whose DuckDB -> BigQuery transpilation keeps the meaning (`_bq_safe`, plus SELECT, JOIN,
          GROUP BY, HAVING, ORDER BY, LIMIT, avg): one query job runs it where the data is.
        The region ships only the answer; the coordinator passes it through (casting to the types
        the same query has in DuckDB).
        """
        region: str | None = None
        tables: list[str] = []
        aliases: dict[str, str] = {}
        has_live = False
        engines: set[str] = set()
        for scope in self.scopes:
            for alias, source in scope.sources.items():
                if not isinstance(source, exp.Table) or not isinstance(source.this, exp.Identifier):
                    continue
                hit = self._canonical(source)
                if hit is None:
                    return None  # a reference table (read at the coordinator)
                r, t = hit
                if r is None or (region is not None and r != region):
                    return None
                region = r
                has_live = has_live or t in self.catalog.live
                tables.append(t)
                aliases[alias] = t
                engines.add(self.catalog.engine_of(r, t))
        if region is None or len(engines) != 1:
            return None
        engine = engines.pop()
        if engine == DUCKDB and not has_live:
            return None
        if engine == BIGQUERY:
            lives = {self.catalog.live[t].source if t in self.catalog.live else None for t in tables}
            if len(lives) != 1 or not self._bq_safe(self.tree, aliases, _BQ_STATEMENT_NODES):
                return None
        frag_name = self._new_name()
        columns = [s.alias_or_name for s in self.tree.selects] if hasattr(self.tree, "selects") else []
        frag = Fragment(
            name=frag_name, tables=sorted(set(tables)), strategy="single_region", columns=columns,
            duckdb_sql=self.tree.sql("duckdb"),
            regions=self._region_queries(self.tree, [region], sorted(set(tables))),
            pruned={r: f"the query reads only {region}" for r in self.catalog.regions if r != region},
        )  # fmt: skip
        frag.notes.append(f"every table is in {region} and read by its {engine}: the whole query runs there")
        return Plan("", "single_region", [frag], f'SELECT * FROM "{frag_name}"', "", [], [])

    def partial_aggregate(self) -> Plan | None:
        block = self._block()
        if block is None:
            return None
        select, aliases, tables = block
        group = select.args.get("group")
        aggs = [a for a in select.find_all(exp.AggFunc)]
        if not group and not aggs:
            return None
        if group and (group.args.get("grouping_sets") or group.args.get("cube") or group.args.get("rollup")):
            return None
        if group and group.args.get("all"):  # GROUP BY ALL: every projection without an aggregate
            group_exprs = [p.unalias() for p in select.expressions if not p.find(exp.AggFunc)]
        else:
            group_exprs = list(group.expressions) if group else []
        where = _conjuncts(select.args.get("where").this) if select.args.get("where") else []
        join_on = [c for j in select.args.get("joins") or [] for c in _conjuncts(j.args.get("on"))]
        names = set(aliases)
        if not all(_only_columns_of(c, names) for c in where + join_on + group_exprs):
            return None
        # decompose each aggregate
        partials: list[exp.Expression] = []  # region-side aggregate expressions
        merges: dict[str, exp.Expression] = {}  # aggregate SQL -> coordinator expression
        distinct_keys: list[exp.Expression] = []

        def partial(expr: exp.Expression) -> exp.Column:
            for i, p in enumerate(partials):
                if p == expr:
                    return exp.column(f"{PREFIX}_a{i}")
            partials.append(expr)
            return exp.column(f"{PREFIX}_a{len(partials) - 1}")

        def distinct_key(expr: exp.Expression) -> exp.Column:
            for i, d in enumerate(distinct_keys):
                if d == expr:
                    return exp.column(f"{PREFIX}_d{i}")
            distinct_keys.append(expr)
            return exp.column(f"{PREFIX}_d{len(distinct_keys) - 1}")

        for agg in aggs:
            if agg.find_ancestor(exp.AggFunc) is not None or any(n is not agg for n in agg.find_all(exp.AggFunc)):
                return None  # nested aggregates
            if isinstance(agg.parent, exp.Filter) or agg.find(exp.Order):
                return None
            arg = agg.this
            if isinstance(arg, exp.Distinct):
                if len(arg.expressions) != 1 or not isinstance(agg, (exp.Count, exp.Sum, exp.Avg, exp.Min, exp.Max)):
                    return None
                key = distinct_key(arg.expressions[0])
                merged: exp.Expression = agg.__class__(this=exp.Distinct(expressions=[key]))
            elif isinstance(agg, exp.Count):
                if agg.args.get("expressions"):
                    return None
                p = partial(exp.Count(this=arg.copy() if arg is not None else exp.Star()))
                merged = exp.cast(exp.Coalesce(this=exp.Sum(this=p), expressions=[exp.Literal.number(0)]), "BIGINT")
            elif isinstance(agg, exp.Sum):
                merged = exp.Sum(this=partial(exp.Sum(this=arg.copy())))
            elif isinstance(agg, (exp.Min, exp.Max)):
                if agg.expressions:
                    return None
                merged = agg.__class__(this=partial(agg.__class__(this=arg.copy())))
            elif isinstance(agg, exp.Avg):
                s = partial(exp.Sum(this=arg.copy()))
                c = partial(exp.Count(this=arg.copy()))
                merged = exp.Div(this=exp.Sum(this=s), expression=exp.Sum(this=c))
            else:
                return None  # not decomposable here: fall back
            if arg is not None and not isinstance(arg, exp.Star) and not _only_columns_of(
                arg.expressions[0] if isinstance(arg, exp.Distinct) else arg, names
            ):
                return None
            merges[agg.sql("duckdb")] = merged
        # regions (after pruning) and engine safety
        regions, pruned = self._regions_for(tables, where + join_on, self._canonical_aliases(aliases))
        checked = where + join_on + group_exprs + partials + distinct_keys
        if not self._engine_ok(regions, checked, aliases):
            return None
        # the regional SQL
        group_map = {g.sql("duckdb"): f"{PREFIX}_g{i}" for i, g in enumerate(group_exprs)}
        region_select = exp.Select()
        region_select.set("from_", select.args["from_"].copy())
        if select.args.get("joins"):
            region_select.set("joins", [j.copy() for j in select.args["joins"]])
        if select.args.get("where"):
            region_select.set("where", select.args["where"].copy())
        projections = [exp.alias_(g.copy(), f"{PREFIX}_g{i}") for i, g in enumerate(group_exprs)]
        projections += [exp.alias_(d.copy(), f"{PREFIX}_d{i}") for i, d in enumerate(distinct_keys)]
        projections += [exp.alias_(p, f"{PREFIX}_a{i}") for i, p in enumerate(partials)]
        if not projections:
            return None
        region_select.set("expressions", projections)
        keys = [g.copy() for g in group_exprs] + [d.copy() for d in distinct_keys]
        if keys:
            region_select.set("group", exp.Group(expressions=keys))
        # the coordinator SQL
        frag_name = self._new_name()
        coord = select.copy()

        def rewrite(node: exp.Expression) -> exp.Expression:
            if isinstance(node, exp.AggFunc):
                return merges[node.sql("duckdb")].copy()
            key = node.sql("duckdb") if isinstance(node, (exp.Column, exp.Func, exp.Binary, exp.Cast, exp.Paren,
                                                          exp.Case, exp.If, exp.Unary)) else None  # fmt: skip
            if key is not None and key in group_map:
                return exp.column(group_map[key])
            return node

        for arg_name in ("expressions", "having", "order"):
            value = coord.args.get(arg_name)
            if value is None:
                continue
            if isinstance(value, list):
                coord.set(arg_name, [v.transform(rewrite) for v in value])
            else:
                coord.set(arg_name, value.transform(rewrite))
        coord.set("joins", None)
        coord.set("where", None)
        coord.set("from_", exp.From(this=exp.to_table(frag_name)))
        coord.set("group", exp.Group(expressions=[exp.column(v) for v in group_map.values()]) if group_exprs else None)
        for col in coord.find_all(exp.Column):
            if col.table in names:
                return None  # a column outside GROUP BY and aggregates: let the fallback (and DuckDB) judge it
        frag = Fragment(
            name=frag_name,
            tables=[t for _, t in tables],
            strategy="partial_aggregate",
            columns=[p.alias for p in projections],
            duckdb_sql=region_select.sql("duckdb"),
            regions=self._region_queries(region_select, regions, [t for _, t in tables]),
            pruned=pruned,
            pushed_filters=[c.sql("duckdb") for c in where + join_on],
        )
        if distinct_keys:
            frag.notes.append("DISTINCT aggregates: regions ship distinct (group, value) pairs")
        broadcast = sorted({t for t in aliases.values() if t in self.catalog.broadcast and t not in self.catalog.contracts})
        for name in broadcast:
            info = self.catalog.broadcast[name]
            frag.notes.append(f"reference table {name} ({info.rows} rows, {info.bytes} B) is broadcast to every region")
        return Plan(
            sql="", strategy="partial_aggregate", fragments=[frag], coordinator_sql=coord.sql("duckdb"), bind_sql="",
            reference_tables=broadcast, notes=[],
        )  # fmt: skip

    def top_n(self) -> Plan | None:
        block = self._block()
        if block is None:
            return None
        select, aliases, tables = block
        if len(aliases) != 1 or select.args.get("group") or select.find(exp.AggFunc) or select.args.get("distinct"):
            return None
        order, limit = select.args.get("order"), select.args.get("limit")
        if order is None or limit is None or select.args.get("having"):
            return None
        n = _int_literal(limit.expression)
        offset = _int_literal(select.args["offset"].expression) if select.args.get("offset") else 0
        if n is None or offset is None:
            return None
        outputs = {p.alias: p.this for p in select.expressions if isinstance(p, exp.Alias)}
        names = set(aliases)
        order_exprs = []
        for o in order.expressions:
            e = o.this
            if isinstance(e, exp.Column) and not e.table and e.name in outputs:
                e = outputs[e.name]
            if not _only_columns_of(e, names):
                return None
            order_exprs.append(o.__class__(**{**o.args, "this": e.copy()}))
        where = _conjuncts(select.args["where"].this) if select.args.get("where") else []
        if not all(_only_columns_of(c, names) for c in where):
            return None
        regions, pruned = self._regions_for(tables, where, aliases)
        if not self._engine_ok(regions, where + [o.this for o in order_exprs], aliases):
            return None
        alias = next(iter(aliases))
        columns = self._needed_columns(alias, tables[0][1])
        region_select = exp.Select(expressions=[exp.column(c, table=alias) for c in columns])
        region_select.set("from_", select.args["from_"].copy())
        if select.args.get("where"):
            region_select.set("where", select.args["where"].copy())
        region_select.set("order", exp.Order(expressions=order_exprs))
        region_select.set("limit", exp.Limit(expression=exp.Literal.number(n + offset)))
        frag_name = self._new_name()
        coord = select.copy()
        coord.args["from_"].this.replace(exp.to_table(frag_name).as_(alias))
        frag = Fragment(
            name=frag_name, tables=[tables[0][1]], strategy="top_n", columns=columns,
            duckdb_sql=region_select.sql("duckdb"),
            regions=self._region_queries(region_select, regions, [tables[0][1]]), pruned=pruned,
            pushed_filters=[c.sql("duckdb") for c in where],
        )  # fmt: skip
        frag.notes.append(f"each region returns at most {n + offset} rows")
        return Plan("", "top_n", [frag], coord.sql("duckdb"), "", [], [])

    # ----------------------------------------------------------------- general fallback

    def _needed_columns(self, alias: str, table: str) -> list[str]:
        """Columns of `table` referenced through `alias` anywhere in the query (a superset is harmless)."""
        wanted = {c.name for c in self.tree.find_all(exp.Column) if c.table == alias}
        all_cols = self.catalog.columns_of(table)
        cols = [c for c in all_cols if c in wanted]
        if not cols:  # e.g. count(*): ship the narrowest useful column so row counts survive
            cols = ["region"] if "region" in all_cols else [all_cols[0]]
        return cols

    def scan(self) -> Plan:
        coord = self.tree  # replaced in place: the tree is ours (qualified copy)
        fragments: list[Fragment] = []
        replacements: list[tuple[exp.Table, exp.Table]] = []
        references: set[str] = set()
        for scope in self.scopes:
            select = scope.expression if isinstance(scope.expression, exp.Select) else None
            for alias, source in scope.sources.items():
                if isinstance(source, exp.Table) and source.name in self.catalog.reference:
                    references.add(source.name)
                hit = self._canonical(source)
                if hit is None:
                    continue
                region_fixed, table = hit
                conj = self._pushable(select, source, alias) if select is not None else []
                aliases = {alias: table}
                regions, pruned = self._regions_for([hit], conj, aliases)
                columns = self._needed_columns(alias, table)
                name = self._new_name()
                frag_select = exp.Select(expressions=[exp.column(c, table=alias) for c in columns])
                frag_select.set("from_", exp.From(this=source.copy()))
                frag = Fragment(name=name, tables=[table], strategy="scan", columns=columns, duckdb_sql="", pruned=pruned)
                for r in regions:
                    usable = [c for c in conj if self._engine_ok([r], [c], aliases)]
                    one = frag_select.copy()
                    if usable:
                        one.set("where", exp.Where(this=_and(usable)))
                    frag.regions.extend(self._region_queries(one, [r], [table]))
                    skipped = [c.sql("duckdb") for c in conj if c not in usable]
                    if skipped:
                        frag.notes.append(f"{r}: not pushed (not safe in {self.catalog.regions[r].engine}): {'; '.join(skipped)}")
                if conj:
                    frag_select.set("where", exp.Where(this=_and(conj)))
                frag.duckdb_sql = frag_select.sql("duckdb")
                frag.pushed_filters = [c.sql("duckdb") for c in conj]
                frag.reduced = any(self._region_predicate([c], aliases) is None for c in conj)
                fragments.append(frag)
                replacements.append((source, exp.to_table(name).as_(alias)))
        if self.pushdown:
            self._semi_joins(fragments, replacements)
        for old, new in replacements:
            old.replace(new)
        notes = []
        if any(len(f.regions) > 0 for f in fragments):
            notes.append("general strategy: reduced rows of each table are merged and the query runs at the coordinator")
        return Plan("", "scan", fragments, coord.sql("duckdb"), "", sorted(references), notes)

    def file_reads(self) -> dict[str, dict[str, list[str]]]:
        """Projection and filter pushdown into live files tables (`na.exports.flights`).

        Per files table: the columns referenced through any of its aliases, and, when the query
        names it once, the conjuncts that filter its rows before anything else (`_pushable`),
        with columns unqualified (they run over the connector's batches). The executor reads
        only those columns, skips objects whose hive partition values fail the conjuncts, and
        filters the rest; the region's SQL still applies every conjunct (a pre-filter only).
        """
        refs: dict[str, list[tuple[str, list[exp.Expression]]]] = {}
        for scope in self.scopes:
            select = scope.expression if isinstance(scope.expression, exp.Select) else None
            for alias, source in scope.sources.items():
                if not isinstance(source, exp.Table) or not isinstance(source.this, exp.Identifier):
                    continue
                name = source.name
                live = self.catalog.live.get(name)
                if live is None or live.kind != "gcs":
                    continue
                conj = self._pushable(select, source, alias) if select is not None and self.pushdown else []
                refs.setdefault(name, []).append((alias, conj))
        reads: dict[str, dict[str, list[str]]] = {}
        for name, uses in refs.items():
            wanted = {c.name for alias, _ in uses for c in self._original_columns(alias)}
            columns = [c for c in self.catalog.columns_of(name) if c in wanted] or self.catalog.columns_of(name)[:1]
            filters: list[str] = []
            if len(uses) == 1:
                for c in uses[0][1]:
                    bare = c.copy()
                    for col in bare.find_all(exp.Column):
                        col.set("table", None)
                    filters.append(bare.sql("duckdb"))
            reads[name] = {"columns": columns, "filters": filters}
        return reads

    def _original_columns(self, alias: str) -> list[exp.Column]:
        return [c for c in self.tree.find_all(exp.Column) if c.table == alias]

    def _semi_joins(self, fragments: list[Fragment], replacements: list[tuple[exp.Table, exp.Table]]) -> None:
        """Mark fragments that may be filtered by the join keys of another fragment (semi-join key shipping).

        For an equality `x.a = y.b` among the ON conjuncts of a join, the side whose unmatched rows the
        join drops (both sides of an inner or SEMI join; the right side of LEFT and ANTI; the left side
        of RIGHT) is a *probe* candidate; the other side is the *build*. Only a build whose rows were
        reduced by pushed filters and a probe with none are paired (the filtered side is likely the
        smaller one; both filtered or neither: no key shipping). The build fragment's rows are a
        superset of the rows that reach the join, so a probe row whose key is not among the build's
        keys can never join: dropping it in its region is always correct.
        """
        by_source = {id(old): frag for (old, _), frag in zip(replacements, fragments)}
        for scope in self.scopes:
            select = scope.expression if isinstance(scope.expression, exp.Select) else None
            if select is None:
                continue
            from_ = select.args.get("from_")
            joins = select.args.get("joins") or []
            frag_of: dict[str, Fragment] = {}
            for alias, source in scope.sources.items():
                if isinstance(source, exp.Table) and id(source) in by_source:
                    frag_of[alias] = by_source[id(source)]
            if len(frag_of) < 2 or from_ is None:
                continue
            for join in joins:
                right = join.this.alias_or_name
                if right not in frag_of or not join.args.get("on") or join.args.get("method"):
                    continue
                side, kind = (join.side or "").upper(), (join.kind or "").upper()
                for c in _conjuncts(join.args["on"]):
                    if not isinstance(c, exp.EQ) or not all(isinstance(x, exp.Column) for x in (c.left, c.right)):
                        continue
                    cols = {c.left.table: c.left.name, c.right.table: c.right.name}
                    if right not in cols or len(cols) != 2:
                        continue
                    left = next(a for a in cols if a != right)
                    if left not in frag_of:
                        continue
                    probes: list[str] = []
                    if not side and kind in ("", "INNER", "SEMI"):
                        probes = [right, left]
                    elif (side == "LEFT" and kind in ("", "OUTER")) or kind == "ANTI":
                        probes = [right]
                    elif side == "RIGHT" and kind in ("", "OUTER"):
                        probes = [left]
                    for probe in probes:
                        build = left if probe == right else right
                        pf, bf = frag_of[probe], frag_of[build]
                        if pf.semi_join is not None or pf is bf or bf.semi_join is not None:
                            continue
                        if not bf.reduced or pf.reduced:
                            continue
                        pt = self.catalog.duckdb_types[pf.tables[0]].get(cols[probe])
                        bt = self.catalog.duckdb_types[bf.tables[0]].get(cols[build])
                        if pt != bt or pt not in ("VARCHAR", "BIGINT", "INTEGER", "DATE"):
                            continue
                        if cols[probe] not in pf.columns or cols[build] not in bf.columns:
                            continue
                        pf.semi_join = {"build": bf.name, "build_column": cols[build], "column": cols[probe]}
                        pf.notes.append(
                            f"semi-join: after {bf.name} ran, its distinct {cols[build]} values are shipped to these "
                            f"regions, which return only rows whose {cols[probe]} is among them"
                        )

    def _pushable(self, select: exp.Select, source: exp.Table, alias: str) -> list[exp.Expression]:
        """WHERE / ON conjuncts that mention only `alias` and may filter the table before the query runs."""
        joins = select.args.get("joins") or []
        from_ = select.args.get("from_")
        own_join = next((j for j in joins if j.this is source), None)
        in_from = from_ is not None and from_.this is source
        if not in_from and own_join is None:
            return []  # e.g. inside a nested join tree: do not reason about it
        # null-supplying: right side of LEFT/FULL, or left of RIGHT/FULL after it
        null_supplying = False
        if own_join is not None and own_join.side in ("LEFT", "FULL"):
            null_supplying = True
        position = -1 if in_from else joins.index(own_join)
        if any(j.side in ("RIGHT", "FULL") for j in joins[position + 1 :]):
            null_supplying = True
        names = {alias}
        out: list[exp.Expression] = []
        if not null_supplying and select.args.get("where"):
            out += [c for c in _conjuncts(select.args["where"].this) if _only_columns_of(c, names)]
        # ON conjuncts on the joined table itself of an inner, LEFT, SEMI or ANTI join only restrict its matches
        if own_join is not None and own_join.args.get("on") and own_join.side in ("", None, "LEFT"):
            out += [c for c in _conjuncts(own_join.args["on"]) if _only_columns_of(c, names)]
        return out


def _is_region_col(node: exp.Expression, aliases: dict[str, str]) -> bool:
    return isinstance(node, exp.Column) and node.name == "region" and node.table in aliases


def _compatible(a: str, b: str) -> bool:
    if "?" in (a, b) or "naive_ts" in (a, b):
        return False
    if a == b:
        return True
    return {a, b} <= {"strlit", "str", "ts", "date"} and "strlit" in (a, b)


def _int_literal(node: exp.Expression | None) -> int | None:
    if isinstance(node, exp.Literal) and not node.is_string:
        try:
            return int(node.this)
        except ValueError:
            return None
    return None


__all__ = ["BIGQUERY", "DUCKDB", "Fragment", "Plan", "RegionQuery", "RegionTarget", "plan_query"]
