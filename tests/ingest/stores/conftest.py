"""Fixtures for the curated store tests: a real store of each kind, isolated per test.

Iceberg: pyiceberg with a SQLite catalog and a local warehouse in tmp_path. BigQuery:
a fresh dataset on the emulator that the session's `federation` fixture started.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from skyfed.ingest.stores import CuratedStore, open_store
from stores_testdata import store_spec


@pytest.fixture
def iceberg_env(tmp_path, monkeypatch) -> str:
    """A private state folder and metadata database for one test; returns the metadata URL."""
    monkeypatch.setenv("SKYFED_HOME", str(tmp_path / "home"))
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    monkeypatch.setenv("SKYFED_METADATA_URL", url)
    return url


@pytest.fixture(params=["iceberg", "bigquery"])
def store(request, tmp_path) -> Iterator[CuratedStore]:
    """A curated store of each kind.

    The session's `federation` is requested before this test's SKYFED_HOME is set: started
    under it, the session would keep the test's value, and the test's teardown would then
    remove SKYFED_HOME from the environment of every later test."""
    if request.param == "bigquery":
        request.getfixturevalue("federation")
    request.getfixturevalue("iceberg_env")
    spec = store_spec(request.param, str(tmp_path))
    s = open_store("latam" if request.param == "iceberg" else "eu", spec)
    s.test_spec = spec  # type: ignore[attr-defined]  # the crash test's child opens the same store
    yield s
