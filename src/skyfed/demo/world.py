"""The airline world generator: three regional sources in three dialects, plus the ground truth.

Vectorized from end to end (numpy and pyarrow; pandas only for time-zone rules, one call
per zone). Deterministic: a given `WorldConfig` gives the same bytes every time.

How it works
1. Base entities in canonical meaning: flights (route, schedule, aircraft, load, fuel,
   revenue, cost, delay), bookings and survey answers, per region.
2. Messiness (`messiness.py`) on disjoint sets of base records: NULLs, out-of-range and
   invalid values, malformed CSV lines, duplicates, late corrections.
3. Rendering to each region's dialect with its units and rounding: latam (PostgreSQL,
   Portuguese names, local naive times, litres, BRL), eu (BigQuery, UTC, kg, EUR, CSAT 1-5),
   na (GCS: CSV with UTC offsets, US gallons, USD; JSON lines; Parquet).
4. Ground truth: every source record is harmonized *from its rendered source values* with
   the exact arithmetic of the mapping macros (see `harmonize_reference.py` and the YAML),
   checked against the contracts (first failing check = quarantine rule), and de-duplicated
   by key with the newest cursor winning.

Definitions the ingestion must follow (also documented at the top of the example YAML):
- FX: amounts convert with the rate of the UTC calendar date of the departure (flights) or of
  the booking (bookings): `amount * usd_per_unit`, no rounding.
- Local times: interpreted in the IANA zone of the airport. The generator never produces a
  local time inside a DST gap or overlap, so the conversion is unambiguous.
- Checks run before de-duplication; de-duplication keeps, per key, the passing record with the
  greatest cursor (ties are exact duplicates, any one of them).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from skyfed.demo import arrowutil as au
from skyfed.demo import messiness as m
from skyfed.demo.contracts import CONTRACTS, QUARANTINE_SCHEMA, ContractDef
from skyfed.demo.reference import (
    AIRCRAFT,
    KG_PER_US_GALLON,
    KM_PER_MILE,
    REGIONS,
    Fx,
    Network,
    aircraft_table,
    airport_table,
    build_fx,
    build_network,
    day_number,
    unknown_airport_codes,
)
from skyfed.demo.timeutil import DAY, HOUR, MIN, NAT, SEC, day_of, localize, to_local

SOURCE_OF = {"latam": "latam.ops", "eu": "eu.ops", "na": "na.exports"}
SOURCE_KIND = {"latam": "postgres", "eu": "bigquery", "na": "gcs"}
TABLE_NAMES = {
    "latam": {"flights": "voos", "bookings": "reservas", "feedback": "pesquisas"},
    "eu": {"flights": "flights", "bookings": "bookings", "feedback": "feedback"},
    "na": {"flights": "flights", "bookings": "bookings", "feedback": "feedback"},
}
CONTRACT_OF = {"flights": "flight_leg", "bookings": "booking", "feedback": "customer_feedback"}
ID_PREFIX = {"latam": "LA-", "eu": "EU-", "na": "NA-"}
CARRIER = {"latam": "SL", "eu": "SE", "na": "SN"}
REGION_SHARE = {"latam": 0.36, "eu": 0.34, "na": 0.30}
NA_FLIGHT_COLUMNS = [
    "flight_id", "flight_number", "origin", "destination", "dep_time_local", "arr_time_local", "aircraft_type",
    "seats", "passengers", "distance_mi", "fuel_gal", "revenue_usd", "cost_usd", "delay_min", "status", "updated_at",
]
NA_NEW_COLUMN = "tail_number"  # appears in the na flight CSVs from `schema_change` on


@dataclass(frozen=True)
class WorldConfig:
    """Everything that determines the world: same config, same bytes."""

    flights: int = 20_000
    seed: int = 42
    start: date = date(2024, 1, 1)
    days: int = 182
    bookings_per_flight: float = 1.5
    feedback_per_flight: float = 0.4
    schema_change: date = date(2024, 4, 1)  # na CSVs gain `tail_number` from this export day
    rates: m.MessyRates = field(default_factory=m.MessyRates)

    def as_dict(self) -> dict[str, Any]:
        return {
            "flights": self.flights, "seed": self.seed, "start": self.start.isoformat(), "days": self.days,
            "bookings_per_flight": self.bookings_per_flight, "feedback_per_flight": self.feedback_per_flight,
            "schema_change": self.schema_change.isoformat(), "rates": self.rates.as_dict(),
        }


@dataclass
class RegionData:
    """What lands in one region: tables (postgres, bigquery) or objects (gcs)."""

    region: str
    kind: str
    source: str
    tables: dict[str, pa.Table] = field(default_factory=dict)
    objects: dict[str, bytes] = field(default_factory=dict)


@dataclass
class World:
    config: WorldConfig
    reference: dict[str, pa.Table]
    regions: dict[str, RegionData]
    ground_truth: dict[str, pa.Table]  # flight_leg, booking, customer_feedback, quarantine_expected
    stats: dict[str, Any]


# ----------------------------------------------------------------------------------- frames

Frame = dict[str, np.ndarray]


def _take(frame: Frame, idx: np.ndarray) -> Frame:
    return {k: v[idx] for k, v in frame.items()}


def _concat(a: Frame, b: Frame) -> Frame:
    return {k: np.concatenate([a[k], b[k]]) for k in a}


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, *stream])


def _round_scaled(x: np.ndarray, scale: int) -> np.ndarray:
    """Integers x * 10**scale rounded half-to-even (the source's stored value, scaled)."""
    return np.rint(x * 10.0 ** scale).astype(np.int64)


# ----------------------------------------------------------------------------------- base entities


def _base_flights(cfg: WorldConfig, net: Network, region: str, n: int, rng: np.random.Generator) -> Frame:
    r_i = REGIONS.index(region)
    routes = np.nonzero(net.route_region == r_i)[0]
    w = net.route_weight[routes]
    route = routes[rng.choice(len(routes), size=n, p=w / w.sum())]
    dep, arr, km = net.route_dep[route], net.route_arr[route], net.route_km[route]
    ac = net.route_aircraft[route, (rng.random(n) < 0.25).astype(np.int64)]
    cruise = np.array([a.cruise_kmh for a in AIRCRAFT])[ac]
    seats = np.array([a.seats for a in AIRCRAFT])[ac]
    burn = np.array([a.fuel_burn_kg_per_km for a in AIRCRAFT])[ac]
    wide = np.array([a.body == "wide" for a in AIRCRAFT])[ac]
    block = np.rint((km / cruise + 0.5) * 12.0).astype(np.int64) * 5 * MIN  # 5-minute grid

    # Schedule in the origin's local time; move flights out of DST gaps/overlaps (both ends).
    day0 = day_number(cfg.start)
    local = (day0 + rng.integers(0, cfg.days, n)) * DAY + rng.integers(60, 288, n) * 5 * MIN
    dep_tz, arr_tz = net.tz_index[dep], net.tz_index[arr]
    dep_utc = np.full(n, NAT, np.int64)
    arr_local = np.zeros(n, np.int64)
    todo = np.arange(n)
    for _ in range(12):
        if todo.size == 0:
            break
        u = localize(local[todo], dep_tz[todo], net.tz_names)
        ok = u != NAT
        a = np.where(ok, u, 0) + block[todo]
        al = to_local(a, arr_tz[todo], net.tz_names)
        ok &= localize(al, arr_tz[todo], net.tz_names) == a
        done = todo[ok]
        dep_utc[done], arr_local[done] = u[ok], al[ok]
        local[todo[~ok]] += 2 * HOUR
        todo = todo[~ok]
    if todo.size:  # pragma: no cover - would need a zone with back-to-back transitions
        raise RuntimeError("could not schedule flights outside DST transitions")
    arr_utc = dep_utc + block

    # Ids follow departure order, like a real operational system.
    order = np.argsort(dep_utc, kind="stable")
    route, dep, arr, km, ac, seats, burn, wide = (x[order] for x in (route, dep, arr, km, ac, seats, burn, wide))
    dep_utc, arr_utc, local, arr_local = dep_utc[order], arr_utc[order], local[order], arr_local[order]

    u = rng.random(n)
    status = np.where(u < 0.015, 1, np.where(u < 0.018, 2, 0))  # 0 arrived, 1 cancelled, 2 diverted
    cancelled = status == 1
    lf = rng.beta(8.0, 1.8, n)
    pax = np.where(cancelled, 0, np.floor(seats * lf)).astype(np.int64)
    lf_eff = pax / seats
    delay = np.where(rng.random(n) < 0.65, 0, np.minimum(1 + np.floor(rng.exponential(22.0, n)), 480)).astype(np.int64)
    delay = np.where(cancelled, -1, delay)
    fuel = (burn * km * (0.92 + 0.16 * lf_eff) + 400.0 + 200.0 * wide) * rng.normal(1.0, 0.03, n)
    fuel = np.where(cancelled, 0.0, fuel)
    fare = (45.0 + 0.11 * km) * net.route_fare_mult[route] * rng.normal(1.0, 0.08, n)
    revenue = np.where(cancelled, 0.0, pax * fare)
    cost = (fuel * 0.95 + seats * km * 0.06 + 3000.0 + 6000.0 * wide) * rng.normal(1.0, 0.04, n)
    cost = np.where(cancelled, 4000.0 * rng.normal(1.0, 0.1, n), cost)
    updated = arr_utc + rng.integers(600, 6 * 3600, n) * SEC
    bucket = np.clip((local % DAY) // (6 * HOUR), 0, 3)
    return {
        "base": np.arange(n, dtype=np.int64),
        "kind": np.zeros(n, np.int8),
        "route": route, "bucket": bucket, "dep": dep, "arr": arr, "km": km, "ac": ac,
        "tail": ac * 20 + rng.integers(0, 20, n),
        "seats": seats.astype(np.int64), "pax": pax, "pax_null": np.zeros(n, bool),
        "fuel": fuel, "fuel_null": np.zeros(n, bool), "revenue": revenue, "cost": cost,
        "delay": delay, "status": status.astype(np.int64),
        "dep_utc": dep_utc, "arr_utc": arr_utc, "dep_local": local, "arr_local": arr_local,
        "updated": updated, "fare": fare,
    }


def _base_bookings(fl: Frame, n: int, rng: np.random.Generator) -> Frame:
    flown = np.nonzero(fl["status"] != 1)[0]
    f = np.sort(flown[rng.integers(0, len(flown), n)])
    booked = fl["dep_utc"][f] - rng.integers(3600, 120 * 86400, n) * SEC
    cabin = rng.choice(3, size=n, p=[0.85, 0.06, 0.09])
    fare = fl["fare"][f] * np.array([1.0, 1.6, 3.5])[cabin] * np.clip(rng.normal(1.0, 0.15, n), 0.3, None)
    return {
        "base": np.arange(n, dtype=np.int64), "kind": np.zeros(n, np.int8), "flight": f,
        "booked": booked, "updated": booked.copy(), "cabin": cabin.astype(np.int64), "fare": fare,
        "status": (rng.random(n) < 0.04).astype(np.int64),  # 0 confirmed, 1 cancelled
        "first": rng.integers(0, 16, n), "last": rng.integers(0, len(LAST_NAMES), n),
        "num": rng.integers(1, 10_000, n), "doc": rng.integers(10_000_000, 99_999_999, n),
        "phone": rng.integers(0, 1000, n), "name_null": np.zeros(n, bool),
    }


def _base_feedback(fl: Frame, n: int, rng: np.random.Generator, csat: bool) -> Frame:
    flown = np.nonzero(fl["status"] != 1)[0]
    f = np.sort(flown[rng.integers(0, len(flown), n)])
    submitted = fl["arr_utc"][f] + rng.integers(3600, 7 * 86400, n) * SEC
    latent = rng.normal(7.9 - 0.03 * np.maximum(fl["delay"][f], 0), 1.9)
    score = np.clip(np.rint(latent), 0, 10) if not csat else np.clip(np.rint(1 + latent / 2.5), 1, 5)
    comment = np.where(rng.random(n) < 0.5, -1, rng.integers(0, 8, n))
    return {
        "base": np.arange(n, dtype=np.int64), "kind": np.zeros(n, np.int8), "flight": f,
        "submitted": submitted, "score": score.astype(np.int64), "score_null": np.zeros(n, bool),
        "comment": comment, "channel": rng.integers(0, 3, n),
    }


FIRST_NAMES = {
    "latam": ["Ana", "Bruno", "Camila", "Diego", "Fernanda", "Gabriel", "Isabela", "Joao", "Lucia", "Mateo",
              "Valentina", "Rafael", "Sofia", "Thiago", "Juliana", "Pedro"],
    "eu": ["Emma", "Lucas", "Sophie", "Louis", "Hannah", "Leon", "Chloe", "Marco", "Giulia", "Liam", "Noah",
           "Mia", "Elena", "Pablo", "Anna", "Jan"],
    "na": ["James", "Olivia", "Ethan", "Ava", "Michael", "Emily", "Daniel", "Harper", "Logan", "Chloe",
           "Jackson", "Abigail", "Mason", "Ella", "Lucas", "Grace"],
}
LAST_NAMES = ["Synthetico", "Ficticio", "Exemplar", "Testa", "Mockwell", "Placeholder", "Sampleton", "Dummett",
              "Fakenham", "Pseudonym", "Noname", "Anonimo", "Fixture", "Stubbins", "Madeup", "Imaginario"]
COMMENTS = {
    "latam": ["Voo tranquilo, tripulacao atenciosa.", "Atraso sem explicacao.", "Assento apertado.",
              "Muito bom, recomendo.", "Comida fria.", "Vuelo puntual y comodo.", "Embarque demorado.",
              "Excelente atendimento."],
    "eu": ["Smooth flight, friendly crew.", "Delayed without information.", "Seat was cramped.",
           "Great value.", "Food was cold.", "On time and comfortable.", "Boarding took ages.",
           "Excellent service."],
    "na": ["Smooth flight, friendly crew.", "Delayed without information.", "Seat was cramped.",
           "Great value.", "Food was cold.", "On time and comfortable.", "Boarding took ages.",
           "Excellent service."],
}
PHONE_PREFIX = {"latam": "+55 11 5555-0", "eu": "+44 7700 900", "na": "+1 202-555-0"}
DOC_PREFIX = {"latam": "SYN-CPF-", "eu": "SYN-P", "na": "SYN-DL"}


# ----------------------------------------------------------------------------------- messiness


def _mess_flights(fr: Frame, region: str, cfg: WorldConfig, rng: np.random.Generator, stats: dict) -> Frame:
    n = fr["base"].shape[0]
    picks = m.pick(rng, n, cfg.rates, m.APPLICABLE[(region, "flights")])
    kind = fr["kind"]
    sub: dict[str, int] = {}
    i = picks.get("null", np.empty(0, np.int64))
    fr["fuel_null"][i[0::2]] = True
    fr["pax_null"][i[1::2]] = True
    kind[i] = m.NULL
    sub.update(null_fuel=len(i[0::2]), null_passengers=len(i[1::2]))
    o = picks.get("out_of_range", np.empty(0, np.int64))
    neg, over, unk = o[0::3], o[1::3], o[2::3]
    fr["fuel"][neg] = -(np.abs(fr["fuel"][neg]) + 500.0)
    fr["pax"][over] = fr["seats"][over] + rng.integers(1, 30, len(over))
    fr["arr"][unk] = -1 - (np.arange(len(unk)) % len(unknown_airport_codes()))
    kind[o] = m.OUT_OF_RANGE
    sub.update(negative_fuel=len(neg), load_factor_over_1=len(over), unknown_airport=len(unk))
    i = picks.get("invalid_value", np.empty(0, np.int64))
    fr["status"][i] = 3
    kind[i] = m.INVALID_VALUE
    i = picks.get("malformed", np.empty(0, np.int64))
    kind[i[0::2]] = m.MALFORMED_LINE
    kind[i[1::2]] = m.MALFORMED_VALUE
    if len(i):
        sub.update(malformed_line=len(i[0::2]), malformed_value=len(i[1::2]))
    c = picks.get("late_correction", np.empty(0, np.int64))
    fix = _take(fr, c) if region != "latam" else None
    tgt = fix if fix is not None else {k: v[c] for k, v in fr.items()}
    flying = tgt["status"] != 1
    tgt["delay"] = np.where(flying, tgt["delay"] + rng.integers(5, 90, len(c)), tgt["delay"])
    tgt["pax"] = np.where(flying, np.maximum(tgt["pax"] - rng.integers(1, 5, len(c)), 0), tgt["pax"])
    tgt["updated"] = tgt["updated"] + rng.integers(86400, 20 * 86400, len(c)) * SEC
    tgt["kind"] = np.full(len(c), m.LATE_CORRECTION, np.int8)
    if fix is None:  # PostgreSQL: corrections are UPDATEs in place; only the newest version exists
        for k in ("delay", "pax", "updated", "kind"):
            fr[k][c] = tgt[k]
    d = picks.get("duplicate", np.empty(0, np.int64))
    dup = _take(fr, d)
    dup["kind"] = np.full(len(d), m.DUPLICATE, np.int8)
    if fix is not None:
        fr = _concat(fr, fix)
    fr = _concat(fr, dup)
    stats["subkinds"] = sub
    stats["injected"] = {k: int(len(v)) for k, v in picks.items()}
    return fr


def _mess_bookings(fr: Frame, region: str, cfg: WorldConfig, rng: np.random.Generator, stats: dict) -> Frame:
    n = fr["base"].shape[0]
    picks = m.pick(rng, n, cfg.rates, m.APPLICABLE[(region, "bookings")])
    kind = fr["kind"]
    i = picks.get("null", np.empty(0, np.int64))
    fr["name_null"][i] = True
    kind[i] = m.NULL
    i = picks.get("out_of_range", np.empty(0, np.int64))
    fr["fare"][i] = -(np.abs(fr["fare"][i]) + 1.0)
    kind[i] = m.OUT_OF_RANGE
    i = picks.get("invalid_value", np.empty(0, np.int64))
    fr["cabin"][i] = 3
    kind[i] = m.INVALID_VALUE
    c = picks.get("late_correction", np.empty(0, np.int64))
    fix = _take(fr, c)
    fix["status"] = 1 - fix["status"]
    fix["updated"] = fix["updated"] + rng.integers(3600, 30 * 86400, len(c)) * SEC
    fix["kind"] = np.full(len(c), m.LATE_CORRECTION, np.int8)
    d = picks.get("duplicate", np.empty(0, np.int64))
    dup = _take(fr, d)
    dup["kind"] = np.full(len(d), m.DUPLICATE, np.int8)
    stats["injected"] = {k: int(len(v)) for k, v in picks.items()}
    return _concat(_concat(fr, fix), dup)


def _mess_feedback(fr: Frame, region: str, cfg: WorldConfig, rng: np.random.Generator, stats: dict) -> Frame:
    n = fr["base"].shape[0]
    picks = m.pick(rng, n, cfg.rates, m.APPLICABLE[(region, "feedback")])
    kind = fr["kind"]
    i = picks.get("null", np.empty(0, np.int64))
    fr["score_null"][i] = True
    kind[i] = m.NULL
    i = picks.get("out_of_range", np.empty(0, np.int64))
    hi, lo = (6, 0) if region == "eu" else (11, -1)
    fr["score"][i] = np.where(np.arange(len(i)) % 2 == 0, hi, lo)
    kind[i] = m.OUT_OF_RANGE
    d = picks.get("duplicate", np.empty(0, np.int64))
    dup = _take(fr, d)
    dup["kind"] = np.full(len(d), m.DUPLICATE, np.int8)
    stats["injected"] = {k: int(len(v)) for k, v in picks.items()}
    return _concat(fr, dup)


# ----------------------------------------------------------------------------------- rendering helpers


class Ctx:
    """Shared lookups for rendering: network, FX, airport and aircraft codes."""

    def __init__(self, cfg: WorldConfig, net: Network, fx: Fx):
        self.cfg, self.net, self.fx = cfg, net, fx
        self.unknown = unknown_airport_codes()
        # airport code lookup: index >= 0 network airports, negative = unknown codes
        self.codes = list(net.codes) + list(reversed(self.unknown))  # -1 -> last element
        self.tz_lookup_names = net.tz_names
        self.ac_codes = [a.code for a in AIRCRAFT]

    def airport(self, idx: np.ndarray) -> pa.Array:
        return au.lookup(self.codes, np.where(idx < 0, len(self.codes) + idx, idx))

    def rate(self, currency: str, us: np.ndarray) -> np.ndarray:
        return self.fx.lookup(currency, day_of(us))


def _flight_number(region: str, fr: Frame, net: Network) -> pa.Array:
    routes = np.nonzero(net.route_region == REGIONS.index(region))[0]
    local_no = np.searchsorted(routes, fr["route"])
    return au.join(CARRIER[region], au.int_str(1000 + local_no * 4 + fr["bucket"]))


def _tail(region: str, tail: np.ndarray) -> pa.Array:
    letters = [chr(65 + (t // 26) % 26) + chr(65 + t % 26) for t in range(len(AIRCRAFT) * 20)]
    names = {"latam": [f"PR-S{x}" for x in letters], "eu": [f"EI-S{x}" for x in letters],
             "na": [f"N{100 + t}SF" for t in range(len(AIRCRAFT) * 20)]}[region]
    return au.lookup(names, tail)


def _status_words(region: str) -> list[str]:
    # index 0 arrived, 1 cancelled, 2 diverted, 3 an invalid value of the dialect
    return {"latam": ["realizado", "cancelado", "desviado", "em_analise"],
            "eu": ["ARRIVED", "CANCELLED", "DIVERTED", "BOARDING_HOLD"],
            "na": ["arrived", "cancelled", "diverted", "unknown"]}[region]


def _cabin_words(region: str) -> list[str]:
    # index 0 economy, 1 premium economy, 2 business, 3 invalid
    return {"latam": ["economica", "premium", "executiva", "primeira_luxo"],
            "eu": ["ECONOMY", "PREMIUM_ECONOMY", "BUSINESS", "GALACTIC"],
            "na": ["Y", "W", "J", "Z"]}[region]


def _pii(region: str, fr: Frame) -> dict[str, pa.Array]:
    first = au.lookup(FIRST_NAMES[region], fr["first"])
    last = au.lookup(LAST_NAMES, fr["last"])
    email = au.join(
        au.lookup([x.lower() for x in FIRST_NAMES[region]], fr["first"]), ".",
        au.lookup([x.lower() for x in LAST_NAMES], fr["last"]), ".", au.int_str(fr["num"]), "@example.invalid",
    )
    phone = au.join(PHONE_PREFIX[region], au.int_str(fr["phone"], 3))
    doc = au.join(DOC_PREFIX[region], au.int_str(fr["doc"]))
    return {"first": first, "last": last, "email": email, "phone": phone, "doc": doc}


# ----------------------------------------------------------------------------------- candidates

# A candidate is the harmonized version of every source record, with bookkeeping columns.


@dataclass
class Candidate:
    region: str
    table: str  # generator role: flights / bookings / feedback
    columns: dict[str, pa.Array]  # canonical columns, contract order
    kind: np.ndarray
    base: np.ndarray
    cursor: np.ndarray  # int64, greater wins
    source_key: pa.Array
    source_position: pa.Array
    malformed: np.ndarray  # bool: the record cannot be parsed at all (rule `malformed`)


def _nulls(n: int, typ: pa.DataType) -> pa.Array:
    return pa.nulls(n, typ)


def _flight_candidate(region: str, fr: Frame, ctx: Ctx, *, flight_id: pa.Array, dep_utc: pa.Array,
                      arr_utc: pa.Array, tail: pa.Array, seats: np.ndarray, pax: np.ndarray, pax_null: np.ndarray,
                      km: np.ndarray, fuel_kg: np.ndarray, fuel_null: np.ndarray, revenue: np.ndarray,
                      cost: np.ndarray, status_words: list[str]) -> dict[str, pa.Array]:
    n = fr["base"].shape[0]
    canon_status = ["arrived", "cancelled", "diverted", status_words[3].lower()]
    lf = pax.astype(np.float64) / seats.astype(np.float64)
    return {
        "flight_id": flight_id,
        "region": pa.array([region] * 1, pa.string()).take(pa.array(np.zeros(n, np.int64))),
        "flight_number": _flight_number(region, fr, ctx.net),
        "dep_airport": ctx.airport(fr["dep"]),
        "arr_airport": ctx.airport(fr["arr"]),
        "dep_time_utc": dep_utc,
        "arr_time_utc": arr_utc,
        "aircraft_type": au.lookup(ctx.ac_codes, fr["ac"]),
        "tail_number": tail,
        "seats": au.ints(seats, pa.int32()),
        "passengers": au.ints(pax, pa.int32(), pax_null),
        "load_factor": au.floats(lf, pax_null),
        "distance_km": au.floats(km),
        "fuel_kg": au.floats(fuel_kg, fuel_null),
        "revenue_usd": au.floats(revenue),
        "cost_usd": au.floats(cost),
        "delay_min": au.ints(np.maximum(fr["delay"], 0), pa.int32(), fr["delay"] < 0),
        "status": au.lookup(canon_status, fr["status"]),
        "updated_at_utc": au.timestamps(fr["updated"]),
    }


# ----------------------------------------------------------------------------------- regions


def _latam(cfg: WorldConfig, ctx: Ctx, fl: Frame, bk: Frame, fb: Frame) -> tuple[dict[str, pa.Table], list[Candidate]]:
    n = fl["base"].shape[0]
    ids = fl["base"] + 1
    fx_dep = ctx.rate("BRL", fl["dep_utc"])
    litres10 = _round_scaled(fl["fuel"] / 0.8, 1)
    rev100 = _round_scaled(fl["revenue"] / fx_dep, 2)
    cost100 = _round_scaled(fl["cost"] / fx_dep, 2)
    dist = np.rint(fl["km"]).astype(np.int64)
    status_words = _status_words("latam")
    tail = _tail("latam", fl["tail"])
    voos = pa.table({
        "id": au.ints(ids, pa.int64()),
        "numero_voo": _flight_number("latam", fl, ctx.net),
        "origem": ctx.airport(fl["dep"]),
        "destino": ctx.airport(fl["arr"]),
        "partida_local": au.timestamps(fl["dep_local"], None),
        "chegada_local": au.timestamps(fl["arr_local"], None),
        "aeronave": au.lookup(ctx.ac_codes, fl["ac"]),
        "matricula": tail,
        "assentos": au.ints(fl["seats"], pa.int32()),
        "passageiros": au.ints(fl["pax"], pa.int32(), fl["pax_null"]),
        "distancia_km": au.ints(dist, pa.int32()),
        "combustivel_litros": au.decimals(litres10, 12, 1, fl["fuel_null"]),
        "receita_brl": au.decimals(rev100, 14, 2),
        "custo_brl": au.decimals(cost100, 14, 2),
        "atraso_min": au.ints(np.maximum(fl["delay"], 0), pa.int32(), fl["delay"] < 0),
        "situacao": au.lookup(status_words, fl["status"]),
        "atualizado_em": au.timestamps(fl["updated"]),
    })
    # harmonized: dep/arr through the airport zone (unknown airport -> NULL), units, FX of the UTC dep date
    arr_known = fl["arr"] >= 0
    flight_cols = _flight_candidate(
        "latam", fl, ctx,
        flight_id=au.join("LA-", au.int_str(ids)),
        dep_utc=au.timestamps(fl["dep_utc"]),
        arr_utc=au.timestamps(np.where(arr_known, fl["arr_utc"], 0), null_mask=~arr_known),
        tail=tail, seats=fl["seats"], pax=fl["pax"], pax_null=fl["pax_null"],
        km=dist.astype(np.float64), fuel_kg=(litres10 / 10.0) * 0.8, fuel_null=fl["fuel_null"],
        revenue=(rev100 / 100.0) * fx_dep, cost=(cost100 / 100.0) * fx_dep, status_words=status_words,
    )
    cands = [Candidate("latam", "flights", flight_cols, fl["kind"], fl["base"], fl["updated"],
                       au.int_str(ids), _nulls(n, pa.string()), np.zeros(n, bool))]

    # reservas: surrogate PK id; business key localizador; duplicates/corrections are new rows
    nb = bk["base"].shape[0]
    loc = au.base36((bk["base"] * 1_103_515_245 + 12_345) % 36 ** 6, 6)
    fx_b = ctx.rate("BRL", bk["booked"])
    fare100 = _round_scaled(bk["fare"] / fx_b, 2)
    pii = _pii("latam", bk)
    name = au.with_nulls(au.join(pii["first"], " ", pii["last"]), bk["name_null"])
    flight_ids = ids[bk["flight"]]
    cabin_words = _cabin_words("latam")
    reservas = pa.table({
        "id": au.ints(np.arange(1, nb + 1), pa.int64()),
        "localizador": loc,
        "voo_id": au.ints(flight_ids, pa.int64()),
        "nome_passageiro": name,
        "email": pii["email"], "telefone": pii["phone"], "documento": pii["doc"],
        "classe": au.lookup(cabin_words, bk["cabin"]),
        "tarifa_brl": au.decimals(fare100, 12, 2),
        "situacao": au.lookup(["confirmada", "cancelada"], bk["status"]),
        "criado_em": au.timestamps(bk["booked"]),
        "atualizado_em": au.timestamps(bk["updated"]),
    })
    book_cols = _booking_cols("latam", bk, booking_id=au.join("LA-", loc), flight_id=au.join("LA-", au.int_str(flight_ids)),
                              name=name, pii=pii, fare_usd=(fare100 / 100.0) * fx_b,
                              cabin_canon=["economy", "premium_economy", "business", cabin_words[3]])
    cands.append(Candidate("latam", "bookings", book_cols, bk["kind"], bk["base"], bk["updated"], loc,
                           _nulls(nb, pa.string()), np.zeros(nb, bool)))

    nf = fb["base"].shape[0]
    fid = np.arange(1, nf + 1)
    comment = au.lookup(COMMENTS["latam"] + [None], np.where(fb["comment"] < 0, 8, fb["comment"]))
    pesquisas = pa.table({
        "id": au.ints(fid, pa.int64()),
        "voo_id": au.ints(ids[fb["flight"]], pa.int64()),
        "nota": au.ints(fb["score"], pa.int16(), fb["score_null"]),
        "comentario": comment,
        "respondido_em": au.timestamps(fb["submitted"]),
    })
    fb_cols = _feedback_cols("latam", fb, feedback_id=au.join("LA-", au.int_str(fid)),
                             flight_id=au.join("LA-", au.int_str(ids[fb["flight"]])), comment=comment, csat=False)
    cands.append(Candidate("latam", "feedback", fb_cols, fb["kind"], fb["base"], fid, au.int_str(fid),
                           _nulls(nf, pa.string()), np.zeros(nf, bool)))
    return {"voos": voos, "reservas": reservas, "pesquisas": pesquisas}, cands


def _booking_cols(region: str, bk: Frame, *, booking_id, flight_id, name, pii, fare_usd, cabin_canon) -> dict[str, pa.Array]:
    n = bk["base"].shape[0]
    return {
        "booking_id": booking_id,
        "region": pa.array([region], pa.string()).take(pa.array(np.zeros(n, np.int64))),
        "flight_id": flight_id,
        "booked_at_utc": au.timestamps(bk["booked"]),
        "passenger_name": name,
        "email": pii["email"], "phone": pii["phone"], "document_number": pii["doc"],
        "cabin": au.lookup(cabin_canon, bk["cabin"]),
        "fare_usd": au.floats(fare_usd),
        "status": au.lookup(["confirmed", "cancelled"], bk["status"]),
        "updated_at_utc": au.timestamps(bk["updated"]),
    }


def _feedback_cols(region: str, fb: Frame, *, feedback_id, flight_id, comment, csat: bool) -> dict[str, pa.Array]:
    n = fb["base"].shape[0]
    score = fb["score"].astype(np.float64)
    null = fb["score_null"]
    sat = (score - 1.0) * 25.0 if csat else score * 10.0
    return {
        "feedback_id": feedback_id,
        "region": pa.array([region], pa.string()).take(pa.array(np.zeros(n, np.int64))),
        "flight_id": flight_id,
        "submitted_at_utc": au.timestamps(fb["submitted"]),
        "survey_scale": pa.array(["csat_1_5" if csat else "nps_0_10"], pa.string()).take(pa.array(np.zeros(n, np.int64))),
        "raw_score": au.ints(fb["score"], pa.int32(), null),
        "recommend_0_10": pa.nulls(n, pa.int32()) if csat else au.ints(fb["score"], pa.int32(), null),
        "satisfaction_0_100": au.floats(sat, null),
        "comment": comment,
    }


def _eu(cfg: WorldConfig, ctx: Ctx, fl: Frame, bk: Frame, fb: Frame) -> tuple[dict[str, pa.Table], list[Candidate]]:
    n = fl["base"].shape[0]
    src_id = au.join("F", au.int_str(fl["base"] + 1, 8))
    fx_dep = ctx.rate("EUR", fl["dep_utc"])
    fuel10 = _round_scaled(fl["fuel"], 1)
    rev100 = _round_scaled(fl["revenue"] / fx_dep, 2)
    cost100 = _round_scaled(fl["cost"] / fx_dep, 2)
    km10 = _round_scaled(fl["km"], 1)
    status_words = _status_words("eu")
    tail = _tail("eu", fl["tail"])
    flights = pa.table({
        "flight_id": src_id,
        "flight_number": _flight_number("eu", fl, ctx.net),
        "origin": ctx.airport(fl["dep"]),
        "destination": ctx.airport(fl["arr"]),
        "scheduled_departure": au.timestamps(fl["dep_utc"]),
        "scheduled_arrival": au.timestamps(fl["arr_utc"]),
        "aircraft_type": au.lookup(ctx.ac_codes, fl["ac"]),
        "tail_number": tail,
        "seats": au.ints(fl["seats"], pa.int64()),
        "passengers": au.ints(fl["pax"], pa.int64(), fl["pax_null"]),
        "distance_km": au.floats(km10 / 10.0),
        "fuel_kg": au.floats(fuel10 / 10.0, fl["fuel_null"]),
        "revenue_eur": au.floats(rev100 / 100.0),
        "cost_eur": au.floats(cost100 / 100.0),
        "delay_minutes": au.ints(np.maximum(fl["delay"], 0), pa.int64(), fl["delay"] < 0),
        "status": au.lookup(status_words, fl["status"]),
        "updated_at": au.timestamps(fl["updated"]),
    })
    cols = _flight_candidate(
        "eu", fl, ctx, flight_id=au.join("EU-", src_id), dep_utc=au.timestamps(fl["dep_utc"]),
        arr_utc=au.timestamps(fl["arr_utc"]), tail=tail, seats=fl["seats"], pax=fl["pax"], pax_null=fl["pax_null"],
        km=km10 / 10.0, fuel_kg=fuel10 / 10.0, fuel_null=fl["fuel_null"], revenue=(rev100 / 100.0) * fx_dep,
        cost=(cost100 / 100.0) * fx_dep, status_words=status_words,
    )
    cands = [Candidate("eu", "flights", cols, fl["kind"], fl["base"], fl["updated"], src_id,
                       _nulls(n, pa.string()), np.zeros(n, bool))]

    nb = bk["base"].shape[0]
    ref = au.base36((bk["base"] * 2_654_435_761 + 97) % 36 ** 6, 6)
    fx_b = ctx.rate("EUR", bk["booked"])
    fare100 = _round_scaled(bk["fare"] / fx_b, 2)
    pii = _pii("eu", bk)
    name = au.with_nulls(au.join(pii["first"], " ", pii["last"]), bk["name_null"])
    fsrc = src_id.take(pa.array(bk["flight"]))
    cabin_words = _cabin_words("eu")
    status = ["CONFIRMED", "CANCELLED"]
    bookings = pa.table({
        "booking_ref": ref, "flight_id": fsrc, "passenger_name": name, "email": pii["email"],
        "phone": pii["phone"], "passport_number": pii["doc"], "cabin": au.lookup(cabin_words, bk["cabin"]),
        "fare_eur": au.floats(fare100 / 100.0), "status": au.lookup(status, bk["status"]),
        "booked_at": au.timestamps(bk["booked"]), "updated_at": au.timestamps(bk["updated"]),
    })
    bcols = _booking_cols("eu", bk, booking_id=au.join("EU-", ref), flight_id=au.join("EU-", fsrc), name=name, pii=pii,
                          fare_usd=(fare100 / 100.0) * fx_b, cabin_canon=[w.lower() for w in cabin_words])
    cands.append(Candidate("eu", "bookings", bcols, bk["kind"], bk["base"], bk["updated"], ref,
                           _nulls(nb, pa.string()), np.zeros(nb, bool)))

    nf = fb["base"].shape[0]
    fid = au.join("FB", au.int_str(fb["base"] + 1, 8))
    comment = au.lookup(COMMENTS["eu"] + [None], np.where(fb["comment"] < 0, 8, fb["comment"]))
    ffl = src_id.take(pa.array(fb["flight"]))
    feedback = pa.table({
        "feedback_id": fid, "flight_id": ffl, "csat": au.ints(fb["score"], pa.int64(), fb["score_null"]),
        "comment": comment, "submitted_at": au.timestamps(fb["submitted"]),
    })
    fcols = _feedback_cols("eu", fb, feedback_id=au.join("EU-", fid), flight_id=au.join("EU-", ffl), comment=comment, csat=True)
    cands.append(Candidate("eu", "feedback", fcols, fb["kind"], fb["base"], fb["submitted"], fid,
                           _nulls(nf, pa.string()), np.zeros(nf, bool)))
    return {"flights": flights, "bookings": bookings, "feedback": feedback}, cands


def _day_files(dt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stable order by export day, the distinct days and each row's 0-based rank within its day."""
    order = np.argsort(dt, kind="stable")
    sdt = dt[order]
    days, first = np.unique(sdt, return_index=True)
    start_of = first[np.searchsorted(days, sdt)]
    rank = np.arange(sdt.shape[0]) - start_of
    return order, days, rank


def _dt(day: int) -> str:
    return (date(1970, 1, 1) + timedelta(days=int(day))).isoformat()


def _offset_strings(offset_min: np.ndarray) -> pa.Array:
    uniq, inv = np.unique(offset_min, return_inverse=True)
    names = [("+" if o >= 0 else "-") + f"{abs(int(o)) // 60:02d}:{abs(int(o)) % 60:02d}" for o in uniq]
    return au.lookup(names, inv)


def _csv_float(x: np.ndarray) -> pa.Array:
    return pc.cast(pa.array(x, pa.float64()), pa.string())


def _na(cfg: WorldConfig, ctx: Ctx, fl: Frame, bk: Frame, fb: Frame) -> tuple[dict[str, bytes], list[Candidate], dict]:
    objects: dict[str, bytes] = {}
    files_info: dict[str, Any] = {}
    # ---- flights: daily CSV exports, dt = UTC date of updated_at (the export day)
    order, days, rank = _day_files(day_of(fl["updated"]))
    fl = _take(fl, order)
    n = fl["base"].shape[0]
    dt = day_of(fl["updated"])
    ids = fl["base"] + 1
    gal10 = _round_scaled(fl["fuel"] / KG_PER_US_GALLON, 1)
    rev100 = _round_scaled(fl["revenue"], 2)
    cost100 = _round_scaled(fl["cost"], 2)
    mi = np.rint(fl["km"] / KM_PER_MILE).astype(np.int64)
    status_words = _status_words("na")
    tail = _tail("na", fl["tail"])
    dep_s = au.join(au.strftime(fl["dep_local"]), _offset_strings((fl["dep_local"] - fl["dep_utc"]) // MIN))
    arr_s = au.join(au.strftime(fl["arr_local"]), _offset_strings((fl["arr_local"] - fl["arr_utc"]) // MIN))
    pax_s = au.int_str(fl["pax"])
    bad_value = fl["kind"] == m.MALFORMED_VALUE
    pax_s = pc.if_else(pa.array(bad_value), au.join(pax_s, "pax"), pax_s)  # "154pax": not a number
    pax_s = pc.if_else(pa.array(fl["pax_null"]), "", pax_s)
    fuel_s = pc.if_else(pa.array(fl["fuel_null"]), "", _csv_float(gal10 / 10.0))
    delay_s = pc.if_else(pa.array(fl["delay"] < 0), "", au.int_str(np.maximum(fl["delay"], 0)))
    fields = [
        au.int_str(ids), _flight_number("na", fl, ctx.net), ctx.airport(fl["dep"]), ctx.airport(fl["arr"]), dep_s, arr_s,
        au.lookup(ctx.ac_codes, fl["ac"]), au.int_str(fl["seats"]), pax_s, au.int_str(mi), fuel_s,
        _csv_float(rev100 / 100.0), _csv_float(cost100 / 100.0), delay_s, au.lookup(status_words, fl["status"]),
        au.join(au.strftime(fl["updated"]), "Z"),
    ]
    line = pc.binary_join_element_wise(*fields, ",")
    change = day_number(cfg.schema_change)
    new_shape = dt >= change
    line = pc.if_else(pa.array(new_shape), au.join(line, ",", tail), line)
    # malformed lines: alternately one field missing and one field too many
    mal = np.nonzero(fl["kind"] == m.MALFORMED_LINE)[0]
    short = np.zeros(n, bool)
    short[mal[0::2]] = True
    extra = np.zeros(n, bool)
    extra[mal[1::2]] = True
    without_last = pc.binary_join_element_wise(*fields[:-1], ",")
    without_last = pc.if_else(pa.array(new_shape), au.join(without_last, ",", fields[-1]), without_last)
    line = pc.if_else(pa.array(short), without_last, line)
    line = pc.if_else(pa.array(extra), au.join(line, ",EXTRA;FIELD"), line)
    line = au.join(line, "\n")
    offsets, data = au.concat_lines(line)
    first_row = np.searchsorted(dt, days)
    last_row = np.append(first_row[1:], n)
    header_old = (",".join(NA_FLIGHT_COLUMNS) + "\n").encode()
    header_new = (",".join(NA_FLIGHT_COLUMNS + [NA_NEW_COLUMN]) + "\n").encode()
    for d, a, b in zip(days, first_row, last_row):
        name = f"flights/dt={_dt(d)}/flights.csv"
        body = data[int(offsets[a]): int(offsets[b])].to_pybytes()
        objects[name] = (header_new if d >= change else header_old) + body
    obj_names = au.lookup([f"flights/dt={_dt(d)}/flights.csv" for d in days], np.searchsorted(days, dt))
    position = au.join(obj_names, "#L", au.int_str(rank + 2))  # line 1 is the header
    files_info["flights"] = {"files": int(len(days)), "schema_change": cfg.schema_change.isoformat(),
                             "new_column": NA_NEW_COLUMN,
                             "files_with_new_column": int((days >= change).sum())}

    malformed = np.zeros(n, bool)
    malformed[mal] = True
    cols = _flight_candidate(
        "na", fl, ctx, flight_id=au.join("NA-", au.int_str(ids)), dep_utc=au.timestamps(fl["dep_utc"]),
        arr_utc=au.timestamps(fl["arr_utc"]), tail=au.with_nulls(tail, ~new_shape), seats=fl["seats"], pax=fl["pax"],
        pax_null=fl["pax_null"] | bad_value, km=mi.astype(np.float64) * KM_PER_MILE,
        fuel_kg=(gal10 / 10.0) * KG_PER_US_GALLON, fuel_null=fl["fuel_null"], revenue=rev100 / 100.0,
        cost=cost100 / 100.0, status_words=status_words,
    )
    key = au.with_nulls(au.int_str(ids), malformed)
    cands = [Candidate("na", "flights", cols, fl["kind"], fl["base"], fl["updated"], key, position, malformed)]

    # ---- bookings: Parquet per export day (dt = UTC date of updated_at)
    order, days, rank = _day_files(day_of(bk["updated"]))
    bk = _take(bk, order)
    nb = bk["base"].shape[0]
    dt = day_of(bk["updated"])
    pii = _pii("na", bk)
    first = au.with_nulls(pii["first"], bk["name_null"])
    fare100 = _round_scaled(bk["fare"], 2)
    bid = bk["base"] + 1
    fids = ids_of = (bk["flight"] + 1)
    cabin_words = _cabin_words("na")
    table = pa.table({
        "booking_id": au.ints(bid, pa.int64()), "flight_id": au.ints(fids, pa.int64()), "first_name": first,
        "last_name": pii["last"], "email": pii["email"], "phone": pii["phone"], "document_number": pii["doc"],
        "cabin_code": au.lookup(cabin_words, bk["cabin"]), "fare_usd": au.floats(fare100 / 100.0),
        "status": au.lookup(["confirmed", "cancelled"], bk["status"]),
        "booked_at": au.timestamps(bk["booked"]), "updated_at": au.timestamps(bk["updated"]),
    })
    first_row = np.searchsorted(dt, days)
    last_row = np.append(first_row[1:], nb)
    for d, a, b in zip(days, first_row, last_row):
        buf = io.BytesIO()
        pq.write_table(table.slice(int(a), int(b - a)), buf, compression="zstd")
        objects[f"bookings/dt={_dt(d)}/bookings.parquet"] = buf.getvalue()
    obj_names = au.lookup([f"bookings/dt={_dt(d)}/bookings.parquet" for d in days], np.searchsorted(days, dt))
    position = au.join(obj_names, "#row", au.int_str(rank))
    files_info["bookings"] = {"files": int(len(days))}
    name = au.join(first, " ", pii["last"])
    bcols = _booking_cols("na", bk, booking_id=au.join("NA-", au.int_str(bid)), flight_id=au.join("NA-", au.int_str(ids_of)),
                          name=name, pii=pii, fare_usd=fare100 / 100.0,
                          cabin_canon=["economy", "premium_economy", "business", "Z"])
    cands.append(Candidate("na", "bookings", bcols, bk["kind"], bk["base"], bk["updated"], au.int_str(bid), position,
                           np.zeros(nb, bool)))

    # ---- feedback: JSON lines per day (dt = UTC date of submitted_at)
    order, days, rank = _day_files(day_of(fb["submitted"]))
    fb = _take(fb, order)
    nf = fb["base"].shape[0]
    dt = day_of(fb["submitted"])
    fid = fb["base"] + 1
    comment = au.lookup(COMMENTS["na"] + [None], np.where(fb["comment"] < 0, 8, fb["comment"]))
    comment_json = pc.fill_null(au.join('"', comment, '"'), "null")
    score_json = pc.if_else(pa.array(fb["score_null"]), "null", au.int_str(fb["score"]))
    line = au.join('{"feedback_id": ', au.int_str(fid), ', "flight_id": ', au.int_str(fb["flight"] + 1), ', "nps": ',
                   score_json, ', "comment": ', comment_json, ', "channel": "',
                   au.lookup(["app", "email", "web"], fb["channel"]), '", "submitted_at": "',
                   au.strftime(fb["submitted"]), 'Z"}\n')
    offsets, data = au.concat_lines(line)
    first_row = np.searchsorted(dt, days)
    last_row = np.append(first_row[1:], nf)
    for d, a, b in zip(days, first_row, last_row):
        objects[f"feedback/dt={_dt(d)}/feedback.jsonl"] = data[int(offsets[a]): int(offsets[b])].to_pybytes()
    obj_names = au.lookup([f"feedback/dt={_dt(d)}/feedback.jsonl" for d in days], np.searchsorted(days, dt))
    position = au.join(obj_names, "#L", au.int_str(rank + 1))
    files_info["feedback"] = {"files": int(len(days))}
    fcols = _feedback_cols("na", fb, feedback_id=au.join("NA-", au.int_str(fid)),
                           flight_id=au.join("NA-", au.int_str(fb["flight"] + 1)), comment=comment, csat=False)
    cands.append(Candidate("na", "feedback", fcols, fb["kind"], fb["base"], fb["submitted"], au.int_str(fid), position,
                           np.zeros(nf, bool)))
    return dict(sorted(objects.items())), cands, files_info


# ----------------------------------------------------------------------------------- checks and truth


def first_failure(contract: ContractDef, cols: dict[str, pa.Array], refs: dict[str, pa.Array]) -> tuple[np.ndarray, np.ndarray]:
    """Per row: index of the first failing (column, rule) pair, or -1; plus the list of (column, rule)."""
    n = len(next(iter(cols.values())))
    first = np.full(n, -1, np.int64)
    rules: list[tuple[str, str]] = []

    def note(mask: pa.Array | np.ndarray, column: str, rule: str) -> None:
        mk = mask if isinstance(mask, np.ndarray) else pc.fill_null(mask, False).to_numpy(zero_copy_only=False)
        rules.append((column, rule))
        first[(first < 0) & mk] = len(rules) - 1

    for c in contract.columns:
        arr = cols[c.name]
        if not c.nullable:
            note(arr.is_null().to_numpy(zero_copy_only=False), c.name, "not_null")
        ch = c.checks
        if "min" in ch:
            note(pc.less(arr, pa.scalar(ch["min"]).cast(arr.type)), c.name, "min")
        if "max" in ch:
            note(pc.greater(arr, pa.scalar(ch["max"]).cast(arr.type)), c.name, "max")
        if "allowed" in ch:
            ok = pc.is_in(arr, value_set=pa.array(ch["allowed"], arr.type))
            note(pc.and_(pc.invert(ok), arr.is_valid()), c.name, "allowed")
        if "references" in ch:
            ok = pc.is_in(arr, value_set=refs[ch["references"]])
            note(pc.and_(pc.invert(ok), arr.is_valid()), c.name, "references")
    return first, np.array(rules, dtype=object).reshape(-1, 2)


def _truth(contract: ContractDef, cands: list[Candidate], refs: dict[str, pa.Array]) -> tuple[pa.Table, pa.Table, dict]:
    tables, quarantine, info = [], [], {}
    for cand in cands:
        n = len(cand.kind)
        first, rules = first_failure(contract, cand.columns, refs)
        bad = cand.malformed | (first >= 0)
        ok = np.nonzero(~bad)[0]
        # de-duplicate the passing rows: per base record, greatest cursor wins, ties -> first row
        o = np.lexsort((np.arange(ok.shape[0]), -cand.cursor[ok], cand.base[ok]))
        ok_sorted = ok[o]
        keep_mask = np.ones(ok_sorted.shape[0], bool)
        keep_mask[1:] = cand.base[ok_sorted][1:] != cand.base[ok_sorted][:-1]
        keep = np.sort(ok_sorted[keep_mask])
        keep = keep[np.argsort(cand.base[keep], kind="stable")]
        t = pa.table({c.name: cand.columns[c.name] for c in contract.columns}).take(pa.array(keep))
        tables.append(t.cast(contract.schema()))
        qi = np.nonzero(bad)[0]
        rule_i = first[qi]
        rule = np.where(cand.malformed[qi], "malformed", np.where(rule_i >= 0, rules[np.maximum(rule_i, 0), 1] if len(rules) else "", ""))
        column = np.where(cand.malformed[qi] | (rule_i < 0), None, rules[np.maximum(rule_i, 0), 0] if len(rules) else None)
        key_name = contract.key[0]
        canon_key = au.with_nulls(cand.columns[key_name].take(pa.array(qi)), cand.malformed[qi])
        quarantine.append(pa.table({
            "region": pa.array([cand.region] * len(qi), pa.string()),
            "source": pa.array([SOURCE_OF[cand.region]] * len(qi), pa.string()),
            "source_table": pa.array([TABLE_NAMES[cand.region][cand.table]] * len(qi), pa.string()),
            "source_key": cand.source_key.take(pa.array(qi)),
            "source_position": cand.source_position.take(pa.array(qi)),
            "contract": pa.array([contract.name] * len(qi), pa.string()),
            "canonical_key": canon_key,
            "rule": pa.array(rule.tolist(), pa.string()),
            "column": pa.array(column.tolist(), pa.string()),
            "kind": au.lookup([m.KIND_NAMES[k] for k in sorted(m.KIND_NAMES)], cand.kind[qi].astype(np.int64)),
        }, schema=QUARANTINE_SCHEMA))
        info[(cand.region, cand.table)] = {
            "source_rows": int(n),
            "quarantined": int(len(qi)),
            "duplicates_removed": int(ok.shape[0] - keep.shape[0]),
            "ground_truth_rows": int(keep.shape[0]),
            "quarantined_by_rule": {str(r): int(c) for r, c in zip(*np.unique(rule, return_counts=True))} if len(qi) else {},
        }
    return pa.concat_tables(tables), pa.concat_tables(quarantine), info


# ----------------------------------------------------------------------------------- entry point


def generate(cfg: WorldConfig | None = None) -> World:
    """Build the whole world in memory (sources of the three regions, reference data, ground truth)."""
    cfg = cfg or WorldConfig()
    if cfg.flights < 30:
        raise ValueError("the world needs at least 30 flights")
    net = build_network(_rng(cfg.seed, 1))
    fx = build_fx(_rng(cfg.seed, 2), cfg.start - timedelta(days=130), cfg.start + timedelta(days=cfg.days + 40))
    ctx = Ctx(cfg, net, fx)
    counts = {"latam": int(round(cfg.flights * REGION_SHARE["latam"])), "eu": int(round(cfg.flights * REGION_SHARE["eu"]))}
    counts["na"] = cfg.flights - counts["latam"] - counts["eu"]

    regions: dict[str, RegionData] = {}
    cands: dict[str, list[Candidate]] = {"flights": [], "bookings": [], "feedback": []}
    stats: dict[str, Any] = {"tables": {}}
    for r_i, region in enumerate(REGIONS):
        rng = _rng(cfg.seed, 10 + r_i)
        fl = _base_flights(cfg, net, region, counts[region], rng)
        bk = _base_bookings(fl, int(round(cfg.bookings_per_flight * counts[region])), rng)
        fb = _base_feedback(fl, int(round(cfg.feedback_per_flight * counts[region])), rng, csat=(region == "eu"))
        base_n = {"flights": fl["base"].shape[0], "bookings": bk["base"].shape[0], "feedback": fb["base"].shape[0]}
        st = {t: {} for t in ("flights", "bookings", "feedback")}
        mrng = _rng(cfg.seed, 20 + r_i)
        fl = _mess_flights(fl, region, cfg, mrng, st["flights"])
        bk = _mess_bookings(bk, region, cfg, mrng, st["bookings"])
        fb = _mess_feedback(fb, region, cfg, mrng, st["feedback"])
        if region == "latam":
            tables, rc = _latam(cfg, ctx, fl, bk, fb)
            regions[region] = RegionData(region, "postgres", SOURCE_OF[region], tables=tables)
            extra: dict = {}
        elif region == "eu":
            tables, rc = _eu(cfg, ctx, fl, bk, fb)
            regions[region] = RegionData(region, "bigquery", SOURCE_OF[region], tables=tables)
            extra = {}
        else:
            objects, rc, extra = _na(cfg, ctx, fl, bk, fb)
            regions[region] = RegionData(region, "gcs", SOURCE_OF[region], objects=objects)
        for c in rc:
            cands[c.table].append(c)
        for t in ("flights", "bookings", "feedback"):
            inj = st[t]["injected"]
            entry = {
                "region": region, "source": SOURCE_OF[region], "source_table": TABLE_NAMES[region][t],
                "contract": CONTRACT_OF[t], "base_records": int(base_n[t]),
                "messy": {k: {"count": v, "rate": (v / base_n[t]) if base_n[t] else 0.0} for k, v in inj.items()},
            }
            if "subkinds" in st[t]:
                entry["messy_detail"] = st[t]["subkinds"]
            if t in extra:
                entry["files"] = extra[t]
            stats["tables"][f"{region}.{TABLE_NAMES[region][t]}"] = entry

    airports = airport_table()
    reference = {"airport": airports.cast(CONTRACTS["airport"].schema()),
                 "aircraft_type": aircraft_table().cast(CONTRACTS["aircraft_type"].schema()),
                 "fx_rate": fx.table().cast(CONTRACTS["fx_rate"].schema())}
    refs = {"airport.iata": airports.column("iata").combine_chunks(),
            "aircraft_type.aircraft_type": reference["aircraft_type"].column("aircraft_type").combine_chunks()}
    truth: dict[str, pa.Table] = {}
    qs = []
    for t, contract in CONTRACT_OF.items():
        gt, q, info = _truth(CONTRACTS[contract], cands[t], refs)
        truth[contract] = gt
        qs.append(q)
        for (region, role), v in info.items():
            stats["tables"][f"{region}.{TABLE_NAMES[region][role]}"].update(v)
    truth["quarantine_expected"] = pa.concat_tables(qs)
    stats["ground_truth_rows"] = {k: v.num_rows for k, v in truth.items()}
    return World(cfg, reference, regions, truth, stats)
