"""What every stream source shares: the micro-batch report and the lost-connection signal."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from skyfed.errors import SkyfedError


class SourceLost(SkyfedError):
    """The connection to the source broke mid-stream. Nothing of the batch in hand was
    committed or acknowledged, so reopening the source and resuming from the committed
    position re-delivers it."""


class SourceGone(SkyfedError):
    """The source cannot be resumed at all (e.g. an invalidated replication slot): reconnecting
    does not help, the stream stops with what to do."""


@dataclass
class BatchReport:
    """One micro-batch of a source."""

    source: str
    changes: int
    results: list[Any]  # ApplyResult-like: mapping, upserted, deleted, quarantined
    ack_lsn: int | None
    seconds: float
    last_commit_time: datetime | None


def crash_point(name: str) -> None:
    """Test hook: SKYFED_STREAM_CRASH_AT=<name> kills the streamer (SIGKILL) at that point: "the
    process dies between commit and acknowledgement" cannot be produced from outside precisely."""
    if os.environ.get("SKYFED_STREAM_CRASH_AT") == name:
        os.kill(os.getpid(), 9)
