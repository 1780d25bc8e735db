"""Period arithmetic for incremental models (UTC): floor to a period start, step by periods."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from skyfed.errors import SkyfedError


def to_utc(value: Any) -> datetime:
    """A date, datetime or ISO string as an aware UTC datetime."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise SkyfedError(f"{value!r} is not a date or timestamp", "use YYYY-MM-DD or an ISO timestamp") from None
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    raise SkyfedError(f"{value!r} is not a date or timestamp")


def floor(value: Any, period: str) -> datetime:
    v = to_utc(value)
    if period == "hour":
        return v.replace(minute=0, second=0, microsecond=0)
    if period == "day":
        return v.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "month":
        return v.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    if period == "year":
        return v.replace(month=1, day=1, hour=0, minute=0, second=0, microsecond=0)
    raise SkyfedError(f"unknown period {period!r}", "use hour, day, month or year")


def add(value: datetime, period: str, n: int) -> datetime:
    if period == "hour":
        return value + timedelta(hours=n)
    if period == "day":
        return value + timedelta(days=n)
    if period == "month":
        months = value.year * 12 + value.month - 1 + n
        return value.replace(year=months // 12, month=months % 12 + 1)
    if period == "year":
        return value.replace(year=value.year + n)
    raise SkyfedError(f"unknown period {period!r}", "use hour, day, month or year")


def ceil(value: Any, period: str) -> datetime:
    f = floor(value, period)
    return f if f == to_utc(value) else add(f, period, 1)


def sql_literal(value: datetime) -> str:
    """A TIMESTAMPTZ literal the planner can push to every region (BigQuery included)."""
    return f"CAST('{value.strftime('%Y-%m-%d %H:%M:%S')}+00' AS TIMESTAMPTZ)"
