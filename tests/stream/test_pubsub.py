"""Pub/Sub events through the official client's streaming pull against Google's emulator.

Valid events land once per event id; poison messages (malformed JSON, not an object,
not UTF-8, oversized, no event id) and contract violations land in the quarantine with
their reason while the stream goes on; messages are acknowledged only after the
commit, so a kill -9 between commit and ack redelivers them without doubling.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from envkit import env_vars
from stream_kit import events_spec_doc, load, need_env, write_spec

from skyfed.ingest.stores import open_store
from skyfed.stream import runner

pytestmark = pytest.mark.services


def _publish(topic: str, payloads: list[bytes]) -> None:
    from google.cloud import pubsub_v1

    need_env("PUBSUB_EMULATOR_HOST")
    publisher = pubsub_v1.PublisherClient()
    path = publisher.topic_path("skyfed-na", topic)
    for f in [publisher.publish(path, p) for p in payloads]:
        f.result(timeout=30)


def _event(i: int, **over) -> bytes:
    e = {"event_id": f"E{i}", "flight_id": str(1000 + i), "type": "DELAYED", "occurred_at": "2024-05-01T10:00:00Z",
         "delay_minutes": i % 60, "fuel_gal": None, "diverted_to": None}  # fmt: skip
    e.update(over)
    return json.dumps(e).encode()


@pytest.fixture(scope="module")
def setup(federation, tmp_path_factory):
    need_env("PUBSUB_EMULATOR_HOST")
    home = tmp_path_factory.mktemp("stream-pubsub-home")
    with env_vars(SKYFED_HOME=str(home)):
        path = write_spec(home / "skyfed.yaml", events_spec_doc("pubsubtest", "flight-events-test"))
        spec = load(path)
        runner.run(spec, ["na.events"], until_idle=True, idle_seconds=0.5)  # creates topic and subscription
        yield home, path, spec


def _table(spec, name="flight_status_event"):
    return open_store("na", spec.regions["na"].store).read(name)


def test_events_land_once_and_poison_goes_to_quarantine(setup):
    home, path, spec = setup
    good = [_event(i) for i in range(50)]
    poison = {
        "malformed": b'{"event_id": "X1", "type": ',
        "notobject": b'[1, 2, 3]',
        "binary": b"\xff\xfe\x00garbage",
        "oversized": _event(999, diverted_to="x" * 3000),
        "noid": _event(998, event_id=None),
        "badtype": _event(997, type="EXPLODED"),
        "baddelay": _event(996, delay_minutes=-5),
    }
    dupes = [_event(3), _event(7, type="ARRIVED", delay_minutes=None)]  # a redelivery and a newer version
    _publish("flight-events-test", good + list(poison.values()) + dupes)
    stats = runner.run(spec, ["na.events"], until_idle=True, idle_seconds=1.5)
    st = stats["na.events"]
    assert st.changes == len(good) + len(poison) + len(dupes)
    table = _table(spec)
    ids = table["event_id"].to_pylist()
    assert sorted(ids) == sorted(f"E{i}" for i in range(50))  # once each; poison absent
    row7 = next(r for r in table.to_pylist() if r["event_id"] == "E7")
    assert row7["event_type"] == "arrived" and row7["delay_min"] is None  # the later message of the batch won
    assert next(r for r in table.to_pylist() if r["event_id"] == "E5")["flight_id"] == "NA-1005"
    q = _table(spec, "quarantine").to_pylist()
    reasons = " | ".join(r["reason"] for r in q)
    for expected in ("not valid JSON", "not an object", "not UTF-8", "more than 2000 bytes", "has no event_id",
                     "EXPLODED", "below the minimum"):  # fmt: skip
        assert expected.lower() in reasons.lower(), f"no quarantine record says {expected!r}: {reasons}"
    assert len(q) == len(poison)
    # all acknowledged after the commit: nothing comes back
    again = runner.run(spec, ["na.events"], until_idle=True, idle_seconds=1.0)
    assert again["na.events"].changes == 0


def test_kill_between_commit_and_ack_redelivers_without_doubling(setup):
    home, path, spec = setup
    before = _table(spec).num_rows
    _publish("flight-events-test", [_event(i) for i in range(100, 140)])
    cmd = [sys.executable, "-m", "skyfed", "stream", "na.events", "--spec", str(path)]
    proc = subprocess.run(cmd, env={**os.environ, "SKYFED_STREAM_CRASH_AT": "before_ack"}, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    committed = _table(spec).num_rows
    assert committed > before  # the batch was committed, its messages not acknowledged
    # the emulator redelivers once the ack deadline (10 s) has passed; the upsert by event id absorbs it
    stats = runner.run(spec, ["na.events"], until_idle=True, idle_seconds=12)
    assert stats["na.events"].changes >= committed - before
    table = _table(spec)
    assert table.num_rows == before + 40
    assert len(set(table["event_id"].to_pylist())) == table.num_rows


def test_demo_feed_lands_with_its_poison_in_quarantine(setup):
    from skyfed.demo.events import publish_feed

    home, _, _ = setup
    spec = load(write_spec(home / "demo.yaml", events_spec_doc("pubsubdemo", "flight-events-demo")))
    runner.run(spec, ["na.events"], until_idle=True, idle_seconds=0.5)  # the subscription exists before publishing
    rows_before, q_before = _table(spec).num_rows, _table(spec, "quarantine").num_rows  # same store as the other tests
    counts = publish_feed("skyfed-na", "flight-events-demo", rate=400, seconds=0.5, poison_every=20, resend_every=0)
    assert counts["poison"] >= 5
    stats = runner.run(spec, ["na.events"], until_idle=True, idle_seconds=1.5)
    assert stats["na.events"].changes == counts["events"] + counts["poison"]
    table = _table(spec)
    assert table.num_rows - rows_before == counts["events"]
    assert set(table["event_type"].to_pylist()) <= {"departed", "arrived", "delayed", "diverted", "fuel_uplift"}
    assert _table(spec, "quarantine").num_rows - q_before == counts["poison"]
