"""`up` / `down` / `status` of the local federation in its own SKYFED_HOME.

The tests in this module share one federation and run in file order: each leaves it
running (or says otherwise) for the next. Teardown always runs `down`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from skyfed import localenv
from skyfed.errors import SkyfedError
from skyfed.localenv.state import Paths, ServiceRecord, load_record, save_record

pytestmark = pytest.mark.services

ALL = ("postgres", "bigquery", "gcs", "pubsub")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("lifecycle-home")
    try:
        localenv.up(path)
        yield path
    finally:
        localenv.down(path)


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """An unrelated live process that must survive everything."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def pids(home: Path) -> dict[str, int | None]:
    return {s.name: s.pid for s in localenv.status(home).services}


def running(home: Path) -> set[str]:
    return set(localenv.status(home).running)


def _expected_running() -> set[str]:
    from skyfed.localenv.pubsub import executable

    return set(ALL) if executable() else set(ALL) - {"pubsub"}


def test_up_starts_everything_and_is_idempotent(home):
    before = pids(home)
    assert running(home) == _expected_running()
    started = time.monotonic()
    localenv.up(home)
    assert time.monotonic() - started < 3, "a warm `up` must not restart anything"
    assert pids(home) == before


def test_status_json_shape(home, run_cli):
    code, out, err = run_cli("status", "--json", env={"SKYFED_HOME": str(home)})
    assert code == 0, err
    data = json.loads(out)
    assert data["home"] == str(home)
    assert [s["name"] for s in data["services"]] == list(ALL)
    keys = {"name", "title", "state", "pid", "endpoints", "ports", "log", "version", "persists_data", "detail", "hint"}
    for svc in data["services"]:
        assert keys <= set(svc), svc
        assert svc["state"] in {"running", "stopped", "missing", "failed"}
        assert svc["log"] == str(home / "logs" / f"{svc['name']}.log")
    by_name = {s["name"]: s for s in data["services"]}
    assert by_name["postgres"]["state"] == "running"
    assert by_name["postgres"]["persists_data"] is True
    assert by_name["pubsub"]["persists_data"] is False
    assert set(by_name["bigquery"]["endpoints"]) == {"rest", "grpc"}
    assert by_name["postgres"]["version"].startswith("PostgreSQL ")


def test_status_table(home, run_cli):
    code, out, err = run_cli("status", env={"SKYFED_HOME": str(home), "COLUMNS": "160"})
    assert code == 0, err
    assert "postgres" in out and "running" in out and "bigquery" in out


def test_services_outlive_the_cli_and_env_points_at_them(home):
    env = localenv.service_env(home)
    st = localenv.status(home)
    assert env["SKYFED_PG_PORT"] == str(st["postgres"].ports["port"])
    assert env["SKYFED_BQ_ENDPOINT"] == f"http://127.0.0.1:{st['bigquery'].ports['rest']}"
    assert env["SKYFED_BQ_GRPC"] == f"127.0.0.1:{st['bigquery'].ports['grpc']}"
    assert env["STORAGE_EMULATOR_HOST"] == f"http://127.0.0.1:{st['gcs'].ports['port']}"
    assert ("PUBSUB_EMULATOR_HOST" in env) == (st["pubsub"].state == "running")
    for svc in st.services:
        if svc.state == "running":
            proc = psutil.Process(svc.pid)
            assert os.getsid(proc.pid) != os.getsid(0), f"{svc.name} must run in its own session"


def _clients(home: Path):
    """Official clients pointed at this module's federation (not the session one)."""
    import psycopg
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery, storage

    env = localenv.service_env(home)
    pg = psycopg.connect(
        host=env["SKYFED_PG_HOST"], port=int(env["SKYFED_PG_PORT"]), user=env["SKYFED_PG_USER"],
        password=env["SKYFED_PG_PASSWORD"], dbname="skyfed", autocommit=True, connect_timeout=5,
    )  # fmt: skip
    bq = bigquery.Client(
        project="skyfed-test", credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=env["SKYFED_BQ_ENDPOINT"]),
    )  # fmt: skip
    gcs = storage.Client(
        project="skyfed-test", credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=env["STORAGE_EMULATOR_HOST"]),
    )  # fmt: skip
    return pg, bq, gcs


def test_write_data_that_must_survive_a_restart(home):
    pg, bq, gcs = _clients(home)
    with pg:
        pg.execute("create table kept (id int primary key)")
        pg.execute("insert into kept values (7)")
    bq.create_dataset("kept_ds")
    bq.query("create table kept_ds.t as select 7 as id").result()
    gcs.create_bucket("kept-bucket").blob("k.txt").upload_from_string(b"7")


