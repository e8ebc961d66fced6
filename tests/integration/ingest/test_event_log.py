"""Order events through a real Redis stream: refused entries dead-lettered, nothing acknowledged
before it is stored, and ``kill -9`` of a consumer mid-stream loses and doubles nothing."""

import datetime as dt
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import redis

from relay.data.generate import generate_orders
from relay.data.lake import ACTUALS, ORDER_EVENTS, Lake
from relay.ingest.event_log import StreamConsumer, publish
from relay.ingest.event_sink import Accepted, EventSink
from relay.ingest.event_store import EventStore
from relay.serve.contract import Limits
from relay.settings import Settings
from relay.sim.lifecycle import order_events

pytestmark = [pytest.mark.integration]

DAY = dt.date(2026, 11, 22)
REDIS_DB = 14
LIMITS = Limits(created_at_max_age_s=10 * 365 * 86_400.0)


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    c = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    c.ping()  # the machine's Redis must be up: .ci/run starts it
    yield c
    for key in c.scan_iter("relay-test:*"):
        c.delete(key)


def _bodies(n: int) -> list[dict[str, Any]]:
    orders = generate_orders(DAY, n).sort_values("created_at").reset_index(drop=True)
    return order_events(orders)


def _consumer(client: redis.Redis, sink: Any, stream: str, name: str, **kw: Any) -> StreamConsumer:
    return StreamConsumer(
        client,
        sink,
        stream=stream,
        group="relay",
        consumer=name,
        dead_letter=f"{stream}:dead",
        limits=LIMITS,
        **{"batch": 50, "block_ms": 10, **kw},
    )


class FailingSink:
    """A sink whose store is down: every submit fails."""

    def submit(self, rows: list[dict[str, Any]]) -> Future[Accepted]:
        done: Future[Accepted] = Future()
        done.set_exception(ConnectionError("event store down"))
        return done


def test_refused_entries_go_to_the_dead_letter_and_the_rest_is_stored(client, tmp_path):
    stream = f"relay-test:{uuid.uuid4().hex[:8]}"
    bodies = _bodies(20)
    bad = [
        {**bodies[0], "order_id": "bad-1", "distance_km": -3},
        {"type": "eaten", "order_id": "bad-2", "occurred_at": bodies[0]["occurred_at"]},
    ]
    publish(client, stream, bodies[:30] + bad + bodies[30:])
    store = EventStore(f"sqlite:///{tmp_path / 'events.db'}")
    sink = EventSink(store, None)
    try:
        reader = _consumer(client, sink, stream, "a")
        while reader.totals["entries"] < len(bodies) + 2:
            reader.poll()
        assert reader.totals == {
            "entries": 62,
            "stored": 60,
            "duplicates": 0,
            "dead": 2,
            "claimed": 0,
        }
        assert store.count() == 60
        dead = client.xrange(f"{stream}:dead")
        details = [json.loads(fields[b"detail"]) for _, fields in dead]
        assert [d[0]["loc"] for d in details] == [
            ["body", "created", "distance_km"],
            ["body", "type"],
        ]
        assert client.xpending(stream, "relay")["pending"] == 0
    finally:
        sink.close()
        store.close()


def test_nothing_is_acknowledged_before_it_is_stored(client, tmp_path):
    stream = f"relay-test:{uuid.uuid4().hex[:8]}"
    publish(client, stream, _bodies(10))
    down = _consumer(client, FailingSink(), stream, "down", claim_idle_ms=60_000)
    with pytest.raises(ConnectionError):
        down.poll()
    assert client.xpending(stream, "relay")["pending"] == 30  # read, not acknowledged
    store = EventStore(f"sqlite:///{tmp_path / 'events.db'}")
    sink = EventSink(store, None)
    try:
        # Another consumer claims them once idle for its claim time (here: at once).
        up = _consumer(client, sink, stream, "up", claim_idle_ms=1)
        polled = up.poll()
        assert (polled.claimed, polled.stored) == (30, 30)
        assert client.xpending(stream, "relay")["pending"] == 0
        assert up.poll().entries == 0  # nothing new, nothing left
    finally:
        sink.close()
        store.close()


