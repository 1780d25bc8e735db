"""`skyfed stream`: keep the curated stores current, one micro-batch at a time per source.

A micro-batch closes at `max_rows` changes or `max_seconds`, whichever comes first
(never inside a transaction unless the row bound forces it). Each batch is
committed, then acknowledged to the source. SIGTERM and Ctrl-C set a flag: the
batch in hand is finished, committed and acknowledged, and the process exits 0.
`until_idle` stops once every source had nothing new for `idle_seconds`.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from skyfed.errors import SkyfedError
from skyfed.home import sub_dir
from skyfed.ingest.batch import select_mappings
from skyfed.spec.models import Mapping, PlatformSpec
from skyfed.stream.base import SourceGone, SourceLost

STREAMABLE = ("postgres", "pubsub", "gcs")


@dataclass
class SourceStats:
    source: str
    kind: str
    batches: int = 0
    changes: int = 0
    upserted: int = 0
    deleted: int = 0
    quarantined: int = 0
    seconds: float = 0.0
    last_commit_at: str | None = None
    last_source_commit: str | None = None
    started_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["changes_per_second"] = round(self.changes / self.seconds, 1) if self.seconds else 0.0
        return d


def sources_of(spec: PlatformSpec, selectors: Sequence[str]) -> dict[str, list[Mapping]]:
    """Streamable sources and their mappings, chosen like `skyfed ingest` chooses mappings."""
    grouped: dict[str, list[Mapping]] = {}
    skipped = []
    for m in select_mappings(spec, selectors):
        kind = spec.source(m.source).kind
        if kind not in STREAMABLE:
            skipped.append(m)
            continue
        grouped.setdefault(m.source, []).append(m)
    if not grouped:
        raise SkyfedError(
            "nothing to stream: the selected mappings read " + (", ".join(sorted({m.source for m in skipped})) or "no source")
            + f", and only {', '.join(STREAMABLE)} sources stream",
            "name a PostgreSQL, Pub/Sub or Cloud Storage source (`skyfed ingest` covers BigQuery)",
        )
    return grouped


def open_source(spec: PlatformSpec, source_ref: str, mappings: list[Mapping]) -> Any:
    kind = spec.source(source_ref).kind
    if kind == "postgres":
        from skyfed.stream.postgres import PostgresCDC

        return PostgresCDC(spec, source_ref, mappings)
    if kind == "pubsub":
        from skyfed.stream.pubsub import PubSubStream

        return PubSubStream(spec, source_ref, mappings)
    from skyfed.stream.files import FileArrivals

    return FileArrivals(spec, source_ref, mappings)


class _Stop:
    """Set by SIGTERM / SIGINT; the loop finishes the batch in hand and returns."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: Any) -> None:
        self.requested = True


def status_path(source_ref: str) -> Any:
    return sub_dir("stream") / f"{source_ref}.json"


def write_status(stats: SourceStats, extra: dict[str, Any]) -> None:
    path = status_path(stats.source)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({**stats.to_dict(), **extra}, default=str))
    os.replace(tmp, path)


def run(
    spec: PlatformSpec,
    selectors: Sequence[str] = (),
    *,
    until_idle: bool = False,
    max_rows: int = 50_000,
    max_seconds: float = 1.0,
    idle_seconds: float = 2.0,
    on_batch: Callable[[str, Any], None] | None = None,
    on_event: Callable[[str, str], None] | None = None,
) -> dict[str, SourceStats]:
    """Stream the selected sources until stopped (SIGTERM/SIGINT) or, with `until_idle`, until idle."""
    stop = _Stop()
    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    streams: dict[str, Any] = {}
    stats: dict[str, SourceStats] = {}
    try:
        for ref, mappings in sources_of(spec, selectors).items():
            src = open_source(spec, ref, mappings)
            streams[ref] = src
            stats[ref] = SourceStats(ref, src.kind)
            for r in src.start(batch_rows=max_rows):
                stats[ref].upserted += r.upserted
                stats[ref].quarantined += r.quarantined
            write_status(stats[ref], {"state": "streaming", **(src.describe() if hasattr(src, "describe") else {})})
        idle_since: dict[str, float] = {}
        while not stop.requested:
            for ref, src in streams.items():
                if stop.requested:
                    break
                try:
                    report = src.read_batch(max_rows, max_seconds, idle_seconds if until_idle else None)
                except SourceLost as exc:
                    if on_event:
                        on_event(ref, f"{exc.message}; reconnecting")
                    src = streams[ref] = _reopen(spec, ref, src, stop, max_rows, stats[ref], on_event)
                    if src is None:
                        break
                    continue
                st = stats[ref]
                if report is None:
                    idle_since.setdefault(ref, time.monotonic())
                else:
                    idle_since.pop(ref, None)
                    st.batches += 1
                    st.changes += report.changes
                    st.seconds += report.seconds
                    for r in report.results:
                        st.upserted += r.upserted
                        st.deleted += r.deleted
                        st.quarantined += r.quarantined
                    st.last_commit_at = datetime.now(timezone.utc).isoformat()
                    if report.last_commit_time is not None:
                        st.last_source_commit = report.last_commit_time.isoformat()
                    if on_event:
                        for r in report.results:
                            for note in getattr(r, "notes", []):
                                on_event(ref, note)
                            for text, n in getattr(r, "warnings", {}).items():
                                on_event(ref, f"{text} ({n} value(s))")
                    if on_batch:
                        on_batch(ref, report)
                write_status(st, {"state": "streaming", **(src.describe() if hasattr(src, "describe") else {})})
            if None in streams.values():
                break
            if until_idle and len(idle_since) == len(streams):
                break
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        for src in streams.values():
            if src is not None:
                src.close()
    return stats


