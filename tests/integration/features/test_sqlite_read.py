"""Serving's SQLite read on a real Feast SQLite store: one query for every view, and a row cache
that any write to the file ends, announced or not, and that is never older than its TTL."""

from __future__ import annotations

import datetime as dt
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest

from relay.data.lake import COURIER_STATS
from relay.features.guarded import GuardedReader
from relay.features.live import live_view
from relay.features.row_cache import RowCache
from relay.features.sqlite_read import SqliteRead
from relay.features.store import OnlineFeatures, get_store, materialize
from relay.settings import Settings
from tests.integration.features.freshness import Clock, courier_counts, courier_rows

pytestmark = pytest.mark.parametrize("feast_settings", ["sqlite"], indirect=True)

TTL_S = 1.0


class Traced:
    """A serving reader on the test's clock, and the statements its connection ran."""

    def __init__(self, settings: Settings) -> None:
        self.clock = Clock()
        self.reader = OnlineFeatures(settings)
        direct = self.reader._direct
        assert direct is not None and isinstance(direct.pipelined, SqliteRead)
        self.sqlite = direct.pipelined
        cache = self.sqlite.cache
        assert isinstance(cache, RowCache), "on SQLite the row cache is on by default"
        cache.clock = self.clock
        cache.ttl_s = TTL_S
        self.statements: list[str] = []
        self.sqlite._connection().set_trace_callback(self.statements.append)

    def read(self, rows: list[dict[str, Any]], name: str) -> list[Any]:
        return self.reader.read(rows)[name]

    def queries(self) -> list[str]:
        """The row queries since the last call (the version pragma is not one)."""
        ran = [s for s in self.statements if s.lstrip().upper().startswith("SELECT")]
        self.statements.clear()
        return ran


@pytest.fixture
def traced(feast_settings: Settings) -> Iterator[Traced]:
    t = Traced(feast_settings)
    yield t
    t.sqlite.close()


def test_one_query_reads_every_view_and_a_hit_runs_none(traced, lake_days):
    rows = courier_rows(lake_days, "C_SQL_HIT")
    first = traced.reader.read(rows)
    assert len(traced.queries()) == 1  # six views, one statement
    assert traced.reader.read(rows) == first
    assert [s.strip() for s in traced.statements] == ["PRAGMA data_version"]  # nothing else
    assert traced.queries() == []


def test_any_write_to_the_file_is_used_on_the_next_read(feast_settings, traced, lake_days):
    """Pushes through Feast's own store (another connection, as another process's would be),
    unannounced to any version hash, are answered at once, with no time passing."""
    rows = courier_rows(lake_days, "C_SQL_PUSH")
    source = live_view("courier_live").push_source
    assert traced.read(rows, "courier_orders_1h") == [None] * 4
    get_store(feast_settings).push(source, courier_counts("C_SQL_PUSH", 3))
    assert traced.read(rows, "courier_orders_1h") == [3] * 4
    assert traced.reader.row_ages["courier_live"] < 60  # the pushed row's age
    get_store(feast_settings).push(source, courier_counts("C_SQL_PUSH", 5))
    assert traced.read(rows, "courier_orders_1h") == [5] * 4
    assert traced.read(rows, "courier_orders_1h") == [5] * 4
    assert traced.clock.now == 1000.0


def test_a_materialization_is_used_on_the_next_read(feast_settings, traced, lake_days):
    rows = courier_rows(lake_days, "C_SQL_MAT")
    assert traced.read(rows, "courier_deliveries_24h") == [None] * 4
    planted = pd.DataFrame(
        {
            "courier_id": ["C_SQL_MAT"],
            "courier_deliveries_24h": [11],
            "courier_mean_delivery_24h": [30.0],
            "event_timestamp": [pd.Timestamp.now(tz="UTC")],
        }
    )
    get_store(feast_settings).write_to_online_store(COURIER_STATS.name, planted)
    assert traced.read(rows, "courier_deliveries_24h") == [11] * 4
    end = dt.datetime.combine(lake_days[-1] + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    materialize(end, end - dt.timedelta(hours=1), feast_settings, tables=[COURIER_STATS])
    assert traced.read(rows, "courier_deliveries_24h") == [11] * 4


def test_no_row_older_than_the_freshness_bound_is_answered(traced, lake_days):
    rows = courier_rows(lake_days, "C_SQL_TTL")
    traced.read(rows, "courier_orders_1h")
    traced.queries()
    traced.clock.now += TTL_S * 0.99
    traced.read(rows, "courier_orders_1h")
    assert traced.queries() == []
    traced.clock.now += TTL_S * 0.01
    traced.read(rows, "courier_orders_1h")
    assert len(traced.queries()) == 1  # read again, though nothing was written


def test_serving_never_writes_the_store(traced):
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        traced.sqlite._connection().execute("CREATE TABLE relay_probe (a)")


@pytest.fixture
def serving_reader(feast_settings: Settings) -> Iterator[GuardedReader]:
    """Serving's guarded reader, as a replica loads it (relay.serve.loader)."""
    f = feast_settings.feast
    reader = GuardedReader(
        OnlineFeatures(feast_settings, read_timeouts=True),
        timeout_s=f.online_read_timeout_s,
        retry_after_s=f.online_retry_after_s,
    )
    yield reader
    reader.close()


def _sqlite(reader: GuardedReader) -> SqliteRead:
    direct = reader.store._direct
    assert direct is not None and isinstance(direct.pipelined, SqliteRead)
    return direct.pipelined


def test_serving_reads_sqlite_in_its_own_thread_and_bounded(serving_reader, lake_days):
    assert serving_reader.inline and _sqlite(serving_reader).bounded
    got = serving_reader.read(courier_rows(lake_days, "C_SQL_INLINE"))
    assert got.degraded is None and got.features["courier_orders_1h"] == [None] * 4
    assert serving_reader._pending is None  # no worker thread was asked


def test_a_store_locked_by_a_writer_is_answered_with_defaults_within_the_timeout(
    serving_reader, lake_days
):
    sqlite = _sqlite(serving_reader)
    writer = sqlite3.connect(sqlite.path, isolation_level=None)
    try:
        writer.execute("PRAGMA locking_mode=EXCLUSIVE")
        writer.execute("BEGIN EXCLUSIVE")  # as a long write holds the file
        t0 = time.monotonic()
        got = serving_reader.read(courier_rows(lake_days, "C_SQL_LOCKED"))
        waited = time.monotonic() - t0
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert got.degraded is not None and "locked" in got.degraded
    # The settings' timeout (the tests' is longer than production's 50 ms), not SQLite's 5 s.
    assert waited < sqlite.timeout_s + 0.5 < 5.0
    assert got.features["courier_orders_1h"] == [None] * 4


def test_a_statement_past_the_deadline_is_interrupted(serving_reader, lake_days, monkeypatch):
    sqlite = _sqlite(serving_reader)
    monkeypatch.setattr(sqlite, "PROGRESS_STEPS", 1)
    sqlite.close()  # reconnects with the handler checked every step
    monkeypatch.setattr(sqlite, "timeout_s", 0.0)  # every step is past the deadline
    with pytest.raises(TimeoutError, match="interrupted"):
        sqlite.read(courier_rows(lake_days, "C_SQL_DEADLINE"), dt.datetime.now(dt.UTC))
    monkeypatch.setattr(sqlite, "timeout_s", 5.0)
    stored, _ = sqlite.read(courier_rows(lake_days, "C_SQL_DEADLINE"), dt.datetime.now(dt.UTC))
    assert stored["courier_orders_1h"] == [None] * 4  # the connection reads on
