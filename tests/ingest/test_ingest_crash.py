"""kill -9 of `skyfed ingest` at many points, then a rerun: the tables of a run never interrupted.

`skyfed ingest` runs as a subprocess that SIGKILLs itself at one point
(SKYFED_CRASH_AT: the runner's points between batches and commits, and the fused
PostgreSQL path's points during and after its one statement;
SKYFED_STORE_CRASH_AT: the curated stores' points inside a commit), on each kind of
store: Iceberg (latam from PostgreSQL, na from CSV objects in Cloud Storage) and
BigQuery (eu, from BigQuery). Right after the kill every table is wholly in the state
before the run or wholly in the state after it; the rerun, without the crash variable,
must leave the curated table and the quarantine table identical (table_checksum; for
quarantine without run_id and quarantined_at, which name the run) to an uninterrupted
run's, with equal committed positions. The same holds for a crash during a second,
incremental run after some source rows changed.

Sources: a small airline world (300 flights, ~100 per region) written to a PostgreSQL
database, a BigQuery dataset and a bucket of this module's own, so the shared demo
sources stay untouched. Every first-run case has its own SKYFED_HOME (Iceberg
warehouse, metadata database) and its own BigQuery store dataset; each incremental case
continues in the home of a first-run case of its region once that one has recovered.
Batches are made small (SKYFED_INGEST_BATCH_ROWS) so that a kill between batches is
reachable. The cases run in a few lanes side by side (see `crash_runs`); the tests then
check each case's outcome.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pytest
from ingest_kit import (
    bq_client,
    example_doc,
    local_world,
    need_env,
    pg_connect,
    reference_section,
    store_state,
    write_spec,
)

from skyfed.catalog.metadata import SQLITE_FILE
from skyfed.demo.world import World
from skyfed.demo.writers import bigquery as bq_writer
from skyfed.demo.writers import gcs as gcs_writer
from skyfed.demo.writers import postgres as pg_writer
from skyfed.demo.writers.settings import BqSettings, GcsSettings, PgSettings
from skyfed.ingest.stores.base import CRASH_ENV as STORE_CRASH
from skyfed.spec import load_spec

pytestmark = pytest.mark.services

RUNNER_CRASH = "SKYFED_CRASH_AT"
FUSED = "SKYFED_INGEST_FUSED"
BATCH_ROWS = 40  # latam's and eu's ~105 flights arrive in 3 batches; na reads one object (a month) per batch
CONTRACT = "flight_leg"
MAPPING_OF = {"latam": "latam_flights", "eu": "eu_flights", "na": "na_flights"}
BQ_PROJECT, BQ_LOCATION = "skyfed-eu", "europe-west1"


@dataclass(frozen=True)
class Copy:
    """This module's copy of the sources: a PostgreSQL database, a BigQuery dataset and a bucket."""

    pg_database: str
    bq_dataset: str
    bucket: str


SOURCES = Copy("skyfed_crash", "crash_eu_ops", "skyfed-crash-na")


@dataclass(frozen=True)
class Case:
    region: str
    var: str  # RUNNER_CRASH or STORE_CRASH
    point: str
    interrupts: str  # what the kill interrupts, for messages
    env: tuple[tuple[str, str], ...] = ()  # more variables for the crashing run only

    @property
    def id(self) -> str:
        return f"{self.region}-{self.point}"

    @property
    def dataset(self) -> str:
        return "crash_" + "".join(c if c.isalnum() else "_" for c in self.id)


