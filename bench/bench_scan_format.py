"""Parquet layout of the Iceberg store's data files vs DuckDB scan time, write time and bytes.

Run:  .venv/bin/python bench/bench_scan_format.py [--world /tmp/skyfed-bench-query/10000000]
      [--region latam] [--rows N] [--scan-rounds 7] [--candidates current,chosen,...]

Rows: one region's flight_leg and customer_feedback of the query benchmark's world (read
only, through iceberg_scan of its current metadata; build it with bench/bench_query.py).
Each candidate is a set of Iceberg table properties (IcebergCuratedStore(parquet=...)); the
same rows are written with it through both write paths of the store, in a scratch SQLite
catalog and warehouse under --work:
  pyarrow: `store.commit` of a DuckDB reader in 500k-row chunks (pyiceberg's writer: what
           upserts, CDC and the query benchmark's world use);
  duckdb:  `store.commit_query` into the empty table (DuckDB's COPY: fresh tables and full
           refreshes of the ingestion).
"chosen" is the store's default (iceberg_files.PARQUET_PROPERTIES). Then the shapes of the three issue-4 metric queries (route profitability, fuel efficiency,
customer satisfaction, as in bench/bench_query.py) run over every written table pair in
one DuckDB connection set up like the region executor's, interleaved rounds (rotating
order), two readers: iceberg_scan(metadata) (what the executor uses) and read_parquet of
the snapshot's file list; the named peer is the same rows in a native DuckDB table (the
co-located limit of issue 4). Wall and CPU seconds (this process, all threads) are medians
over the rounds; load average is recorded per round. Writes bench/results/scan_format.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sqlite3
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE))

from bench_query import EXAMPLE, QUERIES  # noqa: E402

TABLES = ("flight_leg", "customer_feedback")
ALIGNED = {"write.parquet.row-group-limit": "122880", "write.parquet.page-row-limit": "20480"}
CANDIDATES: dict[str, dict[str, str]] = {
    # pyiceberg's defaults (zstd, 1M-row row groups, pages cut at pyarrow's 20,000 rows), the store's old layout
    "current": {},
    "zstd_aligned": {"write.parquet.compression-codec": "zstd", **ALIGNED},
    "lz4_aligned": {"write.parquet.compression-codec": "lz4", **ALIGNED},
    "snappy_aligned": {"write.parquet.compression-codec": "snappy", **ALIGNED},
    "zstd_aligned_dict256k": {"write.parquet.compression-codec": "zstd", "write.parquet.dict-size-bytes": "262144",
                              **ALIGNED},  # fmt: skip
    # "chosen": the store's default, skyfed.ingest.stores.iceberg_files.PARQUET_PROPERTIES (added at run time)
}
PATHS = ("pyarrow", "duckdb")


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _world_metadata(world: Path, region: str) -> dict[str, str]:
    con = sqlite3.connect(f"file:{world / 'catalog.db'}?mode=ro", uri=True)
    rows = con.execute(
        "SELECT table_name, metadata_location FROM iceberg_tables WHERE table_namespace = ?", (region,)
    ).fetchall()
    found = dict(rows)
    missing = [t for t in TABLES if t not in found]
    if missing:
        raise SystemExit(f"{world}: region {region} has no {', '.join(missing)}; build the world with bench/bench_query.py")
    return found


def _stage(con: Any, world: Path, region: str, work: Path, rows: int | None) -> dict[str, Path]:
    """The region's rows as one Parquet file per table under `work` (read once from the world)."""
    meta = _world_metadata(world, region)
    out = {}
    for t in TABLES:
        path = work / f"source_{region}_{t}_{rows or 'all'}.parquet"
        if not path.exists():
            limit = f" LIMIT {rows}" if rows and t == "flight_leg" else ""
            src = f"SELECT * FROM iceberg_scan('{meta[t]}'){limit}"
            if rows and t == "customer_feedback":  # the feedback of the kept flights
                fl = out["flight_leg"]
                src = (f"SELECT c.* FROM iceberg_scan('{meta[t]}') c SEMI JOIN read_parquet('{fl}') f "
                       "ON c.flight_id = f.flight_id")  # fmt: skip
            con.execute(f"COPY ({src}) TO '{path}.tmp' (FORMAT parquet, COMPRESSION zstd)")
            os.replace(f"{path}.tmp", path)
        out[t] = path
    return out


