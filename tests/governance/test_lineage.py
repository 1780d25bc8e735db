"""Column lineage from mappings and model SQL; OpenLineage events over file and HTTP transports."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from skyfed.errors import SkyfedError
from skyfed.governance.lineage import (
    events_path,
    ingest_lineage,
    mapping_columns,
    model_columns,
    model_lineage,
    recorded_edges,
    spec_edges,
    walk,
)
from tests.governance.conftest import make_spec

MODEL = (
    "WITH eu AS (SELECT flight_id, fare FROM booking WHERE region = 'eu') "
    "SELECT f.flight_id, sum(eu.fare) / max(f.seats) AS fare_per_seat FROM flight_leg AS f JOIN eu USING (flight_id) GROUP BY 1"
)
SCHEMA = {"booking": {"flight_id": "VARCHAR", "fare": "DOUBLE", "region": "VARCHAR"},
          "flight_leg": {"flight_id": "VARCHAR", "seats": "INT"}}


def names(tree: dict) -> list[str]:
    return [tree["name"]] + [n for c in tree["children"] for n in names(c)]


def test_mapping_and_model_columns() -> None:
    m = make_spec().mappings[0]
    cols = mapping_columns(m)
    assert cols["passenger_name"] == ["first_name", "last_name"]
    assert cols["region"] == []
    assert cols["fare"] == ["booked_at", "fare_eur"]
    got = model_columns(MODEL, SCHEMA)
    assert got == {"flight_id": ["flight_leg.flight_id"], "fare_per_seat": ["booking.fare", "flight_leg.seats"]}


def test_emit_to_file_and_tree(home: Path) -> None:
    spec = make_spec()
    event = ingest_lineage(spec, "eu_bookings", "run-7")
    lines = Path(events_path()).read_text().splitlines()
    assert len(lines) == 1
    written = json.loads(lines[0])
    assert written["eventType"] == "COMPLETE" and written["job"]["name"] == "eu_bookings"
    assert written["run"]["runId"] == event["run"]["runId"]
    fields = written["outputs"][0]["facets"]["columnLineage"]["fields"]
    assert {f["field"] for f in fields["passenger_name"]["inputFields"]} == {"first_name", "last_name"}
    assert fields["passenger_name"]["inputFields"][0]["name"] == "eu.ops.bookings"

    model_lineage("fare_per_seat", MODEL, "m-1", SCHEMA)
    edges = spec_edges(spec) + recorded_edges()
    up = walk("booking.passenger_name", edges, upstream=True)
    assert names(up) == ["booking.passenger_name", "eu.booking.passenger_name",
                         "eu.ops.bookings.first_name", "eu.ops.bookings.last_name"]
    down = walk("eu.ops.bookings.fare_eur", edges, upstream=False)
    assert names(down) == ["eu.ops.bookings.fare_eur", "eu.booking.fare", "booking.fare", "fare_per_seat.fare_per_seat"]
    assert names(walk("booking", edges, upstream=True)) == ["booking", "eu.booking", "eu.ops.bookings"]
    with pytest.raises(SkyfedError, match="not a table or column"):
        walk("nowhere.col", edges)


def test_http_transport_receives_the_event(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append({"path": self.path, "event": json.loads(body)})
            self.send_response(201)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("OPENLINEAGE_URL", f"http://127.0.0.1:{server.server_port}")
        ingest_lineage(make_spec(), "eu_bookings", "run-8", status="failed")
    finally:
        server.shutdown()
    assert len(received) == 1 and received[0]["path"] == "/api/v1/lineage"
    assert received[0]["event"]["eventType"] == "FAIL"
    assert not Path(events_path()).exists() or Path(events_path()).read_text() == ""
