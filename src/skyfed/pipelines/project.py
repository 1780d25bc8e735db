"""A models project: every `*.sql` file under a models/ folder, their dependencies and the DAG.

Dependencies come from the SQL itself (sqlglot): a table named like another model is a
reference to it; everything else is a federation table (canonical, `region.table`,
reference or live). A cycle is refused with the cycle named.
"""

from __future__ import annotations

import graphlib
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlglot
import yaml
from sqlglot import exp

from skyfed.errors import SkyfedError
from skyfed.pipelines.config import ModelConfig, split_config

PROJECT_FILE = "project.yaml"


@dataclass
class Model:
    name: str
    path: Path
    config: ModelConfig
    sql: str
    depends_on: list[str] = field(default_factory=list)  # other models
    sources: list[str] = field(default_factory=list)  # federation tables as written (flight_leg, eu.flight_leg)

    @property
    def sql_hash(self) -> str:
        """Hash of what defines the result: the normalized SQL and the config (a changed config rebuilds)."""
        norm = sqlglot.parse_one(self.sql, read="duckdb").sql(dialect="duckdb", normalize=True, comments=False)
        cfg = self.config.model_dump(exclude={"schedule", "tags", "owner", "description", "retries", "freshness"})
        return hashlib.sha256(f"{norm}\n{sorted(cfg.items())}".encode()).hexdigest()[:16]

    def tree(self) -> exp.Expression:
        return sqlglot.parse_one(self.sql, read="duckdb")


@dataclass
class Project:
    root: Path
    models: dict[str, Model]
    order: list[str]  # a topological order

    def downstream(self, name: str) -> set[str]:
        out: set[str] = set()
        todo = [name]
        while todo:
            cur = todo.pop()
            for m in self.models.values():
                if cur in m.depends_on and m.name not in out:
                    out.add(m.name)
                    todo.append(m.name)
        return out

    def upstream(self, name: str) -> set[str]:
        out: set[str] = set()
        todo = [name]
        while todo:
            for dep in self.models[todo.pop()].depends_on:
                if dep not in out:
                    out.add(dep)
                    todo.append(dep)
        return out

    def select(self, names: list[str] | None = None, selectors: list[str] | None = None) -> list[str]:
        """Models chosen by name and by selectors, in dependency order.

        Selector grammar (dbt-like): `name`, `tag:X`; a trailing `+` adds everything downstream,
        a leading `+` everything upstream. No names and no selectors means every model.
        """
        wanted: set[str] = set()
        items = list(names or []) + list(selectors or [])
        if not items:
            return list(self.order)
        for item in items:
            up, down = item.startswith("+"), item.endswith("+")
            core = item.strip("+")
            if core.startswith("tag:"):
                tag = core[4:]
                base = {m.name for m in self.models.values() if tag in m.config.tags}
                if not base:
                    known = sorted({t for m in self.models.values() for t in m.config.tags})
                    raise SkyfedError(f"no model has tag {tag!r}", f"known tags: {', '.join(known) or 'none'}")
            elif core in self.models:
                base = {core}
            else:
                raise SkyfedError(f"unknown model {core!r}", f"models: {', '.join(sorted(self.models))}")
            for b in list(base):
                if down:
                    base |= self.downstream(b)
                if up:
                    base |= self.upstream(b)
            wanted |= base
        return [n for n in self.order if n in wanted]


def table_refs(tree: exp.Expression) -> list[exp.Table]:
    """Tables the SQL reads (CTE names excluded)."""
    ctes = {c.alias_or_name.lower() for c in tree.find_all(exp.CTE)}
    out = []
    for t in tree.find_all(exp.Table):
        if not t.name:
            continue
        if not t.db and t.name.lower() in ctes:
            continue
        out.append(t)
    return out


def dotted(t: exp.Table) -> str:
    return ".".join(p for p in (t.catalog, t.db, t.name) if p)


def parse_model(path: Path, defaults: dict[str, Any] | None = None) -> Model:
    text = path.read_text()
    cfg, sql = split_config(text, str(path), defaults)
    try:
        tree = sqlglot.parse_one(sql, read="duckdb")
    except sqlglot.errors.ParseError as exc:
        raise SkyfedError(f"{path}: the SQL does not parse: {str(exc).splitlines()[0]}") from None
    if not isinstance(tree, (exp.Select, exp.Union, exp.Intersect, exp.Except)) and not (
        isinstance(tree, exp.Query)
    ):
        raise SkyfedError(f"{path}: a model is one SELECT (or WITH ... SELECT)", "remove DDL/DML from the model")
    name = path.stem
    return Model(name=name, path=path, config=cfg, sql=sql, sources=sorted({dotted(t) for t in table_refs(tree)}))


def load_project(root: str | Path) -> Project:
    """Every model under `root` (recursively), dependencies resolved, cycles refused."""
    root = Path(root)
    if not root.is_dir():
        raise SkyfedError(f"the models folder {root} does not exist", "pass --models DIR or create models/ beside the spec")
    defaults: dict[str, Any] = {}
    pf = root / PROJECT_FILE
    if pf.exists():
        data = yaml.safe_load(pf.read_text()) or {}
        if not isinstance(data, dict) or not isinstance(data.get("defaults", {}), dict):
            raise SkyfedError(f"{pf}: expected `defaults:` with config keys")
        defaults = dict(data.get("defaults") or {})
    models: dict[str, Model] = {}
    for path in sorted(root.rglob("*.sql")):
        m = parse_model(path, defaults)
        if m.name in models:
            raise SkyfedError(f"two models are named {m.name!r}: {models[m.name].path} and {path}", "rename one file")
        models[m.name] = m
    lower = {n.lower(): n for n in models}
    for m in models.values():
        deps, sources = set(), []
        for src in m.sources:
            if "." not in src and src.lower() in lower:
                deps.add(lower[src.lower()])
            else:
                sources.append(src)
        if m.name in deps:
            raise SkyfedError(f"model {m.name} reads itself: cycle {m.name} -> {m.name}")
        m.depends_on, m.sources = sorted(deps), sorted(sources)
    return Project(root, models, topological_order(models))


def topological_order(models: dict[str, Model]) -> list[str]:
    sorter = graphlib.TopologicalSorter({n: m.depends_on for n, m in sorted(models.items())})
    try:
        return list(sorter.static_order())
    except graphlib.CycleError as exc:
        cycle = list(exc.args[1])
        raise SkyfedError(f"the models form a cycle: {' -> '.join(reversed(cycle))}",
                          "a model may not (indirectly) read itself; break the cycle") from None  # fmt: skip