# A first run (fresh home, every row new). Store points inside a commit fire at the first
# commit that reaches them: the quarantine commit (each flights table has bad records),
# or, for iceberg.after_metadata, the creation of the curated table.
FIRST_RUN = [
    # latam reads PostgreSQL: by default through the fused path (one DuckDB statement scans
    # and harmonizes); the batch loop's points need the batch path (SKYFED_INGEST_FUSED=0)
    Case("latam", RUNNER_CRASH, "batch:2", "extract, after the second batch was staged", ((FUSED, "0"),)),
    Case("latam", RUNNER_CRASH, "fused:scan", "the fused scan + harmonize statement, while it runs"),
    Case("latam", RUNNER_CRASH, "fused:after_stage", "the fused path, staged, before quarantine and fail checks"),
    Case("latam", RUNNER_CRASH, "after_extract", "before any commit"),
    Case("latam", STORE_CRASH, "iceberg.after_metadata", "the creation of the curated table"),
    Case("latam", STORE_CRASH, "iceberg.before_write", "the quarantine commit, before writing"),
    Case("latam", STORE_CRASH, "iceberg.after_data_files", "the quarantine commit, files written, no metadata"),
    Case("latam", STORE_CRASH, "iceberg.after_commit", "right after the quarantine commit"),
    Case("latam", RUNNER_CRASH, "after_quarantine_commit", "between quarantine and data commits"),
    Case("latam", RUNNER_CRASH, "after_commit", "after the data commit, before the run is recorded"),
    Case("na", RUNNER_CRASH, "batch:2", "reading CSV objects, after the second batch"),
    Case("na", RUNNER_CRASH, "after_quarantine_commit", "between quarantine and data commits"),
    Case("eu", RUNNER_CRASH, "batch:1", "extract from BigQuery, after the first batch"),
    Case("eu", STORE_CRASH, "bigquery.before_write", "the quarantine commit, before staging"),
    Case("eu", STORE_CRASH, "bigquery.after_stage", "the quarantine commit, staged, no transaction"),
    Case("eu", STORE_CRASH, "bigquery.after_commit", "the quarantine commit, committed, stage not dropped"),
    Case("eu", RUNNER_CRASH, "after_commit", "after the data commit"),
]

# A second run after some source rows changed: only valid rows change, so there is no
# quarantine commit and the store points fire inside the data + position commit.
INCREMENTAL = [
    Case("latam", STORE_CRASH, "iceberg.after_data_files", "the data commit, files written, no metadata"),
    Case("latam", STORE_CRASH, "iceberg.after_metadata", "the data commit, metadata written, pointer not swapped"),
    Case("latam", RUNNER_CRASH, "fused:scan", "the fused statement over the changed range, while it runs"),
    Case("eu", STORE_CRASH, "bigquery.after_stage", "the data commit, staged, no transaction"),
    Case("eu", STORE_CRASH, "bigquery.after_commit", "the data commit, committed, stage not dropped"),
    Case("na", RUNNER_CRASH, "batch:1", "reading the new object"),
]


# --------------------------------------------------------------------------- sources


@dataclass
class Sources:
    world_home: Path
    world: World


def monthly(objects: dict[str, bytes]) -> dict[str, bytes]:
    """The day-by-day flight exports merged into one object per month (same header, same lines).

    Fewer, larger objects keep each run short on the Cloud Storage emulator (it serves one
    request at a time) while a run still reads several batches (one or more per object).
    """
    merged: dict[str, list[bytes]] = {}
    headers: dict[str, bytes] = {}
    for key in sorted(k for k in objects if k.startswith("flights/")):
        day = key.split("/")[1].removeprefix("dt=")
        header, _, body = objects[key].partition(b"\n")
        month = f"{day[:7]}" + ("" if headers.get(day[:7], header) == header else f"-{len(headers)}")
        headers.setdefault(month, header)
        merged.setdefault(month, []).append(body if body.endswith(b"\n") or not body else body + b"\n")
    return {f"flights/dt={m}/flights.csv": headers[m] + b"\n" + b"".join(parts) for m, parts in merged.items()}


