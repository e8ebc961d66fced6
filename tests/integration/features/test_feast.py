"""Feast round trips on SQLite and on Redis, and point-in-time correctness of training sets."""

import datetime as dt
import time
from typing import Any

import numpy as np
import pandas as pd
import pytest

from relay.data.lake import COURIER_STATS, MERCHANT_STATS, VALIDATED_ORDERS, ZONE_STATS, Lake
from relay.features.catalog import WEATHER
from relay.features.guarded import GuardedReader
from relay.features.store import (
    OnlineFeatures,
    entity_frame,
    get_store,
    online_features,
    training_frame,
)
from relay.features.tables import COURIER_FEATURES, MERCHANT_FEATURES, ZONE_FEATURES
from tests.integration.tcp_fault import FaultProxy


def _latest(lake: Lake, ds, key: str) -> pd.DataFrame:
    df = pd.concat([lake.read(ds, d) for d in lake.partitions(ds)], ignore_index=True)
    return df.sort_values("event_timestamp").groupby(key).tail(1).set_index(key)


def test_online_features_equal_latest_offline_values(feast_settings, lake_days):
    lake = Lake()
    orders = lake.read(VALIDATED_ORDERS, lake_days[-1]).sample(40, random_state=1)
    online = online_features(orders, settings=feast_settings)
    assert len(online) == 40
    for ds, key, names in (
        (COURIER_STATS, "courier_id", COURIER_FEATURES),
        (MERCHANT_STATS, "merchant_id", MERCHANT_FEATURES),
        (ZONE_STATS, "zone_id", ZONE_FEATURES),
    ):
        latest = _latest(lake, ds, key)
        expected = latest.loc[online[key], list(names)].reset_index(drop=True)
        got = online[list(names)].reset_index(drop=True)
        for name in names:
            if expected[name].dtype == object:
                assert (got[name] == expected[name]).all(), name
            else:
                np.testing.assert_allclose(
                    got[name].astype(float), expected[name].astype(float), err_msg=name
                )
    # Request-time features come from the order itself.
    np.testing.assert_allclose(online["order_distance_km"], orders["distance_km"])
    assert (online["order_hour"].to_numpy() == orders["created_at"].dt.hour.to_numpy()).all()


def test_online_features_read_the_service_they_are_given(feast_settings, lake_days):
    """Serving reads the service a model version was trained on, not the configured one."""
    orders = Lake().read(VALIDATED_ORDERS, lake_days[-1]).head(3)
    reader = OnlineFeatures(feast_settings, "eta_v1")
    assert reader.service.name == "eta_v1"
    assert len(reader.read_frame(orders)) == 3
    from feast.errors import FeatureServiceNotFoundException

    with pytest.raises(FeatureServiceNotFoundException, match="eta_v9"):
        OnlineFeatures(feast_settings, "eta_v9")


def _reader(settings, mode: str) -> OnlineFeatures:
    """Serving's reader: view by view (``direct``), every view in one round trip on Redis or
    one query on SQLite (``pipelined``), and that through the row cache (``cached``)."""
    s = settings.model_copy(deep=True)
    s.feast.pipelined_read = mode != "direct"
    s.feast.row_cache_ttl_s = 60.0 if mode == "cached" else 0.0
    return OnlineFeatures(s)


