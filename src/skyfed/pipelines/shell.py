"""The non-interactive core of `skyfed shell`: one line in, text out (the CLI adds the prompt).

Lines starting with `.` are commands (`.help`); anything else is SQL: over models it runs in
the local warehouse, otherwise through `Server.query` (a fresh materialization, else the
federation), and the query report follows the result unless `.report off`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from skyfed.errors import SkyfedError
from skyfed.pipelines import state
from skyfed.pipelines.build import Context, execute, inline_views, split_refs
from skyfed.pipelines.project import Project
from skyfed.pipelines.serve import Served, Server

_WORD = __import__("re").compile(r"[\w.]+")  # a completion word may hold dots (eu.flight_leg, .tables)

HELP = """commands:
  .tables              canonical, per-region, reference tables and models
  .columns TABLE       columns of a table or model
  .models              models with materialization, placement and last build
  .report on|off       print the query report after each result (default on)
  .help                this text
  .quit                leave (Ctrl-D also works)
anything else is SQL (one SELECT), e.g. SELECT region, count(*) FROM flight_leg GROUP BY region"""

SQL_WORDS = ["SELECT", "FROM", "WHERE", "GROUP BY", "ORDER BY", "LIMIT", "JOIN", "LEFT JOIN", "ON", "AS", "AND", "OR",
             "NOT", "IN", "IS NULL", "COUNT", "SUM", "AVG", "MIN", "MAX", "DISTINCT", "HAVING", "WITH", "CASE", "WHEN",
             "THEN", "ELSE", "END", "CAST", "date_trunc"]  # fmt: skip


@dataclass
class Reply:
    text: str
    table: pa.Table | None = None
    report: dict[str, Any] | None = None
    quit: bool = False
    error: bool = False


@dataclass
class ShellCore:
    fed: Any  # skyfed.query Federation
    project: Project
    show_report: bool = True
    max_rows: int = 40
    _server: Server | None = field(default=None, init=False)

    @property
    def server(self) -> Server:
        if self._server is None:
            self._server = Server(self.project, self.fed)
        return self._server

    # ------------------------------------------------------------------ names for completion

    def tables(self) -> dict[str, list[str]]:
        """Every name a query can use, with its columns."""
        cat = self.fed.catalog
        out: dict[str, list[str]] = {}
        for name, contract in cat.contracts.items():
            cols = list(contract.columns)
            out[name] = cols
            for region in cat.regions_of(name):
                out[f"{region}.{name}"] = cols
        for name, contract in cat.reference.items():
            out[name] = list(contract.columns)
        current = state.all_current()
        for name in self.project.models:
            cur = current.get(name)
            cols: list[str] = []
            if cur:
                import pyarrow.parquet as pq

                first = next((p["path"] for p in cur["parts"].values() if p.get("path")), None)
                cols = pq.read_schema(first).names if first else []
            out[name] = cols
        return out

    def completions(self) -> list[str]:
        names = self.tables()
        cols = sorted({c for cs in names.values() for c in cs})
        return sorted(names) + cols + SQL_WORDS + [".tables", ".columns", ".models", ".report", ".help", ".quit"]

    # ------------------------------------------------------------------ one line

    def handle(self, line: str) -> Reply:
        line = line.strip().rstrip(";").strip()
        if not line:
            return Reply("")
        try:
            if line.startswith("."):
                return self._command(line)
            return self._sql(line)
        except SkyfedError as exc:
            return Reply(f"error: {exc.message}" + (f"\nhint: {exc.hint}" if exc.hint else ""), error=True)

    def _command(self, line: str) -> Reply:
        cmd, _, arg = line.partition(" ")
        arg = arg.strip()
        if cmd in (".quit", ".exit"):
            return Reply("bye", quit=True)
        if cmd == ".help":
            return Reply(HELP)
        if cmd == ".tables":
            return Reply("\n".join(sorted(self.tables())))
        if cmd == ".columns":
            names = self.tables()
            if arg not in names:
                raise SkyfedError(f"unknown table {arg!r}", "see .tables")
            return Reply("\n".join(names[arg]) or "(not materialized yet)")
        if cmd == ".models":
            current = state.all_current()
            lines = []
            for n in self.project.order:
                c = self.project.models[n].config
                cur = current.get(n)
                built = f"build {cur['build_id']}" if cur else "not built"
                lines.append(f"{n}: {c.materialization}, {c.placement}, {built}")
            return Reply("\n".join(lines))
        if cmd == ".report":
            if arg not in ("on", "off"):
                raise SkyfedError(".report takes on or off")
            self.show_report = arg == "on"
            return Reply(f"report {arg}")
        raise SkyfedError(f"unknown command {cmd}", "type .help")

    def _sql(self, sql: str) -> Reply:
        import sqlglot

        try:
            tree = inline_views(sqlglot.parse_one(sql, read="duckdb"), self.project)
        except sqlglot.errors.ParseError as exc:
            raise SkyfedError(f"the SQL does not parse: {str(exc).splitlines()[0]}") from None
        models, _ = split_refs(tree, self.project, self.fed.catalog)
        if models:
            ctx = Context(spec=self.fed.spec, fed=self.fed, project=self.project, run_id="shell")
            table, _, info = execute(ctx, tree, allow_partial=False)
            report: dict[str, Any] = {"served_from": "warehouse", **info}
        else:
            result = self.server.query(tree.sql(dialect="duckdb"))
            table = result.arrow()
            report = result.report if isinstance(result, Served) else result.report.to_dict()
        text = render(table, self.max_rows)
        if self.show_report:
            text += "\n" + render_report(report)
        return Reply(text, table=table, report=report)


def render(table: pa.Table, max_rows: int = 40) -> str:
    """A plain text table (no terminal needed)."""
    shown = table.slice(0, max_rows).to_pylist()
    cols = table.column_names
    cells = [[("NULL" if r[c] is None else str(r[c])) for c in cols] for r in shown]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    line = " | ".join(c.ljust(w) for c, w in zip(cols, widths))
    out = [line, "-+-".join("-" * w for w in widths)]
    out += [" | ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    more = f" (showing {max_rows})" if table.num_rows > max_rows else ""
    out.append(f"{table.num_rows} rows{more}")
    return "\n".join(out)


def render_report(rep: dict[str, Any]) -> str:
    if rep.get("served_from") == "materialization":
        flag = f", STALE ({rep.get('stale_reason', '')})" if rep.get("stale") else ""
        return f"-- answered from materialization {rep['model']} ({rep['age_seconds']:.1f} s old{flag}); no region contacted"
    if rep.get("served_from") == "warehouse":
        return f"-- answered in the local warehouse from models {', '.join(rep.get('models', []))}"
    regions = ", ".join(f"{r['region']} {r['status']} {r['rows']} rows {r['bytes']} B {r['seconds']:.3f}s"
                        for r in rep.get("regions", []))  # fmt: skip
    cache = rep.get("cache", {}).get("status")
    partial = f"; PARTIAL, missing {[m['region'] for m in rep['missing']]}" if rep.get("partial") else ""
    return (f"-- {rep['strategy']}: {rep['bytes_shipped']} B shipped, egress ${rep['egress_usd']:.8f}, "
            f"{rep['total_seconds']:.3f} s, cache {cache}; {regions}{partial}")  # fmt: skip


def completer(core: ShellCore) -> Any:
    """prompt_toolkit completion of table names, columns, commands and SQL keywords (case-insensitive)."""
    from prompt_toolkit.completion import WordCompleter

    return WordCompleter(core.completions(), ignore_case=True, pattern=_WORD)


def repl(core: ShellCore, history_file: str, write: Any = print, input: Any = None, output: Any = None) -> None:
    """The interactive loop: prompt with history (kept in `history_file`) and completion, until .quit or Ctrl-D."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory

    session: Any = PromptSession(history=FileHistory(history_file), completer=completer(core), input=input, output=output)
    while True:
        try:
            line = session.prompt("skyfed> ")
        except KeyboardInterrupt:
            continue
        except EOFError:
            break
        reply = core.handle(line)
        if reply.text:
            write(reply.text)
        if reply.quit:
            break
