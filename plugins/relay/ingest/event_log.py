"""Order events through a log: a Redis stream read by a consumer group.

``POST /v1/events`` suits an order service that can wait for an answer. One that publishes
to a log instead (and must never block on Relay) writes each event, as the API's JSON, to the
stream ``RELAY_EVENTS__STREAM_NAME`` in the field ``event``; :class:`StreamConsumer` reads it
and hands the events to the same :class:`relay.ingest.event_sink.EventSink` the API uses, so
they are validated by the same contract, stored by the same group commit and pushed the same
way.

**Why Redis Streams, not Kafka.** Redis is already the prod profile's online store, so the log
adds no service to run. A consumer group gives what the sink needs: each entry goes to one
consumer, stays *pending* until acknowledged, and a pending entry whose consumer died is
claimed by another (``XAUTOCLAIM``) after ``RELAY_EVENTS__STREAM_CLAIM_IDLE_S``. The store is
idempotent by ``(order_id, type)``, so this at-least-once delivery stores each event exactly
once. An order platform's event rate (hundreds a second) is far below what one stream takes.
Kafka is the choice when events must be kept for weeks and replayed by many readers; the
consumer's contract (read, store, then acknowledge) would not change.

**Delivery.** An entry is acknowledged only after the group commit that stored it returned, so
``kill -9`` of a consumer loses nothing: its unacknowledged entries are claimed by the next
consumer. An entry the contract refuses is copied to the dead-letter stream with the refusal
(the fields it names) and acknowledged: one bad event never blocks the ones behind it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from relay.serve.contract import Limits, Rejected
from relay.serve.events import parse_events

log = logging.getLogger(__name__)

FIELD = "event"
"""The stream entry's field that holds one event as JSON (the ``POST /v1/events`` body)."""


class Sink(Protocol):
    """Stores events (:class:`relay.ingest.event_sink.EventSink`)."""

    def submit(self, rows: list[dict[str, Any]]) -> Any: ...


@dataclass(frozen=True)
class Polled:
    """What one poll did."""

    entries: int
    stored: int
    duplicates: int
    dead: int
    claimed: int


