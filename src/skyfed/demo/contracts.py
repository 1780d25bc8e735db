"""The canonical contracts of the airline world, as the generator applies them.

These definitions mirror `examples/airline/skyfed.yaml` (a test keeps the two equal):
column order, types, nullability and checks. The generator computes the ground truth
by applying exactly these checks, in this order, to the harmonized candidate rows:
for each row the *first* failing check is its quarantine rule, columns in contract
order and, inside a column, `not_null`, `min`, `max`, `allowed`, `references`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from skyfed.contracts.types import ARROW_TYPES  # one table of canonical types


@dataclass(frozen=True)
class Col:
    name: str
    type: str
    nullable: bool = True
    checks: dict[str, Any] = field(default_factory=dict)
    classification: str | None = None
    description: str = ""


@dataclass(frozen=True)
class ContractDef:
    name: str
    key: tuple[str, ...]
    columns: tuple[Col, ...]
    description: str = ""

    def schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, ARROW_TYPES[c.type], nullable=c.nullable) for c in self.columns])

    def column(self, name: str) -> Col:
        return next(c for c in self.columns if c.name == name)


REGIONS_ALLOWED = ["latam", "eu", "na"]

FLIGHT_LEG = ContractDef(
    "flight_leg",
    ("flight_id",),
    (
        Col("flight_id", "string", False, description="Region prefix and source id: LA-<id>, EU-<flight_id>, NA-<flight_id>."),
        Col("region", "string", False, {"allowed": REGIONS_ALLOWED}, description="Operating region (the source's region)."),
        Col("flight_number", "string", False, description="Marketing flight number, e.g. SL1234."),
        Col("dep_airport", "string", False, {"references": "airport.iata"}, description="IATA code of the origin."),
        Col("arr_airport", "string", False, {"references": "airport.iata"}, description="IATA code of the destination."),
        Col("dep_time_utc", "timestamptz", False, description="Scheduled departure, UTC."),
        Col("arr_time_utc", "timestamptz", True, description="Scheduled arrival, UTC (NULL when the destination's zone is unknown)."),
        Col("aircraft_type", "string", False, {"references": "aircraft_type.aircraft_type"}, description="ICAO type designator."),
        Col("tail_number", "string", True, description="Aircraft registration; NULL where the source lacks it."),
        Col("seats", "int32", False, {"min": 1, "max": 1000}, description="Seats offered."),
        Col("passengers", "int32", False, {"min": 0}, description="Passengers flown (revenue passengers)."),
        Col("load_factor", "double", False, {"min": 0, "max": 1}, description="passengers / seats."),
        Col("distance_km", "double", False, {"min": 0, "max": 20000}, description="Great-circle distance, km."),
        Col("fuel_kg", "double", False, {"min": 0, "max": 400000}, description="Fuel burnt, kg (jet fuel 0.8 kg/L)."),
        Col("revenue_usd", "double", False, {"min": 0}, description="Ticket revenue, USD at the FX rate of the UTC departure date."),
        Col("cost_usd", "double", False, {"min": 0}, description="Operating cost, USD at the FX rate of the UTC departure date."),
        Col("delay_min", "int32", True, {"min": 0, "max": 1440}, description="Departure delay in minutes; NULL if cancelled."),
        Col("status", "string", False, {"allowed": ["scheduled", "departed", "arrived", "cancelled", "diverted"]}),
        Col("updated_at_utc", "timestamptz", False, description="When the source last changed the record (the cursor)."),
    ),
    "One operated flight leg, harmonized.",
)

BOOKING = ContractDef(
    "booking",
    ("booking_id",),
    (
        Col("booking_id", "string", False, description="Region prefix and source booking key."),
        Col("region", "string", False, {"allowed": REGIONS_ALLOWED}),
        Col("flight_id", "string", False, description="flight_leg.flight_id of the booked flight."),
        Col("booked_at_utc", "timestamptz", False),
        Col("passenger_name", "string", False, classification="pii.name"),
        Col("email", "string", True, classification="pii.email"),
        Col("phone", "string", True, classification="pii.phone"),
        Col("document_number", "string", True, classification="pii.document"),
        Col("cabin", "string", False, {"allowed": ["economy", "premium_economy", "business"]}),
        Col("fare_usd", "double", False, {"min": 0}, description="Fare, USD at the FX rate of the UTC booking date."),
        Col("status", "string", False, {"allowed": ["confirmed", "cancelled"]}),
        Col("updated_at_utc", "timestamptz", False),
    ),
    "One passenger booking (synthetic PII).",
)

CUSTOMER_FEEDBACK = ContractDef(
    "customer_feedback",
    ("feedback_id",),
    (
        Col("feedback_id", "string", False),
        Col("region", "string", False, {"allowed": REGIONS_ALLOWED}),
        Col("flight_id", "string", False),
        Col("submitted_at_utc", "timestamptz", False),
        Col("survey_scale", "string", False, {"allowed": ["nps_0_10", "csat_1_5"]}),
        Col("raw_score", "int32", False, description="The score as answered, on the survey's scale."),
        Col("recommend_0_10", "int32", True, {"min": 0, "max": 10}, description="Likelihood to recommend (NPS question); NULL for CSAT surveys."),
        Col("satisfaction_0_100", "double", False, {"min": 0, "max": 100}, description="nps_0_10: x*10; csat_1_5: (x-1)*25."),
        Col("comment", "string", True, classification="free_text"),
    ),
    "One survey answer; NPS (0-10) and CSAT (1-5) harmonized to 0-100.",
)

AIRPORT = ContractDef(
    "airport",
    ("iata",),
    (
        Col("iata", "string", False),
        Col("icao", "string"),
        Col("name", "string"),
        Col("city", "string"),
        Col("country", "string"),
        Col("lat", "double", False, {"min": -90, "max": 90}),
        Col("lon", "double", False, {"min": -180, "max": 180}),
        Col("tz", "string", False, description="IANA time zone."),
        Col("network_region", "string", True, description="Region whose network serves the airport."),
    ),
    "Airports (airportsdata).",
)

AIRCRAFT_TYPE = ContractDef(
    "aircraft_type",
    ("aircraft_type",),
    (
        Col("aircraft_type", "string", False, description="ICAO type designator."),
        Col("name", "string", False),
        Col("manufacturer", "string", False),
        Col("body", "string", False, {"allowed": ["narrow", "wide"]}),
        Col("seats", "int32", False, {"min": 1}),
        Col("fuel_burn_kg_per_km", "double", False, {"min": 0}),
        Col("cruise_kmh", "double", False, {"min": 0}),
        Col("range_km", "double", False, {"min": 0}),
    ),
    "Aircraft types with typical seats and fuel burn.",
)

FX_RATE = ContractDef(
    "fx_rate",
    ("currency", "rate_date"),
    (
        Col("currency", "string", False, {"allowed": ["BRL", "EUR", "USD"]}),
        Col("rate_date", "date", False),
        Col("usd_per_unit", "double", False, {"min": 0}),
    ),
    "Daily FX rates: USD per unit of currency.",
)

CONTRACTS: dict[str, ContractDef] = {
    c.name: c for c in (FLIGHT_LEG, BOOKING, CUSTOMER_FEEDBACK, AIRPORT, AIRCRAFT_TYPE, FX_RATE)
}

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("region", pa.string(), False),
        pa.field("source", pa.string(), False),  # region.source, e.g. latam.ops
        pa.field("source_table", pa.string(), False),  # voos, flights, ... (gcs: key of `tables`)
        pa.field("source_key", pa.string(), True),  # mapping key value; NULL if the line cannot be parsed
        pa.field("source_position", pa.string(), True),  # gcs: object#L<line> or object#row<i>; tables: NULL
        pa.field("contract", pa.string(), False),
        pa.field("canonical_key", pa.string(), True),
        pa.field("rule", pa.string(), False),  # not_null, min, max, allowed, references, malformed
        pa.field("column", pa.string(), True),
        pa.field("kind", pa.string(), False),  # the messiness injected: null, out_of_range, ...
    ]
)
