"""`skyfed run` and `skyfed backfill`: build selected models in dependency order, in parallel where independent."""

from __future__ import annotations

import concurrent.futures as cf
import graphlib
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from skyfed.errors import SkyfedError
from skyfed.pipelines.build import Context, build_model
from skyfed.pipelines.project import Project, load_project

DEFAULT_PARALLEL = 4
BAD = ("failed", "upstream_failed")


def default_models_dir(spec_path: str | Path | None) -> Path:
    """`models/` beside the spec file (the spec's folder, or the working directory)."""
    import os

    base = Path(spec_path or os.environ.get("SKYFED_SPEC") or "skyfed.yaml").resolve().parent
    return base / "models"


def federation(spec: Any, timeout: float | None = None) -> Any:
    from skyfed.query import connect

    return connect(spec, cache=False, **({"timeout": timeout} if timeout else {}))


def run(spec: Any, project: Project | str | Path, names: list[str] | None = None, selectors: list[str] | None = None, *,
        full_refresh: bool = False, backfill: tuple[Any, Any] | None = None, trigger: str = "run",
        parallel: int = DEFAULT_PARALLEL, fed: Any = None, clock: Callable[[], float] = time.time, attempt: int = 1,
        run_id: str | None = None, on_done: Callable[[dict[str, Any]], None] | None = None,
        governance: Any = None, spec_path: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Build the selected models; returns {run_id, results: [run record per model], ok}.

    A model whose upstream failed in this run is not built (status upstream_failed).
    Federated SQL runs as each model's governance role (pipelines.governed): `governance` is the
    governance file (a path or a Governance), else the one found beside `spec_path` / $SKYFED_SPEC
    (or $SKYFED_GOVERNANCE). Every build then gets its lineage event and audit record (records.py).
    """
    from skyfed.pipelines.governed import Policies
    from skyfed.pipelines.records import record_build

    if not isinstance(project, Project):
        project = load_project(project)
    chosen = project.select(names, selectors)
    ctx = Context(spec=spec, fed=fed or federation(spec), project=project, run_id=run_id or uuid.uuid4().hex[:16],
                  trigger=trigger, clock=clock, attempt=attempt, governance=Policies(governance, spec_path))  # fmt: skip
    ctx.version_timeout = min(ctx.version_timeout, float(getattr(ctx.fed, "timeout", 10.0)))
    graph = {n: [d for d in project.models[n].depends_on if d in chosen] for n in chosen}
    sorter = graphlib.TopologicalSorter(graph)
    sorter.prepare()
    results: dict[str, dict[str, Any]] = {}
    failed: set[str] = set()
    started = time.perf_counter()
    with cf.ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="skyfed-model") as pool:
        running: dict[cf.Future, str] = {}
        while sorter.is_active():
            for name in sorter.get_ready():
                bad = [d for d in graph[name] if d in failed]
                if bad:
                    from skyfed.pipelines import state

                    row = {"run_id": ctx.run_id, "model": name, "attempt": attempt, "trigger": trigger,
                           "status": "upstream_failed", "started_at": state.now(), "finished_at": state.now(),
                           "detail": {"error": f"upstream {', '.join(bad)} failed"}}  # fmt: skip
                    state.record_run(row)
                    record_build(ctx, project.models[name], row)
                    results[name] = row
                    failed.add(name)
                    sorter.done(name)
                    if on_done:
                        on_done(row)
                    continue
                bf = backfill if backfill is not None and names and name in names else None
                running[pool.submit(build_model, ctx, project.models[name], full_refresh=full_refresh, backfill=bf)] = name
            if not running:
                continue
            done, _ = cf.wait(list(running), return_when=cf.FIRST_COMPLETED)
            for fut in done:
                name = running.pop(fut)
                row = fut.result()
                record_build(ctx, project.models[name], row)
                results[name] = row
                if row["status"] in BAD:
                    failed.add(name)
                sorter.done(name)
                if on_done:
                    on_done(row)
    ordered = [results[n] for n in chosen if n in results]
    return {"run_id": ctx.run_id, "results": ordered, "ok": not failed, "seconds": round(time.perf_counter() - started, 3)}


def backfill(spec: Any, project: Project | str | Path, model: str, start: Any, end: Any, **kw: Any) -> dict[str, Any]:
    """Recompute `model` over [start, end) (aligned to its period), keeping everything else."""
    if not isinstance(project, Project):
        project = load_project(project)
    if model not in project.models:
        raise SkyfedError(f"unknown model {model!r}", f"models: {', '.join(sorted(project.models))}")
    if not project.models[model].config.time_column:
        raise SkyfedError(f"model {model} has no time_column, so it cannot be backfilled by range",
                          "backfill needs an incremental model by time range (time_column, period, source_time_column)")  # fmt: skip
    return run(spec, project, [model], backfill=(start, end), trigger="backfill", **kw)
