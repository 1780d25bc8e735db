"""The whole airline demo world: seed N flights, then `ingest(spec, full_refresh=True)` with the example spec.

Run:  SKYFED_HOME=/tmp/skyfed-bench-ingest .venv/bin/python bench/bench_world_ingest.py \
          [--flights 1000000] [--seed 42] [--timeout 1200] [--reuse-seed]

Steps:
1. `skyfed.localenv.up(home)`, then `skyfed.demo.seed.seed(WorldConfig(flights, seed), home)` (timed
   separately: generation and the writes into PostgreSQL, the BigQuery emulator and the GCS
   emulator are not part of the ingest figures). --reuse-seed skips it when the manifest in
   SKYFED_HOME already has the same flights and seed.
2. In a child process (its peak RSS is the ingest's alone): load examples/airline/skyfed.yaml,
   run `skyfed.ingest.batch.ingest(spec, full_refresh=True)` over every mapping (they run one after
   another, as `skyfed ingest` does), timing each mapping's stages from outside (wrapped
   functions; src/ is not touched) and sampling RSS per mapping. Each finished mapping is
   printed as one JSON line, so a run that exceeds --timeout still reports what finished.
3. Verification against the seed manifest: per mapping, rows committed == the manifest's
   ground_truth_rows and rows quarantined == its `quarantined`; per region and contract, the
   store's row count == ground_truth_rows.

Writes bench/results/world_ingest.json (with machine info, date, seed timings).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
EXAMPLE = ROOT / "examples" / "airline" / "skyfed.yaml"


# --------------------------------------------------------------------------- child: ingest with stage timers


class _State:
    def __init__(self) -> None:
        self.t: dict[str, float] = defaultdict(float)
        self.rss_peak = 0.0


S = _State()


def _instrument() -> None:
    """Stage timers around the runner's collaborators, for any connector and store kind."""
    import duckdb

    from skyfed.ingest import runner

    pc_ = time.perf_counter
    orig_connector_for = runner.connector_for

    class _TimedConnector:
        def __init__(self, inner: Any) -> None:
            self._inner = inner

        def read(self, *a: Any, **k: Any) -> Any:
            it = iter(self._inner.read(*a, **k))
            while True:
                t = pc_()
                try:
                    b = next(it)
                except StopIteration:
                    S.t["extract"] += pc_() - t
                    return
                S.t["extract"] += pc_() - t
                yield b

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

    runner.connector_for = lambda spec, *a, **k: _TimedConnector(
        orig_connector_for(spec, *a, **k)
    )  # type: ignore[assignment]

    class _Rel:
        def __init__(self, rel: Any) -> None:
            self._rel = rel

        def to_arrow_table(self, *a: Any, **k: Any) -> Any:
            t = pc_()
            out = self._rel.to_arrow_table(*a, **k)
            S.t["harmonize"] += pc_() - t
            return out

        def __getattr__(self, name: str) -> Any:
            return getattr(self._rel, name)

    class _Con:
        def __init__(self, con: Any) -> None:
            self._con = con

        def sql(self, query: str, *a: Any, **k: Any) -> Any:
            rel = self._con.sql(query, *a, **k)
            return _Rel(rel) if query.startswith("WITH parsed AS") else rel

        def execute(self, query: str, *a: Any, **k: Any) -> Any:
            t = pc_()
            out = self._con.execute(query, *a, **k)
            if query.startswith(("INSERT INTO stage", "CREATE OR REPLACE TABLE stage")):
                S.t["stage"] += pc_() - t
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
        S.t["loop_wall"] += pc_() - start

    runner._sliced = sliced  # type: ignore[assignment]

    def wrap(owner: Any, name: str, bucket: str) -> None:
        orig = getattr(owner, name)

        def f(*a: Any, **k: Any) -> Any:
            t = pc_()
            try:
                return orig(*a, **k)
            finally:
                S.t[bucket] += pc_() - t

        setattr(owner, name, f)

    from skyfed.ingest.stores.bigquery import BigQueryCuratedStore
    from skyfed.ingest.stores.iceberg import IcebergCuratedStore

    wrap(runner, "_deduplicated", "dedupe")
    for cls in (IcebergCuratedStore, BigQueryCuratedStore):
        wrap(cls, "commit_query", "commit")  # runs the de-dup query (and, for Iceberg, may call commit)
        wrap(cls, "commit_quarantine", "quarantine")
        wrap(cls, "clear_quarantine", "quarantine")