def _write(store: Any, spec: Any, con: Any, table: str, source: Path, path: str) -> dict[str, Any]:
    contract = spec.contracts[table]
    store.ensure_table(table, contract)
    query = f"SELECT * FROM read_parquet('{source}')"
    key = list(contract.key)
    cpu0, t0 = _cpu(), time.perf_counter()
    if path == "duckdb":
        store.commit_query(table, con, query, key=key, mapping="bench", position={"n": 1}, run_id="bench")
    else:
        reader = con.sql(query).to_arrow_reader(500_000)
        store.commit(table, reader, key=key, mapping="bench", position={"n": 1}, run_id="bench")
    seconds, cpu = time.perf_counter() - t0, _cpu() - cpu0
    t = store._table(table)
    files = [task.file for task in t.scan().plan_files()]
    return {
        "seconds": seconds, "cpu_s": cpu, "files": len(files), "bytes": sum(f.file_size_in_bytes for f in files),
        "rows": sum(f.record_count for f in files), "metadata": t.metadata_location,
        "file_paths": [f.file_path for f in files],
    }  # fmt: skip


def _views(con: Any, name: str, written: dict[str, dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Views per reader over one written table pair; returns reader -> canonical table -> view name."""
    out: dict[str, dict[str, str]] = {"iceberg_scan": {}, "read_parquet": {}}
    for t, w in written.items():
        ice = f'"{name}__ice__{t}"'
        con.execute(f"CREATE OR REPLACE VIEW {ice} AS SELECT * FROM iceberg_scan('{w['metadata']}')")
        files = "[" + ", ".join(f"'{p}'" for p in w["file_paths"]) + "]"
        pq = f'"{name}__pq__{t}"'
        con.execute(f"CREATE OR REPLACE VIEW {pq} AS SELECT * FROM read_parquet({files})")
        out["iceberg_scan"][t], out["read_parquet"][t] = ice, pq
    return out


def _sql(query: str, names: dict[str, str]) -> str:
    sql = QUERIES[query]
    # the metric SQL names the canonical tables once each (FROM flight_leg / JOIN flight_leg f)
    for t in sorted(names, key=len, reverse=True):
        sql = sql.replace(f"FROM {t}", f"FROM {names[t]}").replace(f"JOIN {t}", f"JOIN {names[t]}")
    return sql


def _digest(table: Any) -> tuple[int, float]:
    """Rows and the sum of the first numeric column: equal answers across layouts."""
    import pyarrow.compute as pc
    import pyarrow.types as pt

    for col in table.columns:
        if pt.is_floating(col.type) or pt.is_integer(col.type):
            return table.num_rows, round(float(pc.sum(col).as_py() or 0.0), 3)
    return table.num_rows, 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--world", default="/tmp/skyfed-bench-query/10000000")
    ap.add_argument("--region", default="latam")
    ap.add_argument("--rows", type=int, default=None, help="flight legs to use (default: all of the region's)")
    ap.add_argument("--work", default="/tmp/skyfed-bench-scan-format")
    ap.add_argument("--scan-rounds", type=int, default=7)
    ap.add_argument("--candidates", default=",".join([*CANDIDATES, "chosen"]))
    ap.add_argument("--paths", default=",".join(PATHS))
    ap.add_argument("--no-write", action="store_true", help="print, do not write bench/results/scan_format.json")
    args = ap.parse_args()

    from skyfed.connectors import duck
    from skyfed.ingest.stores import iceberg_files
    from skyfed.ingest.stores.iceberg import IcebergCuratedStore
    from skyfed.query.executors import duckdb_session
    from skyfed.spec import load_spec
    from skyfed.spec.models import IcebergStore

    CANDIDATES["chosen"] = dict(iceberg_files.PARQUET_PROPERTIES)
    world, work = Path(args.world), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    spec = load_spec(EXAMPLE)
    con = duck.connect(["avro", "iceberg"])
    duckdb_session(con)
    sources = _stage(con, world, args.region, work, args.rows)
    names = [c for c in args.candidates.split(",") if c]
    paths = [p for p in args.paths.split(",") if p]

    writes: dict[str, dict[str, dict[str, Any]]] = {}
    for name in names:
        for path in paths:
            label = f"{name}/{path}"
            home = work / "tables" / name / path
            shutil.rmtree(home, ignore_errors=True)
            home.mkdir(parents=True)
            store = IcebergCuratedStore(args.region, IcebergStore(kind="iceberg", warehouse=str(home / "warehouse")),
                                        f"sqlite:///{home / 'catalog.db'}", parquet=CANDIDATES[name])  # fmt: skip
            writes[label] = {t: _write(store, spec, con, t, sources[t], path) for t in TABLES}
            w = writes[label]
            print(f"wrote {label:32s} {sum(x['seconds'] for x in w.values()):6.2f} s "
                  f"{sum(x['bytes'] for x in w.values()) / 1e6:7.1f} MB {sum(x['files'] for x in w.values()):4d} files",
                  flush=True)  # fmt: skip

    # the peer: the same rows in native DuckDB tables of this connection (co-located, issue 4's limit)
    for t in TABLES:
        con.execute(f'CREATE OR REPLACE TABLE "native__{t}" AS SELECT * FROM read_parquet(\'{sources[t]}\')')
    contestants: dict[str, dict[str, str]] = {"native_duckdb_table": {t: f'"native__{t}"' for t in TABLES}}
    for label, w in writes.items():
        for reader, views in _views(con, label.replace("/", "__"), w).items():
            contestants[f"{label}/{reader}"] = views

    samples: dict[str, dict[str, dict[str, list[float]]]] = {
        c: {q: {"wall": [], "cpu": []} for q in QUERIES} for c in contestants
    }
    digests: dict[str, dict[str, Any]] = {c: {} for c in contestants}
    loads: list[float] = []
    order = list(contestants)
    for r in range(args.scan_rounds + 1):  # round 0 warms the caches and is not counted
        loads.append(round(os.getloadavg()[0], 2))
        shift = r % len(order)
        for c in order[shift:] + order[:shift]:
            for q in QUERIES:
                sql = _sql(q, contestants[c])
                cpu0, t0 = _cpu(), time.perf_counter()
                result = con.execute(sql).to_arrow_table()
                wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
                if r == 0:
                    digests[c][q] = _digest(result)
                    continue
                samples[c][q]["wall"].append(wall)
                samples[c][q]["cpu"].append(cpu)
        print(f"scan round {r} done (load {loads[-1]})", flush=True)

    peer = "native_duckdb_table"
    base = "current/pyarrow/iceberg_scan"
    wrong = {c: q for c in contestants for q in QUERIES if digests[c][q] != digests[peer][q]}
    results: dict[str, Any] = {}
    for c in contestants:
        per: dict[str, Any] = {}
        for q in QUERIES:
            wall = statistics.median(samples[c][q]["wall"])
            cpu = statistics.median(samples[c][q]["cpu"])
            per[q] = {"wall_s": round(wall, 4), "cpu_s": round(cpu, 4)}
        per["total_wall_s"] = round(sum(per[q]["wall_s"] for q in QUERIES), 4)
        per["total_cpu_s"] = round(sum(per[q]["cpu_s"] for q in QUERIES), 4)
        results[c] = per
    for c, per in results.items():
        per["cpu_x_native"] = round(per["total_cpu_s"] / results[peer]["total_cpu_s"], 3)
        if base in results:
            per["cpu_x_current"] = round(per["total_cpu_s"] / results[base]["total_cpu_s"], 3)
    write_summary = {
        label: {
            "seconds": round(sum(x["seconds"] for x in w.values()), 3),
            "cpu_s": round(sum(x["cpu_s"] for x in w.values()), 3),
            "bytes": sum(x["bytes"] for x in w.values()),
            "files": sum(x["files"] for x in w.values()),
            "per_table": {t: {k: (round(v, 3) if isinstance(v, float) else v) for k, v in x.items()
                              if k not in ("metadata", "file_paths")} for t, x in w.items()},  # fmt: skip
        }
        for label, w in writes.items()
    }

    print(f"\n{'contestant':50s} " + " ".join(f"{q[:12]:>12s}" for q in QUERIES) + f" {'cpu s':>7s} {'x native':>8s}")
    for c, per in sorted(results.items(), key=lambda kv: kv[1]["total_cpu_s"]):
        print(f"{c:50s} " + " ".join(f"{per[q]['cpu_s']:12.3f}" for q in QUERIES)
              + f" {per['total_cpu_s']:7.3f} {per['cpu_x_native']:8.2f}")  # fmt: skip
    print(f"\n{'write':32s} {'s':>7s} {'cpu s':>7s} {'MB':>7s} {'files':>5s}")
    for label, w in write_summary.items():
        print(f"{label:32s} {w['seconds']:7.2f} {w['cpu_s']:7.2f} {w['bytes'] / 1e6:7.1f} {w['files']:5d}")
    if wrong:
        print("DIFFERENT ANSWERS:", wrong)
    out = {
        "benchmark": "scan_format",
        "world": str(world), "region": args.region,
        "rows": {t: writes[next(iter(writes))][t]["rows"] for t in TABLES} if writes else {},
        "candidates": {n: CANDIDATES[n] for n in names},
        "store_default": iceberg_files.PARQUET_PROPERTIES,
        "queries": {q: QUERIES[q] for q in QUERIES},
        "scan_rounds": args.scan_rounds,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "duckdb_threads": con.execute("SELECT current_setting('threads')").fetchone()[0]},
        "loadavg_1m_rounds": loads,
        "note": "scan seconds are medians over interleaved rounds (rotating order) in one DuckDB connection set up "
                "like the region executor's; cpu_s = this process's user+system seconds (all threads), steadier "
                "than wall time on the shared 2-core machine; write seconds are one write per candidate and path",
        "writes": write_summary,
        "scans": results,
        "answers_equal_to_native": not wrong,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }  # fmt: skip
    if not args.no_write:
        (HERE / "results").mkdir(exist_ok=True)
        (HERE / "results" / "scan_format.json").write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {HERE / 'results' / 'scan_format.json'}")


if __name__ == "__main__":
    main()
