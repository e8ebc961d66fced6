"""Feature tables only ever use what was known before their timestamp."""

import datetime as dt

import numpy as np
import pandas as pd

from relay.data.generate import generate_orders
from relay.features.catalog import VIEWS, names, view_features
from relay.features.tables import compute_feature_tables

DAY = dt.date(2026, 11, 20)
START = pd.Timestamp(DAY, tz="UTC")
END = START + pd.Timedelta(days=1)


def _orders() -> pd.DataFrame:
    return pd.concat(
        [generate_orders(DAY - dt.timedelta(days=1), 4000), generate_orders(DAY, 4000)],
        ignore_index=True,
    )


def test_snapshots_are_hourly_within_the_range():
    tables = compute_feature_tables(_orders(), START, END)
    for df in tables.values():
        ts = df["event_timestamp"]
        assert ts.min() > START and ts.max() <= END
        assert (ts.dt.minute == 0).all()


def test_tables_hold_the_features_the_catalog_declares():
    tables = compute_feature_tables(_orders(), START, END)
    keyed = [v for v in VIEWS if v.entity is not None and not v.live]
    assert sorted(tables) == sorted(v.name for v in keyed)
    for v in keyed:
        expected = [v.entity, "event_timestamp", *names(view_features(v.name))]
        assert list(tables[v.name].columns) == expected, v.name


def test_courier_window_matches_a_direct_count():
    orders = _orders()
    courier = compute_feature_tables(orders, START, END)["courier_stats"]
    row = courier.sample(1, random_state=3).iloc[0]
    t = row["event_timestamp"]
    mine = orders[orders["courier_id"] == row["courier_id"]]
    done = mine[(mine["delivered_at"] < t) & (mine["delivered_at"] >= t - pd.Timedelta(hours=24))]
    assert row["courier_deliveries_24h"] == len(done)
    if len(done):
        assert np.isclose(row["courier_mean_delivery_24h"], done["delivery_minutes"].mean())


def test_a_future_delivery_never_changes_earlier_snapshots():
    orders = _orders()
    before = compute_feature_tables(orders, START, END)["courier_stats"]
    # Make one order take much longer: its delivery now lands later.
    i = orders.index[(orders["created_at"] > START + pd.Timedelta(hours=10))][0]
    cid = orders.at[i, "courier_id"]
    old_delivered = orders.at[i, "delivered_at"]
    orders.loc[i, ["delivered_at", "delivery_minutes"]] = [
        old_delivered + pd.Timedelta(hours=3),
        orders.at[i, "delivery_minutes"] + 180,
    ]
    after = compute_feature_tables(orders, START, END)["courier_stats"]
    key = ["courier_id", "event_timestamp"]
    merged = before.merge(after, on=key, suffixes=("_b", "_a"))
    mine = merged[(merged["courier_id"] == cid)]
    untouched = mine[mine["event_timestamp"] <= old_delivered.ceil("h") - pd.Timedelta(hours=1)]
    assert len(untouched) > 0
    assert (untouched["courier_deliveries_24h_b"] == untouched["courier_deliveries_24h_a"]).all()
    changed = mine[mine["event_timestamp"] > old_delivered]
    assert (changed["courier_mean_delivery_24h_b"] != changed["courier_mean_delivery_24h_a"]).any()