@pytest.mark.parametrize("victim", ["postgres", "gcs"])
def test_kill_9_then_up_restarts_only_that_service(home, victim):
    before = pids(home)
    ports = localenv.status(home)[victim].ports
    os.kill(before[victim], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while localenv.status(home)[victim].state == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    st = localenv.status(home)[victim]
    assert st.state == "failed" and "exited unexpectedly" in (st.detail or "")
    localenv.up(home)
    after = pids(home)
    assert after[victim] != before[victim]
    assert {k: v for k, v in after.items() if k != victim} == {k: v for k, v in before.items() if k != victim}
    assert running(home) == _expected_running()
    assert localenv.status(home)[victim].ports == ports, "the recorded port is reused when free"


def _stop_for_real(home: Path, name: str) -> ServiceRecord:
    rec = load_record(Paths.of(home), name)
    assert rec is not None and rec.pid
    proc = psutil.Process(rec.pid)
    proc.terminate()
    proc.wait(10)
    return rec


def test_stale_record_with_dead_pid(home):
    rec = _stop_for_real(home, "gcs")
    dead = subprocess.Popen(["true"])
    dead.wait()
    rec.pid, rec.create_time, rec.state = dead.pid, time.time(), "running"
    save_record(Paths.of(home), rec)
    assert localenv.status(home)["gcs"].state == "failed"
    localenv.up(home)
    st = localenv.status(home)["gcs"]
    assert st.state == "running" and st.pid != dead.pid
    assert st.ports == rec.ports, "the recorded port is reused when free"


def test_stale_record_pointing_at_unrelated_live_process(home, bystander):
    rec = _stop_for_real(home, "gcs")
    # Worst case: pid *and* create time match; only the command line tells it is not ours.
    rec.pid, rec.create_time, rec.state = bystander.pid, psutil.Process(bystander.pid).create_time(), "running"
    save_record(Paths.of(home), rec)
    assert localenv.status(home)["gcs"].state == "failed"
    localenv.up(home)
    assert localenv.status(home)["gcs"].pid != bystander.pid
    assert bystander.poll() is None
    # `down` must not signal it either.
    rec2 = load_record(Paths.of(home), "gcs")
    assert rec2 is not None
    real = psutil.Process(rec2.pid)
    save_record(Paths.of(home), ServiceRecord(**{**rec2.to_json(), "pid": bystander.pid, "create_time": rec.create_time}))
    localenv.down(home)
    assert bystander.poll() is None
    real.terminate()  # the gcs we hid from `down` above
    real.wait(10)


def test_restart_reuses_ports_unless_taken(home):
    assert running(home) == set()  # the previous test ran `down`
    recorded = load_record(Paths.of(home), "gcs")
    assert recorded is not None
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", recorded.ports["port"]))
        squatter.listen()
        pg_port = load_record(Paths.of(home), "postgres").ports["port"]
        st = localenv.up(home)
        assert st["gcs"].state == "running" and st["gcs"].ports["port"] != recorded.ports["port"]
        assert st["postgres"].ports["port"] == pg_port
    pg, bq, gcs = _clients(home)
    with pg:
        assert pg.execute("select id from kept").fetchall() == [(7,)]
    assert [r.id for r in bq.query("select id from kept_ds.t").result()] == [7]
    assert gcs.bucket("kept-bucket").blob("k.txt").download_as_bytes() == b"7"


def test_down_stops_everything_it_started_and_nothing_else(home, bystander, run_cli):
    before = {k: v for k, v in pids(home).items() if v}
    assert before
    procs = {k: psutil.Process(v) for k, v in before.items()}
    code, out, err = run_cli("down", "--json", env={"SKYFED_HOME": str(home)})
    assert code == 0, err
    assert {s["state"] for s in json.loads(out)["services"]} <= {"stopped", "missing"}
    for name, proc in procs.items():
        assert not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE, f"{name} still runs"
    assert bystander.poll() is None
    assert not list((Path(home) / "services" / "postgres" / "data").glob("postmaster.pid"))
    code, out, err = run_cli("down", env={"SKYFED_HOME": str(home)})
    assert code == 0, err


def test_service_dying_at_start_names_it_and_its_log(home):
    db = home / "services" / "bigquery" / "data" / "bqemulator.duckdb"
    db.write_bytes(b"this is not a duckdb file" * 100)
    with pytest.raises(SkyfedError) as info:
        localenv.up(home)
    err = info.value
    assert "bigquery" in err.message and "exited while starting" in err.message
    assert str(home / "logs" / "bigquery.log") in (err.hint or "")
    st = localenv.status(home)
    assert st["bigquery"].state == "failed"
    assert st["postgres"].state == "running" and st["gcs"].state == "running"
    db.unlink()
    db.with_suffix(".duckdb.wal").unlink(missing_ok=True)


def test_missing_pubsub_is_reported_with_what_installs_it(tmp_path, run_cli):
    code, out, err = run_cli(
        "status", "--json", env={"SKYFED_HOME": str(tmp_path), "SKYFED_PUBSUB_EMULATOR": str(tmp_path / "nope")}
    )
    assert code == 0, err
    ps = {s["name"]: s for s in json.loads(out)["services"]}["pubsub"]
    assert ps["state"] == "missing"
    assert "google-cloud-cli-pubsub-emulator" in ps["hint"] and "gcloud components install pubsub-emulator" in ps["hint"]