def publish(client: Any, stream: str, events: Sequence[dict[str, Any]]) -> list[str]:
    """Append events (each a ``POST /v1/events`` body of one event) to the stream, in one
    round trip and all at once (MULTI/EXEC: a reader sees all of them or none); returns their
    entry ids. What an order service does."""
    pipe = client.pipeline(transaction=True)
    for event in events:
        pipe.xadd(stream, {FIELD: json.dumps(event, default=str)})
    return [_text(i) for i in pipe.execute()]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class StreamConsumer:
    """One consumer of the group: read (or claim), validate, store, then acknowledge.

    Args:
        client: a ``redis.Redis`` client.
        sink: where valid events go; ``submit(rows).result()`` returns once they are stored.
        stream: the stream's key.
        group: the consumer group (every Relay consumer shares it).
        consumer: this consumer's name, unique in the group (a replica's id).
        dead_letter: the stream refused entries are copied to.
        limits: the contract's limits (the events' time window).
        batch: most entries one poll takes.
        block_ms: how long a poll waits for new entries.
        claim_idle_ms: a pending entry idle this long belongs to a dead consumer: claimed.
        store_timeout_s: how long a poll waits for its events to be stored.
        clock: now, for the contract's time window.
    """

    def __init__(
        self,
        client: Any,
        sink: Sink,
        *,
        stream: str,
        group: str,
        consumer: str,
        dead_letter: str,
        limits: Limits,
        batch: int = 500,
        block_ms: int = 1000,
        claim_idle_ms: int = 30_000,
        store_timeout_s: float = 30.0,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.client = client
        self.sink = sink
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.dead_letter = dead_letter
        self.limits = limits
        self.batch = batch
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.store_timeout_s = store_timeout_s
        self.clock = clock
        self.totals = {"entries": 0, "stored": 0, "duplicates": 0, "dead": 0, "claimed": 0}
        self.ensure_group()

    def ensure_group(self) -> None:
        """Create the stream and the group if missing. A new group starts at the stream's
        first entry: events published before any consumer ran are not skipped."""
        try:
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except Exception as exc:  # redis.ResponseError; the group already exists
            if "BUSYGROUP" not in str(exc):
                raise

    def _claim(self) -> list[tuple[str, dict[Any, Any]]]:
        """Pending entries of consumers idle for ``claim_idle_ms`` (dead ones), now ours."""
        claimed: list[tuple[str, dict[Any, Any]]] = []
        start = "0-0"
        while len(claimed) < self.batch:
            reply = self.client.xautoclaim(
                self.stream,
                self.group,
                self.consumer,
                self.claim_idle_ms,
                start_id=start,
                count=self.batch - len(claimed),
            )
            start, entries = _text(reply[0]), reply[1]
            claimed += [(_text(i), f) for i, f in entries if f is not None]
            if start == "0-0":
                break
        return claimed

    def _read(self) -> list[tuple[str, dict[Any, Any]]]:
        reply = self.client.xreadgroup(
            self.group,
            self.consumer,
            {self.stream: ">"},
            count=self.batch,
            block=self.block_ms,
        )
        return [(_text(i), f) for _, entries in reply or [] for i, f in entries]

    def poll(self) -> Polled:
        """Claim the dead consumers' entries or read new ones, store them, acknowledge them."""
        claimed = self._claim()
        entries = claimed or self._read()
        if not entries:
            return Polled(0, 0, 0, 0, 0)
        rows: list[dict[str, Any]] = []
        dead: list[tuple[str, dict[Any, Any], list[dict[str, Any]]]] = []
        now = self.clock()
        for entry_id, fields in entries:
            raw = fields.get(FIELD.encode(), fields.get(FIELD))
            body = raw if isinstance(raw, bytes) else str(raw or "").encode()
            try:
                rows += parse_events(body, self.limits, now)
            except Rejected as exc:
                dead.append((entry_id, fields, exc.detail))
        stored = duplicates = 0
        if rows:
            # Raises when the store fails: nothing is acknowledged, the entries stay pending
            # and are read again (claimed) once idle.
            accepted = self.sink.submit(rows).result(timeout=self.store_timeout_s)
            stored, duplicates = accepted.accepted, accepted.duplicates
        pipe = self.client.pipeline(transaction=True)
        for entry_id, fields, detail in dead:
            pipe.xadd(
                self.dead_letter,
                {
                    FIELD: fields.get(FIELD.encode(), fields.get(FIELD, b"")),
                    "entry_id": entry_id,
                    "detail": json.dumps(detail, default=str),
                },
            )
        pipe.xack(self.stream, self.group, *[i for i, _ in entries])
        pipe.execute()
        if dead:
            log.warning("%d refused events moved to %s", len(dead), self.dead_letter)
        result = Polled(len(entries), stored, duplicates, len(dead), len(claimed))
        for name in self.totals:
            self.totals[name] += getattr(result, name)
        return result

    def run(self, stop: threading.Event, on_poll: Callable[[Polled], None] | None = None) -> None:
        """Poll until ``stop`` is set; a failed poll is logged and retried after a pause."""
        while not stop.is_set():
            try:
                polled = self.poll()
            except Exception:
                log.warning("consuming %s failed; retrying", self.stream, exc_info=True)
                stop.wait(1.0)
                continue
            if on_poll is not None and polled.entries:
                on_poll(polled)


def open_consumer(settings: Any, sink: Sink, consumer: str) -> StreamConsumer:
    """The consumer the settings describe (``RELAY_EVENTS__STREAM_*``), named ``consumer``.

    Raises:
        ValueError: no stream is configured (``RELAY_EVENTS__STREAM_URL``).
    """
    import redis

    ev = settings.events
    if not ev.stream_url:
        raise ValueError("no order-events stream is configured: set RELAY_EVENTS__STREAM_URL")
    # The socket timeout outlasts the blocking read, which would otherwise be cut off.
    timeout_s = ev.stream_block_ms / 1000 + 10
    client = redis.Redis.from_url(ev.stream_url, socket_timeout=timeout_s)
    return StreamConsumer(
        client,
        sink,
        stream=ev.stream_name,
        group=ev.stream_group,
        consumer=consumer,
        dead_letter=ev.stream_dead_letter,
        limits=Limits.of(settings.serving),
        batch=ev.stream_batch,
        block_ms=ev.stream_block_ms,
        claim_idle_ms=int(ev.stream_claim_idle_s * 1000),
        store_timeout_s=ev.request_timeout_s,
    )


def consume_forever(
    settings: Any, sink: Sink, consumer: str, stop: threading.Event, retry_s: float = 5.0
) -> None:
    """Open the stream's consumer and run it until ``stop``; a stream that cannot be reached
    yet (Redis starting, a bad URL) is retried every ``retry_s``, logged each time."""
    while not stop.is_set():
        try:
            reader = open_consumer(settings, sink, consumer)
        except Exception:
            log.warning("the order-events stream cannot be reached; retrying", exc_info=True)
            stop.wait(retry_s)
            continue
        reader.run(stop)
        return
