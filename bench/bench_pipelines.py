"""Pipelines: a dashboard query from a materialization vs live federated; incremental refresh vs full rebuild.

Run:  SKYFED_HOME=/tmp/skyfed-bench-pipelines .venv/bin/python bench/bench_pipelines.py \
          [--flights 1000000] [--seed 42] [--rounds 25] [--refresh-rounds 3] [--reuse]
      .venv/bin/python bench/bench_pipelines.py --world /tmp/skyfed-bench-query/10000000   # 10M flight legs

Steps:
1. `skyfed.localenv.up(home)`; seed the airline world (N flights) and ingest it with a full
   refresh (timed, not part of the figures). --reuse skips both when SKYFED_HOME already holds
   that world, ingested. --world HOME instead reuses bench/bench_query.py's world (its curated
   stores committed straight from the generator's ground truth, `HOME/built.json`; seeding 10M
   flights through the sources needs ~12 GB): no sources there, so new legs are appended
   through the store's commit API (below) and removed again (a delete commit) at the end.
2. `skyfed run` of the shipped models (examples/airline/models) with --full-refresh (timed).
3. Dashboard: the fuel-efficiency dashboard query (the `fuel_efficiency` materialized view's
   SQL, plus ORDER BY/LIMIT). Interleaved rounds of (a) `Server.answer(sql)` on one long-lived
   Server (a dashboard service: checks freshness in the metadata database on every query,
   keeps the current build's Arrow table until the build changes), (b) a new Server per call
   (parses the models, reads the Parquet parts), (c) the live federated query
   (`Federation.query`, result cache off). p50 of each; goal: (a) under 20 ms.
   With --world also (d) `Federation.query(sql)` with the pipelines' answerer registered
   (`skyfed.pipelines.serve.attach`): the planner hook's path, report `strategy = materialization`.
4. Refresh cost of `route_profitability` (incremental by month, regional): each round appends
   ~2% new legs in latam's PostgreSQL (copies of the original last 10 days with new ids), ingests them
   (not timed) (--world: copies of latam's last day of legs from the ground truth with new ids,
   committed into latam's Iceberg store with `open_store(...).commit`, not timed), then times `skyfed run route_profitability` (incremental: latam recomputes
   from the last month on, eu and na are unchanged and kept) and the --full-refresh rebuild,
   in alternating order. Medians; ratio full / incremental.

Writes bench/results/pipelines.json (machine info, loadavg per round).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
EXAMPLE = ROOT / "examples" / "airline" / "skyfed.yaml"
MODELS = EXAMPLE.parent / "models"


def _git_state() -> dict[str, Any]:
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "dirty_src_files": git("status", "--porcelain", "--", "src").splitlines()}


def _p50(xs: list[float]) -> float:
    return round(statistics.median(xs) * 1000, 3)


_BASE: list[int] = []  # latam's max id before the first append: only original legs are copied


def _append_latam_legs() -> int:
    from skyfed.demo.writers.postgres import connect as pg_connect
    from skyfed.demo.writers.settings import pg_settings
    from skyfed.spec import load_spec

    spec = load_spec(EXAMPLE)
    with pg_connect(pg_settings(spec)) as conn:
        cols = [r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'voos' ORDER BY ordinal_position")]  # fmt: skip
        rest = ", ".join(f'"{c}"' for c in cols if c not in ("id", "atualizado_em"))
        top = conn.execute("SELECT max(id) FROM voos").fetchone()[0]
        if not _BASE:
            _BASE.append(top)
        base = _BASE[0]
        cur = conn.execute(f"INSERT INTO voos (id, {rest}, atualizado_em) SELECT id + {top}, {rest}, now() FROM voos "
                           f"WHERE id <= {base} AND partida_local >= (SELECT max(partida_local) - interval '10 days' "
                           f"FROM voos WHERE id <= {base})")  # fmt: skip
        n = cur.rowcount
        conn.commit()
    return n


class WorldAppender:
    """--world: a day of latam legs (ground truth, last day) with new ids, committed into latam's store."""

    def __init__(self, home: Path, spec: Any):
        import pyarrow.compute as pc
        import pyarrow.dataset as ds

        self.spec = spec
        dataset = ds.dataset(sorted(str(p) for p in (home / "truth").glob("flight_leg-*.parquet")), format="parquet")
        latam = ds.field("region") == "latam"
        last = pc.max(dataset.to_table(columns=["dep_time_utc"], filter=latam)["dep_time_utc"]).as_py()
        import datetime as dt

        self.day = dataset.to_table(filter=latam & (ds.field("dep_time_utc") > pc.scalar(last - dt.timedelta(days=1))))
        self.rounds = 0
        self.ids: list[Any] = []

    def append(self) -> int:
        import pyarrow as pa
        import pyarrow.compute as pc

        from skyfed.ingest.stores import open_store

        self.rounds += 1
        t = self.day
        ids = pc.binary_join_element_wise(pa.scalar(f"bench-pipelines-{self.rounds}."), t["flight_id"], "")
        t = t.set_column(t.schema.get_field_index("flight_id"), "flight_id", ids)
        store = open_store("latam", self.spec.regions["latam"].store)
        store.commit("flight_leg", t, key=["flight_id"], mapping="bench_pipelines", position={"round": self.rounds},
                     run_id=f"bench-pipelines-{self.rounds}")  # fmt: skip
        self.ids.append(ids)
        return t.num_rows

    def remove(self) -> int:
        """Leave bench_query's world as it was: delete every appended leg in one commit."""
        import pyarrow as pa

        from skyfed.ingest.stores import open_store

        if not self.ids:
            return 0
        keys = pa.table({"flight_id": pa.chunked_array(self.ids).combine_chunks()})
        store = open_store("latam", self.spec.regions["latam"].store)
        store.commit("flight_leg", self.day.slice(0, 0), key=["flight_id"], mapping="bench_pipelines",
                     position={"round": "removed"}, run_id="bench-pipelines-cleanup", deletes=keys)  # fmt: skip
        return keys.num_rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--flights", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--refresh-rounds", type=int, default=3)
    ap.add_argument("--reuse", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--world", default=None, help="reuse bench_query's world at this home (its built.json), e.g. "
                    "/tmp/skyfed-bench-query/10000000; no seeding or ingest")
    args = ap.parse_args()

    if args.world:
        os.environ["SKYFED_HOME"] = str(Path(args.world).resolve())
    home = Path(os.environ.setdefault("SKYFED_HOME", "/tmp/skyfed-bench-pipelines")).resolve()
    home.mkdir(parents=True, exist_ok=True)
    from skyfed import localenv

    localenv.up(home)
    os.environ.update(localenv.service_env(home))

    from skyfed.demo.seed import read_manifest, seed
    from skyfed.demo.world import WorldConfig
    from skyfed.ingest.batch import ingest
    from skyfed.pipelines.project import load_project
    from skyfed.pipelines.runner import run
    from skyfed.pipelines.serve import Server
    from skyfed.query import connect
    from skyfed.spec import load_spec

    setup: dict[str, Any] = {}
    marker = home / "bench_pipelines_ingested.json"
    appender: WorldAppender | None = None
    if args.world:
        built = json.loads((home / "built.json").read_text())
        if not built.get("complete"):
            raise SystemExit(f"{home}/built.json: bench_query's world is not complete; run bench/bench_query.py first")
        args.flights = int(built["flights"])
        setup["world"] = f"bench_query's world at {home} (stores committed from the ground truth)"
    man = None if args.world else read_manifest(home)
    reuse = bool(args.world) or (args.reuse and man and man["flights"] == args.flights and man["seed"] == args.seed
                                 and marker.exists())  # fmt: skip
    if not reuse:
        t = time.perf_counter()
        seed(WorldConfig(flights=args.flights, seed=args.seed), home)
        setup["seed_s"] = round(time.perf_counter() - t, 1)
        print(f"seeded {args.flights:,} flights in {setup['seed_s']} s", flush=True)
        t = time.perf_counter()
        _, _, failures = ingest(load_spec(EXAMPLE), full_refresh=True)
        if failures:
            raise SystemExit(f"ingest failed: {[(m.name, e.message) for m, e in failures]}")
        setup["ingest_s"] = round(time.perf_counter() - t, 1)
        marker.write_text(json.dumps({"flights": args.flights, "seed": args.seed}))
        print(f"ingested in {setup['ingest_s']} s", flush=True)
    spec = load_spec(EXAMPLE)
    # governed as the CLI is (the example's governance file: the models build as `anonymous`, the caller is
    # `anonymous` too), so a materialization may answer this caller
    fed = connect(str(EXAMPLE), cache=False)
    if args.world:
        appender = WorldAppender(home, spec)
    legs = fed.query("SELECT region, count(*) AS n FROM flight_leg GROUP BY region ORDER BY region").arrow().to_pylist()
    total_legs = sum(r["n"] for r in legs)
    print(f"flight_leg rows: {total_legs:,} ({legs})", flush=True)

    project = load_project(MODELS)
    t = time.perf_counter()
    first = run(spec, project, full_refresh=True, fed=fed, spec_path=str(EXAMPLE))
    setup["run_all_models_full_s"] = round(time.perf_counter() - t, 2)
    assert first["ok"], first
    print(f"all models built in {setup['run_all_models_full_s']} s", flush=True)

    # ---------------------------------------------------------------- dashboard
    sql = project.models["fuel_efficiency"].sql + "\nORDER BY fuel_kg_per_100_rpk DESC LIMIT 20"
    from skyfed.pipelines.serve import attach

    warm = Server(project, fed)
    assert warm.answer(sql) is not None, "the materialized view must answer the dashboard query"
    hooked = connect(str(EXAMPLE), cache=False)
    attach(hooked, project)
    probe = hooked.query(sql)
    assert probe.report.strategy == "materialization", probe.report.cache
    times: dict[str, list[float]] = {"materialization": [], "materialization_new_server": [],
                                     "federation_hook": [], "live_federated": []}  # fmt: skip
    loads: list[float] = []
    for i in range(args.rounds):
        loads.append(round(os.getloadavg()[0], 2))
        order = ["materialization", "materialization_new_server", "federation_hook", "live_federated"]
        if i % 2:
            order.reverse()
        for what in order:
            t = time.perf_counter()
            if what == "materialization_new_server":
                res = Server(project, fed).answer(sql)
            elif what == "materialization":
                res = warm.answer(sql)
            elif what == "federation_hook":
                res = hooked.query(sql)
                assert res.report.strategy == "materialization"
            else:
                res = fed.query(sql, use_cache=False)
            times[what].append(time.perf_counter() - t)
            assert res is not None and res.arrow().num_rows == 20
    dash = {k: {"p50_ms": _p50(v), "min_ms": round(min(v) * 1000, 3), "max_ms": round(max(v) * 1000, 3)} for k, v in times.items()}
    dash["speedup_live_over_materialization_p50"] = round(dash["live_federated"]["p50_ms"] / dash["materialization"]["p50_ms"], 1)
    dash["loadavg_1m_rounds"] = loads
    print("dashboard p50 ms:", {k: v["p50_ms"] for k, v in dash.items() if isinstance(v, dict)}, flush=True)

    # ---------------------------------------------------------------- refresh cost
    inc_s, full_s, appended, inc_detail, refresh_loads = [], [], [], [], []
    def new_legs() -> int:
        if appender is not None:
            return appender.append()
        n = _append_latam_legs()
        _, _, failures = ingest(spec)
        assert not failures, failures
        return n

    for i in range(args.refresh_rounds):
        appended.append(new_legs())
        refresh_loads.append(round(os.getloadavg()[0], 2))
        for what in (["incremental", "full"] if i % 2 == 0 else ["full", "incremental"]):
            if what == "full":
                t = time.perf_counter()
                out = run(spec, project, ["route_profitability"], full_refresh=True, fed=fed, spec_path=str(EXAMPLE))
                full_s.append(time.perf_counter() - t)
                assert out["results"][0]["action"] == "full", out
            else:
                if i % 2 == 1:  # the full rebuild ran first and is now current: append again so there is new input
                    appended.append(new_legs())
                t = time.perf_counter()
                out = run(spec, project, ["route_profitability"], fed=fed, spec_path=str(EXAMPLE))
                inc_s.append(time.perf_counter() - t)
                row = out["results"][0]
                assert row["action"] == "incremental", row
                inc_detail.append({p: {"action": d["action"], "range": d.get("range"), "rows_recomputed": d.get("rows_recomputed")}
                                   for p, d in row["detail"]["parts"].items()})  # fmt: skip
        print(f"refresh round {i + 1}: incremental {inc_s[-1]:.2f} s, full {full_s[-1]:.2f} s", flush=True)
    refresh = {
        "model": "route_profitability (incremental by month, regional, lookback 1)",
        "incremental_median_s": round(statistics.median(inc_s), 3),
        "full_rebuild_median_s": round(statistics.median(full_s), 3),
        "ratio_full_over_incremental": round(statistics.median(full_s) / statistics.median(inc_s), 2),
        "incremental_s": [round(x, 3) for x in inc_s],
        "full_s": [round(x, 3) for x in full_s],
        "legs_appended_per_change": appended,
        "incremental_parts": inc_detail[-1] if inc_detail else None,
        "loadavg_1m_rounds": refresh_loads,
    }
    if appender is not None:
        refresh["legs_removed_after"] = appender.remove()
        refresh["appended_via"] = "open_store('latam').commit (ground truth's last day of latam legs, new ids)"
    print("refresh:", {k: refresh[k] for k in ("incremental_median_s", "full_rebuild_median_s", "ratio_full_over_incremental")})

    goals = {
        "dashboard_p50_from_materialization_under_20ms": dash["materialization"]["p50_ms"] < 20.0,
        "incremental_cheaper_than_full": refresh["incremental_median_s"] < refresh["full_rebuild_median_s"],
        "ran_at_10M_flights": args.flights >= 10_000_000,
    }
    out = {
        "benchmark": "pipelines",
        "flights": args.flights,
        "flight_leg_rows": total_legs,
        "flight_leg_rows_by_region": legs,
        "setup": setup,
        "dashboard_query": sql,
        "dashboard": dash,
        "refresh": refresh,
        "machine": {
            "cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "mem_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        },
        "note": "one process; rounds interleaved (order alternates) so the shared machine's load hits both sides; "
                "see loadavg_1m_rounds. The live federated query includes eu's BigQuery emulator job.",
        "source_tree": _git_state(),
        "goals_met": goals,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print("goals:", goals)
    if not args.no_write:
        (HERE / "results").mkdir(exist_ok=True)
        path = HERE / "results" / "pipelines.json"
        before = json.loads(path.read_text()) if path.exists() else {}
        runs = before.get("runs_by_flights", {})
        runs[str(args.flights)] = out
        largest = runs[str(max(int(k) for k in runs))]
        path.write_text(json.dumps({**largest, "largest_flights_run": max(int(k) for k in runs),
                                    "runs_by_flights": runs,
                                    **({"larger_attempts": before["larger_attempts"]} if "larger_attempts" in before else {})},
                                   indent=2, default=str) + "\n")  # fmt: skip
        print(f"wrote {HERE / 'results' / 'pipelines.json'}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
