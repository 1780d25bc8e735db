"""What the PostgreSQL benchmarks share: the flight-leg table they read and the server's address."""

from __future__ import annotations

import os


def legs_table_sql(table: str) -> str:
    """DDL + generate_series load of a flight-leg-shaped table (bigint key, codes,
    timestamps with and without zone, numerics, doubles); `%(rows)s` is the row count."""
    return f"""
DROP TABLE IF EXISTS {table};
CREATE TABLE {table} (
  id bigint PRIMARY KEY, flight_no text NOT NULL, carrier text NOT NULL, origin char(3) NOT NULL,
  dest char(3) NOT NULL, tail text, dep_sched_local timestamp NOT NULL, dep_actual_utc timestamptz,
  arr_actual_utc timestamptz, distance_km numeric(8,1), fuel_kg numeric(12,2), fare_local numeric(12,2),
  currency text, load_factor double precision, pax integer, status text, updated_at timestamptz NOT NULL
);
INSERT INTO {table}
SELECT g, 'SF' || lpad((g % 9000)::text, 4, '0'), (array['SF','SK','SJ','ST'])[1 + g % 4],
  (array['LIM','SCL','GRU','BOG','EZE','MEX','PTY','UIO'])[1 + g % 8],
  (array['CUZ','AQP','GIG','MDE','COR','CUN','SJO','GYE'])[1 + (g / 8) % 8],
  'CC-' || upper(substr(md5((g % 400)::text), 1, 3)),
  timestamp '2023-01-01' + (g % 525600) * interval '1 minute',
  timestamptz '2023-01-01 00:00+00' + (g % 525600) * interval '1 minute' + (g % 37) * interval '1 minute',
  timestamptz '2023-01-01 02:00+00' + (g % 525600) * interval '1 minute',
  (g % 7000 + 150)::numeric(8,1), round((g % 90000) * 1.37, 2), round((g % 50000) * 0.731, 2),
  (array['PEN','CLP','BRL','COP'])[1 + g % 4], (g % 1000) / 1000.0, g % 300,
  (array['scheduled','departed','landed','cancelled','diverted'])[1 + g % 5],
  timestamptz '2023-01-01 00:00+00' + g * interval '1 second'
FROM generate_series(1, %(rows)s) g;
VACUUM ANALYZE {table};
"""


def pg_env() -> dict[str, str]:
    """The local federation's PostgreSQL settings (exported by skyfed.localenv)."""
    return {k: os.environ[k] for k in ("SKYFED_PG_HOST", "SKYFED_PG_PORT", "SKYFED_PG_USER", "SKYFED_PG_PASSWORD")}


def pg_uri() -> str:
    e = pg_env()
    return f"postgresql://{e['SKYFED_PG_USER']}:{e['SKYFED_PG_PASSWORD']}@{e['SKYFED_PG_HOST']}:{e['SKYFED_PG_PORT']}/skyfed"