def test_the_direct_read_answers_what_feasts_sdk_answers(feast_settings, lake_days):
    """Serving's reads (relay.features.direct, relay.features.redis_read or
    relay.features.sqlite_read, through the row cache or not) against get_online_features: the
    same columns and values for known, unknown and repeated entities, the same row ages, and a
    pushed value seen by all on the next read."""
    from relay.features.live import live_view
    from relay.features.row_cache import VersionedPusher

    orders = Lake().read(VALIDATED_ORDERS, lake_days[-1]).sample(40, random_state=2)
    orders = pd.concat([orders, orders.head(8)], ignore_index=True)  # repeated orders
    orders.loc[:2, "courier_id"] = ["C_NEW_1", "C_NEW_2", "C_NEW_1"]
    orders.loc[3, "merchant_id"] = "M_NEW"
    rows = entity_frame(orders).to_dict("records")
    readers = {mode: _reader(feast_settings, mode) for mode in ("direct", "pipelined", "cached")}
    assert OnlineFeatures(feast_settings)._direct is not None, "serving's default is direct"
    for mode, reader in readers.items():  # Redis's pipelined read, or SQLite's one query
        assert reader._direct is not None
        assert (reader._direct.pipelined is not None) == (mode != "direct"), mode
        if reader._direct.pipelined is not None:
            assert (reader._direct.pipelined.cache is not None) == (mode == "cached"), mode

    def same() -> dict[str, list[Any]]:
        sdk = readers["direct"].read(rows, sdk=True)
        ages = {}
        for mode, reader in readers.items():
            for _ in range(2):  # the cached reader: filled, then answering from the cache
                got = reader.read(rows)
                assert list(got) == list(readers["direct"].read(rows)), mode  # column order
                assert set(got) == set(sdk), mode
                for name in sdk:
                    assert got[name] == sdk[name], (mode, name)
                ages[mode] = reader.row_ages
        # Every stored view has rows here; an unknown entity adds no age (Redis answers it
        # stamped at the epoch).
        assert set(ages["direct"]) == {
            "courier_stats",
            "merchant_stats",
            "zone_stats",
            "courier_live",
            "merchant_live",
            "zone_live",
        }
        oldest = dt.datetime.combine(lake_days[0], dt.time(), tzinfo=dt.UTC)  # the lake's start
        bound = (dt.datetime.now(dt.UTC) - oldest).total_seconds()
        assert max(ages["direct"].values()) < bound  # not 1970's
        for mode, got_ages in ages.items():
            assert set(got_ages) == set(ages["direct"]), mode
            for view, age in got_ages.items():
                assert abs(age - ages["direct"][view]) < 5.0, (mode, view)
        return sdk

    before = same()
    assert before["courier_orders_1h"][0] is None and before["courier_orders_1h"][5] is not None
    view = live_view("courier_live")
    pushed = pd.DataFrame(
        {
            "courier_id": ["C_NEW_1"],
            "courier_orders_1h": [7],
            "event_timestamp": [pd.Timestamp.now(tz="UTC")],
        }
    )
    VersionedPusher(get_store(feast_settings)).push(view.push_source, pushed)  # the events API's
    after = same()
    assert after["courier_orders_1h"][:3] == [7, None, 7]


def test_unknown_entities_come_back_null(feast_settings, lake_days):
    orders = Lake().read(VALIDATED_ORDERS, lake_days[-1]).head(2).copy()
    orders["courier_id"] = ["C_UNKNOWN_1", "C_UNKNOWN_2"]
    online = online_features(orders, settings=feast_settings)
    assert online["courier_mean_delivery_24h"].isna().all()
    assert online["zone_weather"].notna().all()


def test_training_rows_never_see_values_from_after_the_order(feast_settings, lake_days):
    lake = Lake()
    orders = lake.read(VALIDATED_ORDERS, lake_days[-1]).sample(500, random_state=2)
    got = training_frame(orders, feast_settings)
    assert list(got["order_id"]) == list(orders["order_id"])
    # Expected: for each order the latest snapshot stamped at or before its creation time.
    courier = pd.concat([lake.read(COURIER_STATS, d) for d in lake.partitions(COURIER_STATS)])
    courier["event_timestamp"] = courier["event_timestamp"].astype("datetime64[ns, UTC]")
    ents = entity_frame(orders).reset_index(drop=True)
    ents["_i"] = range(len(ents))
    exp = (
        pd.merge_asof(
            ents.sort_values("event_timestamp"),
            courier.sort_values("event_timestamp").rename(columns={"event_timestamp": "ts"}),
            left_on="event_timestamp",
            right_on="ts",
            by="courier_id",
            direction="backward",
            tolerance=pd.Timedelta(days=2),
        )
        .sort_values("_i")
        .reset_index(drop=True)
    )
    assert (exp["ts"].dropna() <= exp.loc[exp["ts"].notna(), "event_timestamp"]).all()
    np.testing.assert_allclose(
        got["courier_deliveries_24h"].astype(float), exp["courier_deliveries_24h"].astype(float)
    )
    np.testing.assert_allclose(
        got["courier_mean_delivery_24h"].astype(float),
        exp["courier_mean_delivery_24h"].astype(float),
    )