def _reopen(spec: PlatformSpec, ref: str, old: Any, stop: _Stop, max_rows: int,
            stats: SourceStats | None = None, on_event: Callable[[str, str], None] | None = None) -> Any:
    """Reopen a source whose connection broke, resuming from its committed position; retries with
    backoff (0.5 s doubling to 4 s) for $SKYFED_STREAM_RECONNECT_SECONDS (default 120), the status
    file saying `reconnecting` and why meanwhile. None if stopped meanwhile. SourceGone is not
    retried: reconnecting cannot help."""
    old.close()
    deadline = time.monotonic() + float(os.environ.get("SKYFED_STREAM_RECONNECT_SECONDS", "120"))
    wait, said = 0.5, ""
    while not stop.requested:
        try:
            src = open_source(spec, ref, old.mappings)
        except SourceGone:
            raise
        except SkyfedError as exc:
            src, error = None, exc
        if src is not None:
            try:
                src.start(batch_rows=max_rows, reopen=True)
                for note in getattr(src, "notes", []):
                    if on_event:
                        on_event(ref, note)
                if stats is not None:
                    write_status(stats, {"state": "streaming", "error": None})
                return src
            except SourceGone:
                src.close()
                raise
            except SkyfedError as exc:
                src.close()
                error = exc
        if stats is not None:
            write_status(stats, {"state": "reconnecting", "error": error.message})
        if on_event and error.message != said:
            on_event(ref, f"{error.message}; retrying")
            said = error.message
        if time.monotonic() > deadline:
            raise SkyfedError(f"{ref}: the source stayed unreachable: {error.message}", error.hint) from None
        time.sleep(wait)
        wait = min(wait * 2, 4.0)
    return None


def status(spec: PlatformSpec, selectors: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Per source: lag (seconds and LSN bytes, or undelivered messages), throughput and last commit."""
    out = []
    for ref, mappings in sources_of(spec, selectors).items():
        path = status_path(ref)
        saved: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        row: dict[str, Any] = {
            "source": ref,
            "kind": spec.source(ref).kind,
            "mappings": [m.name for m in mappings],
            "last_commit_at": saved.get("last_commit_at"),
            "changes": saved.get("changes", 0),
            "changes_per_second": saved.get("changes_per_second", 0.0),
            "lag_seconds": None,
            "lag_bytes": None,
            "undelivered_messages": None,
            "state": saved.get("state"),  # streaming | reconnecting (written by the running streamer)
            "error": saved.get("error"),
        }
        kind = row["kind"]
        if kind == "postgres":
            from skyfed.stream.postgres import slot_lag

            lag = slot_lag(spec, ref)
            row.update(lag)
            if lag.get("lag_bytes") == 0:
                row["lag_seconds"] = 0.0
            elif saved.get("last_source_commit"):
                last = datetime.fromisoformat(saved["last_source_commit"])
                row["lag_seconds"] = round((datetime.now(timezone.utc) - last).total_seconds(), 3)
        elif kind == "pubsub":
            from skyfed.stream.pubsub import undelivered

            row["undelivered_messages"] = undelivered(spec, ref)
        out.append(row)
    return out


def reset(spec: PlatformSpec, selectors: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Forget the stream state of the sources: PostgreSQL slot and publication; the status files."""
    out = []
    for ref in sources_of(spec, selectors):
        item: dict[str, Any] = {"source": ref}
        if spec.source(ref).kind == "postgres":
            from skyfed.stream.postgres import reset as pg_reset

            item.update(pg_reset(spec, ref))
        path = status_path(ref)
        path.unlink(missing_ok=True)
        out.append(item)
    return out
