"""Benchmark: the airline world generator (goal: 1M flights in <= 60 s on the 2-core dev machine).

Measures `skyfed.demo.world.generate` (all three regions' sources in their dialects, including
rendering the na CSV / JSON lines / Parquet objects, plus the ground truth) and writing the local
seed files (ground truth, reference, manifest). Services are not involved: their write speed is
the emulators', reported by `skyfed demo seed`.

    .venv/bin/python bench/bench_generator.py [--flights 1000000] [--repeat 1]

Prints the figures and writes bench/results/generator.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

from skyfed.demo.seed import write_local
from skyfed.demo.world import WorldConfig, generate

GOAL_SECONDS = 60.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--flights", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()

    runs = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        world = generate(WorldConfig(flights=args.flights, seed=args.seed))
        gen = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as tmp:
            t1 = time.perf_counter()
            write_local(world, Path(tmp))
            local = time.perf_counter() - t1
        source_rows = sum(st["source_rows"] for st in world.stats["tables"].values())
        na_bytes = sum(len(v) for v in world.regions["na"].objects.values())
        runs.append({"generate_s": round(gen, 3), "write_seed_files_s": round(local, 3),
                     "source_rows": source_rows, "na_objects": len(world.regions["na"].objects),
                     "na_object_bytes": na_bytes, "ground_truth_rows": world.stats["ground_truth_rows"]})
        del world
    best = min(runs, key=lambda r: r["generate_s"])
    result = {
        "benchmark": "generator",
        "flights": args.flights,
        "seed": args.seed,
        "goal_seconds": GOAL_SECONDS,
        "generate_seconds": best["generate_s"],
        "generate_plus_seed_files_seconds": round(best["generate_s"] + best["write_seed_files_s"], 3),
        "flights_per_second": round(args.flights / best["generate_s"]),
        "source_rows_per_second": round(best["source_rows"] / best["generate_s"]),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "meets_goal": best["generate_s"] + best["write_seed_files_s"] <= GOAL_SECONDS,
        "runs": runs,
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count()},
    }
    print(f"generator: {args.flights:,} flights -> {best['source_rows']:,} source rows, "
          f"{best['na_objects']} na objects ({best['na_object_bytes'] / 1e6:.0f} MB)")
    print(f"  generate          {best['generate_s']:.2f} s  ({result['flights_per_second']:,} flights/s)")
    print(f"  + seed files      {best['write_seed_files_s']:.2f} s")
    print(f"  peak RSS          {result['peak_rss_mb']} MB")
    print(f"  goal <= {GOAL_SECONDS:.0f} s:      {'met' if result['meets_goal'] else 'MISSED'}")
    out = Path(__file__).resolve().parent / "results" / "generator.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"  written to {out}")


if __name__ == "__main__":
    main()