def test_a_planted_future_value_does_not_leak(feast_settings, lake_days):
    """A snapshot one second after an order's creation must not reach its training row."""
    lake = Lake()
    orders = lake.read(VALIDATED_ORDERS, lake_days[-1])
    order = orders.iloc[[len(orders) // 2]]
    created = order["created_at"].iloc[0]
    store = get_store(feast_settings)
    planted = pd.DataFrame(
        {
            "courier_id": [order["courier_id"].iloc[0]] * 2,
            "event_timestamp": [
                created - pd.Timedelta(seconds=1),
                created + pd.Timedelta(seconds=1),
            ],
            "courier_deliveries_24h": [111, 999],
            "courier_mean_delivery_24h": [11.0, 99.0],
            "courier_orders_1h": [1, 9],
        }
    )
    day = dt.date(2026, 11, 25)  # a partition of its own, removed afterwards
    uri = lake.write(planted, COURIER_STATS, day)
    try:
        row = training_frame(order, feast_settings).iloc[0]
        assert row["courier_deliveries_24h"] == 111
        assert row["courier_mean_delivery_24h"] == 11.0
    finally:
        lake.fs.delete_dir(uri.rsplit("/", 1)[0])
    assert store is not None


def _rows(orders: pd.DataFrame) -> list[dict[str, Any]]:
    return entity_frame(orders).to_dict("records")  # type: ignore[return-value]


def test_defaults_are_what_the_store_answers_for_entities_it_does_not_know(
    feast_settings, lake_days
):
    """Serving's answer without the store (relay.features.guarded) is the unknown-entity one:
    the same columns, None for every stored feature, the request features computed alike."""
    orders = Lake().read(VALIDATED_ORDERS, lake_days[-1]).head(4).copy()
    for key in ("courier_id", "merchant_id", "zone_id"):
        orders[key] = [f"{key}-never-seen-{i}" for i in range(4)]
    rows = _rows(orders)
    unread = OnlineFeatures(feast_settings).defaults(rows)  # before any read: from the registry
    reader = OnlineFeatures(feast_settings)
    read = reader.read(rows)
    assert reader.defaults(rows) == read
    assert {k: unread[k] for k in read} == read
    assert read["order_distance_km"] == list(orders["distance_km"])


@pytest.mark.parametrize("feast_settings", ["redis"], indirect=True)
def test_a_redis_that_is_stopped_or_hangs_is_answered_with_defaults_within_the_timeout(
    feast_settings, lake_days
):
    timeout = 0.1
    proxy = FaultProxy(("127.0.0.1", 6379))
    s = feast_settings.model_copy(deep=True)
    db = s.feast.redis_connection.split("db=")[1]
    s.feast.redis_connection = f"127.0.0.1:{proxy.port},db={db}"
    store = OnlineFeatures(s, read_timeouts=True)
    reader = GuardedReader(store, timeout_s=timeout, retry_after_s=0.0)
    rows = _rows(Lake().read(VALIDATED_ORDERS, lake_days[-1]).head(8))
    try:
        reader.warm_up(rows)
        fresh = reader.read(rows)
        assert fresh.degraded is None and all(v is not None for v in fresh.features[WEATHER])
        for mode, why in (("refuse", "failed"), ("blackhole", "slower than")):
            proxy.set(mode)
            t0 = time.perf_counter()
            got = reader.read(rows)
            took = time.perf_counter() - t0
            assert got.degraded is not None and why in got.degraded, (mode, got.degraded)
            assert got.features == store.defaults(rows)
            assert took < timeout + 0.05, (mode, took)
            proxy.set("forward")
            deadline = time.monotonic() + 10
            while (back := reader.read(rows)).degraded is not None:  # until the store answers
                assert time.monotonic() < deadline, back.degraded
            assert back.features == fresh.features
    finally:
        reader.close()
        proxy.close()
