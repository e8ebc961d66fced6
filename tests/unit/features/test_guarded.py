"""Serving's online reads never fail and never wait past the timeout: a store that refuses or
hangs is answered with the defaults and the reason, and not asked again for a while."""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

from relay.features.guarded import GuardedReader
from relay.features.store import with_timeouts

ROWS = [{"courier_id": "C1"}, {"courier_id": "C2"}]


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Store:
    """Answers 1.0 per row; ``fail`` makes it raise, ``gate`` makes it wait for the test."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail: Exception | None = None
        self.gate: threading.Event | None = None

    def read(self, orders: list[dict[str, Any]]) -> dict[str, list[Any]]:
        self.calls += 1
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail is not None:
            raise self.fail
        return {"courier_id": [o["courier_id"] for o in orders], "x": [1.0] * len(orders)}

    def defaults(self, orders: list[dict[str, Any]]) -> dict[str, list[Any]]:
        return {"courier_id": [o["courier_id"] for o in orders], "x": [None] * len(orders)}


def test_a_store_that_answers_is_read_and_nothing_is_degraded():
    reader = GuardedReader(Store(), timeout_s=5.0, retry_after_s=1.0)
    got = reader.read(ROWS)
    assert got.degraded is None and got.features["x"] == [1.0, 1.0]
    assert reader.degraded_reads == 0


def test_a_refusing_store_gets_defaults_then_is_left_alone_until_retry_after():
    store, clock = Store(), Clock()
    reader = GuardedReader(store, timeout_s=5.0, retry_after_s=2.0, clock=clock)
    store.fail = ConnectionError("Connection refused")
    got = reader.read(ROWS)
    assert got.features["x"] == [None, None]
    assert got.degraded is not None and "ConnectionError: Connection refused" in got.degraded
    clock.t += 1.0
    again = reader.read(ROWS)
    assert store.calls == 1 and again.degraded is not None and "not asked again" in again.degraded
    store.fail = None  # the store is back: asked once the window has passed
    clock.t += 1.5
    back = reader.read(ROWS)
    assert store.calls == 2 and back.degraded is None and back.features["x"] == [1.0, 1.0]
    assert reader.degraded_reads == 2


def test_a_store_that_never_answers_costs_one_timeout_then_nothing():
    store, clock = Store(), Clock()
    store.gate = threading.Event()
    reader = GuardedReader(store, timeout_s=0.05, retry_after_s=0.0, clock=clock)
    try:
        got = reader.read(ROWS)
        assert got.degraded is not None and "slower than 50 ms" in got.degraded
        # The hung read still holds the one worker: the next request does not queue behind it.
        busy = reader.read(ROWS)
        assert busy.degraded is not None and "still busy" in busy.degraded
        assert store.calls == 1
    finally:
        store.gate.set()
    reader._pool.submit(lambda: None).result(5)  # the hung read has returned
    store.gate = None
    assert reader.read(ROWS).degraded is None and store.calls == 2
    reader.close()


def test_a_warm_up_against_a_dead_store_only_logs(caplog):
    store = Store()
    store.fail = ConnectionError("down")
    GuardedReader(store, timeout_s=0.05, retry_after_s=1.0).warm_up(ROWS)
    assert store.calls == 1 and "warm-up failed" in caplog.text


def test_redis_connections_time_out_and_never_retry_unless_the_string_says_otherwise():
    assert with_timeouts("redis:6379,db=2", 0.05, 0.1) == (
        "redis:6379,db=2,socket_connect_timeout=0.05,socket_timeout=0.1,retry=null"
    )
    kept = with_timeouts("redis:6379,socket_timeout=2", 0.05, 0.1)
    assert "socket_timeout=2" in kept and "socket_timeout=0.1" not in kept


def test_the_row_ages_of_the_read_travel_with_it_and_defaults_have_none():
    store = Store()
    store.row_ages = {"courier_stats": 42.0}  # type: ignore[attr-defined]
    reader = GuardedReader(store, timeout_s=5.0, retry_after_s=2.0)
    got = reader.read(ROWS)
    assert got.row_ages == {"courier_stats": 42.0}
    store.fail = ConnectionError("down")
    assert reader.read(ROWS).row_ages == {}  # the defaults are no row of the store's


class BoundedStore(Store):
    """A store that ends its own reads past the timeout (as SQLite's does): read in the
    caller's thread."""

    bounded = True

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[int] = []

    def read(self, orders: list[dict[str, Any]]) -> dict[str, list[Any]]:
        self.threads.append(threading.get_ident())
        return super().read(orders)


def test_a_store_that_bounds_its_reads_is_read_in_the_callers_thread():
    store = BoundedStore()
    reader = GuardedReader(store, timeout_s=0.05, retry_after_s=1.0)
    assert reader.inline and reader.read(ROWS).degraded is None
    assert store.threads == [threading.get_ident()]
    assert not GuardedReader(Store(), timeout_s=0.05, retry_after_s=1.0).inline
    reader.close()


def test_a_bounded_store_past_its_deadline_is_answered_with_defaults_then_left_alone():
    store, clock = BoundedStore(), Clock()
    store.fail = TimeoutError("SQLite read interrupted after 50 ms")
    reader = GuardedReader(store, timeout_s=0.05, retry_after_s=1.0, clock=clock)
    got = reader.read(ROWS)
    assert got.degraded is not None and "slower than 50 ms" in got.degraded
    assert got.features["x"] == [None, None]
    assert reader.read(ROWS).degraded is not None and store.calls == 1  # not asked again
    store.fail = sqlite3.OperationalError("database is locked")
    clock.t += 1.5
    locked = reader.read(ROWS)
    assert locked.degraded is not None and "database is locked" in locked.degraded
    store.fail = None
    clock.t += 1.5
    assert reader.read(ROWS).degraded is None and store.calls == 3
    reader.close()
