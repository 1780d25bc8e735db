"""A live feed of flight status events for the demo, published to Pub/Sub (the emulator locally).

Events are what na's operations systems would send: departed, arrived, delayed,
diverted and fuel uplift, as JSON objects with the source's own field names and units
(`occurred_at` with a UTC offset, `fuel_gal` in US gallons). About one message in
`poison_every` is deliberately bad (cut-off JSON, an unknown event type, a negative
delay) so the demo shows the dead-letter path; every event id is unique except for
an occasional deliberate re-send, which the stream absorbs.

Run: `python -m skyfed.demo.events --rate 20 --seconds 60` with PUBSUB_EMULATOR_HOST set
(`skyfed up` exports it), or call `publish_feed` from the demo.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from skyfed.errors import SkyfedError

EVENT_TYPES = ("DEPARTED", "ARRIVED", "DELAYED", "DIVERTED", "FUEL_UPLIFT")
AIRPORTS = ("JFK", "LAX", "ORD", "ATL", "DFW", "MIA", "SEA", "BOS", "YYZ", "MEX")


def make_event(rng: random.Random, n: int, flights: int, now: datetime) -> dict[str, Any]:
    """One well-formed event in the source's shape (the mapping harmonizes it)."""
    kind = rng.choice(EVENT_TYPES)
    event: dict[str, Any] = {
        "event_id": f"ev-{n:09d}",
        "flight_id": str(rng.randrange(1, flights + 1)),
        "type": kind,
        "occurred_at": (now - timedelta(seconds=rng.randrange(0, 120))).isoformat(),
        "delay_minutes": None,
        "diverted_to": None,
        "fuel_gal": None,
    }
    if kind == "DELAYED":
        event["delay_minutes"] = rng.choice((5, 10, 15, 30, 45, 90, 180))
    elif kind == "DIVERTED":
        event["diverted_to"] = rng.choice(AIRPORTS)
    elif kind == "FUEL_UPLIFT":
        event["fuel_gal"] = round(rng.uniform(500, 24000), 1)
    return event


def poison(rng: random.Random, n: int, good: dict[str, Any]) -> bytes:
    """A bad message: malformed JSON, an unknown type, or a contract violation."""
    choice = rng.randrange(3)
    if choice == 0:
        return json.dumps(good).encode()[: rng.randrange(5, 40)]
    if choice == 1:
        return json.dumps(good | {"type": "EXPLODED"}).encode()
    return json.dumps(good | {"type": "DELAYED", "delay_minutes": -rng.randrange(1, 60)}).encode()


def publish_feed(
    project: str,
    topic: str,
    *,
    rate: float = 20.0,
    seconds: float = 60.0,
    flights: int = 1000,
    seed: int = 7,
    poison_every: int = 200,
    resend_every: int = 100,
) -> dict[str, int]:
    """Publish `rate` events per second for `seconds`; creates the topic on the emulator if missing."""
    from google.api_core import exceptions
    from google.cloud import pubsub_v1

    if not os.environ.get("PUBSUB_EMULATOR_HOST"):
        raise SkyfedError(
            "PUBSUB_EMULATOR_HOST is not set, so the demo feed has no Pub/Sub to publish to",
            "run `skyfed up` (it starts Google's Pub/Sub emulator when installed) and use its environment",
        )
    publisher = pubsub_v1.PublisherClient()
    path = publisher.topic_path(project, topic)
    try:
        publisher.create_topic(request={"name": path})
    except exceptions.AlreadyExists:
        pass
    rng = random.Random(seed)
    counts = {"events": 0, "poison": 0, "resent": 0}
    futures = []
    started = time.monotonic()
    n = 0
    last: bytes | None = None
    while time.monotonic() - started < seconds:
        n += 1
        event = make_event(rng, n, flights, datetime.now(timezone.utc))
        data = json.dumps(event).encode()
        if poison_every and n % poison_every == 0:
            data = poison(rng, n, event)
            counts["poison"] += 1
        else:
            counts["events"] += 1
        futures.append(publisher.publish(path, data))
        if resend_every and last is not None and n % resend_every == 0:
            futures.append(publisher.publish(path, last))  # at-least-once upstream: the same event again
            counts["resent"] += 1
        last = data
        delay = started + n / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    for f in futures:
        f.result(timeout=60)
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description="Publish the demo's live flight status event feed.")
    ap.add_argument("--project", default="skyfed-na")
    ap.add_argument("--topic", default="flight-events")
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--seconds", type=float, default=60.0)
    args = ap.parse_args()
    print(json.dumps(publish_feed(args.project, args.topic, rate=args.rate, seconds=args.seconds)))


if __name__ == "__main__":
    main()
