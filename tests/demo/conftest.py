from __future__ import annotations

import pytest

from skyfed.demo.world import World, WorldConfig, generate

SMALL = WorldConfig(flights=3000, seed=7)


@pytest.fixture(scope="session")
def small_world() -> World:
    return generate(SMALL)
