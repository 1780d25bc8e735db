"""Per-query fixed cost of the federated coordinator: plan, bind, merge and audit on a small world.

Run:  .venv/bin/python bench/bench_query_overhead.py [--flights 2000] [--rounds 15] [--label after]
      [--profile QUERY]   (cProfile of one warm run of QUERY, top functions by cumulative time)

World: a small airline world seeded and ingested (full refresh) into its own SKYFED_HOME
(default /tmp/skyfed-bench-overhead/<flights>) with its own local services, reused when
already built. Region scans are tiny there, so what is left of a query's wall time is the
coordinator's fixed cost: the part issue 4's planning and latency goals are about.

Per query (the three airline metrics of bench_query.py and two governed shapes), measured in
one process with the result cache OFF (`connect(spec, cache=False)`; the example governance
file applies, as role `anonymous` and as `analyst`):
- cold: the first run of the query in a fresh Federation (no plan or bind entry yet);
- warm: later runs, interleaved with the other queries (round-robin), medians.
Figures: report.phases (plan, bind, regions, merge, audit), total wall seconds, the fixed
cost = total - regions, and whether the plan came from the plan cache. The peer is the
previous state of the code (the `before` label, recorded by the same script before the
change); both labels are kept in bench/results/query_overhead.json with the loadavg of every
round.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench_query import QUERIES as METRICS

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
EXAMPLE = ROOT / "examples" / "airline" / "skyfed.yaml"

QUERIES = {
    **METRICS,  # the three airline metrics, exactly as the 10M benchmark (bench_query.py) runs them
    "analyst_email_count": "SELECT region, count(email) AS with_email, avg(fare_usd) AS fare FROM booking GROUP BY region",
    "analyst_semi_join": (
        "SELECT b.booking_id, b.fare_usd, f.dep_airport FROM booking b JOIN flight_leg f ON f.flight_id = b.flight_id "
        "WHERE f.status = 'cancelled'"
    ),
}
ROLE = {"analyst_email_count": "analyst", "analyst_semi_join": "analyst"}


def _loadavg() -> float:
    return round(os.getloadavg()[0], 2)


def _world(home: Path, flights: int, log: Any) -> None:
    from skyfed.demo.seed import seed
    from skyfed.demo.world import WorldConfig
    from skyfed.ingest.batch import ingest
    from skyfed.spec import load_spec

    marker = home / "overhead-world.json"
    if marker.exists() and json.loads(marker.read_text()).get("flights") == flights:
        log(f"world of {flights} flights reused from {home}")
        return
    t0 = time.perf_counter()
    seed(WorldConfig(flights=flights, seed=7), home)
    _, _, failures = ingest(load_spec(EXAMPLE), full_refresh=True)
    if failures:
        raise SystemExit(f"ingest failed: {[(m.name, e.message) for m, e in failures]}")
    marker.write_text(json.dumps({"flights": flights}))
    log(f"world of {flights} flights seeded and ingested in {time.perf_counter() - t0:.1f} s")


def _run(fed: Any, sql: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    result = fed.query(sql)
    total = time.perf_counter() - t0
    ph = dict(result.report.phases)
    regions = ph.get("regions", 0.0)
    return {"total_s": total, "fixed_s": total - regions, "phases": ph,
            "plan_cache": result.report.plan_cache}  # fmt: skip


def _median(xs: list[float]) -> float:
    return round(statistics.median(xs), 5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flights", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--cold-rounds", type=int, default=3, help="fresh Federations for the cold (first-run) figure")
    ap.add_argument("--label", default="after")
    ap.add_argument("--home", default=None)
    ap.add_argument("--profile", default=None, help="cProfile one warm run of this query and print the top 35")
    ap.add_argument("--out", default=str(HERE / "results" / "query_overhead.json"))
    args = ap.parse_args()

    def log(msg: str) -> None:
        print(f"[bench_query_overhead {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    home = Path(args.home or f"/tmp/skyfed-bench-overhead/{args.flights}").resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["SKYFED_HOME"] = str(home)
    os.environ.setdefault("SKYFED_MASK_SALT", "bench-overhead-salt")
    os.environ.pop("SKYFED_ROLE", None)
    from skyfed import localenv

    localenv.up(home)
    os.environ.update(localenv.service_env(home))
    _world(home, args.flights, log)
    from skyfed.query import connect

    def feds() -> dict[str | None, Any]:
        return {role: connect(str(EXAMPLE), cache=False, timeout=120, role=role) for role in {None, *ROLE.values()}}

    if args.profile:
        fed = feds()[ROLE.get(args.profile)]
        sql = QUERIES[args.profile]
        for _ in range(3):
            fed.query(sql)
        prof = cProfile.Profile()
        prof.enable()
        fed.query(sql)
        prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(35)
        print(buf.getvalue())
        return

    cold: dict[str, list[dict[str, Any]]] = {q: [] for q in QUERIES}
    from skyfed.query.plan_cache import PLANS

    for _ in range(args.cold_rounds):  # every query's first run in a fresh Federation with an empty plan cache
        PLANS.clear()
        fs = feds()
        for q, sql in QUERIES.items():
            cold[q].append(_run(fs[ROLE.get(q)], sql))
    fs = feds()
    for q, sql in QUERIES.items():  # warm-up (not recorded)
        fs[ROLE.get(q)].query(sql)
    warm: dict[str, list[dict[str, Any]]] = {q: [] for q in QUERIES}
    loads = []
    for rnd in range(args.rounds):
        loads.append(_loadavg())
        names = list(QUERIES)
        k = rnd % len(names)
        for q in names[k:] + names[:k]:
            warm[q].append(_run(fs[ROLE.get(q)], QUERIES[q]))
    results: dict[str, Any] = {}
    for q in QUERIES:
        w, c = warm[q], cold[q]
        keys = sorted({k for x in w for k in x["phases"]})
        results[q] = {
            "role": ROLE.get(q, "anonymous"),
            "warm_total_ms": round(1000 * _median([x["total_s"] for x in w]), 2),
            "warm_fixed_ms": round(1000 * _median([x["fixed_s"] for x in w]), 2),
            "warm_phases_ms": {k: round(1000 * _median([x["phases"].get(k, 0.0) for x in w]), 2) for k in keys},
            "cold_total_ms": round(1000 * _median([x["total_s"] for x in c]), 2),
            "cold_fixed_ms": round(1000 * _median([x["fixed_s"] for x in c]), 2),
            "cold_plan_ms": round(1000 * _median([x["phases"].get("plan", 0.0) for x in c]), 2),
            "cold_bind_ms": round(1000 * _median([x["phases"].get("bind", 0.0) for x in c]), 2),
            "plan_cache_warm": sorted({str(x["plan_cache"]) for x in w}),
            "plan_cache_cold": sorted({str(x["plan_cache"]) for x in c}),
        }
        r = results[q]
        print(f"{q:26s} warm total {r['warm_total_ms']:7.1f} ms fixed {r['warm_fixed_ms']:6.1f} ms "
              f"phases {r['warm_phases_ms']} | cold plan {r['cold_plan_ms']:.1f} ms bind {r['cold_bind_ms']:.1f} ms "
              f"fixed {r['cold_fixed_ms']:.1f} ms | plan cache warm {r['plan_cache_warm']}")  # fmt: skip
    run = {"label": args.label, "flights": args.flights, "rounds": args.rounds, "cold_rounds": args.cold_rounds,
           "loadavg_per_round": loads, "results": results,
           "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
                       "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}  # fmt: skip
    path = Path(args.out)
    out: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    runs = out.get("runs", {})
    runs[args.label] = run
    out = {"benchmark": "query_overhead", "queries": QUERIES,
           "what": "coordinator fixed cost per query (total - regions) on a small world, result cache off",
           "peer": "label `before`: the same script on the code before the plan cache", "runs": runs}  # fmt: skip
    if "before" in runs and args.label != "before":
        b, a = runs["before"]["results"], run["results"]
        out["speedup_warm_fixed"] = {q: round(b[q]["warm_fixed_ms"] / max(a[q]["warm_fixed_ms"], 1e-6), 2)
                                     for q in a if q in b}  # fmt: skip
        print("warm fixed-cost speedup vs before:", out["speedup_warm_fixed"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=str) + "\n")
    print(f"wrote {path}; loadavg {min(loads)}-{max(loads)}")


if __name__ == "__main__":
    main()
