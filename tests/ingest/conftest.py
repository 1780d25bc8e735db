"""A seeded airline world in the local federation, with its own state folder.

Each ingest test module gets a fresh SKYFED_HOME (warehouses, metadata database,
seed files) on top of the session's running services, so positions and tables
from one module never leak into another.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from envkit import env_vars

from skyfed.demo.seed import seed
from skyfed.demo.world import WorldConfig
from skyfed.spec import PlatformSpec, load_spec

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "airline" / "skyfed.yaml"


class World:
    def __init__(self, home: Path, spec: PlatformSpec, manifest: dict):
        self.home = home
        self.spec = spec
        self.manifest = manifest

    @property
    def truth_dir(self) -> Path:
        return self.home / "seed" / "ground_truth"


@pytest.fixture(scope="module")
def seeded_world(federation, tmp_path_factory) -> Iterator[World]:
    home = tmp_path_factory.mktemp("ingest-home")
    with env_vars(SKYFED_HOME=str(home)):
        result = seed(WorldConfig(flights=800, seed=7), home)
        spec = load_spec(EXAMPLE)
        yield World(home, spec, result["manifest"])
