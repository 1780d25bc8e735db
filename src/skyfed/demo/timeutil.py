"""Vectorized local-time <-> UTC conversion through IANA zones (one pandas call per zone).

Times are int64 microseconds since the epoch; NAT marks "no such instant".
"""

from __future__ import annotations

import numpy as np
import pandas as pd

NAT = np.iinfo(np.int64).min
SEC = 1_000_000
MIN = 60 * SEC
HOUR = 60 * MIN
DAY = 24 * HOUR


def localize(local_us: np.ndarray, tz_idx: np.ndarray, tz_names: list[str]) -> np.ndarray:
    """Naive local times -> UTC; NAT where the local time is ambiguous (DST overlap) or missing (gap)."""
    out = np.full(local_us.shape[0], NAT, dtype=np.int64)
    for k in np.unique(tz_idx):
        m = tz_idx == k
        idx = pd.DatetimeIndex(local_us[m].view("datetime64[us]"))
        loc = idx.tz_localize(tz_names[int(k)], ambiguous="NaT", nonexistent="NaT")
        out[m] = loc.tz_convert("UTC").tz_localize(None).as_unit("us").asi8
    return out


def to_local(utc_us: np.ndarray, tz_idx: np.ndarray, tz_names: list[str]) -> np.ndarray:
    """UTC instants -> naive local wall-clock times of each row's zone."""
    out = np.empty(utc_us.shape[0], dtype=np.int64)
    for k in np.unique(tz_idx):
        m = tz_idx == k
        idx = pd.DatetimeIndex(utc_us[m].view("datetime64[us]")).tz_localize("UTC")
        out[m] = idx.tz_convert(tz_names[int(k)]).tz_localize(None).as_unit("us").asi8
    return out


def day_of(us: np.ndarray) -> np.ndarray:
    """UTC calendar day (days since 1970-01-01) of each instant."""
    return np.floor_divide(us, DAY)