def _settings_env(home: Path, stream: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(
        {
            "RELAY_HOME": str(home),
            "RELAY_SERVING__CREATED_AT_MAX_AGE_S": str(10 * 365 * 86_400),
            "RELAY_EVENTS__STREAM_URL": f"redis://127.0.0.1:6379/{REDIS_DB}",
            "RELAY_EVENTS__STREAM_NAME": stream,
            "RELAY_EVENTS__STREAM_DEAD_LETTER": f"{stream}:dead",
            "RELAY_EVENTS__STREAM_BATCH": "100",
            "RELAY_EVENTS__STREAM_CLAIM_IDLE_S": "2",
        }
    )
    return env


def _consume(name: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "relay.cli", "events", "consume", "--name", name],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _until(check: Any, timeout_s: float, what: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert proc.poll() is None, f"the consumer exited ({proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout_s:.0f} s"
        time.sleep(0.2)  # polling a condition, not waiting for time to pass


def test_a_sigkilled_consumer_loses_and_doubles_nothing(client, tmp_path):
    """``relay events consume`` (the router's consumer, as a process) is killed with SIGKILL
    while it holds entries it read but has not stored; a second consumer claims them.

    To kill it at that moment for certain, the test holds the event store's write lock while the
    second part of the stream is published: the consumer reads a batch and waits on the lock."""
    stream = f"relay-test:{uuid.uuid4().hex[:8]}"
    home = tmp_path / "home"
    env = _settings_env(home, stream)
    log = tmp_path / "consume.log"
    bodies = _bodies(500)
    first_part, rest = bodies[:600], bodies[600:]
    s = Settings(home=home)
    assert s.events.database_url is not None
    store = EventStore(s.events.database_url)
    db = sqlite3.connect(s.events.database_url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        publish(client, stream, first_part)
        first = _consume("first", env, log)
        try:
            _until(
                lambda: store.count() == len(first_part) and _pending(client, stream) == 0,
                240,
                "the first part stored and acknowledged",
                first,
            )
            db.execute("BEGIN EXCLUSIVE")  # the consumer's next commit waits on this
            publish(client, stream, rest)
            _until(lambda: _pending(client, stream) > 0, 60, "a batch read", first)
        finally:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
            db.execute("ROLLBACK")
        pending = _pending(client, stream)
        assert store.count() == len(first_part) and pending > 0
        second = _consume("second", env, log)
        try:
            _until(
                lambda: store.count() == len(bodies) and _pending(client, stream) == 0,
                240,
                "every event stored and acknowledged",
                second,
            )
            # SIGTERM once its handler is set (it says so): it stops and lands what is stored.
            _until(lambda: "as second" in log.read_text(), 60, "the second consumer", second)
        finally:
            os.killpg(second.pid, signal.SIGTERM)
            assert second.wait(60) == 0, log.read_text()[-3000:]
        events = store.frame()
    finally:
        db.close()
        store.close()
    print(
        f"\nstream kill drill: {len(bodies)} events; the first consumer was killed holding "
        f"{pending} read but unstored; the second claimed them and stored the rest"
    )
    assert len(events) == len(bodies)
    assert not events.duplicated(["order_id", "type"]).any()
    # What the first had read but not acknowledged, the second claimed (none lost in Redis).
    totals = json.loads(log.read_text().rsplit("claimed: ", 1)[1].splitlines()[0])
    assert totals["claimed"] == pending
    assert totals["stored"] == len(rest) and totals["duplicates"] == 0
    lake = Lake(s)
    landed = lake.read_all(ORDER_EVENTS, DAY - dt.timedelta(days=1), DAY + dt.timedelta(days=1))
    assert landed.drop_duplicates(["order_id", "type"]).shape[0] == len(bodies)
    today = dt.datetime.now(dt.UTC).date()
    labels = lake.read_all(ACTUALS, today - dt.timedelta(days=1), today)
    assert labels["order_id"].nunique() == 500
    assert pd.api.types.is_float_dtype(labels["actual_minutes"])


def _pending(client: redis.Redis, stream: str) -> int:
    return int(client.xpending(stream, "relay")["pending"])
