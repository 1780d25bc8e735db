"""Pub/Sub events into the curated stores: pull, validate, de-duplicate, commit, then ack.

Messages come through the official client's Pull RPC (up to 1,000 per call) until the
micro-batch closes. Not the streaming pull: against Google's emulator (0.8.20 here) a
cancelled streaming pull leaves a broken stream behind (NoSuchMethodError in the
emulator's onRstStreamRead), and the next subscriber then received nothing for 6 to
more than 15 s. Pull has the same at-least-once contract. Over the whole batch at once:
- poison messages become dead letters with their reason, committed to the region's
  quarantine table (location `message=<message id>`): larger than
  `max_message_bytes`, not UTF-8, not JSON, or JSON that is not an object;
- the rest are JSON objects whose fields become the source columns (DuckDB's JSON
  functions, no per-message Python) and go through the mapping like any source:
  contract violations are quarantined with the rule that failed;
- de-duplicated by the mapping's key (the event id): within the batch the last
  message wins, across batches the store's upsert by key makes a redelivery a no-op.
Only after the store commit are the batch's messages acknowledged, so a crash before
it gets them redelivered (at least once + idempotent commit = exactly once).
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from skyfed.contracts.harmonize import SEQ
from skyfed.errors import SkyfedError
from skyfed.ingest.runner import referenced_columns
from skyfed.ingest.stores import open_store
from skyfed.ingest.stores.base import quarantine_records
from skyfed.spec.models import Mapping, PlatformSpec, PubSubSource
from skyfed.stream.apply import OP, MappingApplier
from skyfed.stream.base import BatchReport, SourceGone, SourceLost, crash_point

ACK_DEADLINE_SECONDS = 10  # for subscriptions skyfed creates (emulator): a crash's messages come back soon
RAW_LIMIT = 4096  # characters of a dead letter's payload kept in the quarantine
PULL_MAX = 1000  # messages per pull and per acknowledge request
ADMIN_TIMEOUT = 5.0  # seconds per admin call (no client retries: the runner reconnects with backoff)


def _client_env(source: PubSubSource) -> None:
    """Point the official client at the emulator when the spec names one."""
    if source.endpoint:
        os.environ["PUBSUB_EMULATOR_HOST"] = source.endpoint.removeprefix("http://")


def ensure_subscription(source: PubSubSource, *, create_topic: bool = True) -> tuple[str, bool]:
    """(subscription path, whether it was created now). On the emulator the topic (with
    `create_topic`) and the subscription are created when missing; on Google Cloud they belong
    to the infrastructure (deploy/terraform).

    Without `create_topic` (a reconnect) a missing topic is SourceLost saying so: the emulator
    keeps topics in memory, so after its restart the topic exists again only once its
    publisher creates it; the subscription is then recreated on it.
    """
    from google.api_core import exceptions
    from google.cloud import pubsub_v1

    _client_env(source)
    subscriber = pubsub_v1.SubscriberClient()
    sub_path = subscriber.subscription_path(source.project, source.subscription)
    created = False
    try:
        if os.environ.get("PUBSUB_EMULATOR_HOST"):
            publisher = pubsub_v1.PublisherClient()
            topic = publisher.topic_path(source.project, source.topic)
            if create_topic:
                with contextlib.suppress(exceptions.AlreadyExists):
                    publisher.create_topic(request={"name": topic}, retry=None, timeout=ADMIN_TIMEOUT)
            try:
                subscriber.get_subscription(request={"subscription": sub_path}, retry=None, timeout=ADMIN_TIMEOUT)
            except exceptions.NotFound:
                try:
                    subscriber.create_subscription(
                        request={"name": sub_path, "topic": topic, "ack_deadline_seconds": ACK_DEADLINE_SECONDS},
                        retry=None, timeout=ADMIN_TIMEOUT,
                    )  # fmt: skip
                    created = True
                except exceptions.AlreadyExists:
                    pass
                except exceptions.NotFound:
                    raise SourceLost(
                        f"topic {source.topic} of project {source.project} does not exist (any more): the Pub/Sub "
                        "emulator keeps topics in memory, so a restart of it loses them",
                        "waiting for the publisher to create the topic again; the subscription is then recreated",
                    ) from None
    finally:
        subscriber.close()
    return sub_path, created


class PubSubStream:
    """Streams one Pub/Sub subscription into its mappings' curated tables."""

    kind = "pubsub"

    def __init__(self, spec: PlatformSpec, source_ref: str, mappings: list[Mapping]):
        self.spec = spec
        self.source_ref = source_ref
        self.region = source_ref.partition(".")[0]
        source = spec.source(source_ref)
        assert isinstance(source, PubSubSource)
        self.source = source
        self.mappings = mappings
        for m in mappings:
            if not m.key:
                raise SkyfedError(
                    f"mapping {m.name}: a Pub/Sub mapping needs `key` (the event id) to de-duplicate redeliveries",
                    "set key: [event_id] (or the field that identifies an event) on the mapping",
                )
        self.store = open_store(self.region, spec.regions[self.region].store)
        self.appliers = {m.name: MappingApplier(spec, m, self.store, {}) for m in mappings}
        self.columns = sorted(set().union(*(referenced_columns(m) for m in mappings)))
        self._subscriber: Any = None
        self._path = ""
        self.delivered = 0
        self.notes: list[str] = []  # said once by the runner (e.g. a recreated subscription)

    def start(self, *, batch_rows: int = 10_000, reopen: bool = False) -> list[Any]:
        """Subscribe; `reopen` (after a broken connection) never creates the topic, see ensure_subscription."""
        from google.api_core import exceptions
        from google.cloud import pubsub_v1

        try:
            self._path, created = ensure_subscription(self.source, create_topic=not reopen)
            if created and reopen:
                self.notes.append(
                    f"subscription {self.source.subscription} was missing and is recreated on topic {self.source.topic}: "
                    "messages published while it did not exist are not delivered to it"
                )
            self._subscriber = pubsub_v1.SubscriberClient()
        except exceptions.GoogleAPICallError as exc:
            raise SourceLost(f"{self.source_ref}: cannot subscribe to {self.source.subscription}: {exc}",
                             "check the subscription and, locally, that the Pub/Sub emulator runs (`skyfed up`)") from None  # fmt: skip
        return []

    def _pull(self, n: int, timeout: float) -> list[Any]:
        from google.api_core import exceptions

        try:
            response = self._subscriber.pull(
                request={"subscription": self._path, "max_messages": n}, timeout=max(0.5, timeout),
                retry=None,
            )  # fmt: skip
        except exceptions.DeadlineExceeded:
            return []
        except exceptions.NotFound as exc:
            if not os.environ.get("PUBSUB_EMULATOR_HOST"):  # Google Cloud: durable, so gone means deleted
                raise SourceGone(f"{self.source_ref}: subscription {self.source.subscription} does not exist: {exc}",
                                 "create it (deploy/terraform) and restart `skyfed stream`") from None  # fmt: skip
            raise SourceLost(f"{self.source_ref}: subscription {self.source.subscription} is gone (emulator restarted?)",
                             "the streamer reconnects and recreates it once the topic exists") from None  # fmt: skip
        except exceptions.GoogleAPICallError as exc:
            raise SourceLost(f"{self.source_ref}: pulling from {self.source.subscription} failed: {exc}",
                             "the streamer reconnects and resumes") from None  # fmt: skip
        return list(response.received_messages)

    def read_batch(self, max_rows: int, max_seconds: float, idle_seconds: float | None = None) -> BatchReport | None:
        started = time.monotonic()
        deadline = started + max_seconds
        messages: list[Any] = []
        last = started
        while len(messages) < max_rows:
            now = time.monotonic()
            if messages and now >= deadline:
                break
            quiet = idle_seconds if idle_seconds is not None else max_seconds
            if not messages and now - last >= quiet:
                break
            got = self._pull(min(PULL_MAX, max_rows - len(messages)), 1.0)
            if got:
                messages.extend(got)
                last = time.monotonic()
            elif messages:
                break  # drained: commit what we have now rather than wait for the deadline
        if not messages:
            return None
        results = self._commit([m.message for m in messages])
        crash_point("before_ack")
        ack_ids = [m.ack_id for m in messages]
        from google.api_core import exceptions

        try:
            for i in range(0, len(ack_ids), PULL_MAX):  # only now: the batch is durable
                self._subscriber.acknowledge(request={"subscription": self._path, "ack_ids": ack_ids[i : i + PULL_MAX]},
                                             retry=None, timeout=ADMIN_TIMEOUT)  # fmt: skip
        except exceptions.GoogleAPICallError as exc:  # committed; a redelivery is absorbed by the upsert by key
            raise SourceLost(f"{self.source_ref}: acknowledging a committed batch failed: {exc}",
                             "the streamer reconnects; redelivered messages are no-ops") from None  # fmt: skip
        self.delivered += len(messages)
        return BatchReport(self.source_ref, len(messages), results, None, time.monotonic() - started, None)

    def _commit(self, messages: list[Any]) -> list[Any]:
        ids = pa.array([m.message_id for m in messages], pa.string())
        payload = pa.array([m.data for m in messages], pa.binary())
        changes, dead = decode_events(ids, payload, self.columns, self.source.max_message_bytes)
        results = []
        for m in self.mappings:
            run_id = f"stream-{uuid.uuid4().hex[:12]}"
            letters = None
            keyless = pc.is_null(changes[m.key[0]])
            for k in m.key[1:]:
                keyless = pc.or_(keyless, pc.is_null(changes[k]))
            if pc.any(keyless).as_py():
                lost = changes.filter(keyless)
                changes = changes.filter(pc.invert(keyless))
                miss = pa.table({
                    "location": pc.binary_join_element_wise(
                        pa.array(["message"] * lost.num_rows), pc.take(ids, lost[SEQ]).cast(pa.string()), "="),
                    "reasons": pa.array([[f"missing: the event has no {', '.join(m.key)}"]] * lost.num_rows, pa.list_(pa.string())),
                    "raw": pc.take(pa.array([x.data for x in messages], pa.binary()), lost[SEQ]).cast(pa.string(), safe=False),
                })  # fmt: skip
                dead = pa.concat_tables([dead, miss.cast(dead.schema)])
            if dead.num_rows:
                letters = quarantine_records(m, self.region, run_id, location=dead["location"],
                                             reasons=dead["reasons"], raw=dead["raw"], n=dead.num_rows)  # fmt: skip
            position = {"kind": "pubsub", "subscription": self.source.subscription,
                        "last_message_id": messages[-1].message_id}  # fmt: skip
            res = self.appliers[m.name].apply(
                changes, source_key=list(m.key), position=position, run_id=run_id,
                location_prefix=",".join(m.key), extra_quarantine=letters,
            )  # fmt: skip
            res.quarantined += dead.num_rows
            results.append(res)
        return results

    def close(self) -> None:
        if self._subscriber is not None:
            with contextlib.suppress(Exception):
                self._subscriber.close()
        for a in self.appliers.values():
            a.close()


