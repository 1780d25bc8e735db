"""Pipelines: SQL models over the federation, their DAG, runs, schedules, materializations and fallbacks.

    from skyfed.pipelines import load_project, run, backfill, Server
    project = load_project("examples/airline/models")
    run(spec, project, selectors=["tag:finance+"])

See docs/pipelines.md.
"""

from skyfed.pipelines.project import Model, Project, load_project
from skyfed.pipelines.runner import backfill, run
from skyfed.pipelines.serve import Server

__all__ = ["Model", "Project", "Server", "backfill", "load_project", "run"]
