"""What is where: per region, the source kind and its tables/objects with row counts read back
through each source's own client (psycopg, google-cloud-bigquery, google-cloud-storage), next to
what the manifest says was written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from skyfed.demo.seed import read_manifest
from skyfed.demo.world import SOURCE_KIND, SOURCE_OF, TABLE_NAMES
from skyfed.errors import SkyfedError

NA_FORMATS = {"flights": "csv", "bookings": "parquet", "feedback": "jsonl"}


def inventory(state: Path, spec: Any = None) -> dict[str, Any]:
    from skyfed.demo.writers import bigquery, gcs, postgres
    from skyfed.demo.writers.settings import bq_settings, gcs_settings, pg_settings

    man = read_manifest(state)
    if man is None:
        raise SkyfedError(f"no seeded world under {state / 'seed'}", "run `skyfed demo seed` first")
    regions: dict[str, Any] = {}
    pg = pg_settings(spec)
    latam = postgres.counts(pg, list(TABLE_NAMES["latam"].values()))
    bq = bq_settings(spec)
    eu = bigquery.counts(bq, list(TABLE_NAMES["eu"].values()))
    gs = gcs_settings(spec)
    na = gcs.inventory(gs, NA_FORMATS)
    where = {
        "latam": f"postgresql://{pg.host}:{pg.port}/{pg.database} (schema {pg.schema})",
        "eu": f"bigquery {bq.project}.{bq.dataset} ({bq.location}) at {bq.endpoint or 'bigquery.googleapis.com'}",
        "na": f"gs://{gs.bucket} at {gs.endpoint or 'storage.googleapis.com'}",
    }
    for region in ("latam", "eu", "na"):
        tables = []
        for name in TABLE_NAMES[region].values():
            expected = man["regions"][region]["tables"][name]
            if region == "latam":
                actual = {"rows": latam[name]}
                obj = name
            elif region == "eu":
                actual = {"rows": eu[name]}
                obj = f"{bq.dataset}.{name}"
            else:
                info = na[name] or {"rows": None, "objects": 0, "bytes": 0}
                actual = dict(info)
                obj = f"{name}/dt=*/{ {'flights': 'flights.csv', 'bookings': 'bookings.parquet', 'feedback': 'feedback.jsonl'}[name] }"
            expected_rows = expected["source_rows"]
            tables.append({
                "table": name, "object": obj, "contract": expected["contract"], "rows": actual["rows"],
                "expected_rows": expected_rows, "ok": actual["rows"] == expected_rows,
                **({"objects": actual["objects"], "bytes": actual["bytes"]} if region == "na" else {}),
                "messy": {k: v["count"] for k, v in expected["messy"].items()},
                "quarantine_expected": expected["quarantined"], "duplicates_removed": expected["duplicates_removed"],
                "ground_truth_rows": expected["ground_truth_rows"],
            })
        regions[region] = {"kind": SOURCE_KIND[region], "source": SOURCE_OF[region], "where": where[region],
                           "tables": tables}
    return {
        "seed": man["seed"], "flights": man["flights"], "seed_dir": str(state / "seed"),
        "regions": regions, "messiness": man["messiness"], "ground_truth_rows": man["ground_truth_rows"],
        "ok": all(t["ok"] for r in regions.values() for t in r["tables"]),
    }
