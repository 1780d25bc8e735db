"""Seeding: generate the world, write ground truth + reference + manifest locally, then the sources.

Layout under `<state_dir>/seed/`:
  ground_truth/<contract>.parquet    flight_leg, booking, customer_feedback, quarantine_expected
  reference/<name>.parquet           airport, aircraft_type, fx_rate (used by ingestion for FX and zones)
  manifest.json                      seed, config, rows per source table, messiness, checksums
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from skyfed.demo.world import SOURCE_KIND, SOURCE_OF, TABLE_NAMES, World, WorldConfig, generate

GENERATOR_VERSION = 1


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def table_checksum(table: pa.Table) -> str:
    """sha256 of the table's Arrow IPC stream (content and schema, independent of files)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table.combine_chunks())
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


def objects_checksum(objects: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for name in sorted(objects):
        h.update(name.encode() + b"\0" + hashlib.sha256(objects[name]).digest())
    return h.hexdigest()


def manifest(world: World, files: dict[str, str]) -> dict[str, Any]:
    """The seed's manifest (no timestamps: the same seed gives the same bytes)."""
    cfg = world.config
    regions: dict[str, Any] = {}
    for region, data in world.regions.items():
        tables: dict[str, Any] = {}
        for role, name in TABLE_NAMES[region].items():
            st = dict(world.stats["tables"][f"{region}.{name}"])
            if data.kind == "gcs":
                objs = {k: v for k, v in data.objects.items() if k.startswith(f"{name}/")}
                st["objects"] = len(objs)
                st["bytes"] = int(sum(len(v) for v in objs.values()))
                st["checksum"] = objects_checksum(objs)
            else:
                st["checksum"] = table_checksum(data.tables[name])
            tables[name] = st
        regions[region] = {"kind": SOURCE_KIND[region], "source": SOURCE_OF[region], "tables": tables}
    messy_total: dict[str, dict[str, float]] = {}
    for region in regions.values():
        for st in region["tables"].values():
            for kind, v in st["messy"].items():
                agg = messy_total.setdefault(kind, {"count": 0, "base_records": 0})
                agg["count"] += v["count"]
                agg["base_records"] += st["base_records"]
    for agg in messy_total.values():
        agg["rate"] = agg["count"] / agg["base_records"] if agg["base_records"] else 0.0
    return {
        "generator_version": GENERATOR_VERSION,
        "seed": cfg.seed,
        "flights": cfg.flights,
        "config": cfg.as_dict(),
        "regions": regions,
        "messiness": messy_total,
        "ground_truth_rows": world.stats["ground_truth_rows"],
        "reference_rows": {k: v.num_rows for k, v in world.reference.items()},
        "definitions": {
            "fx": "amount * usd_per_unit of the UTC calendar date of the scheduled departure (flights) or of the booking (bookings)",
            "fuel": "litres * 0.8; US gallons * 3.0283294272 (= 3.785411784 L/gal * 0.8 kg/L)",
            "times": "naive local times read in the airport's IANA zone; no demo time falls in a DST gap or overlap",
            "dedupe": "checks first; then per mapping key the passing record with the greatest cursor wins",
            "quarantine_rule": "first failing check: columns in contract order; per column not_null, min, max, allowed, references",
        },
        "files": files,
    }


def write_local(world: World, state: Path) -> dict[str, Any]:
    """Ground truth, reference tables and manifest under `<state>/seed/` (replacing an earlier seed)."""
    seed_dir = state / "seed"
    for sub in ("ground_truth", "reference"):
        shutil.rmtree(seed_dir / sub, ignore_errors=True)
        (seed_dir / sub).mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    for folder, tables in (("ground_truth", world.ground_truth), ("reference", world.reference)):
        for name, table in tables.items():
            data = parquet_bytes(table)
            (seed_dir / folder / f"{name}.parquet").write_bytes(data)
            files[f"{folder}/{name}.parquet"] = hashlib.sha256(data).hexdigest()
    man = manifest(world, files)
    (seed_dir / "manifest.json").write_text(json.dumps(man, indent=2, sort_keys=False) + "\n")
    return man


def read_manifest(state: Path) -> dict[str, Any] | None:
    path = state / "seed" / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else None


Progress = Callable[[str, int], Callable[[int], None]]  # (description, total) -> advance(n)


def seed(cfg: WorldConfig, state: Path, *, spec: Any = None, progress: Progress | None = None) -> dict[str, Any]:
    """Generate and write the whole world: local seed files, then PostgreSQL, BigQuery and GCS."""
    from skyfed.demo.writers import bigquery, gcs, postgres
    from skyfed.demo.writers.settings import bq_settings, gcs_settings, pg_settings

    # Resolve every connection first: fail before any work when the federation is down.
    pg, bq, gs = pg_settings(spec), bq_settings(spec), gcs_settings(spec)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    world = generate(cfg)
    timings["generate"] = time.perf_counter() - t0
    t = time.perf_counter()
    man = write_local(world, state)
    timings["ground_truth"] = time.perf_counter() - t

    def adv(desc: str, total: int) -> Callable[[int], None] | None:
        return progress(desc, total) if progress else None

    latam = world.regions["latam"].tables
    t = time.perf_counter()
    postgres.write(pg, latam, adv("latam → PostgreSQL rows", sum(x.num_rows for x in latam.values())))
    timings["latam_postgres"] = time.perf_counter() - t
    eu = world.regions["eu"].tables
    t = time.perf_counter()
    bigquery.write(bq, eu, adv("eu → BigQuery rows", sum(x.num_rows for x in eu.values())))
    timings["eu_bigquery"] = time.perf_counter() - t
    objs = world.regions["na"].objects
    t = time.perf_counter()
    gcs.write(gs, objs, adv("na → Cloud Storage objects", len(objs)))
    timings["na_gcs"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    return {"manifest": man, "timings": timings, "seed_dir": str(state / "seed")}
