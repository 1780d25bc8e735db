"""Policy rewrite overhead of a governed federated query: planning time with and without a role.

Pure planner work (no services): the airline example spec and governance file, five query
shapes, each planned `--rounds` times ungoverned and as `analyst` (hash/partial/redact masks,
residency with k = 10, merge in na), interleaved so that a busy machine affects both alike.
Peer: the same planner without a governance file. Goal: the governed plan stays under the
planner's 50 ms budget (docs/architecture.md) and adds at most 10 ms per query (median).
Writes bench/results/query_governance.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUERIES = {
    "aggregate": "SELECT region, count(*) AS n, avg(fare_usd) FROM booking GROUP BY region",
    "restricted_aggregate": "SELECT region, count(email) AS n FROM booking GROUP BY region",
    "join": "SELECT f.region, count(*) FROM flight_leg f JOIN booking b ON b.flight_id = f.flight_id "
            "AND b.region = f.region GROUP BY f.region",
    "top_n": "SELECT booking_id, fare_usd FROM booking ORDER BY fare_usd DESC LIMIT 10",
    "masked_rows_home_region": "SELECT booking_id, email, phone FROM na.booking WHERE status = 'confirmed'",
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    os.environ.setdefault("SKYFED_MASK_SALT", "bench-salt")
    from skyfed.governance.config import load_governance
    from skyfed.query.catalog import Catalog
    from skyfed.query.governed import build_governor
    from skyfed.query.planner import plan_query
    from skyfed.spec import load_spec

    spec = load_spec(ROOT / "examples/airline/skyfed.yaml")
    gov = load_governance(ROOT / "examples/airline/skyfed.governance.yaml")
    plain = Catalog.from_spec(spec)
    governed = Catalog.from_spec(spec)
    governed.governor = build_governor(spec, role="analyst", coordinator="na", governance=gov)
    times: dict[str, dict[str, list[float]]] = {q: {"plain": [], "governed": []} for q in QUERIES}
    loads = []
    for _ in range(args.rounds):
        loads.append(round(os.getloadavg()[0], 2))
        for name, sql in QUERIES.items():
            for kind, cat in (("plain", plain), ("governed", governed)):
                t0 = time.perf_counter()
                plan_query(sql, cat)
                times[name][kind].append((time.perf_counter() - t0) * 1000)
    rows = {}
    for name, t in times.items():
        p, g = statistics.median(t["plain"]), statistics.median(t["governed"])
        rows[name] = {"plain_ms": round(p, 2), "governed_ms": round(g, 2), "overhead_ms": round(g - p, 2),
                      "ratio": round(g / p, 2)}
        print(f"{name:26s} plain {p:7.2f} ms   governed {g:7.2f} ms   +{g - p:6.2f} ms   x{g / p:.2f}")
    goals = {"governed_plan_under_50ms": all(r["governed_ms"] < 50 for r in rows.values()),
             "overhead_under_10ms": all(r["overhead_ms"] < 10 for r in rows.values())}
    print("goals:", goals, "loadavg (min/max):", min(loads), max(loads))
    out = {"benchmark": "query_governance", "rounds": args.rounds, "queries": QUERIES, "results": rows,
           "peer": "the same planner without a governance file", "loadavg_1m_per_round": loads,
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
           "goals_met": goals}
    path = ROOT / "bench/results/query_governance.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
