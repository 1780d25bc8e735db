"""Reference tables and harmonization macros inside the DuckDB that runs mappings.

Mapping expressions in the spec call a small, documented set of functions
(units, currency, time zones). They are DuckDB macros over the reference tables
(airports with IANA zones, daily FX rates), so a conversion is a join inside the
engine, never a Python call per row.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from skyfed.errors import SkyfedError
from skyfed.spec.models import PlatformSpec

JET_FUEL_KG_PER_LITRE = 0.8
LITRES_PER_US_GALLON = 3.785411784

# The functions mapping expressions may call. Reference tables are visible under
# their spec names (`airport`, `fx_rate`, ...). Documented in docs/harmonization.md.
MACROS = f"""
CREATE OR REPLACE MACRO litres_to_kg(x) AS CAST(x AS DOUBLE) * {JET_FUEL_KG_PER_LITRE};
CREATE OR REPLACE MACRO us_gallons_to_kg(x) AS CAST(x AS DOUBLE) * {LITRES_PER_US_GALLON * JET_FUEL_KG_PER_LITRE!r};
CREATE OR REPLACE MACRO miles_to_km(x) AS CAST(x AS DOUBLE) * 1.609344;
CREATE OR REPLACE MACRO ratio(a, b) AS CAST(a AS DOUBLE) / CAST(b AS DOUBLE);
CREATE OR REPLACE MACRO utc_day(ts) AS CAST(timezone('UTC', ts) AS DATE);
CREATE OR REPLACE MACRO csat5_to_100(x) AS (CAST(x AS DOUBLE) - 1) * 25;
CREATE OR REPLACE MACRO nps10_to_100(x) AS CAST(x AS DOUBLE) * 10;
"""
TABLE_MACROS = {
    "fx_rate": """CREATE OR REPLACE MACRO to_usd(_amount, _currency, _day) AS
    CAST(_amount AS DOUBLE) * (SELECT f.usd_per_unit FROM fx_rate f WHERE f.currency = _currency AND f.rate_date = _day);""",
    "airport": """CREATE OR REPLACE MACRO local_to_utc(_ts, _iata) AS
    timezone((SELECT a.tz FROM airport a WHERE a.iata = _iata), CAST(_ts AS TIMESTAMP));""",
}


def prepare_reference(con: duckdb.DuckDBPyConnection, spec: PlatformSpec) -> None:
    """Load every reference table under its spec name and define the macros."""
    con.execute("SET TimeZone = 'UTC'")
    for name, ref in spec.reference.items():
        path = Path(ref.path)
        if not path.exists():
            raise SkyfedError(
                f"reference table '{name}' is missing: {path} does not exist",
                hint="run `skyfed demo seed` (demo federation) or fix reference.{name}.path in the spec",
            )
        source = f"{path}/**/*.parquet" if path.is_dir() else str(path)
        con.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM read_parquet(?)", [source])
    con.execute(MACROS)
    for needs, sql in TABLE_MACROS.items():
        if needs in spec.reference:
            con.execute(sql)