def decode_events(ids: pa.Array, payload: pa.Array, columns: list[str], max_bytes: int) -> tuple[pa.Table, pa.Table]:
    """(changes, dead letters): JSON objects as text columns `columns` + __op + __seq, and the
    poison messages with location, reasons and raw text. Vectorized (Arrow + DuckDB)."""
    import duckdb

    n = len(payload)
    sizes = pc.binary_length(payload)
    oversized = pc.greater(sizes, max_bytes)
    utf8 = _utf8_mask(payload)
    text = pc.if_else(utf8, payload, pa.nulls(n, pa.binary())).cast(pa.string())
    con = duckdb.connect()
    try:
        con.register("__m", pa.table({"id": ids, "text": text, "seq": pa.array(range(n), pa.int64())}))
        kind = con.sql(
            "SELECT CASE WHEN text IS NULL THEN NULL WHEN NOT json_valid(text) THEN 'bad' "
            "WHEN json_type(text::JSON) <> 'OBJECT' THEN 'notobj' ELSE 'ok' END AS k FROM __m ORDER BY seq"
        ).to_arrow_table()["k"]
        reason = pc.case_when(
            pc.make_struct(oversized, pc.invert(utf8), pc.equal(kind, "bad"), pc.equal(kind, "notobj")),
            pa.array([f"oversized: the message has more than {max_bytes} bytes"] * n, pa.string()),
            pa.array(["malformed: the message is not UTF-8 text"] * n, pa.string()),
            pa.array(["malformed: the message is not valid JSON"] * n, pa.string()),
            pa.array(["malformed: the message is JSON but not an object"] * n, pa.string()),
        )
        good = pc.is_null(reason)
        bad = pa.table({"id": ids, "reason": reason, "payload": payload}).filter(pc.invert(good))
        # dead letters are rare: their raw text is cut and decoded one by one (undecodable bytes replaced)
        raw = [v[: RAW_LIMIT * 4].decode("utf-8", "replace")[:RAW_LIMIT] for v in bad["payload"].to_pylist()]
        dead = pa.table(
            {
                "location": pc.binary_join_element_wise(pa.array(["message"] * bad.num_rows, pa.string()), bad["id"], "="),
                "reasons": pa.array([[r] for r in bad["reason"].to_pylist()], pa.list_(pa.string())),
                "raw": pa.array(raw, pa.string()),
            }
        )
        con.register("__ok", pa.table({"text": text, "seq": pa.array(range(n), pa.int64())}).filter(good))
        cols = ", ".join(
            f"json_extract_string(text, '$.\"{c}\"') AS \"{c}\"" for c in columns
        )
        changes = con.sql(f"SELECT {cols}{',' if cols else ''} 'I' AS {OP}, seq AS {SEQ} FROM __ok ORDER BY seq").to_arrow_table()
    finally:
        con.close()
    return changes, dead


def _utf8_mask(payload: pa.Array) -> pa.Array:
    """Which payloads are valid UTF-8: the whole array at once, per message only if some is not."""
    try:
        payload.cast(pa.string())
        return pa.array([True] * len(payload))
    except pa.ArrowInvalid:
        out = []
        for value in payload.to_pylist():
            try:
                value.decode("utf-8")
                out.append(True)
            except UnicodeDecodeError:
                out.append(False)
        return pa.array(out)


def undelivered(spec: PlatformSpec, source_ref: str) -> int | None:
    """Messages waiting in the subscription. Google Cloud reports it through Cloud Monitoring
    (subscription/num_undelivered_messages); the emulator has no metrics, so None locally."""
    return None
