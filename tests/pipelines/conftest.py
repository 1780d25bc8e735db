"""A seeded, ingested airline world for pipeline tests, with its own state folder.

As in tests/query/conftest.py: a fresh SKYFED_HOME per module on top of the session's
running services (`federation`), a small world seeded and every source ingested with a
full refresh. Ground truth for the metrics is read from the generator's files
(`<home>/seed/ground_truth/*.parquet`), never through skyfed's query path.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from envkit import env_vars

from skyfed.demo.seed import seed
from skyfed.demo.world import WorldConfig
from skyfed.ingest.batch import ingest
from skyfed.spec import PlatformSpec, load_spec

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "airline" / "skyfed.yaml"
MODELS = EXAMPLE.parent / "models"


class World:
    def __init__(self, home: Path, spec: PlatformSpec):
        self.home = home
        self.spec = spec

    @property
    def truth_dir(self) -> Path:
        return self.home / "seed" / "ground_truth"


@pytest.fixture(scope="module")
def world(federation, tmp_path_factory) -> Iterator[World]:
    home = tmp_path_factory.mktemp("pipelines-home")
    with env_vars(SKYFED_HOME=str(home)):
        seed(WorldConfig(flights=200, seed=23, days=100), home)  # Jan 1 - Apr 9, 2024 (na gains tail_number Apr 1)
        spec = load_spec(EXAMPLE)
        _, _, failures = ingest(spec, full_refresh=True)
        assert failures == [], [(m.name, e.message) for m, e in failures]
        yield World(home, spec)


GOVERNANCE = EXAMPLE.parent / "skyfed.governance.yaml"


@pytest.fixture
def cli() -> Iterator:
    """`skyfed ARGS...` in this process (typer's runner): the same entry point as a subprocess
    without a new interpreter; use run_cli where the process itself matters (kill -9, signals).

    `--spec` sets this process's $SKYFED_SPEC (skyfed.cli.specopt); it is restored after the
    test, set or unset, so later modules do not find this spec's governance file (monkeypatch's
    delenv of an unset variable records nothing to restore)."""
    from typer.testing import CliRunner

    from skyfed.cli import _register, app

    _register()
    runner = CliRunner()

    def invoke(*args: str):
        res = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
        return res.exit_code, res.stdout, res.stderr

    with env_vars(SKYFED_SPEC=None):
        yield invoke