def _stages(seconds: float) -> dict[str, float]:
    t = S.t
    loop = t.get("loop_wall", 0.0)
    out = {k: round(t.get(k, 0.0), 3) for k in ("extract", "harmonize", "stage")}
    out["split"] = round(loop - sum(out.values()), 3)
    out.update({k: round(t.get(k, 0.0), 3) for k in ("dedupe", "commit", "quarantine")})
    out["setup"] = round(
        seconds - loop - out["dedupe"] - out["commit"] - out["quarantine"], 3
    )
    return out


def child() -> None:
    import psutil

    from skyfed.spec import load_spec

    _instrument()
    from skyfed.ingest import batch

    spec = load_spec(EXAMPLE)
    proc = psutil.Process()
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            S.rss_peak = max(S.rss_peak, proc.memory_info().rss / 2**20)
            stop.wait(0.05)

    threading.Thread(target=sample, daemon=True).start()
    orig_run = batch.run_mapping

    def run_mapping(spec_: Any, mapping: Any, **k: Any) -> Any:
        S.t.clear()
        S.rss_peak = proc.memory_info().rss / 2**20
        t = time.perf_counter()
        try:
            res = orig_run(spec_, mapping, **k)
        except BaseException as exc:
            print(json.dumps({"mapping": mapping.name, "error": str(exc)[:500],
                              "seconds": round(time.perf_counter() - t, 3)}), flush=True)  # fmt: skip
            raise
        seconds = time.perf_counter() - t
        d = res.to_dict()
        line = {
            "mapping": mapping.name, "region": res.region, "source": res.source, "source_table": res.source_table,
            "contract": res.contract, "store": spec_.regions[res.region].store.kind,
            "source_kind": spec_.source(res.source).kind, "seconds": round(seconds, 3),
            **{k: d[k] for k in ("rows_read", "rows_loaded", "rows_quarantined", "rows_filtered", "rows_superseded",
                                 "rows_committed", "bytes_read")},
            "rows_per_s": round(res.rows_read / seconds) if seconds else None,
            "stages_s": _stages(seconds), "peak_rss_mb": round(S.rss_peak),
        }  # fmt: skip
        print(json.dumps(line), flush=True)
        return res

    batch.run_mapping = run_mapping  # type: ignore[assignment]
    start = time.perf_counter()
    selectors = [x for x in os.environ.get("BENCH_SELECT", "").split(",") if x]
    _, _results, failures = batch.ingest(spec, selectors, full_refresh=True)
    seconds = time.perf_counter() - start
    stop.set()

    from skyfed.ingest.stores import open_store

    counts: dict[str, dict[str, int]] = {}
    for region, reg in spec.regions.items():
        store = open_store(region, reg.store)
        counts[region] = {
            c: store.row_count(c)
            for c in ("flight_leg", "booking", "customer_feedback")
        }
    print(json.dumps({
        "done": True, "seconds": round(seconds, 3), "failures": [(m.name, e.message) for m, e in failures],
        "store_rows": counts, "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }), flush=True)  # fmt: skip


# --------------------------------------------------------------------------- parent


def _seed(flights: int, seed_: int, home: Path, reuse: bool) -> dict[str, Any]:
    from skyfed.demo.seed import read_manifest, seed
    from skyfed.demo.world import WorldConfig

    man = read_manifest(home)
    if reuse and man and man.get("flights") == flights and man.get("seed") == seed_:
        print(
            f"reusing the seeded world in {home} ({flights:,} flights, seed {seed_})",
            flush=True,
        )
        return {"manifest": man, "timings": None}
    t = time.perf_counter()
    out = seed(WorldConfig(flights=flights, seed=seed_), home)
    timings = {k: round(v, 2) for k, v in out["timings"].items()}
    print(
        f"seeded {flights:,} flights in {time.perf_counter() - t:.1f} s: {timings}",
        flush=True,
    )
    return {"manifest": out["manifest"], "timings": timings}


def _verify(
    mappings: list[dict[str, Any]],
    done: dict[str, Any] | None,
    manifest: dict[str, Any],
) -> dict[str, Any]:
    checks: list[dict[str, Any]] = []
    truth_by_contract: dict[tuple[str, str], int] = defaultdict(int)
    for region, reg in manifest["regions"].items():
        for st in reg["tables"].values():
            truth_by_contract[(region, st["contract"])] += st["ground_truth_rows"]
    for m in mappings:
        if "error" in m:
            checks.append({"mapping": m["mapping"], "ok": False, "error": m["error"]})
            continue
        st = manifest["regions"][m["region"]]["tables"][m["source_table"]]
        checks.append({
            "mapping": m["mapping"],
            "committed": m["rows_committed"], "truth_rows": st["ground_truth_rows"],
            "quarantined": m["rows_quarantined"], "truth_quarantined": st["quarantined"],
            "read": m["rows_read"], "source_rows": st["source_rows"],
            "ok": m["rows_committed"] == st["ground_truth_rows"] and m["rows_quarantined"] == st["quarantined"],
        })  # fmt: skip
    store_checks = []
    if done:
        for region, per in done["store_rows"].items():
            for contract, n in per.items():
                want = truth_by_contract[(region, contract)]
                store_checks.append({"region": region, "contract": contract, "store_rows": n, "truth_rows": want,
                                     "ok": n == want})  # fmt: skip
    ok = (
        bool(checks)
        and all(c["ok"] for c in checks)
        and bool(store_checks)
        and all(c["ok"] for c in store_checks)
    )
    return {"all_equal": ok, "mappings": checks, "stores": store_checks}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--flights", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument(
        "--timeout", type=float, default=1200.0, help="seconds allowed for the ingest"
    )
    ap.add_argument("--reuse-seed", action="store_true")
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument(
        "--select",
        default="",
        help="comma-separated mappings/regions to (re)run; their results replace those of the same names in "
        "the last run of this size, and the verification is redone over the merged set",
    )
    args = ap.parse_args()
    if args.child:
        child()
        return

    home = Path(
        os.environ.setdefault("SKYFED_HOME", "/tmp/skyfed-bench-ingest")
    ).resolve()
    from skyfed import localenv

    localenv.up(home)
    os.environ.update(localenv.service_env(home))
    seeded = _seed(args.flights, args.seed, home, args.reuse_seed)
    manifest = seeded["manifest"]
    source_rows = sum(
        st["source_rows"]
        for reg in manifest["regions"].values()
        for st in reg["tables"].values()
    )

    os.environ["BENCH_SELECT"] = args.select
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=os.environ.copy())  # fmt: skip
    mappings: list[dict[str, Any]] = []
    done: dict[str, Any] | None = None
    timer = threading.Timer(args.timeout, proc.kill)
    timer.start()
    assert proc.stdout is not None
    for line in proc.stdout:
        if not line.startswith("{"):
            continue
        rec = json.loads(line)
        if rec.get("done"):
            done = rec
            continue
        mappings.append(rec)
        if "error" in rec:
            print(
                f"  {rec['mapping']:15} FAILED after {rec['seconds']} s: {rec['error']}",
                flush=True,
            )
        else:
            print(f"  {rec['mapping']:15} {rec['region']:6} {rec['seconds']:8.1f} s {rec['rows_read']:>10,} rows "
                  f"{rec['rows_per_s'] or 0:>9,} rows/s  peak {rec['peak_rss_mb']:5} MB  {rec['stages_s']}", flush=True)  # fmt: skip
    proc.wait()
    timer.cancel()
    wall = time.perf_counter() - start
    timed_out = done is None and wall >= args.timeout
    stderr = proc.stderr.read() if proc.stderr else ""
    if done is None:
        print(
            f"ingest did not finish ({'timeout' if timed_out else 'rc ' + str(proc.returncode)}):\n{stderr[-3000:]}"
        )

    merged_from = None
    if args.select:
        path = HERE / "results" / "world_ingest.json"
        old = (
            json.loads(path.read_text())
            .get("runs_by_flights", {})
            .get(str(args.flights))
            if path.exists()
            else None
        )
        if old:
            rerun = {m["mapping"] for m in mappings}
            mappings = [
                m for m in old["per_mapping"] if m["mapping"] not in rerun
            ] + mappings
            merged_from = {
                "measured_at": old["measured_at"],
                "rerun_mappings": sorted(rerun),
            }
            if done:
                done = {**done, "seconds": round(sum(m.get("seconds", 0) for m in mappings), 3),
                        "peak_rss_mb": max(done["peak_rss_mb"], old.get("peak_rss_mb") or 0)}  # fmt: skip

    per_region: dict[str, dict[str, Any]] = {}
    for m in mappings:
        if "error" in m:
            continue
        r = per_region.setdefault(m["region"], {"seconds": 0.0, "rows_read": 0, "store": m["store"],
                                                 "source_kind": m["source_kind"], "peak_rss_mb": 0})  # fmt: skip
        r["seconds"] = round(r["seconds"] + m["seconds"], 3)
        r["rows_read"] += m["rows_read"]
        r["peak_rss_mb"] = max(r["peak_rss_mb"], m["peak_rss_mb"])
    for r in per_region.values():
        r["rows_per_s"] = round(r["rows_read"] / r["seconds"]) if r["seconds"] else None
    verification = _verify(mappings, done, manifest)
    from skyfed.spec import load_spec

    reported = {m["mapping"] for m in mappings}
    unfinished = [m.name for m in load_spec(EXAMPLE).mappings if m.name not in reported]
    if unfinished:
        print(
            f"not finished: {unfinished} (the first was running when the ingest stopped)"
        )

    total_rows = sum(m.get("rows_read", 0) for m in mappings)
    print(
        f"\n{'region':7} {'source':9} {'store':8} {'seconds':>8} {'rows':>11} {'rows/s':>9} {'peak MB':>8}"
    )
    for region, r in per_region.items():
        print(f"{region:7} {r['source_kind']:9} {r['store']:8} {r['seconds']:8.1f} {r['rows_read']:11,} "
              f"{r['rows_per_s'] or 0:9,} {r['peak_rss_mb']:8}")  # fmt: skip
    if done:
        print(f"end to end: {done['seconds']:.1f} s for {total_rows:,} source rows "
              f"({total_rows / done['seconds']:,.0f} rows/s), peak RSS {done['peak_rss_mb']} MB")  # fmt: skip
    print(
        "verified against the seed manifest:",
        "all equal" if verification["all_equal"] else "MISMATCH",
    )
    for c in verification["mappings"] + verification["stores"]:
        if not c["ok"]:
            print("  mismatch:", c)

    out = {
        "benchmark": "world_ingest",
        "flights": args.flights,
        "seed": args.seed,
        "spec": str(EXAMPLE.relative_to(ROOT)),
        "source_rows": source_rows,
        "seed_timings_s": seeded["timings"],
        "bench_patches": [],
        "finished": done is not None,
        "timed_out": timed_out,
        "timeout_s": args.timeout,
        "ingest_seconds_end_to_end": done["seconds"] if done else None,
        "ingest_wall_with_process_start_s": round(wall, 3),
        "rows_per_s_end_to_end": round(total_rows / done["seconds"]) if done else None,
        "peak_rss_mb": done["peak_rss_mb"] if done else max((m.get("peak_rss_mb", 0) for m in mappings), default=None),
        "per_region": per_region,
        "per_mapping": mappings,
        "merged_with_earlier_run": merged_from,
        "unfinished_mappings": unfinished,
        "failures": done["failures"] if done else None,
        "verification": verification,
        "machine": {
            "cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "mem_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        },
        "note": "mappings run one after another in one process; per-region seconds are the sums of its mappings; "
                "stages_s: extract = waiting for the connector's next batch, harmonize = mapping SQL, "
                "stage = DuckDB staging inserts, split = the rest of the batch loop, setup = the rest of run_mapping",
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }  # fmt: skip
    if not args.no_write:
        _write(out)


def _write(run: dict[str, Any]) -> None:
    """Keep one entry per world size in results/world_ingest.json (the newest run of each size)."""
    path = HERE / "results" / "world_ingest.json"
    path.parent.mkdir(exist_ok=True)
    runs: dict[str, Any] = {}
    if path.exists():
        old = json.loads(path.read_text())
        runs = old.get("runs_by_flights") or (
            {str(old["flights"]): old} if "flights" in old else {}
        )
    runs[str(run["flights"])] = run
    complete = [
        int(k)
        for k, r in runs.items()
        if r.get("finished") and r["verification"]["all_equal"]
    ]
    unpatched = [k for k in complete if not runs[str(k)].get("bench_patches")]
    doc = {
        "benchmark": "world_ingest",
        "goal": "the full demo world at 1M flights: seconds end to end per region",
        "largest_complete_and_verified_flights": max(complete) if complete else None,
        "largest_complete_and_verified_flights_without_bench_patches": max(unpatched)
        if unpatched
        else None,
        "runs_by_flights": dict(sorted(runs.items(), key=lambda kv: int(kv[0]))),
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