def write_copy(world: World, copy: Copy) -> None:
    env = need_env("SKYFED_PG_HOST", "SKYFED_PG_PORT", "SKYFED_PG_USER", "SKYFED_PG_PASSWORD",
                   "SKYFED_BQ_ENDPOINT", "STORAGE_EMULATOR_HOST")  # fmt: skip
    pg = PgSettings(env["SKYFED_PG_HOST"], int(env["SKYFED_PG_PORT"]), env["SKYFED_PG_USER"],
                    env["SKYFED_PG_PASSWORD"], database=copy.pg_database)  # fmt: skip
    pg_writer.write(pg, {"voos": world.regions["latam"].tables["voos"]})
    bq = BqSettings(project=BQ_PROJECT, dataset=copy.bq_dataset, location=BQ_LOCATION, endpoint=env["SKYFED_BQ_ENDPOINT"])
    bq_writer.write(bq, {"flights": world.regions["eu"].tables["flights"]})
    objects = monthly(world.regions["na"].objects)
    gcs_writer.write(GcsSettings(bucket=copy.bucket, endpoint=env["STORAGE_EMULATOR_HOST"]), objects)


def spec_for(sources: Sources, home: Path, copy: Copy, store_dataset: str) -> Path:
    """The example federation reading `copy`, with eu's curated store in `store_dataset`."""
    doc = example_doc()
    regions = doc["regions"]
    regions["latam"]["sources"]["ops"]["database"] = copy.pg_database
    regions["eu"]["sources"]["ops"]["dataset"] = copy.bq_dataset
    regions["eu"]["store"]["dataset"] = store_dataset
    regions["na"]["sources"]["exports"]["bucket"] = copy.bucket
    regions["na"]["sources"].pop("events", None)
    doc["reference"] = reference_section(sources.world_home)
    doc["mappings"] = [m for m in doc["mappings"] if m["name"] in MAPPING_OF.values()]
    return write_spec(home / "skyfed.yaml", doc)


def change_sources(world: World) -> None:
    """Update some valid rows and add new ones (keys that appear once in the source, so no cursor ties)."""
    truth = world.ground_truth["flight_leg"]

    def valid_unique(region: str, prefix: str, ids: list[Any], n: int) -> list[str]:
        """`n` source keys whose record is valid (in the ground truth) and appears once in the source."""
        good = {k[len(prefix):] for k in truth.filter(pc.equal(truth["region"], region))["flight_id"].to_pylist()}
        counts = Counter(str(i) for i in ids)
        return sorted((k for k in good if counts[k] == 1), key=lambda k: (len(k), k))[:n]

    # latam: PostgreSQL, cursor atualizado_em: 5 rows corrected, 3 new
    voos = world.regions["latam"].tables["voos"]
    ids = [int(i) for i in valid_unique("latam", "LA-", voos["id"].to_pylist(), 8)]
    with pg_connect(SOURCES.pg_database) as con:
        top = con.execute("SELECT max(atualizado_em) FROM voos").fetchone()[0]
        con.execute("UPDATE voos SET atraso_min = 7, atualizado_em = %s + interval '1 hour' WHERE id = ANY(%s)",
                    [top, ids[:5]])  # fmt: skip
        con.execute(
            "INSERT INTO voos SELECT id + 100000, numero_voo, origem, destino, partida_local, chegada_local, aeronave, "
            "matricula, assentos, passageiros, distancia_km, combustivel_litros, receita_brl, custo_brl, atraso_min, "
            "situacao, %s + interval '2 hours' FROM voos WHERE id = ANY(%s)",
            [top, ids[5:]],
        )
    # eu: BigQuery, cursor updated_at: 5 rows corrected
    flights = world.regions["eu"].tables["flights"]
    keys = valid_unique("eu", "EU-", flights["flight_id"].to_pylist(), 5)
    client = bq_client(BQ_PROJECT, BQ_LOCATION)
    listed = ", ".join(f"'{k}'" for k in keys)
    client.query(
        f"UPDATE `{BQ_PROJECT}.{SOURCES.bq_dataset}.flights` SET delay_minutes = 7, "
        f"updated_at = TIMESTAMP '2025-01-01 00:00:00+00' WHERE flight_id IN ({listed})"
    ).result()
    # na: a new export object with one corrected and one new flight
    objects = monthly(world.regions["na"].objects)
    rows = [r for v in objects.values() for r in csv.DictReader(io.StringIO(v.decode()))]
    (key,) = valid_unique("na", "NA-", [r.get("flight_id") for r in rows], 1)
    last = objects[max(objects)].decode()
    header = next(csv.reader(io.StringIO(last)))
    pick = next(r for r in rows if r.get("flight_id") == key)
    corrected = {**{h: pick.get(h) or "" for h in header}, "delay_min": "7", "updated_at": "2025-01-01T00:00:00Z"}
    new = {**corrected, "flight_id": "900001", "updated_at": "2025-01-01T00:05:00Z"}
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows([corrected, new])
    endpoint = need_env("STORAGE_EMULATOR_HOST")["STORAGE_EMULATOR_HOST"]
    bucket = gcs_writer.client(GcsSettings(bucket=SOURCES.bucket, endpoint=endpoint)).bucket(SOURCES.bucket)
    bucket.blob("flights/dt=2024-12/flights.csv").upload_from_string(out.getvalue(), content_type="text/csv")


