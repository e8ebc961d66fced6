"""Serving's row cache on a real Redis: fresh by the versions pushes and materializations bump,
never older than its TTL, whatever wrote the store."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pandas as pd
import pytest

from relay.data.lake import COURIER_STATS
from relay.features.live import live_view
from relay.features.row_cache import RowCache, VersionedPusher
from relay.features.store import OnlineFeatures, get_store, materialize
from relay.settings import Settings
from tests.integration.features.freshness import Clock, courier_counts, courier_rows

pytestmark = pytest.mark.parametrize("feast_settings", ["redis"], indirect=True)

TTL_S = 1.0


def _reader(settings: Settings, clock: Clock) -> OnlineFeatures:
    """Serving's reader, its row cache on the test's clock."""
    reader = OnlineFeatures(settings)
    assert reader._direct is not None and reader._direct.pipelined is not None
    cache = reader._direct.pipelined.cache
    assert isinstance(cache, RowCache), "on Redis the row cache is on by default"
    cache.clock = clock
    cache.ttl_s = TTL_S
    return reader


def test_a_pushed_feature_is_used_on_the_next_request(feast_settings, lake_days):
    """Another process's push (its own store and Redis client, the events API's pusher) is
    answered on the very next read, though the row was cached a moment before."""
    clock = Clock()
    reader = _reader(feast_settings, clock)
    rows = courier_rows(lake_days, "C_CACHE_PUSH")
    source = live_view("courier_live").push_source
    assert reader.read(rows)["courier_orders_1h"] == [None] * 4
    # Cached: a write nobody announced is not seen while the entry is young...
    get_store(feast_settings).push(source, courier_counts("C_CACHE_PUSH", 3))
    assert reader.read(rows)["courier_orders_1h"] == [None] * 4
    # ...an announced one at once, with no time passing.
    VersionedPusher(get_store(feast_settings)).push(source, courier_counts("C_CACHE_PUSH", 5))
    assert reader.read(rows)["courier_orders_1h"] == [5] * 4
    assert reader.row_ages["courier_live"] < 60  # the pushed row's age, not the epoch's


def test_no_row_older_than_the_freshness_bound_is_answered(feast_settings, lake_days):
    """A write the versions never hear of (``feast`` from a shell) is answered once the cached
    row is as old as the TTL, not later."""
    clock = Clock()
    reader = _reader(feast_settings, clock)
    rows = courier_rows(lake_days, "C_CACHE_TTL")
    source = live_view("courier_live").push_source
    get_store(feast_settings).push(source, courier_counts("C_CACHE_TTL", 1))
    assert reader.read(rows)["courier_orders_1h"] == [1] * 4
    get_store(feast_settings).push(source, courier_counts("C_CACHE_TTL", 2))  # unannounced
    clock.now += TTL_S * 0.99
    assert reader.read(rows)["courier_orders_1h"] == [1] * 4  # cached, younger than the TTL
    clock.now += TTL_S * 0.01
    assert reader.read(rows)["courier_orders_1h"] == [2] * 4


def test_a_materialization_invalidates_the_cached_rows_of_its_view(feast_settings, lake_days):
    clock = Clock()
    reader = _reader(feast_settings, clock)
    rows = courier_rows(lake_days, "C_CACHE_MAT")
    assert reader.read(rows)["courier_deliveries_24h"] == [None] * 4
    store = get_store(feast_settings)
    planted = pd.DataFrame(
        {
            "courier_id": ["C_CACHE_MAT"],
            "courier_deliveries_24h": [11],
            "courier_mean_delivery_24h": [30.0],
            "event_timestamp": [pd.Timestamp.now(tz="UTC")],
        }
    )
    store.write_to_online_store(COURIER_STATS.name, planted)  # unannounced
    assert reader.read(rows)["courier_deliveries_24h"] == [None] * 4
    end = dt.datetime.combine(lake_days[-1] + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    materialize(end, end - dt.timedelta(hours=1), feast_settings, tables=[COURIER_STATS])
    assert reader.read(rows)["courier_deliveries_24h"] == [11] * 4


def test_the_cache_answers_from_memory_and_still_asks_redis_each_read(feast_settings, lake_days):
    """A hit sends one command (the versions), so a Redis that is gone is still noticed."""
    clock = Clock()
    reader = _reader(feast_settings, clock)
    assert reader._direct is not None and reader._direct.pipelined is not None
    online = reader._direct.pipelined._online
    rows = courier_rows(lake_days, "C_CACHE_HIT") + courier_rows(lake_days, "C_CACHE_HIT2")
    sent: list[int] = []
    fetch = online._read_hash_fields

    def counted(config: Any, commands: list[Any]) -> Any:
        sent.append(len(commands))
        return fetch(config, commands)

    online._read_hash_fields = counted
    try:
        first = reader.read(rows)
        second = reader.read(rows)
    finally:
        del online._read_hash_fields
    assert first == second
    assert sent[0] > 1 and sent[1:] == [1]


def test_the_versioned_pusher_is_still_the_store_to_its_readers(feast_settings):
    """The endpoint's /metrics reads the snapshot views' freshness from the sink's pusher."""
    from relay.features.store import snapshot_ages

    store = get_store(feast_settings)
    now = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    assert snapshot_ages(VersionedPusher(store), now) == snapshot_ages(store, now)
    assert any(age is not None for age in snapshot_ages(VersionedPusher(store), now).values())
