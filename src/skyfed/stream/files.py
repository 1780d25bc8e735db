"""File arrivals: new or replaced objects under a Cloud Storage prefix, ingested once.

On Google Cloud, Pub/Sub object notifications would wake the poller; the local
emulator has none, so objects are polled. Each poll is a batch incremental run of
the mapping (skyfed.ingest.runner.run_mapping): its position is every object's
generation, committed with the data, so an object is read again only when a new
generation replaces it, and a crash repeats, never doubles, a poll.
"""

from __future__ import annotations

import time
from typing import Any

from skyfed.ingest.runner import run_mapping
from skyfed.spec.models import Mapping, PlatformSpec
from skyfed.stream.base import BatchReport


class FileArrivals:
    kind = "gcs"

    def __init__(self, spec: PlatformSpec, source_ref: str, mappings: list[Mapping], poll_seconds: float = 2.0):
        self.spec = spec
        self.source_ref = source_ref
        self.mappings = mappings
        self.poll_seconds = poll_seconds
        self._last_poll = 0.0

    def start(self, *, batch_rows: int = 100_000, reopen: bool = False) -> list[Any]:
        return []

    def read_batch(self, max_rows: int, max_seconds: float, idle_seconds: float | None = None) -> BatchReport | None:
        wait = self._last_poll + self.poll_seconds - time.monotonic()
        if wait > 0:
            time.sleep(min(wait, max_seconds))
            if self._last_poll + self.poll_seconds > time.monotonic():
                return None
        started = time.monotonic()
        self._last_poll = started
        results = [run_mapping(self.spec, m, batch_rows=max_rows) for m in self.mappings]
        if all(r.rows_read == 0 for r in results):
            return None
        return BatchReport(self.source_ref, sum(r.rows_read for r in results), [_Result(r) for r in results], None,
                           time.monotonic() - started, None)  # fmt: skip

    def close(self) -> None:
        return None


class _Result:
    """A batch run's counts in the stream report's terms."""

    def __init__(self, r: Any):
        self.mapping = r.mapping
        self.upserted = r.rows_committed
        self.deleted = 0
        self.quarantined = r.rows_quarantined
