"""A model's configuration: the `/* config ... */` YAML block at the top of its SQL file.

    /* config
    materialization: incremental      # view | table | incremental | materialized_view
    placement: regional               # regional (built per region, only results leave) | global
    schedule: "0 * * * *"             # cron (croniter)
    tags: [finance]
    freshness: 6h                     # materialized_view: rebuild when older
    owner: finance-data@airline.example
    unique_key: [region, route, month]
    time_column: month                # output column holding the period (incremental by time range)
    period: month                     # hour | day | month | year
    source_time_column: dep_time_utc  # input column the period is derived from (filter pushed into regions)
    on_region_failure: stale          # stale | partial | fail
    role: analyst                     # governance role the build reads as (default: see pipelines.governed)
    */

Kept beside the SQL (not in the platform spec) so a model is one reviewable file.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from skyfed.errors import SkyfedError

# the block ends at a line holding only `*/` (so the SQL file stays valid SQL for other tools, write
# cron steps as lists, e.g. "0 0,6,12,18 * * *", not "*/6", which would end a SQL comment early)
CONFIG_BLOCK = re.compile(r"/\*\s*config\b(.*?)^\s*\*/\s*$", re.DOTALL | re.MULTILINE)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str | float) -> float:
    """Seconds in `30m`, `6h`, `1d` (a bare number is seconds)."""
    if isinstance(text, (int, float)):
        return float(text)
    m = _DURATION.match(str(text))
    if not m:
        raise ValueError(f"{text!r} is not a duration like 30m, 6h or 1d")
    return float(m.group(1)) * _UNITS[m.group(2)]


class ModelConfig(BaseModel):
    """What a model file's config block may say (unknown keys are refused)."""

    model_config = ConfigDict(extra="forbid")

    materialization: Literal["view", "table", "incremental", "materialized_view"] = "table"
    placement: Literal["regional", "global"] = "global"
    schedule: str | None = None
    tags: list[str] = Field(default_factory=list)
    freshness: str | None = None
    owner: str | None = None
    description: str | None = None
    unique_key: list[str] = Field(default_factory=list)
    time_column: str | None = None
    period: Literal["hour", "day", "month", "year"] | None = None
    source_time_column: str | None = None
    updated_column: str | None = None
    lookback: int = Field(0, ge=0)
    on_region_failure: Literal["stale", "partial", "fail"] = "stale"
    retries: int = Field(2, ge=0, le=10)
    role: str | None = None  # the governance role the build's federated SQL runs as (masks, row filters, residency)

    @field_validator("schedule")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from croniter import croniter

        if not croniter.is_valid(v):
            raise ValueError(f"{v!r} is not a cron expression (five fields, e.g. '0 * * * *')")
        return v

    @field_validator("freshness")
    @classmethod
    def _freshness(cls, v: str | None) -> str | None:
        if v is not None:
            parse_duration(v)
        return v

    @model_validator(mode="after")
    def _incremental(self) -> ModelConfig:
        if self.materialization == "incremental":
            by_time = self.time_column is not None
            if not self.unique_key:
                raise ValueError("an incremental model needs unique_key")
            if by_time and not (self.period and self.source_time_column):
                raise ValueError("incremental by time range needs time_column, period and source_time_column")
            if not by_time and not self.updated_column:
                raise ValueError("an incremental model needs time_column (+ period, source_time_column) or updated_column")
        if self.materialization == "materialized_view" and not self.freshness:
            raise ValueError("a materialized_view needs a freshness target (e.g. freshness: 1h)")
        return self

    @property
    def freshness_seconds(self) -> float | None:
        return parse_duration(self.freshness) if self.freshness else None

    @property
    def materialized(self) -> bool:
        return self.materialization != "view"


def split_config(text: str, origin: str, defaults: dict[str, Any] | None = None) -> tuple[ModelConfig, str]:
    """The config block (merged over project defaults) and the SQL without it."""
    m = CONFIG_BLOCK.search(text)
    raw: dict[str, Any] = dict(defaults or {})
    sql = text
    if m:
        try:
            block = yaml.safe_load(m.group(1)) or {}
        except yaml.YAMLError as exc:
            raise SkyfedError(f"{origin}: the config block is not valid YAML: {str(exc).splitlines()[0]}",
                              "write `key: value` lines between `/* config` and `*/`") from None  # fmt: skip
        if not isinstance(block, dict):
            raise SkyfedError(f"{origin}: the config block must be a mapping of key: value")
        raw.update(block)
        sql = text[: m.start()] + text[m.end() :]
    try:
        cfg = ModelConfig(**raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        raise SkyfedError(f"{origin}: {where}: {first['msg']}",
                          "see docs/pipelines.md for the config keys") from None  # fmt: skip
    sql = sql.strip().rstrip(";").strip()
    if not sql:
        raise SkyfedError(f"{origin}: the model has no SQL", "write one SELECT after the config block")
    return cfg, sql
