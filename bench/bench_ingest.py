"""End-to-end PostgreSQL ingest: skyfed (extract -> harmonize -> stage -> dedupe -> Iceberg) vs dlt vs raw COPY.

Setup (bench only, not project dependencies; already in .venv):
    .venv/bin/python -m pip install "dlt[duckdb,sql_database,parquet]" psutil

Run:  SKYFED_HOME=/tmp/skyfed-bench-ingest .venv/bin/python bench/bench_ingest.py [--rows 5000000] [--runs 3]

Starts the local federation (skyfed.localenv.up) in SKYFED_HOME and builds a flight-leg
table (`bench_ingest_legs`, the same shape as bench_pg_read.py's) with generate_series on
the server. Then, in rounds (one run of every method per round, so drift hits all alike),
each method runs in its own child process, so peak RSS is that method's alone:

  skyfed    skyfed.ingest.batch.ingest(spec, full_refresh=True) of a small spec of its own:
            the postgres source, a contract (19 columns, key, checks, partitioned by
            month(dep_time_utc)) and a mapping that renames and converts columns, into an
            Iceberg store in a fresh local warehouse and a fresh SQLite metadata database.
            The child times the runner's stages from outside (wrapping functions, src/ is
            not touched): see STAGES below. For this PostgreSQL table the runner takes
            the fused path (skyfed.ingest.fused: one DuckDB statement scans and harmonizes),
            timed as fused_statement + fused_split.
  skyfed_batch  (optional, --methods) the same with SKYFED_INGEST_FUSED=0: the batch path.
  dlt       dlt sql_database(backend="pyarrow", chunk_size=100_000) -> filesystem destination,
            loader_file_format="parquet" (extract + normalize + load: the whole pipeline).
  raw_copy  the limit: COPY (SELECT * ...) TO STDOUT (FORMAT binary) read into nothing (psycopg).

Optionally (--profile) one extra skyfed run under cProfile (main thread) reports the top
functions by own time. Writes bench/results/ingest_pg.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

from benchlib import legs_table_sql, pg_env, pg_uri
from typing import Any

HERE = Path(__file__).resolve().parent
TABLE = "bench_ingest_legs"
METHODS = ["skyfed", "dlt", "raw_copy"]  # also: skyfed_batch (the batch path, SKYFED_INGEST_FUSED=0)
GOAL_X_DLT = 2.0
GOAL_SHARE_COPY = 0.5
GOAL_PEAK_MB = 1536

CREATE = legs_table_sql(TABLE)

CONTRACT = {
    "version": 1,
    "key": ["leg_id"],
    "partition_by": "month(dep_time_utc)",
    "columns": {
        "leg_id": {"type": "string", "nullable": False},
        "flight_number": {"type": "string", "nullable": False},
        "carrier": {"type": "string", "nullable": False, "checks": {"allowed": ["SF", "SK", "SJ", "ST"]}},
        "dep_airport": {"type": "string", "nullable": False},
        "arr_airport": {"type": "string", "nullable": False},
        "tail_number": {"type": "string"},
        "dep_time_utc": {"type": "timestamptz", "nullable": False},
        "dep_actual_utc": {"type": "timestamptz"},
        "arr_actual_utc": {"type": "timestamptz"},
        "distance_km": {"type": "double", "nullable": False, "checks": {"min": 0, "max": 20000}},
        "fuel_kg": {"type": "double", "checks": {"min": 0}},
        "fare_local": {"type": "decimal(12,2)"},
        "currency": {"type": "string", "checks": {"allowed": ["PEN", "CLP", "BRL", "COP"]}},
        "load_factor": {"type": "double", "checks": {"min": 0, "max": 1}},
        "passengers": {"type": "int32", "checks": {"min": 0}},
        "status": {"type": "string", "nullable": False,
                   "checks": {"allowed": ["scheduled", "departed", "arrived", "cancelled", "diverted"]}},
        "updated_at_utc": {"type": "timestamptz", "nullable": False},
    },
}  # fmt: skip

MAPPING_COLUMNS = {
    "leg_id": "'BL-' || CAST(id AS VARCHAR)",
    "flight_number": "flight_no",
    "carrier": "carrier",
    "dep_airport": "trim(origin)",
    "arr_airport": "trim(dest)",
    "tail_number": "tail",
    "dep_time_utc": "CAST(dep_sched_local AS TIMESTAMPTZ)",
    "dep_actual_utc": "dep_actual_utc",
    "arr_actual_utc": "arr_actual_utc",
    "distance_km": "CAST(distance_km AS DOUBLE)",
    "fuel_kg": "CAST(fuel_kg AS DOUBLE)",
    "fare_local": "fare_local",
    "currency": "currency",
    "load_factor": "load_factor",
    "passengers": "pax",
    "status": "CASE status WHEN 'landed' THEN 'arrived' ELSE status END",
    "updated_at_utc": "updated_at",
}


def bench_spec(warehouse: str):
    """A one-region spec: the bench table -> contract `bench_leg` in an Iceberg store."""
    from skyfed.spec.models import PlatformSpec

    e = pg_env()
    return PlatformSpec.model_validate({
        "skyfed": 1, "name": "bench",
        "regions": {"bench": {
            "project": "skyfed-bench", "location": "local",
            "store": {"kind": "iceberg", "warehouse": warehouse},
            "sources": {"pg": {"kind": "postgres", "host": e["SKYFED_PG_HOST"], "port": int(e["SKYFED_PG_PORT"]),
                               "database": "skyfed", "user": e["SKYFED_PG_USER"], "password": "${SKYFED_PG_PASSWORD}"}},
        }},
        "contracts": {"bench_leg": CONTRACT},
        "mappings": [{"name": "bench_legs", "source": "bench.pg", "table": TABLE, "contract": "bench_leg",
                      "key": ["id"], "cursor": "updated_at", "columns": MAPPING_COLUMNS}],
    })  # fmt: skip


# --------------------------------------------------------------------------- stage timing (child)

# Stage timers, measured on the runner's (main) thread. The connector reads in
# background threads (parallel ctid ranges), so `extract` is the time the runner
# WAITED for the next batch, i.e. extraction's share of the critical path.
STAGES = {
    "setup": "open store, ensure table, table_info, position, reference/macros (the rest of run_mapping)",
    "extract": "waiting on PostgresConnector.read for the next batch (batch path)",
    "fused_statement": "fused path: the one DuckDB statement that scans the PostgreSQL table (parallel ctid ranges, "
                       "binary COPY) and runs the compiled mapping into the staging table",
    "fused_split": "fused path: after the statement, fail/warning/quarantine read-out by SQL, counters, stage view",
    "harmonize": "the compiled mapping SQL per batch (DuckDB) -> Arrow (batch path)",
    "split": "(batch path) per-batch Python/pyarrow around it: __seq column, fail/warn/quarantine split, counters",
    "stage": "INSERT of good rows into the DuckDB staging table (in memory, spills past SKYFED_INGEST_MEMORY)",
    "dedupe": "_deduplicated: builds the window query over the staging table (it runs inside commit)",
    "commit": "store.commit_query: the dedupe query run by DuckDB writing the Parquet data files itself "
              "(fresh table / full refresh), or streamed into the copy-on-write commit; then the catalog swap",
    "quarantine": "clear_quarantine + commit_quarantine",
}


class _Timers:
    def __init__(self) -> None:
        self.t: dict[str, float] = defaultdict(float)
        self.phase = "setup"
        self.rss_by_phase: dict[str, float] = defaultdict(float)

    def add(self, name: str, dt: float) -> None:
        self.t[name] += dt


T = _Timers()


def _rss_sampler(stop: threading.Event) -> None:
    import psutil

    proc = psutil.Process()
    while not stop.is_set():
        rss = proc.memory_info().rss / 2**20
        T.rss_by_phase[T.phase] = max(T.rss_by_phase[T.phase], rss)
        stop.wait(0.05)


def _instrument() -> None:
    """Wrap the runner's collaborators so each stage's wall time is summed (src/ unchanged)."""
    import duckdb

    import skyfed.ingest.stores.iceberg as ice
    from skyfed.connectors.postgres import PostgresConnector
    from skyfed.ingest import runner

    pc_ = time.perf_counter

    orig_read = PostgresConnector.read

    def read(self: Any, *a: Any, **k: Any) -> Any:
        T.phase = "extract+harmonize+stage"
        it = iter(orig_read(self, *a, **k))
        while True:
            t = pc_()
            try:
                b = next(it)
            except StopIteration:
                T.add("extract", pc_() - t)
                return
            T.add("extract", pc_() - t)
            yield b

    PostgresConnector.read = read  # type: ignore[method-assign]

    class _Rel:
        def __init__(self, rel: Any, bucket: str) -> None:
            self._rel, self._bucket = rel, bucket

        def to_arrow_table(self, *a: Any, **k: Any) -> Any:
            t = pc_()
            out = self._rel.to_arrow_table(*a, **k)
            T.add(self._bucket, pc_() - t)
            return out

        def __getattr__(self, name: str) -> Any:
            return getattr(self._rel, name)

    class _Con:
        def __init__(self, con: Any) -> None:
            self._con = con

        def sql(self, query: str, *a: Any, **k: Any) -> Any:
            rel = self._con.sql(query, *a, **k)
            if query.startswith("WITH parsed AS"):
                return _Rel(rel, "harmonize")
            return rel

        def execute(self, query: str, *a: Any, **k: Any) -> Any:
            t = pc_()
            out = self._con.execute(query, *a, **k)
            if query.startswith(("INSERT INTO stage", "CREATE OR REPLACE TABLE stage")):
                T.add("stage", pc_() - t)
            return out

        def __getattr__(self, name: str) -> Any:
            return getattr(self._con, name)

    class _DuckShim:
        def __getattr__(self, name: str) -> Any:
            return getattr(duckdb, name)

        @staticmethod
        def connect(*a: Any, **k: Any) -> Any:
            return _Con(duckdb.connect(*a, **k))

    runner.duckdb = _DuckShim()  # type: ignore[assignment]

    # The batch loop's wall time: from the first batch asked for to the loop's end (the
    # runner's _sliced yields its last batch after the connector is exhausted).
    orig_sliced = runner._sliced

    def sliced(*a: Any, **k: Any) -> Any:
        start = pc_()
        yield from orig_sliced(*a, **k)
        T.add("loop_wall", pc_() - start)

    runner._sliced = sliced  # type: ignore[assignment]

    def wrap(mod: Any, name: str, bucket: str, phase: str | None = None) -> None:
        orig = getattr(mod, name)

        def f(*a: Any, **k: Any) -> Any:
            if phase:
                T.phase = phase
            t = pc_()
            try:
                return orig(*a, **k)
            finally:
                T.add(bucket, pc_() - t)

        setattr(mod, name, f)

    # the fused PostgreSQL path (skyfed.ingest.fused): one statement scans and harmonizes
    from skyfed.ingest import fused

    wrap(fused, "stage", "fused_statement", "fused_statement")
    wrap(runner, "_run_fused", "fused_total")
    wrap(runner, "_deduplicated", "dedupe", "dedupe")
    wrap(ice.IcebergCuratedStore, "commit_query", "commit", "commit")
    wrap(ice.files_mod, "write_data_files", "commit.duckdb_write_files")
    wrap(ice.IcebergCuratedStore, "commit_quarantine", "quarantine")
    wrap(ice.IcebergCuratedStore, "clear_quarantine", "quarantine")
    wrap(ice, "conform", "commit.conform")
    wrap(ice, "check_unique", "commit.check_unique")
    wrap(ice, "_truncate", "commit.truncate")
    wrap(ice, "_upsert", "commit.upsert_total")

    # Parquet writes happen lazily inside tx.append / overwrite producers: time the writer function itself.
    import pyiceberg.io.pyarrow as pio
    import pyiceberg.table as ptable

    orig_wdf = pio.write_file

    def write_file(*a: Any, **k: Any) -> Any:
        t = pc_()
        out = list(orig_wdf(*a, **k))
        T.add("commit.parquet_write", pc_() - t)
        return iter(out)

    pio.write_file = write_file  # type: ignore[assignment]
    wrap(ptable.Transaction, "commit_transaction", "commit.catalog_commit")
    # these two run in _upsert's thread pool: their sums are thread-seconds, not wall seconds
    wrap(pio.ArrowScan, "to_table", "commit.upsert_file_reads_thread_s")
    wrap(ice, "_match_mask", "commit.upsert_match_thread_s")


def run_skyfed(profile: bool = False) -> dict[str, Any]:
    from skyfed.ingest.batch import ingest

    tmp = Path(
        tempfile.mkdtemp(prefix="skyfed-bench-run-", dir=os.environ.get("SKYFED_HOME"))
    )
    os.environ["SKYFED_METADATA_URL"] = f"sqlite:///{tmp / 'metadata.sqlite'}"
    spec = bench_spec(str(tmp / "warehouse"))
    extra: dict[str, Any] = {}
    try:
        if profile:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            start = time.perf_counter()
            prof.enable()
            _, results, failures = ingest(spec, full_refresh=True)
            prof.disable()
            seconds = time.perf_counter() - start
            st = pstats.Stats(prof)
            rows = sorted(st.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:25]  # type: ignore[attr-defined]
            extra["profile_top_tottime"] = [
                {
                    "function": f"{Path(fn).name}:{line}:{name}",
                    "calls": cc,
                    "tottime_s": round(tt, 3),
                    "cumtime_s": round(ct, 3),
                }
                for (fn, line, name), (cc, _nc, tt, ct, _callers) in rows
            ]
        else:
            _instrument()
            stop = threading.Event()
            sampler = threading.Thread(target=_rss_sampler, args=(stop,), daemon=True)
            sampler.start()
            start = time.perf_counter()
            _, results, failures = ingest(spec, full_refresh=True)
            seconds = time.perf_counter() - start
            stop.set()
            sampler.join()
        if failures:
            raise SystemExit(
                f"skyfed failed: {[(m.name, e.message) for m, e in failures]}"
            )
        res = results[0]
        from skyfed.ingest.stores import open_store

        store = open_store("bench", spec.regions["bench"].store)
        committed = store.row_count("bench_leg")
        warehouse_bytes = sum(
            p.stat().st_size for p in (tmp / "warehouse").rglob("*") if p.is_file()
        )
        data_files = sum(1 for p in (tmp / "warehouse").rglob("*.parquet"))
        if not profile:
            t = dict(T.t)
            loop = t.get("loop_wall", 0.0)
            stages = {
                k: round(t.get(k, 0.0), 3) for k in ("extract", "harmonize", "stage")
            }
            stages["split"] = round(loop - sum(stages.values()), 3)
            # fused path: no batch loop; its one statement, then the SQL bookkeeping after it
            stages["fused_statement"] = round(t.get("fused_statement", 0.0), 3)
            stages["fused_split"] = round(t.get("fused_total", 0.0) - t.get("fused_statement", 0.0), 3)
            stages.update(
                {k: round(t.get(k, 0.0), 3) for k in ("dedupe", "commit", "quarantine")}
            )
            stages["setup"] = round(
                seconds
                - loop
                - t.get("fused_total", 0.0)
                - stages["dedupe"]
                - stages["commit"]
                - stages["quarantine"],
                3,
            )
            stages["total"] = round(seconds, 3)
            extra["stages_s"] = stages
            extra["commit_parts_s"] = {
                k.split(".", 1)[1]: round(v, 3)
                for k, v in sorted(t.items())
                if k.startswith("commit.")
            }
            extra["peak_rss_mb_by_phase"] = {
                k: round(v) for k, v in T.rss_by_phase.items()
            }
        extra.update({
            "rows_read": res.rows_read, "rows_loaded": res.rows_loaded, "rows_quarantined": res.rows_quarantined,
            "rows_committed": committed, "runner_seconds": round(res.seconds, 3), "warehouse_bytes": warehouse_bytes,
            "data_files": data_files,
        })  # fmt: skip
        return {"rows": res.rows_read, "seconds": seconds, **extra}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_dlt() -> dict[str, Any]:
    import dlt
    import pyarrow.parquet as pq
    from dlt.sources.sql_database import sql_database

    os.environ["RUNTIME__LOG_LEVEL"] = "WARNING"
    with tempfile.TemporaryDirectory(
        prefix="dlt-bench-", dir=os.environ.get("SKYFED_HOME")
    ) as tmp:
        os.environ["DLT_DATA_DIR"] = tmp
        start = time.perf_counter()
        source = sql_database(
            credentials=pg_uri().replace("postgresql://", "postgresql+psycopg2://"),
            table_names=[TABLE], backend="pyarrow", chunk_size=100_000,
        )  # fmt: skip
        pipe = dlt.pipeline(
            pipeline_name="bench_ingest", destination=dlt.destinations.filesystem(bucket_url=f"file://{tmp}/out"),
            dataset_name="dlt_data", pipelines_dir=f"{tmp}/pipelines",
        )  # fmt: skip
        pipe.run(source, loader_file_format="parquet")
        seconds = time.perf_counter() - start
        files = list(Path(tmp, "out", "dlt_data", TABLE).rglob("*.parquet"))
        rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        out_bytes = sum(f.stat().st_size for f in files)
        steps = {}
        trace = pipe.last_trace
        for step in trace.steps:
            if step.started_at and step.finished_at:
                steps[step.step] = round(
                    (step.finished_at - step.started_at).total_seconds(), 3
                )
        return {
            "rows": rows,
            "seconds": seconds,
            "steps_s": steps,
            "out_bytes": out_bytes,
            "data_files": len(files),
        }


def run_raw_copy() -> dict[str, Any]:
    import psycopg

    nbytes = 0
    start = time.perf_counter()
    with (
        psycopg.connect(pg_uri()) as con,
        con.cursor() as cur,
        cur.copy(f"COPY (SELECT * FROM {TABLE}) TO STDOUT (FORMAT binary)") as copy,
    ):
        for chunk in copy:
            nbytes += len(chunk)
    seconds = time.perf_counter() - start
    with psycopg.connect(pg_uri()) as con:
        rows = int(con.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0])  # type: ignore[index]
    return {"rows": rows, "seconds": seconds, "copy_bytes": nbytes}


def _warm(method: str) -> None:
    """Imports (and DuckDB extension loading) outside the timed part, for every method alike."""
    import psycopg  # noqa: F401

    if method.startswith("skyfed"):
        import pyiceberg.catalog.sql  # noqa: F401

        import skyfed.ingest.batch
        import skyfed.ingest.stores.iceberg  # noqa: F401
        from skyfed.connectors import duck, postgres  # noqa: F401

        duck.connect(["postgres"]).close()
    elif method == "dlt":
        import dlt  # noqa: F401
        from dlt.sources.sql_database import sql_database  # noqa: F401


def child(method: str) -> None:
    _warm(method)
    if method == "skyfed":
        out = run_skyfed()
    elif method == "skyfed_batch":  # the batch path, for comparison (the fused path switched off)
        os.environ["SKYFED_INGEST_FUSED"] = "0"
        out = run_skyfed()
    elif method == "skyfed_profile":
        out = run_skyfed(profile=True)
    elif method == "dlt":
        out = run_dlt()
    elif method == "raw_copy":
        out = run_raw_copy()
    else:
        raise SystemExit(f"unknown method {method}")
    out["method"] = method
    out["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out["peak_rss_mb"] = usage.ru_maxrss / 1024
    # CPU seconds of this process (all threads): less sensitive to other jobs than wall time
    out["cpu_s"] = round(usage.ru_utime + usage.ru_stime, 2)
    print(json.dumps(out))


def _git_state() -> dict[str, Any]:
    def git(*a: str) -> str:
        return subprocess.run(
            ["git", *a], cwd=HERE.parent, capture_output=True, text=True, check=False
        ).stdout.strip()

    return {
        "commit": git("rev-parse", "HEAD"),
        "dirty_src_files": git("status", "--porcelain", "--", "src").splitlines(),
    }


def _median_dict(dicts: list[dict[str, float]]) -> dict[str, float]:
    keys = dicts[0].keys()
    return {
        k: round(statistics.median(d.get(k) or 0.0 for d in dicts), 3) for k in keys
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument(
        "--profile", action="store_true", help="one extra skyfed run under cProfile"
    )
    ap.add_argument("--child")
    ap.add_argument(
        "--keep-table",
        action="store_true",
        help="reuse the table if it has --rows rows",
    )
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument(
        "--keep-profile",
        action="store_true",
        help="without --profile: keep the cProfile section of the last results file",
    )
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return

    os.environ.setdefault("SKYFED_HOME", "/tmp/skyfed-bench-ingest")
    from skyfed import localenv

    localenv.up(os.environ["SKYFED_HOME"])
    os.environ.update(localenv.service_env(os.environ["SKYFED_HOME"]))
    import psycopg

    with psycopg.connect(pg_uri(), autocommit=True) as con:
        have = con.execute(
            f"SELECT count(*) FROM pg_class WHERE relname = '{TABLE}'"
        ).fetchone()[0]  # type: ignore[index]
        n = con.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0] if have else 0  # type: ignore[index]
        if not (args.keep_table and n == args.rows):
            t = time.perf_counter()
            for stmt in CREATE.split(";\n"):
                if stmt.strip():
                    con.execute(stmt.replace("%(rows)s", str(args.rows)))
            print(
                f"built {TABLE} ({args.rows:,} rows) in {time.perf_counter() - t:.1f} s",
                flush=True,
            )
        size = con.execute(f"SELECT pg_total_relation_size('{TABLE}')").fetchone()[0]  # type: ignore[index]

    methods = args.methods.split(",")
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}

    def run_child(method: str) -> dict[str, Any] | None:
        load0 = round(os.getloadavg()[0], 2)
        proc = subprocess.run(
            [sys.executable, __file__, "--child", method],
            capture_output=True,
            text=True,
            env=os.environ.copy(),
            check=False,
        )
        if proc.returncode != 0:
            print(f"{method}: failed\n{proc.stderr[-3000:]}", flush=True)
            return None
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        out["loadavg_1m_at_start"] = load0
        return out

    for i in range(args.runs):
        for method in methods:
            out = run_child(method)
            if out is None:
                continue
            assert out["rows"] == args.rows, (
                f"{method} moved {out['rows']} rows, expected {args.rows}"
            )
            runs[method].append(out)
            line = (f"  round {i + 1} {method:9}: {out['seconds']:7.2f} s  {args.rows / out['seconds']:>11,.0f} rows/s  "
                    f"peak {out['peak_rss_mb']:6.0f} MB  cpu {out.get('cpu_s', 0):6.1f} s  load {out['loadavg_1m_at_start']}")
            if "stages_s" in out:
                line += "  " + " ".join(f"{k}={v}" for k, v in out["stages_s"].items())
            if "steps_s" in out:
                line += "  " + " ".join(f"{k}={v}" for k, v in out["steps_s"].items())
            print(line, flush=True)

    results: dict[str, dict[str, Any]] = {}
    for method, rs in runs.items():
        if not rs:
            continue
        med = statistics.median(r["seconds"] for r in rs)
        res: dict[str, Any] = {
            "seconds_median": round(med, 3),
            "seconds_runs": [round(r["seconds"], 3) for r in rs],
            "rows_per_s": round(args.rows / med),
            "peak_rss_mb": round(max(r["peak_rss_mb"] for r in rs), 1),
            "cpu_s_median": round(statistics.median(r.get("cpu_s", 0.0) for r in rs), 2),
            "loadavg_1m_runs": [
                (r["loadavg_1m_at_start"], r["loadavg_1m_at_end"]) for r in rs
            ],
        }
        if method.startswith("skyfed"):
            res["stages_s_median"] = _median_dict([r["stages_s"] for r in rs])
            res["commit_parts_s_median"] = _median_dict(
                [r["commit_parts_s"] for r in rs]
            )
            res["peak_rss_mb_by_phase_max"] = {
                k: max(r["peak_rss_mb_by_phase"].get(k, 0) for r in rs)
                for k in rs[0]["peak_rss_mb_by_phase"]
            }
            for k in (
                "rows_loaded",
                "rows_quarantined",
                "rows_committed",
                "warehouse_bytes",
                "data_files",
            ):
                res[k] = rs[-1][k]
        if method == "dlt":
            res["steps_s_median"] = _median_dict([r["steps_s"] for r in rs])
            res["out_bytes"], res["data_files"] = (
                rs[-1]["out_bytes"],
                rs[-1]["data_files"],
            )
        if method == "raw_copy":
            res["copy_bytes"] = rs[-1]["copy_bytes"]
        results[method] = res

    profile = None
    if args.profile:
        out = run_child("skyfed_profile")
        if out:
            profile = {
                "seconds_under_cprofile": round(out["seconds"], 3),
                "top_tottime": out["profile_top_tottime"],
            }

    previous = HERE / "results" / "ingest_pg.json"
    if profile is None and args.keep_profile and previous.exists():
        profile = json.loads(previous.read_text()).get("skyfed_cprofile")

    dlt_rate = results.get("dlt", {}).get("rows_per_s")
    raw = results.get("raw_copy", {}).get("rows_per_s")
    for res in results.values():
        res["x_dlt"] = round(res["rows_per_s"] / dlt_rate, 2) if dlt_rate else None
        res["share_of_raw_copy"] = round(res["rows_per_s"] / raw, 3) if raw else None

    print(
        f"\n{'method':10} {'median s':>9} {'rows/s':>11} {'x dlt':>6} {'of COPY':>8} {'peak MB':>8}"
    )
    for m, r in results.items():
        print(f"{m:10} {r['seconds_median']:9.2f} {r['rows_per_s']:11,} {r['x_dlt'] or 0:6.2f} "
              f"{r['share_of_raw_copy'] or 0:8.1%} {r['peak_rss_mb']:8.0f}")  # fmt: skip
    goals: dict[str, bool | None] = {}
    if "skyfed" in results:
        r = results["skyfed"]
        print("skyfed stages (median s):", r["stages_s_median"])
        print("skyfed commit parts (median s):", r["commit_parts_s_median"])
        print("skyfed peak RSS by phase (MB):", r["peak_rss_mb_by_phase_max"])
        # a goal whose peer was not run in this invocation is None (not measured), not False
        goals = {
            f"x_dlt >= {GOAL_X_DLT:g}": None if r["x_dlt"] is None else r["x_dlt"] >= GOAL_X_DLT,
            f"share_of_raw_copy >= {GOAL_SHARE_COPY:g}": None
            if r["share_of_raw_copy"] is None
            else r["share_of_raw_copy"] >= GOAL_SHARE_COPY,
            f"peak_rss_mb < {GOAL_PEAK_MB}": r["peak_rss_mb"] < GOAL_PEAK_MB,
        }
        print("goals:", goals)
    if profile:
        print(f"cProfile run: {profile['seconds_under_cprofile']} s; top by own time:")
        for p in profile["top_tottime"][:12]:
            print(f"  {p['tottime_s']:8.2f} s  {p['calls']:>9}  {p['function']}")
    out = {
        "benchmark": "ingest_pg",
        "table": TABLE,
        "rows": args.rows,
        "table_bytes": size,
        "runs": args.runs,
        "machine": {
            "cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "mem_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        },
        "methods": {
            "skyfed": "skyfed.ingest.batch.ingest(spec, full_refresh=True): postgres -> mapping (17 columns, renames, "
                      "casts, CASE, checks) -> Iceberg (month(dep_time_utc) partitions, local warehouse, SQLite catalog); "
                      "the default path for this source is the fused one (one DuckDB statement scans the table over "
                      "parallel ctid ranges and harmonizes into staging, skyfed.ingest.fused)",
            "skyfed_batch": "the same with SKYFED_INGEST_FUSED=0: the batch path (connector Arrow batches -> harmonize "
                            "per 200k-row batch -> split -> staging)",
            "dlt": 'dlt sql_database(backend="pyarrow", chunk_size=100_000) -> filesystem destination, parquet files',
            "raw_copy": "COPY (SELECT * ...) TO STDOUT (FORMAT binary) read into nothing with psycopg",
        },
        "stage_definitions": STAGES,
        "note": "medians of interleaved rounds; every run in its own process; peak RSS = ru_maxrss of that process; "
                "the machine was shared with other jobs (see loadavg_1m_runs: (start, end) of each run)",
        "source_tree": _git_state(),
        "results": results,
        "skyfed_cprofile": profile,
        "goals_met": goals,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }  # fmt: skip
    if not args.no_write:
        (HERE / "results").mkdir(exist_ok=True)
        (HERE / "results" / "ingest_pg.json").write_text(
            json.dumps(out, indent=2) + "\n"
        )
        print(f"wrote {HERE / 'results' / 'ingest_pg.json'}")


if __name__ == "__main__":
    main()
