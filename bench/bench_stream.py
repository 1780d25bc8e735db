"""Streaming benchmark: PostgreSQL change capture end to end, against the batch incremental path.

Run:  SKYFED_HOME=/tmp/skyfed-bench-stream .venv/bin/python bench/bench_stream.py \
          [--rates 2000,5000] [--seconds 20] [--backlog 1000000] [--rounds 2] [--batch-every 3]

Starts the local federation (skyfed.localenv.up) and a database of its own with one
table (`items`: integer key, text, numeric, a timestamptz). Figures:

1. latency: a separate load process commits a steady stream of inserts, updates and
   deletes (one transaction every 20 ms) at each rate; every 0.25 s it also commits a
   probe update of one row and writes the commit's wall time. This process polls
   `skyfed.connect(spec).query(...)` (a federated query, cache off) for the probe
   row and records the start of the first query that sees each probe value:
   latency = that start - commit (the query before it did not see it),
   p50 and p99 per rate. The streamer (`skyfed stream`) runs as its own process.
2. the same load at the lowest rate with the batch incremental path instead (the
   peer): `run_mapping` (cursor updated_at) every --batch-every seconds, in its own
   process and its own SKYFED_HOME.
3. catch-up: with the streamer stopped, --backlog changes are committed (inserts in
   10,000-row transactions, then updates); then `skyfed stream --until-idle` is
   timed: changes / seconds spent in micro-batches, and changes / wall time.

Rounds are interleaved (stream and batch at each rate, per round) and the median is
reported; loadavg is recorded at the start of every phase. The machine has 2 cores
shared with the database, the load process, the streamer and the poller.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DB = "skyfed_bench_stream"
RESULTS = ROOT / "bench" / "results" / "stream.json"
PROBE_ID = 0
TICK = 0.02  # one load transaction every 20 ms
PROBE_EVERY = 0.25
POLL_SECONDS: list[float] = []  # how long each federated query of the poller took
GOALS = {"p99_seconds_at_5000": 2.0, "catch_up_changes_per_s": 20_000}


def spec_doc(name: str, cursor: bool) -> dict[str, Any]:
    mapping: dict[str, Any] = {
        "name": "latam_items", "source": "latam.ops", "table": "items", "contract": "item", "key": ["id"],
        "columns": {"item_id": "'IT-' || CAST(id AS VARCHAR)", "qty": "qty", "note": "note", "price": "price",
                    "updated_at_utc": "updated_at"},
    }  # fmt: skip
    if cursor:
        mapping["cursor"] = "updated_at"
    return {
        "skyfed": 1,
        "name": name,
        "regions": {
            "latam": {
                "project": "p", "location": "southamerica-east1",
                "store": {"kind": "iceberg", "warehouse": "${SKYFED_HOME}/warehouse/latam"},
                "sources": {"ops": {"kind": "postgres", "host": "${SKYFED_PG_HOST}", "port": "${SKYFED_PG_PORT}",
                                    "database": DB, "user": "${SKYFED_PG_USER}", "password": "${SKYFED_PG_PASSWORD}"}},
            }
        },
        "contracts": {"item": {"version": 1, "key": ["item_id"], "columns": {
            "item_id": {"type": "string", "nullable": False}, "qty": {"type": "int32"}, "note": {"type": "string"},
            "price": {"type": "decimal(12,2)"}, "updated_at_utc": {"type": "timestamptz", "nullable": False}}}},
        "mappings": [mapping],
    }  # fmt: skip


def pg(database: str = DB) -> Any:
    import psycopg

    e = os.environ
    return psycopg.connect(host=e["SKYFED_PG_HOST"], port=e["SKYFED_PG_PORT"], user=e["SKYFED_PG_USER"],
                           password=e["SKYFED_PG_PASSWORD"], dbname=database, autocommit=True)  # fmt: skip


def setup_database(rows: int) -> None:
    with pg("skyfed") as con:
        con.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = %s", (DB,))
        con.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
        con.execute(f'CREATE DATABASE "{DB}"')
    with pg() as con:
        con.execute("CREATE TABLE items (id bigint PRIMARY KEY, qty integer, note text, price numeric(12,2), "
                    "updated_at timestamptz NOT NULL DEFAULT clock_timestamp())")  # fmt: skip
        con.execute("CREATE INDEX ON items (updated_at)")
        con.execute("INSERT INTO items (id, qty, note, price) SELECT g, g %% 100, 'seed', g / 8.0 FROM generate_series(0, %s) g", (rows,))


# --------------------------------------------------------------------------- load process


def child_load(rate: int, seconds: float, probes: str, start_id: int) -> None:
    tag = Path(probes).stem  # the phase: the watcher counts only this phase's probes
    """Steady changes at `rate` per second (50% inserts, 35% updates, 15% deletes) plus probes."""
    per_tick = max(1, round(rate * TICK))
    n_ins, n_upd = round(per_tick * 0.5), round(per_tick * 0.35)
    n_del = per_tick - n_ins - n_upd
    next_id = start_id
    changes = 0
    probe_no = 0
    started = time.time()
    next_probe = started + PROBE_EVERY
    with pg() as con, open(probes, "w") as out:
        tick = 0
        while time.time() - started < seconds:
            with con.transaction():
                if n_ins:
                    con.execute("INSERT INTO items (id, qty, note, price) SELECT g, g %% 100, 'load', g / 8.0 "
                                "FROM generate_series(%s::bigint, %s::bigint) g", (next_id, next_id + n_ins - 1))  # fmt: skip
                if n_upd:
                    lo = start_id + (tick * 7919) % max(1, next_id - start_id)
                    changes += con.execute("UPDATE items SET qty = qty + 1, updated_at = clock_timestamp() "
                                           "WHERE id >= %s AND id < %s", (lo, lo + n_upd)).rowcount  # fmt: skip
                if n_del:
                    lo = 1 + (tick * 104729) % (start_id - 1)
                    changes += con.execute("DELETE FROM items WHERE id >= %s AND id < %s", (lo, lo + n_del)).rowcount
            changes += n_ins
            next_id += n_ins
            tick += 1
            now = time.time()
            if now >= next_probe:
                probe_no += 1
                con.execute("UPDATE items SET note = %s, updated_at = clock_timestamp() WHERE id = %s",
                            (f"{tag}-{probe_no:06d}", PROBE_ID))  # fmt: skip
                out.write(json.dumps({"probe": probe_no, "committed": time.time()}) + "\n")
                out.flush()
                next_probe += PROBE_EVERY
            delay = started + tick * TICK - time.time()
            if delay > 0:
                time.sleep(delay)
    print(json.dumps({"changes": changes, "seconds": time.time() - started, "next_id": next_id}))


def child_batch_loop(spec_path: str, every: float, seconds: float) -> None:
    """The peer: the batch incremental path (cursor updated_at) every `every` seconds."""
    from skyfed.ingest.runner import run_mapping
    from skyfed.spec import load_spec

    spec = load_spec(spec_path)
    started = time.time()
    runs = []
    while True:  # at least one run
        t = time.time()
        r = run_mapping(spec, spec.mappings[0])
        runs.append({"seconds": round(time.time() - t, 3), "rows": r.rows_read})
        if time.time() - started >= seconds:
            break
        time.sleep(max(0.0, every - (time.time() - t)))
    print(json.dumps({"runs": runs}))


# --------------------------------------------------------------------------- measuring


def watch_probes(spec_path: str, probes: str, until: float, load: subprocess.Popen | None = None) -> list[tuple[int, float]]:
    """(probe number, wall time first seen) through a federated query, polled as fast as it answers;
    until the load process has ended and its last probe is visible, or `until`."""
    import skyfed
    from skyfed.spec import load_spec

    fed = skyfed.connect(load_spec(spec_path), cache=False)
    tag = Path(probes).stem + "-"
    seen: list[tuple[int, float]] = []
    best = 0
    while time.time() < until:
        # the query's start: a probe it sees was visible to a query issued then (the one before did not see it)
        now = time.time()
        table = fed.query(f"SELECT note FROM item WHERE item_id = 'IT-{PROBE_ID}'").arrow()
        POLL_SECONDS.append(time.time() - now)
        note = table["note"][0].as_py() if table.num_rows else None
        if note and note.startswith(tag):
            n = int(note[len(tag):])
            if n > best:
                seen.extend((k, now) for k in range(best + 1, n + 1))
                best = n
        if load is not None and load.poll() is not None:
            lines = Path(probes).read_text().splitlines()
            if lines and best >= json.loads(lines[-1])["probe"]:
                break
        time.sleep(0.02)
    return seen


def latencies(probes: str, seen: list[tuple[int, float]]) -> dict[str, Any]:
    committed = {}
    for line in Path(probes).read_text().splitlines():
        item = json.loads(line)
        committed[item["probe"]] = item["committed"]
    lat = sorted(t - committed[n] for n, t in seen if n in committed)
    missing = len(committed) - len(lat)
    if not lat:
        return {"probes": len(committed), "seen": 0}
    q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) > 1 else [lat[0]] * 99
    return {"probes": len(committed), "seen": len(lat), "not_seen": missing, "p50_s": round(q[49], 3),
            "p99_s": round(q[98], 3), "max_s": round(lat[-1], 3)}  # fmt: skip


def start_streamer(spec_path: str, env: dict[str, str]) -> subprocess.Popen:
    status = Path(env["SKYFED_HOME"]) / "stream" / "latam.ops.json"
    status.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "skyfed", "stream", "latam.ops", "--spec", spec_path,
                             "--max-rows", "50000", "--max-seconds", "0.25"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.time() + 600
    while not status.exists():
        if proc.poll() is not None or time.time() > deadline:
            raise SystemExit("streamer failed to start: " + proc.stderr.read().decode()[-3000:])
        time.sleep(0.2)
    wait_caught_up(spec_path, deadline)
    return proc


def wait_caught_up(spec_path: str, deadline: float) -> None:
    """Until the slot is less than 1 MB of WAL behind: a phase must not start with a backlog."""
    from skyfed.spec import load_spec
    from skyfed.stream.postgres import slot_lag

    spec = load_spec(spec_path)
    while time.time() < deadline:
        lag = slot_lag(spec, "latam.ops").get("lag_bytes")
        if lag is not None and lag < 1_000_000:
            return
        time.sleep(0.5)


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    if proc.returncode != 0:
        raise SystemExit(f"streamer exit {proc.returncode}: {err.decode()[-3000:]}")


def run_load(rate: int, seconds: float, probes: str, start_id: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--child", "load", "--rate", str(rate), "--seconds", str(seconds),
                             "--probes", probes, "--start-id", str(start_id)],
                            env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def finish(proc: subprocess.Popen) -> dict[str, Any]:
    out, err = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"child failed: {err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])


def phase_stream(spec_path: str, env: dict[str, str], rate: int, seconds: float, work: Path, start_id: int) -> tuple[dict[str, Any], int]:
    load0 = round(os.getloadavg()[0], 2)
    probes = str(work / f"probes-stream-{rate}-{start_id}.jsonl")
    load = run_load(rate, seconds, probes, start_id)
    seen = watch_probes(spec_path, probes, time.time() + seconds + 60, load)
    done = finish(load)
    res = latencies(probes, seen) | {"rate_target": rate, "rate_achieved": round(done["changes"] / done["seconds"]),
                                     "poll_query_s_median": round(statistics.median(POLL_SECONDS), 3),
                                     "loadavg_1m_at_start": load0, "loadavg_1m_at_end": round(os.getloadavg()[0], 2)}  # fmt: skip
    POLL_SECONDS.clear()
    return res, done["next_id"]


def phase_batch(batch_spec: str, batch_home: str, rate: int, seconds: float, every: float, work: Path, start_id: int) -> tuple[dict[str, Any], int]:
    load0 = round(os.getloadavg()[0], 2)
    env = {**os.environ, "SKYFED_HOME": batch_home}
    probes = str(work / f"probes-batch-{rate}-{start_id}.jsonl")
    loop = subprocess.Popen([sys.executable, __file__, "--child", "batch", "--spec", batch_spec, "--every", str(every),
                             "--seconds", str(seconds + 25)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    time.sleep(every)
    load = run_load(rate, seconds, probes, start_id)
    saved = os.environ["SKYFED_HOME"]
    os.environ["SKYFED_HOME"] = batch_home
    try:
        seen = watch_probes(batch_spec, probes, time.time() + seconds + 60, load)
    finally:
        os.environ["SKYFED_HOME"] = saved
    done = finish(load)
    runs = finish(loop)["runs"]
    poll = list(POLL_SECONDS)
    POLL_SECONDS.clear()
    res = latencies(probes, seen) | {"rate_target": rate, "rate_achieved": round(done["changes"] / done["seconds"]),
                                     "every_s": every, "run_seconds_median": statistics.median(r["seconds"] for r in runs),
                                     "poll_query_s_median": round(statistics.median(poll), 3),
                                     "loadavg_1m_at_start": load0, "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
                                     "note": "the batch incremental path sees inserts and updates by cursor, never deletes"}  # fmt: skip
    return res, done["next_id"]


def phase_catch_up(spec_path: str, env: dict[str, str], backlog: int, start_id: int) -> dict[str, Any]:
    inserts = backlog // 2
    updates = backlog - inserts
    t = time.perf_counter()
    with pg() as con:
        for lo in range(start_id, start_id + inserts, 10_000):
            hi = min(lo + 10_000, start_id + inserts)
            con.execute("INSERT INTO items (id, qty, note, price) SELECT g, g %% 100, 'backlog', g / 8.0 "
                        "FROM generate_series(%s::bigint, %s::bigint) g", (lo, hi - 1))  # fmt: skip
        done = 0
        lo = start_id
        while done < updates:
            done += con.execute("UPDATE items SET qty = qty + 1 WHERE id >= %s AND id < %s", (lo, lo + 10_000)).rowcount
            lo += 10_000
    made = time.perf_counter() - t
    load0 = round(os.getloadavg()[0], 2)
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "skyfed", "stream", "latam.ops", "--spec", spec_path, "--until-idle",
                          "--idle-seconds", "2", "--max-rows", "100000", "--max-seconds", "5", "--json"],
                         env=env, capture_output=True, text=True, timeout=3600)  # fmt: skip
    wall = time.perf_counter() - t
    if res.returncode != 0:
        raise SystemExit(res.stderr[-3000:])
    st = json.loads(res.stdout)["latam.ops"]
    return {"backlog_changes": backlog, "backlog_built_s": round(made, 1), "changes_streamed": st["changes"],
            "batches": st["batches"], "seconds_in_batches": round(st["seconds"], 2),
            "changes_per_s_in_batches": round(st["changes"] / st["seconds"]) if st["seconds"] else None,
            "wall_s_including_start_and_2s_idle": round(wall, 2),
            "changes_per_s_wall": round(st["changes"] / wall),
            "loadavg_1m_at_start": load0, "loadavg_1m_at_end": round(os.getloadavg()[0], 2)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rates", default="2000,5000")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--backlog", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-every", type=float, default=3.0)
    ap.add_argument("--seed-rows", type=int, default=100_000)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--child")
    ap.add_argument("--rate", type=int)
    ap.add_argument("--probes")
    ap.add_argument("--start-id", type=int)
    ap.add_argument("--spec")
    ap.add_argument("--every", type=float)
    args = ap.parse_args()
    if args.child == "load":
        child_load(args.rate, args.seconds, args.probes, args.start_id)
        return
    if args.child == "batch":
        child_batch_loop(args.spec, args.every, args.seconds)
        return

    os.environ.setdefault("SKYFED_HOME", "/tmp/skyfed-bench-stream")
    from skyfed import localenv

    localenv.up(os.environ["SKYFED_HOME"])
    os.environ.update(localenv.service_env(os.environ["SKYFED_HOME"]))
    work = Path(tempfile.mkdtemp(prefix="bench-stream-", dir=os.environ["SKYFED_HOME"]))
    stream_home, batch_home = work / "stream-home", work / "batch-home"
    stream_home.mkdir()
    batch_home.mkdir()
    stream_spec = work / "stream.yaml"
    stream_spec.write_text(yaml.safe_dump(spec_doc("benchstream", cursor=False), sort_keys=False))
    batch_spec = work / "batch.yaml"
    batch_spec.write_text(yaml.safe_dump(spec_doc("benchbatch", cursor=True), sort_keys=False))

    setup_database(args.seed_rows)
    env = {**os.environ, "SKYFED_HOME": str(stream_home)}
    os.environ["SKYFED_HOME"] = str(stream_home)
    rates = [int(r) for r in args.rates.split(",")]
    next_id = args.seed_rows + 1
    runs: dict[str, list[dict[str, Any]]] = {}
    # the batch path's first run loads the whole table; later runs are incremental
    subprocess.run([sys.executable, __file__, "--child", "batch", "--spec", str(batch_spec), "--every", "0", "--seconds", "0"],
                   env={**os.environ, "SKYFED_HOME": str(batch_home)}, check=True, capture_output=True)  # fmt: skip
    for rnd in range(args.rounds):
        streamer = start_streamer(str(stream_spec), env)
        try:
            for rate in rates:
                res, next_id = phase_stream(str(stream_spec), env, rate, args.seconds, work, next_id)
                runs.setdefault(f"stream_{rate}", []).append(res)
                print(f"round {rnd + 1} stream @{rate}/s: {res}", flush=True)
        finally:
            stop(streamer)
        res, next_id = phase_batch(str(batch_spec), str(batch_home), rates[0], args.seconds, args.batch_every, work, next_id)
        runs.setdefault(f"batch_every_{args.batch_every:g}s_{rates[0]}", []).append(res)
        print(f"round {rnd + 1} batch incremental every {args.batch_every} s @{rates[0]}/s: {res}", flush=True)
    _ = start_streamer(str(stream_spec), env)  # catch the streamer up on the batch phase's changes, then stop it
    stop(_)
    catch = phase_catch_up(str(stream_spec), env, args.backlog, next_id + 10)
    print(f"catch-up: {catch}", flush=True)

    summary = {}
    for name, rs in runs.items():
        ok = [r for r in rs if "p99_s" in r]
        summary[name] = {
            "p50_s_median": statistics.median(r["p50_s"] for r in ok) if ok else None,
            "p99_s_median": statistics.median(r["p99_s"] for r in ok) if ok else None,
            "rate_achieved_median": statistics.median(r["rate_achieved"] for r in rs),
            "not_seen_total": sum(r.get("not_seen", 0) for r in rs),
            "rounds": rs,
        }
    top = summary.get(f"stream_{max(rates)}", {})
    goals = {
        "p99_under_2s_at_5000": bool(top.get("p99_s_median") is not None and top["p99_s_median"] < GOALS["p99_seconds_at_5000"]) if 5000 in rates else None,
        "catch_up_at_least_20000_per_s": bool((catch["changes_per_s_in_batches"] or 0) >= GOALS["catch_up_changes_per_s"]),
    }  # fmt: skip
    report = {
        "benchmark": "stream",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "settings": {"seconds_per_phase": args.seconds, "rounds": args.rounds, "tick_s": TICK, "probe_every_s": PROBE_EVERY,
                     "streamer": "--max-rows 50000 --max-seconds 0.25", "seed_rows": args.seed_rows},
        "latency": summary,
        "catch_up": catch,
        "goals": GOALS,
        "goals_met": goals,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }  # fmt: skip
    print(json.dumps({k: v for k, v in report.items() if k != "latency"} | {"latency": {k: {kk: vv for kk, vv in v.items() if kk != "rounds"} for k, v in summary.items()}}, indent=2))
    if not args.no_write:
        RESULTS.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
