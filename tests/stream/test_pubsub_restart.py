"""The Pub/Sub emulator restarted under a running `skyfed stream`.

The emulator keeps topics and subscriptions in memory, so a restart loses both and every
message not yet acknowledged. The streamer must survive it: it reconnects with backoff,
says in its status that the topic is gone (it does not create a topic on a reconnect: that
is the publisher's), recreates its subscription once the topic exists again, and streams
what is published after that. What was committed before stays committed, once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from envkit import env_vars
from stream_kit import events_spec_doc, load, need_env, write_spec

from skyfed.errors import SkyfedError
from skyfed.ingest.stores import open_store
from skyfed.stream import runner

pytestmark = pytest.mark.services

TOPIC = "flight-events-restart"


def _event(i: int) -> bytes:
    return json.dumps({"event_id": f"R{i}", "flight_id": str(i), "type": "DEPARTED",
                       "occurred_at": "2024-05-01T10:00:00Z"}).encode()  # fmt: skip


def _publish(ids: range) -> None:
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    path = publisher.topic_path("skyfed-na", TOPIC)
    for f in [publisher.publish(path, _event(i)) for i in ids]:
        f.result(timeout=30)


def _rows(spec) -> set[str]:
    try:
        return set(open_store("na", spec.regions["na"].store).read("flight_status_event")["event_id"].to_pylist())
    except SkyfedError:  # no table yet
        return set()


def _wait(what: str, check, proc: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.time() + seconds
    while not check():
        if proc.poll() is not None:
            raise AssertionError(f"the streamer exited ({proc.returncode}) while waiting for {what}: "
                                 + proc.stderr.read().decode()[-2000:])  # fmt: skip
        assert time.time() < deadline, f"{what}: not within {seconds} s"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def setup(federation, tmp_path_factory):
    need_env("PUBSUB_EMULATOR_HOST")
    home = tmp_path_factory.mktemp("stream-pubsub-restart-home")
    with env_vars(SKYFED_HOME=str(home)):
        path = write_spec(home / "skyfed.yaml", events_spec_doc("pubsubrestart", TOPIC))
        spec = load(path)
        runner.run(spec, ["na.events"], until_idle=True, idle_seconds=0.3)  # creates topic and subscription
        yield federation, home, path, spec


def test_emulator_restart_mid_stream(setup, run_cli):
    from google.api_core import exceptions
    from google.cloud import pubsub_v1

    from skyfed.localenv.manager import SERVICES, _stop, up
    from skyfed.localenv.state import Paths

    federation, home, path, spec = setup
    status_file = home / "stream" / "na.events.json"
    cmd = [sys.executable, "-m", "skyfed", "stream", "na.events", "--spec", str(path), "--max-seconds", "0.3"]
    proc = subprocess.Popen(cmd, env={**os.environ, "SKYFED_STREAM_RECONNECT_SECONDS": "90"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        _publish(range(20))
        _wait("the first events committed", lambda: len(_rows(spec)) == 20, proc)

        pubsub = next(s for s in SERVICES if s.name == "pubsub")
        _stop(pubsub, Paths.of(federation.home))
        up(federation.home)  # same port, empty: no topic, no subscription

        def reconnecting() -> bool:
            saved = json.loads(status_file.read_text()) if status_file.exists() else {}
            return saved.get("state") == "reconnecting" and "does not exist" in (saved.get("error") or "")

        _wait("the status saying that the topic is gone", reconnecting, proc)
        res = run_cli("stream", "status", "na.events", "--spec", str(path), "--json")
        (row,) = json.loads(res.stdout)
        assert row["state"] == "reconnecting" and TOPIC in row["error"], row

        publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
        publisher.create_topic(request={"name": publisher.topic_path("skyfed-na", TOPIC)})  # the publisher's side

        def subscribed() -> bool:
            try:
                subscriber.get_subscription(request={"subscription": subscriber.subscription_path("skyfed-na", f"{TOPIC}-skyfed")})
                return True
            except exceptions.NotFound:
                return False

        _wait("the streamer recreating its subscription", subscribed, proc)
        _publish(range(20, 45))
        _wait("the events published after the restart", lambda: len(_rows(spec)) == 45, proc)
        saved = json.loads(status_file.read_text())
        assert saved["state"] == "streaming" and not saved.get("error")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    _, errtext = proc.communicate(timeout=60)
    text = errtext.decode()
    assert proc.returncode == 0, text[-2000:]
    assert "reconnecting" in text and "recreated" in text, text[-2000:]
    table = open_store("na", spec.regions["na"].store).read("flight_status_event")
    assert table.num_rows == 45 and len(set(table["event_id"].to_pylist())) == 45