# --------------------------------------------------------------------------- running


def skyfed_ingest(home: Path, spec: Path, mappings: list[str], crash: Case | None = None) -> subprocess.CompletedProcess:
    """`python -m skyfed ingest MAPPINGS --spec SPEC --json` in `home`, killed at `crash` if given."""
    env = os.environ.copy()
    for var in (RUNNER_CRASH, STORE_CRASH, "SKYFED_METADATA_URL"):
        env.pop(var, None)
    env["SKYFED_HOME"] = str(home)
    env["SKYFED_INGEST_BATCH_ROWS"] = str(BATCH_ROWS)
    env.pop(FUSED, None)
    if crash is not None:
        env[crash.var] = crash.point
        env.update(crash.env)
    return subprocess.run(
        [sys.executable, "-m", "skyfed", "ingest", *mappings, "--spec", str(spec), "--json"],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def completed(proc: subprocess.CompletedProcess, what: str) -> dict[str, Any]:
    """The JSON report of a run that must have succeeded; checks every result's row accounting."""
    assert proc.returncode == 0, f"{what}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    report = json.loads(proc.stdout)
    assert report["failures"] == [], f"{what}: {report['failures']}"
    for r in report["results"]:
        assert r["rows_read"] == r["rows_loaded"] + r["rows_quarantined"] + r["rows_filtered"], (what, r)
    return report


def state(home: Path, spec: Path, region: str) -> dict[str, Any]:
    """The region's flight_leg and quarantine tables as comparable facts (no snapshot ids).

    Reads the store of `home` without touching os.environ (cases run in parallel threads).
    """
    env = {k: v for k, v in os.environ.items() if k != "SKYFED_METADATA_URL"}
    env["SKYFED_HOME"] = str(home)
    platform = load_spec(spec, env=env)
    url = f"sqlite:///{home.resolve() / SQLITE_FILE}"
    got = store_state(platform, region, [CONTRACT], [MAPPING_OF[region]], metadata_url=url)
    table = got[CONTRACT]
    if table is not None:
        table = {k: v for k, v in table.items() if k != "snapshot_id"}
        if table["rows"] == 0 and not any(table["positions"].values()):
            table = None  # created, never committed: the same as absent
    quarantine = got["quarantine"]
    if quarantine is not None and quarantine["rows"] == 0:
        quarantine = None
    return {CONTRACT: table, "quarantine": quarantine}


NOTHING = {CONTRACT: None, "quarantine": None}


@dataclass
class Outcome:
    """What happened to one case (or one reference run); assertions happen in the tests."""

    home: Path
    spec: Path
    before: dict[str, Any] | None = None  # the state before the crashing run
    crashed: subprocess.CompletedProcess | None = None
    mid: dict[str, Any] | None = None  # right after the kill
    rerun: subprocess.CompletedProcess | None = None
    after: dict[str, Any] | None = None  # after the rerun (or the reference run)
    report: dict[str, Any] | None = None
    error: str | None = None  # a failure inside the job (traceback)
    continues: str | None = None  # the first-run case whose home an incremental case continues in

    def check(self, what: str) -> None:
        if self.error:
            pytest.fail(f"{what}: {self.error}", pytrace=False)


def job(outcome: Outcome, fn: Callable[[Outcome], None]) -> Callable[[], None]:
    def run() -> None:
        if outcome.error:
            return
        try:
            fn(outcome)
        except BaseException:  # noqa: BLE001 - reported by the test of this case
            outcome.error = traceback.format_exc()

    return run


def run_lanes(lanes: list[list[Callable[[], None]]]) -> list[float]:
    """Run each lane's jobs in order, the lanes side by side; returns each lane's seconds.

    Every job has its own SKYFED_HOME (and BigQuery store dataset); lanes are per region,
    so no emulator serves two cases at once.
    """

    def run(jobs: list[Callable[[], None]]) -> float:
        t = time.perf_counter()
        for j in jobs:
            j()
        return time.perf_counter() - t

    with ThreadPoolExecutor(max_workers=max(1, len(lanes))) as pool:
        return [f.result() for f in [pool.submit(run, jobs) for jobs in lanes]]


@dataclass
class CrashRuns:
    first_ref: dict[str, Outcome]  # per region: an uninterrupted first run
    inc_ref: dict[str, Outcome]  # per region: an uninterrupted first and second run
    first: dict[str, Outcome]  # per case id
    incremental: dict[str, Outcome]  # per case id
    seconds: float
    lane_seconds: list[float]


@pytest.fixture(scope="module")
def crash_runs(sources, tmp_path_factory) -> CrashRuns:
    """Every reference run and every crash case, lanes side by side.

    Phase 1, on the sources as seeded: per region an uninterrupted first run (the
    reference) and the first-run crash cases. Then some source rows change. Phase 2: the
    references' second run, and the incremental crash cases, each continuing in the home
    of a first-run case of its region (recovered and equal to the reference by then).
    Run one after another the cases take several minutes: the subprocess start-ups and
    the emulators dominate, and they overlap well.
    """
    started = time.perf_counter()
    regions = list(MAPPING_OF)

    def new_outcome(name: str, dataset: str) -> Outcome:
        home = tmp_path_factory.mktemp(name.replace(":", "_").replace(".", "_"))
        return Outcome(home, spec_for(sources, home, SOURCES, dataset))

    first_ref = {r: new_outcome(f"ref-{r}", f"crash_ref_{r}") for r in regions}
    inc_ref = {r: Outcome(o.home, o.spec) for r, o in first_ref.items()}
    first = {c.id: new_outcome(f"first-{c.id}", c.dataset) for c in FIRST_RUN}
    incremental: dict[str, Outcome] = {}
    for region in regions:
        hosts = [c for c in FIRST_RUN if c.region == region]
        for i, case in enumerate(c for c in INCREMENTAL if c.region == region):
            host = first[hosts[i].id]
            incremental[case.id] = Outcome(host.home, host.spec, continues=hosts[i].id)

    def uninterrupted(region: str) -> Callable[[Outcome], None]:
        def fn(o: Outcome) -> None:
            o.before = state(o.home, o.spec, region)
            o.report = completed(skyfed_ingest(o.home, o.spec, [MAPPING_OF[region]]), f"{region}: uninterrupted run")
            o.after = state(o.home, o.spec, region)

        return fn

    def crash_case(case: Case) -> Callable[[Outcome], None]:
        def fn(o: Outcome) -> None:
            if o.continues and first[o.continues].error:
                raise AssertionError(f"the first-run case {o.continues} whose home this case continues failed")
            # a first-run case starts from a fresh home (nothing); an incremental one from its host's state
            o.before = state(o.home, o.spec, case.region) if o.continues else NOTHING
            o.crashed = skyfed_ingest(o.home, o.spec, [MAPPING_OF[case.region]], case)
            if o.crashed.returncode != -signal.SIGKILL:
                return  # the test says the point was not reached
            o.mid = state(o.home, o.spec, case.region)
            o.rerun = skyfed_ingest(o.home, o.spec, [MAPPING_OF[case.region]])
            o.after = state(o.home, o.spec, case.region)

        return fn

    def lanes(refs: dict[str, Outcome], cases: list[Case], outcomes: dict[str, Outcome]) -> list[list[Callable[[], None]]]:
        """Two lanes for latam and for eu (the most cases), one for na; each lane runs its jobs in order."""
        out: list[list[Callable[[], None]]] = [[] for _ in range(5)]
        first_lane = {"latam": 0, "eu": 2, "na": 4}
        for r in regions:
            out[first_lane[r]].append(job(refs[r], uninterrupted(r)))
        turn = Counter[str]()
        for c in cases:
            lane = first_lane[c.region] + (turn[c.region] % 2 if c.region != "na" else 0)
            turn[c.region] += 1
            out[lane].append(job(outcomes[c.id], crash_case(c)))
        return out

    seconds = run_lanes(lanes(first_ref, FIRST_RUN, first))
    change_sources(sources.world)
    seconds += run_lanes(lanes(inc_ref, INCREMENTAL, incremental))
    return CrashRuns(first_ref, inc_ref, first, incremental, time.perf_counter() - started, seconds)


# --------------------------------------------------------------------------- checks


def killed(o: Outcome, case: Case) -> None:
    proc = o.crashed
    assert proc is not None
    assert proc.returncode == -signal.SIGKILL, (
        f"{case.var}={case.point} was never reached ({case.interrupts}): the run ended with exit "
        f"{proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    )


def assert_old_or_new(mid: dict[str, Any], old: dict[str, Any], new: dict[str, Any], case: Case) -> None:
    """Right after the kill each table is wholly the state before the run or wholly the state after it."""
    for name in (CONTRACT, "quarantine"):
        assert mid[name] in (old[name], new[name]), (
            f"{case.id}: after kill -9 during {case.interrupts}, {name} is neither the state before the run "
            f"nor the state after it: {mid[name]} not in {old[name]}, {new[name]}"
        )


def assert_same(got: dict[str, Any], want: dict[str, Any], case: Case) -> None:
    assert got[CONTRACT] == want[CONTRACT], (
        f"{case.id}: {CONTRACT} after the rerun differs from an uninterrupted run: {got[CONTRACT]} != {want[CONTRACT]}"
    )
    assert got["quarantine"] == want["quarantine"], (
        f"{case.id}: quarantine after the rerun differs: {got['quarantine']} != {want['quarantine']}"
    )


@pytest.fixture(scope="module")
def sources(federation, tmp_path_factory) -> Sources:
    world_home = tmp_path_factory.mktemp("crash-world")
    world = local_world(world_home, flights=300, seed=11)
    write_copy(world, SOURCES)
    return Sources(world_home, world)


# --------------------------------------------------------------------------- the tests


def test_crash_points_cover_every_store_and_runner_point() -> None:
    points = {(c.var, c.point) for c in FIRST_RUN + INCREMENTAL}
    assert len(points) >= 10
    assert {c.region for c in FIRST_RUN} == {c.region for c in INCREMENTAL} == {"latam", "eu", "na"}
    store_points = {p for v, p in points if v == STORE_CRASH}
    assert store_points >= {"iceberg.before_write", "iceberg.after_data_files", "iceberg.after_metadata",
                            "iceberg.after_commit", "bigquery.before_write", "bigquery.after_stage",
                            "bigquery.after_commit"}  # fmt: skip
    runner_points = {p for v, p in points if v == RUNNER_CRASH}
    assert runner_points >= {"batch:1", "batch:2", "after_extract", "after_quarantine_commit", "after_commit",
                             "fused:scan", "fused:after_stage"}  # fmt: skip


def test_latam_runs_the_fused_path(crash_runs: CrashRuns) -> None:
    """The PostgreSQL region's crash cases (all but batch:N) exercise the fused path."""
    for outcome in (crash_runs.first_ref["latam"], crash_runs.inc_ref["latam"]):
        outcome.check("latam: uninterrupted run")
        (r,) = outcome.report["results"]
        assert any("fused PostgreSQL path" in n for n in r["notes"]), r["notes"]


@pytest.mark.parametrize("region", list(MAPPING_OF))
def test_uninterrupted_runs_commit_data_and_quarantine(crash_runs: CrashRuns, region: str) -> None:
    ref = crash_runs.first_ref[region]
    ref.check(f"{region}: uninterrupted first run")
    (r,) = ref.report["results"]
    assert r["rows_loaded"] > 0 and r["rows_quarantined"] > 0, r  # both commits happen: quarantine, then data
    assert ref.after[CONTRACT] is not None and ref.after["quarantine"] is not None
    assert ref.after[CONTRACT]["rows"] == r["rows_committed"]
    inc = crash_runs.inc_ref[region]
    inc.check(f"{region}: uninterrupted second run")
    assert inc.before == ref.after
    (r2,) = inc.report["results"]
    assert r2["rows_read"] > 0 and r2["rows_quarantined"] == 0, r2  # only valid rows changed
    assert inc.after[CONTRACT] != inc.before[CONTRACT], "the change reached the curated table"
    assert inc.after["quarantine"] == inc.before["quarantine"]


@pytest.mark.parametrize("case", FIRST_RUN, ids=lambda c: c.id)
def test_kill_during_first_run_then_rerun_equals_uninterrupted(case: Case, crash_runs: CrashRuns) -> None:
    o = crash_runs.first[case.id]
    o.check(case.id)
    ref = crash_runs.first_ref[case.region]
    ref.check(f"{case.region}: uninterrupted first run")
    killed(o, case)
    assert_old_or_new(o.mid, NOTHING, ref.after, case)
    completed(o.rerun, f"{case.id}: rerun")
    assert_same(o.after, ref.after, case)


@pytest.mark.parametrize("case", INCREMENTAL, ids=lambda c: c.id)
def test_kill_during_incremental_run_then_rerun_equals_uninterrupted(case: Case, crash_runs: CrashRuns) -> None:
    o = crash_runs.incremental[case.id]
    o.check(case.id)
    ref = crash_runs.inc_ref[case.region]
    ref.check(f"{case.region}: uninterrupted first and second run")
    assert o.before == ref.before, f"{case.id}: the recovered first-run case {o.continues} equals the reference"
    killed(o, case)
    assert_old_or_new(o.mid, ref.before, ref.after, case)
    report = completed(o.rerun, f"{case.id}: rerun")
    assert_same(o.after, ref.after, case)
    (r,) = report["results"]
    if o.mid == ref.after:  # the kill came after the commit: the rerun finds nothing new
        assert r["status"] == "no_new_data", r
    else:
        assert r["rows_read"] == ref.report["results"][0]["rows_read"], "the rerun reads the same range again"


def test_crash_suite_time(crash_runs: CrashRuns) -> None:
    """Not a limit, a record: how long the references and all crash cases took together."""
    lanes = ", ".join(f"{s:.0f}" for s in crash_runs.lane_seconds)
    print(f"\ncrash cases: {len(crash_runs.first) + len(crash_runs.incremental)}, {crash_runs.seconds:.0f} s (lanes: {lanes} s)")
    for kind, cases, refs in (("first", crash_runs.first, crash_runs.first_ref),
                              ("incremental", crash_runs.incremental, crash_runs.inc_ref)):  # fmt: skip
        for case_id, o in cases.items():
            ref = refs[case_id.split("-")[0]]

            def which(name: str, o: Outcome = o, ref: Outcome = ref) -> str:
                if o.mid is None or ref.before is None or ref.after is None:
                    return "?"
                return "old" if o.mid[name] == ref.before[name] else "new" if o.mid[name] == ref.after[name] else "MIXED"

            print(f"  {kind:12} {case_id:40} after the kill: table {which(CONTRACT)}, quarantine {which('quarantine')}")
