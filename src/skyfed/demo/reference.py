"""Reference data of the airline world: airports, aircraft types, daily FX rates, routes.

Airports come from `airportsdata` (coordinates and IANA time zones); the airline's
network is a fixed list of real airports per region. FX rates are a deterministic
random walk from the world's seed, so a given seed always gives the same rates.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import pyarrow as pa

REGIONS = ("latam", "eu", "na")
CURRENCY = {"latam": "BRL", "eu": "EUR", "na": "USD"}

# The network: real airports served from each region (first ones are hubs).
NETWORK: dict[str, list[str]] = {
    "latam": ["GRU", "GIG", "BSB", "SCL", "EZE", "BOG", "LIM", "CNF", "POA", "SSA", "REC", "FOR", "CWB", "AEP",
              "MDE", "UIO", "ASU", "MVD"],
    "eu": ["LHR", "CDG", "FRA", "MAD", "AMS", "FCO", "BCN", "MUC", "LIS", "DUB", "ZRH", "VIE", "CPH", "ATH", "OPO"],
    "na": ["JFK", "LAX", "ORD", "ATL", "DFW", "YYZ", "SFO", "SEA", "MIA", "BOS", "DEN", "YVR", "MEX", "IAH"],
}
HUBS = {"latam": 7, "eu": 6, "na": 6}  # the first k airports of each list are hubs

# Cross-region routes, operated by the region named (both directions are flown).
CROSS_ROUTES: dict[str, list[tuple[str, str]]] = {
    "latam": [("GRU", "MAD"), ("GRU", "LIS"), ("EZE", "MAD"), ("BOG", "MAD"), ("GRU", "JFK"), ("SCL", "MIA"),
              ("LIM", "MIA"), ("GIG", "LIS")],
    "eu": [("LHR", "JFK"), ("CDG", "JFK"), ("FRA", "ORD"), ("MAD", "GRU"), ("LIS", "GRU"), ("AMS", "YYZ")],
    "na": [("JFK", "LHR"), ("BOS", "DUB"), ("MIA", "BOG"), ("ATL", "CDG"), ("MIA", "GRU"), ("YYZ", "LHR")],
}

# Codes that are not airports: used to inject "unknown airport" errors.
UNKNOWN_AIRPORT_CANDIDATES = ["XQZ", "QQX", "ZZQ", "XXJ", "QZX", "JQX"]

FUEL_DENSITY_KG_PER_L = 0.8
LITRES_PER_US_GALLON = 3.785411784
KG_PER_US_GALLON = 3.0283294272  # = 3.785411784 * 0.8, exactly; one multiplication
KM_PER_MILE = 1.609344


@dataclass(frozen=True)
class AircraftType:
    code: str  # ICAO type designator
    name: str
    manufacturer: str
    body: str
    seats: int
    fuel_burn_kg_per_km: float
    cruise_kmh: float
    range_km: float


AIRCRAFT: list[AircraftType] = [
    AircraftType("E295", "Embraer E195-E2", "Embraer", "narrow", 132, 2.35, 830.0, 4800.0),
    AircraftType("A20N", "Airbus A320neo", "Airbus", "narrow", 174, 2.60, 833.0, 6300.0),
    AircraftType("B738", "Boeing 737-800", "Boeing", "narrow", 176, 3.00, 842.0, 5400.0),
    AircraftType("A21N", "Airbus A321neo", "Airbus", "narrow", 210, 3.05, 833.0, 7400.0),
    AircraftType("B789", "Boeing 787-9", "Boeing", "wide", 290, 6.70, 903.0, 14000.0),
    AircraftType("A359", "Airbus A350-900", "Airbus", "wide", 320, 7.20, 903.0, 15000.0),
]
AIRCRAFT_INDEX = {a.code: i for i, a in enumerate(AIRCRAFT)}


def aircraft_table() -> pa.Table:
    """The `aircraft_type` reference table."""
    return pa.table(
        {
            "aircraft_type": pa.array([a.code for a in AIRCRAFT], pa.string()),
            "name": pa.array([a.name for a in AIRCRAFT], pa.string()),
            "manufacturer": pa.array([a.manufacturer for a in AIRCRAFT], pa.string()),
            "body": pa.array([a.body for a in AIRCRAFT], pa.string()),
            "seats": pa.array([a.seats for a in AIRCRAFT], pa.int32()),
            "fuel_burn_kg_per_km": pa.array([a.fuel_burn_kg_per_km for a in AIRCRAFT], pa.float64()),
            "cruise_kmh": pa.array([a.cruise_kmh for a in AIRCRAFT], pa.float64()),
            "range_km": pa.array([a.range_km for a in AIRCRAFT], pa.float64()),
        }
    )


_AIRPORTS_CACHE: pa.Table | None = None


def airport_table() -> pa.Table:
    """The `airport` reference table: every IATA airport of `airportsdata`, sorted by code.

    `network_region` names the region whose network lists the airport (NULL otherwise).
    """
    global _AIRPORTS_CACHE
    if _AIRPORTS_CACHE is not None:
        return _AIRPORTS_CACHE
    import airportsdata

    data = airportsdata.load("IATA")
    region_of = {code: r for r, codes in NETWORK.items() for code in codes}
    rows = sorted((k, v) for k, v in data.items() if len(k) == 3 and v.get("tz"))
    _AIRPORTS_CACHE = pa.table(
        {
            "iata": pa.array([k for k, _ in rows], pa.string()),
            "icao": pa.array([v.get("icao") or None for _, v in rows], pa.string()),
            "name": pa.array([v.get("name") or None for _, v in rows], pa.string()),
            "city": pa.array([v.get("city") or None for _, v in rows], pa.string()),
            "country": pa.array([v.get("country") or None for _, v in rows], pa.string()),
            "lat": pa.array([float(v["lat"]) for _, v in rows], pa.float64()),
            "lon": pa.array([float(v["lon"]) for _, v in rows], pa.float64()),
            "tz": pa.array([v["tz"] for _, v in rows], pa.string()),
            "network_region": pa.array([region_of.get(k) for k, _ in rows], pa.string()),
        }
    )
    return _AIRPORTS_CACHE


def unknown_airport_codes() -> list[str]:
    known = set(airport_table().column("iata").to_pylist())
    codes = [c for c in UNKNOWN_AIRPORT_CANDIDATES if c not in known]
    if not codes:  # pragma: no cover - airportsdata would have to list all of them
        raise RuntimeError("no unknown airport code available")
    return codes


def great_circle_km(lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray) -> np.ndarray:
    """Haversine distance on a sphere of radius 6371.0088 km (mean Earth radius)."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dphi = p2 - p1
    dl = np.radians(lon2 - lon1)
    a = np.sin(dphi / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * 6371.0088 * np.arcsin(np.sqrt(a))


@dataclass
class Network:
    """The airports used by the world (indices into `codes`) and the routes per region."""

    codes: list[str]
    lat: np.ndarray
    lon: np.ndarray
    tz: list[str]
    tz_index: np.ndarray  # per airport: index into `tz_names`
    tz_names: list[str]
    # per route: region index, origin and destination airport indices, distance, candidate aircraft
    route_region: np.ndarray
    route_dep: np.ndarray
    route_arr: np.ndarray
    route_km: np.ndarray
    route_aircraft: np.ndarray  # (routes, 2) aircraft indices: primary, alternative
    route_fare_mult: np.ndarray
    route_weight: np.ndarray


def _aircraft_for(km: float) -> tuple[int, int]:
    ix = AIRCRAFT_INDEX
    if km < 1200:
        return ix["E295"], ix["A20N"]
    if km < 2500:
        return ix["A20N"], ix["B738"]
    if km < 5000:
        return ix["A21N"], ix["B738"]
    if km < 6500:
        return ix["A21N"], ix["B789"]
    return ix["B789"], ix["A359"]


def build_network(rng: np.random.Generator) -> Network:
    """Routes: hub-and-spoke pairs inside each region (both directions) plus the cross-region routes."""
    airports = airport_table()
    iata = airports.column("iata").to_pylist()
    pos = {c: i for i, c in enumerate(iata)}
    codes = [c for r in REGIONS for c in NETWORK[r]]
    for c in codes:
        if c not in pos:
            raise RuntimeError(f"airport {c} missing from airportsdata")
    lat = np.array([airports.column("lat")[pos[c]].as_py() for c in codes])
    lon = np.array([airports.column("lon")[pos[c]].as_py() for c in codes])
    tz = [airports.column("tz")[pos[c]].as_py() for c in codes]
    tz_names = sorted(set(tz))
    tz_index = np.array([tz_names.index(t) for t in tz], dtype=np.int16)
    cidx = {c: i for i, c in enumerate(codes)}

    pairs: list[tuple[int, int, int]] = []
    for r_i, region in enumerate(REGIONS):
        ap = NETWORK[region]
        hubs = ap[: HUBS[region]]
        for i, a in enumerate(ap):
            for b in ap[i + 1:]:
                if a in hubs or b in hubs:
                    pairs.append((r_i, cidx[a], cidx[b]))
                    pairs.append((r_i, cidx[b], cidx[a]))
        for a, b in CROSS_ROUTES[region]:
            pairs.append((r_i, cidx[a], cidx[b]))
            pairs.append((r_i, cidx[b], cidx[a]))
    arr = np.array(pairs, dtype=np.int64)
    km = great_circle_km(lat[arr[:, 1]], lon[arr[:, 1]], lat[arr[:, 2]], lon[arr[:, 2]])
    keep = km >= 250.0
    arr, km = arr[keep], km[keep]
    aircraft = np.array([_aircraft_for(float(k)) for k in km], dtype=np.int64)
    n = len(arr)
    fare_mult = np.exp(rng.normal(0.0, 0.22, n))
    weight = np.exp(rng.normal(0.0, 0.6, n)) / np.sqrt(1.0 + km / 2000.0)
    return Network(
        codes=codes, lat=lat, lon=lon, tz=tz, tz_index=tz_index, tz_names=tz_names,
        route_region=arr[:, 0], route_dep=arr[:, 1], route_arr=arr[:, 2], route_km=km,
        route_aircraft=aircraft, route_fare_mult=fare_mult, route_weight=weight,
    )


@dataclass
class Fx:
    """Daily rates, USD per unit of currency, for consecutive dates from `start`."""

    start: date
    currencies: list[str]
    rates: np.ndarray  # (currencies, days)

    def table(self) -> pa.Table:
        n_days = self.rates.shape[1]
        days = np.arange(n_days, dtype="int64") + (self.start - date(1970, 1, 1)).days
        cur = np.repeat(np.array(self.currencies, dtype=object), n_days)
        return pa.table(
            {
                "currency": pa.array(cur, pa.string()),
                "rate_date": pa.array(np.tile(days, len(self.currencies)).astype("int32"), pa.int32()).cast(pa.date32()),
                "usd_per_unit": pa.array(self.rates.reshape(-1), pa.float64()),
            }
        )

    def lookup(self, currency: str, day_numbers: np.ndarray) -> np.ndarray:
        """Rates for days given as days since 1970-01-01 (NaN outside the table)."""
        row = self.rates[self.currencies.index(currency)]
        i = day_numbers - (self.start - date(1970, 1, 1)).days
        ok = (i >= 0) & (i < row.shape[0])
        out = np.full(day_numbers.shape, np.nan)
        out[ok] = row[i[ok]]
        return out


def build_fx(rng: np.random.Generator, first: date, last: date) -> Fx:
    """A deterministic daily random walk per currency, rounded to 6 decimals; USD is 1."""
    n = (last - first).days + 1
    out = []
    for cur, start, vol in (("BRL", 0.2020, 0.006), ("EUR", 1.0950, 0.004)):
        walk = start * np.exp(np.cumsum(rng.normal(0.0, vol, n)))
        out.append(np.rint(walk * 1e6) / 1e6)
    out.append(np.ones(n))
    return Fx(start=first, currencies=["BRL", "EUR", "USD"], rates=np.vstack(out))


def day_number(d: date) -> int:
    return (d - date(1970, 1, 1)).days


def date_of(day: int) -> date:
    return date(1970, 1, 1) + timedelta(days=int(day))
