"""The three airline metrics computed independently from the generator's ground truth (polars, not skyfed)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import polars as pl

ROUTE = ["region", "dep_airport", "arr_airport", "month"]


def _legs(truth: Path) -> pl.DataFrame:
    legs = pl.read_parquet(truth / "flight_leg.parquet")
    return legs.with_columns(pl.col("dep_time_utc").dt.convert_time_zone("UTC").dt.truncate("1mo").dt.date().alias("month"))


def route_profitability(truth: Path) -> pl.DataFrame:
    return (_legs(truth).group_by(ROUTE).agg(
        pl.len().alias("flights"), pl.col("revenue_usd").sum(), pl.col("cost_usd").sum())
        .with_columns((pl.col("revenue_usd") - pl.col("cost_usd")).alias("margin_usd")).sort(ROUTE))  # fmt: skip


def fuel_efficiency(truth: Path) -> pl.DataFrame:
    keys = ["region", "aircraft_type", "dep_airport", "arr_airport", "month"]
    legs = _legs(truth).filter(pl.col("status") != "cancelled")
    return (legs.group_by(keys).agg(
        pl.col("fuel_kg").sum(),
        (pl.col("passengers").cast(pl.Float64) * pl.col("distance_km")).sum().alias("rpk"),
        (pl.col("seats").cast(pl.Float64) * pl.col("distance_km")).sum().alias("ask"))
        .with_columns((100 * pl.col("fuel_kg") / pl.col("rpk")).alias("fuel_kg_per_100_rpk"),
                      (pl.col("fuel_kg") / pl.col("ask")).alias("fuel_kg_per_ask")).sort(keys))  # fmt: skip


def customer_satisfaction(truth: Path) -> pl.DataFrame:
    fb = pl.read_parquet(truth / "customer_feedback.parquet")
    legs = _legs(truth).select("flight_id", "region", "dep_airport", "arr_airport", "month")
    j = fb.join(legs, on=["flight_id", "region"], how="inner")
    rec = pl.col("recommend_0_10")
    return (j.group_by(ROUTE).agg(
        pl.len().alias("responses"),
        pl.col("satisfaction_0_100").mean(),
        rec.is_not_null().sum().alias("nps_responses"),
        (rec >= 9).cast(pl.Int64).sum().alias("promoters"), (rec <= 6).cast(pl.Int64).sum().alias("detractors"),
        pl.col("satisfaction_0_100").filter(pl.col("survey_scale") == "csat_1_5").mean().alias("csat_0_100"))
        .with_columns(pl.when(pl.col("nps_responses") > 0)
                      .then(100.0 * (pl.col("promoters") - pl.col("detractors")) / pl.col("nps_responses")).alias("nps"))
        .sort(ROUTE))  # fmt: skip


def assert_frames_match(got: Any, want: pl.DataFrame, keys: list[str], columns: list[str]) -> None:
    """Same keys, and every column equal (floats to 1e-9 relative: sums are re-associated)."""
    g = pl.from_arrow(got) if not isinstance(got, pl.DataFrame) else got
    g = g.sort(keys)
    assert g.height == want.height, f"{g.height} rows vs {want.height} in the ground truth"
    assert g.select(keys).rows() == want.select(keys).rows(), "the model's groups differ from the ground truth's"
    for c in columns:
        for a, b in zip(g[c].to_list(), want[c].to_list()):
            if a is None or b is None:
                assert a is None and b is None, f"{c}: {a} vs {b}"
            else:
                assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9), f"{c}: {a} vs {b}"
