"""eu → BigQuery (the emulator locally) through google-cloud-bigquery: dataset, Parquet loads."""

from __future__ import annotations

import io
from collections.abc import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from skyfed.demo.writers.settings import NOT_RUNNING_HINT, BqSettings
from skyfed.errors import SkyfedError

SCHEMAS = {
    "flights": [("flight_id", "STRING", "REQUIRED"), ("flight_number", "STRING"), ("origin", "STRING"),
                ("destination", "STRING"), ("scheduled_departure", "TIMESTAMP"), ("scheduled_arrival", "TIMESTAMP"),
                ("aircraft_type", "STRING"), ("tail_number", "STRING"), ("seats", "INT64"), ("passengers", "INT64"),
                ("distance_km", "FLOAT64"), ("fuel_kg", "FLOAT64"), ("revenue_eur", "FLOAT64"), ("cost_eur", "FLOAT64"),
                ("delay_minutes", "INT64"), ("status", "STRING"), ("updated_at", "TIMESTAMP")],
    "bookings": [("booking_ref", "STRING", "REQUIRED"), ("flight_id", "STRING"), ("passenger_name", "STRING"),
                 ("email", "STRING"), ("phone", "STRING"), ("passport_number", "STRING"), ("cabin", "STRING"),
                 ("fare_eur", "FLOAT64"), ("status", "STRING"), ("booked_at", "TIMESTAMP"), ("updated_at", "TIMESTAMP")],
    "feedback": [("feedback_id", "STRING", "REQUIRED"), ("flight_id", "STRING"), ("csat", "INT64"),
                 ("comment", "STRING"), ("submitted_at", "TIMESTAMP")],
}
CHUNK_ROWS = 250_000


def client(settings: BqSettings):
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    if settings.endpoint:
        return bigquery.Client(project=settings.project, credentials=AnonymousCredentials(),
                               client_options=ClientOptions(api_endpoint=settings.endpoint), location=settings.location)
    return bigquery.Client(project=settings.project, location=settings.location)


def _fail(settings: BqSettings, exc: Exception) -> SkyfedError:
    where = settings.endpoint or "BigQuery"
    msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return SkyfedError(f"cannot reach BigQuery at {where} for region eu ({msg})", NOT_RUNNING_HINT)


def write(settings: BqSettings, tables: dict[str, pa.Table], advance: Callable[[int], None] | None = None) -> dict[str, int]:
    """Recreate dataset tables and load each as Parquet (in chunks, appended); returns rows per table."""
    from google.cloud import bigquery

    bq = client(settings)
    ds = bigquery.Dataset(f"{settings.project}.{settings.dataset}")
    ds.location = settings.location
    try:
        bq.create_dataset(ds, exists_ok=True)
    except Exception as exc:  # connection refused, emulator down, ...
        raise _fail(settings, exc) from None
    written: dict[str, int] = {}
    for name, table in tables.items():
        ref = f"{settings.project}.{settings.dataset}.{name}"
        schema = [bigquery.SchemaField(f[0], f[1], mode=f[2] if len(f) > 2 else "NULLABLE") for f in SCHEMAS[name]]
        bq.delete_table(ref, not_found_ok=True)
        bq.create_table(bigquery.Table(ref, schema=schema))
        for start in range(0, max(table.num_rows, 1), CHUNK_ROWS):
            chunk = table.slice(start, CHUNK_ROWS)
            if chunk.num_rows == 0:
                break
            buf = io.BytesIO()
            pq.write_table(chunk, buf, compression="snappy")
            buf.seek(0)
            job = bq.load_table_from_file(
                buf, ref,
                job_config=bigquery.LoadJobConfig(source_format=bigquery.SourceFormat.PARQUET, schema=schema,
                                                  write_disposition=bigquery.WriteDisposition.WRITE_APPEND),
            )
            job.result()
            if advance:
                advance(chunk.num_rows)
        written[name] = table.num_rows
    return written


def counts(settings: BqSettings, names: list[str]) -> dict[str, int | None]:
    """count(*) per table through one BigQuery query (None if the table is missing)."""
    from google.api_core.exceptions import NotFound

    bq = client(settings)
    out: dict[str, int | None] = {}
    present = []
    for name in names:
        try:
            bq.get_table(f"{settings.project}.{settings.dataset}.{name}")
            present.append(name)
        except NotFound:
            out[name] = None
        except Exception as exc:
            raise _fail(settings, exc) from None
    if present:
        sql = " UNION ALL ".join(
            f"SELECT '{n}' AS t, COUNT(*) AS n FROM `{settings.project}.{settings.dataset}.{n}`" for n in present
        )
        for row in bq.query(sql).result():
            out[row["t"]] = int(row["n"])
    return {n: out.get(n) for n in names}
