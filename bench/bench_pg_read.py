"""PostgreSQL bulk read: skyfed's connector vs its candidates vs dlt vs a raw binary COPY.

Setup (bench only, not project dependencies):
    .venv/bin/python -m pip install "dlt[duckdb,sql_database]" adbc-driver-postgresql

Run:  SKYFED_HOME=/tmp/skyfed-bench .venv/bin/python bench/bench_pg_read.py [--rows 5000000] [--runs 3]

Starts the local federation (skyfed.localenv.up) in SKYFED_HOME, builds a flight-leg
table with generate_series on the server, then times each method in its own child
process (so peak RSS is that method's alone), `--runs` times, and reports medians.
Methods:
  skyfed            the connector as shipped (DuckDB postgres_query: binary COPY -> Arrow)
  skyfed_parallel1  the same, forced to one connection
  adbc              candidate: adbc-driver-postgresql (binary COPY -> Arrow in C)
  duckdb_scan       candidate: DuckDB ATTACH ... TYPE postgres table scan (its own ctid tasks)
  dlt_extract       dlt sql_database(backend="pyarrow"), extract step only
  dlt_full          dlt sql_database(backend="pyarrow") -> duckdb destination, whole pipeline
  raw_copy          the limit: COPY (SELECT ...) TO STDOUT (FORMAT binary) read into nothing
Writes bench/results/pg_read.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchlib import legs_table_sql, pg_env, pg_uri

HERE = Path(__file__).resolve().parent
TABLE = "bench_legs"
METHODS = ["skyfed", "skyfed_parallel1", "adbc", "duckdb_scan", "dlt_extract", "dlt_full", "raw_copy"]

CREATE = legs_table_sql(TABLE)


def _spec():  # noqa: ANN202
    from skyfed.spec.models import PostgresSource

    e = pg_env()
    return PostgresSource.model_validate({
        "kind": "postgres", "host": e["SKYFED_PG_HOST"], "port": int(e["SKYFED_PG_PORT"]),
        "database": "skyfed", "user": e["SKYFED_PG_USER"], "password": "${SKYFED_PG_PASSWORD}",
    })  # fmt: skip


def run_method(method: str) -> int:
    """Read the whole table once with `method`; return the row count."""
    if method.startswith("skyfed"):
        from skyfed.connectors.base import ReadRequest
        from skyfed.connectors.postgres import PostgresConnector

        conn = PostgresConnector(_spec(), "bench", parallel=1 if method == "skyfed_parallel1" else None)
        req = ReadRequest(TABLE)
        rows = sum(b.num_rows for b in conn.read(req, conn.position(req)))
        conn.close()
        return rows
    if method == "adbc":
        import adbc_driver_postgresql.dbapi as adbc

        rows = 0
        with adbc.connect(pg_uri()) as con, con.cursor() as cur:
            cur.execute(f"SELECT * FROM {TABLE}")
            for batch in cur.fetch_record_batch():
                rows += batch.num_rows
        return rows
    if method == "duckdb_scan":
        from skyfed.connectors import duck

        e = pg_env()
        con = duck.connect(["postgres"])
        con.execute("SET TimeZone = 'UTC'")
        con.execute(
            f"ATTACH 'host={e['SKYFED_PG_HOST']} port={e['SKYFED_PG_PORT']} user={e['SKYFED_PG_USER']} "
            f"password={e['SKYFED_PG_PASSWORD']} dbname=skyfed' AS pg (TYPE postgres, READ_ONLY)"
        )
        return sum(b.num_rows for b in con.execute(f"SELECT * FROM pg.public.{TABLE}").to_arrow_reader(100_000))
    if method.startswith("dlt"):
        import tempfile

        import dlt
        from dlt.sources.sql_database import sql_database

        os.environ["RUNTIME__LOG_LEVEL"] = "WARNING"
        with tempfile.TemporaryDirectory(prefix="dlt-bench-") as tmp:
            os.environ["DLT_DATA_DIR"] = tmp
            source = sql_database(
                credentials=pg_uri().replace("postgresql://", "postgresql+psycopg2://"),
                table_names=[TABLE], backend="pyarrow", chunk_size=100_000,
            )  # fmt: skip
            pipe = dlt.pipeline(
                pipeline_name="bench", destination=dlt.destinations.duckdb(f"{tmp}/out.duckdb"),
                dataset_name="dlt_data", pipelines_dir=tmp,
            )  # fmt: skip
            if method == "dlt_extract":
                info = pipe.extract(source)
                return int(pipe.last_trace.last_extract_info.metrics[info.loads_ids[0]][0]["table_metrics"][TABLE].items_count)
            pipe.run(source)
            with pipe.sql_client() as client:
                return int(client.execute_sql(f"SELECT count(*) FROM {TABLE}")[0][0])
    if method == "raw_copy":
        import psycopg

        nbytes = 0
        with psycopg.connect(pg_uri()) as con, con.cursor() as cur:
            with cur.copy(f"COPY (SELECT * FROM {TABLE}) TO STDOUT (FORMAT binary)") as copy:
                for chunk in copy:
                    nbytes += len(chunk)
        with psycopg.connect(pg_uri()) as con:
            return int(con.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0])  # type: ignore[index]
    raise SystemExit(f"unknown method {method}")


def _warm(method: str) -> None:
    """Import what the method needs (and install DuckDB extensions) outside the timed part."""
    import psycopg  # noqa: F401

    if method.startswith(("skyfed", "duckdb")):
        from skyfed.connectors import duck, postgres  # noqa: F401

        duck.connect(["postgres"]).close()
    elif method == "adbc":
        import adbc_driver_postgresql.dbapi  # noqa: F401
    elif method.startswith("dlt"):
        import dlt  # noqa: F401
        from dlt.sources.sql_database import sql_database  # noqa: F401


def child(method: str) -> None:
    _warm(method)
    start = time.perf_counter()
    rows = run_method(method)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"method": method, "rows": rows, "seconds": seconds, "peak_rss_mb": peak_mb}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--child")
    ap.add_argument("--keep-table", action="store_true", help="reuse the table if it has --rows rows")
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return

    os.environ.setdefault("SKYFED_HOME", "/tmp/skyfed-bench")
    from skyfed import localenv

    localenv.up(os.environ["SKYFED_HOME"])
    os.environ.update(localenv.service_env(os.environ["SKYFED_HOME"]))
    import psycopg

    with psycopg.connect(pg_uri(), autocommit=True) as con:
        have = con.execute(f"SELECT count(*) FROM pg_class WHERE relname = '{TABLE}'").fetchone()[0]  # type: ignore[index]
        n = con.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0] if have else 0  # type: ignore[index]
        if not (args.keep_table and n == args.rows):
            t = time.perf_counter()
            for stmt in CREATE.split(";\n"):
                if stmt.strip():
                    con.execute(stmt.replace("%(rows)s", str(args.rows)))
            print(f"built {TABLE} ({args.rows:,} rows) in {time.perf_counter() - t:.1f} s", flush=True)
        size = con.execute(f"SELECT pg_total_relation_size('{TABLE}')").fetchone()[0]  # type: ignore[index]

    results: dict[str, dict] = {}
    for method in args.methods.split(","):
        runs = []
        for i in range(args.runs):
            proc = subprocess.run(
                [sys.executable, __file__, "--child", method], capture_output=True, text=True, env=os.environ.copy()
            )
            if proc.returncode != 0:
                print(f"{method}: failed\n{proc.stderr[-2000:]}", flush=True)
                break
            out = json.loads(proc.stdout.strip().splitlines()[-1])
            assert out["rows"] == args.rows, f"{method} read {out['rows']} rows, expected {args.rows}"
            runs.append(out)
            print(f"  {method} run {i + 1}: {out['seconds']:.2f} s, peak {out['peak_rss_mb']:.0f} MB", flush=True)
        if not runs:
            continue
        med = statistics.median(r["seconds"] for r in runs)
        results[method] = {
            "seconds_median": round(med, 3),
            "seconds_runs": [round(r["seconds"], 3) for r in runs],
            "rows_per_s": round(args.rows / med),
            "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs), 1),
        }
    base_dlt = max((results[m]["rows_per_s"] for m in ("dlt_extract", "dlt_full") if m in results), default=None)
    raw = results.get("raw_copy", {}).get("rows_per_s")
    for res in results.values():
        res["x_dlt_fastest"] = round(res["rows_per_s"] / base_dlt, 2) if base_dlt else None
        res["share_of_raw_copy"] = round(res["rows_per_s"] / raw, 3) if raw else None

    print(f"\n{'method':18} {'median s':>9} {'rows/s':>11} {'x dlt':>6} {'of COPY':>8} {'peak MB':>8}")
    for m, r in results.items():
        print(f"{m:18} {r['seconds_median']:9.2f} {r['rows_per_s']:11,} {r['x_dlt_fastest'] or 0:6.2f} "
              f"{r['share_of_raw_copy'] or 0:8.1%} {r['peak_rss_mb']:8.0f}")  # fmt: skip
    goals = {}
    if "skyfed" in results:
        r = results["skyfed"]
        goals = {
            "x_dlt >= 2": (r["x_dlt_fastest"] or 0) >= 2,
            "share_of_raw_copy >= 0.5": (r["share_of_raw_copy"] or 0) >= 0.5,
            "peak_rss_mb < 1536": r["peak_rss_mb"] < 1536,
        }
        print("goals:", goals)
    out = {
        "table": TABLE,
        "rows": args.rows,
        "table_bytes": size,
        "runs": args.runs,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "note": "x_dlt_fastest compares with the faster of dlt_extract and dlt_full; each method ran in its own process",
        "results": results,
        "goals_met": goals,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "pg_read.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {HERE / 'results' / 'pg_read.json'}")


if __name__ == "__main__":
    main()
