"""The hourly snapshots (eta_features): computed from stored events, they equal the training
flow's snapshots computed from the validated orders."""

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from relay.data.generate import generate_orders
from relay.data.lake import SNAPSHOT_TABLES
from relay.features.tables import compute_feature_tables
from relay.flows.eta_features import snapshot_hour, snapshot_rows
from relay.ingest.event_store import EventStore
from relay.sim.lifecycle import order_events

DAY = dt.date(2026, 11, 20)
HOUR = dt.datetime(2026, 11, 20, 15, tzinfo=dt.UTC)
LOOKBACK = dt.timedelta(hours=6)


@pytest.fixture(scope="module")
def orders() -> pd.DataFrame:
    return pd.concat(
        [generate_orders(DAY - dt.timedelta(days=1), 2000), generate_orders(DAY, 2000)],
        ignore_index=True,
    )


def _rows(orders: pd.DataFrame) -> list[dict]:
    """The store's rows of every event of ``orders``, as the events API would store them."""
    bodies = order_events(orders)
    return [b | {"occurred_at": pd.Timestamp(b["occurred_at"]).to_pydatetime()} for b in bodies]


@pytest.fixture(scope="module")
def store(orders, tmp_path_factory) -> EventStore:
    s = EventStore(f"sqlite:///{tmp_path_factory.mktemp('events') / 'events.db'}")
    rows = _rows(orders)
    # Every event the order service will ever send, whenever it happened: the store also
    # holds pickups and deliveries after the hour, which the snapshot must not see.
    for k in range(0, len(rows), 2000):
        s.add(rows[k : k + 2000], dt.datetime(2026, 11, 21, tzinfo=dt.UTC))
    yield s
    s.close()


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(list(df.columns[:2])).reset_index(drop=True)


def test_the_snapshot_from_events_equals_the_training_flows_at_the_hour(orders, store):
    tables, n = snapshot_rows(store, HOUR, LOOKBACK)
    expected = compute_feature_tables(orders, HOUR - dt.timedelta(hours=1), HOUR)
    window = orders["created_at"].between(
        pd.Timestamp(HOUR) - pd.Timedelta(hours=30), pd.Timestamp(HOUR), inclusive="left"
    )
    assert n == int(window.sum())
    for ds in SNAPSHOT_TABLES:
        got, want = _sorted(tables[ds.name]), _sorted(expected[ds.name])
        assert len(want) >= 20 and (got["event_timestamp"] == pd.Timestamp(HOUR)).all()
        pd.testing.assert_frame_equal(got, want, check_dtype=False, rtol=1e-9)


def test_events_after_the_hour_change_nothing(orders, store):
    # Everything that happens after 15:00 is in the store, yet the 15:00 snapshot is the
    # one computed from orders that stopped at 15:00: a late run reproduces the hour.
    cut = pd.Timestamp(HOUR)
    known = orders[orders["created_at"] < cut].copy()
    for col in ("picked_up_at", "delivered_at"):
        known.loc[known[col] >= cut, col] = pd.NaT
    minutes = (known["delivered_at"] - known["created_at"]).dt.total_seconds() / 60
    known["delivery_minutes"] = minutes.round(3)
    expected = compute_feature_tables(known, HOUR - dt.timedelta(hours=1), HOUR)
    tables, _ = snapshot_rows(store, HOUR, LOOKBACK)
    for ds in SNAPSHOT_TABLES:
        pd.testing.assert_frame_equal(
            _sorted(tables[ds.name]), _sorted(expected[ds.name]), check_dtype=False, rtol=1e-9
        )


def test_pickups_without_a_preparation_time_are_left_out_of_the_mean(orders, tmp_path):
    window = orders[orders["created_at"] >= pd.Timestamp(HOUR) - pd.Timedelta(hours=30)]
    window = window[window["created_at"] < pd.Timestamp(HOUR)].reset_index(drop=True)
    unreported = pd.Series(np.arange(len(window)) % 3 == 0)
    sent = window.assign(prep_minutes=window["prep_minutes"].mask(unreported))
    s = EventStore(f"sqlite:///{tmp_path / 'events.db'}")
    try:
        s.add(_rows(sent), dt.datetime(2026, 11, 21, tzinfo=dt.UTC))
        tables, _ = snapshot_rows(s, HOUR, LOOKBACK)
    finally:
        s.close()
    merchants = _sorted(tables["merchant_stats"]).set_index("merchant_id")
    reported = window[~unreported]
    picked = reported[
        reported["picked_up_at"].between(
            pd.Timestamp(HOUR) - pd.Timedelta(hours=24), pd.Timestamp(HOUR), inclusive="left"
        )
    ]
    means = picked.groupby("merchant_id")["prep_minutes"].mean()
    # A merchant has a row while it had an order created in the 24 hours.
    means = means[means.index.isin(merchants.index)]
    assert len(means) > 20
    got = merchants.loc[means.index, "merchant_mean_prep_24h"]
    np.testing.assert_allclose(got.to_numpy(), means.to_numpy(), rtol=1e-9)
    # The orders count every order, reported or not.
    assert merchants["merchant_orders_24h"].sum() == len(
        window[window["created_at"] >= pd.Timestamp(HOUR) - pd.Timedelta(hours=24)]
    )


def test_a_run_snapshots_the_hour_it_ends_at_or_after():
    assert snapshot_hour(dt.datetime(2026, 11, 20, 15, 0, tzinfo=dt.UTC)) == HOUR
    assert snapshot_hour(dt.datetime(2026, 11, 20, 15, 59, 59, tzinfo=dt.UTC)) == HOUR
    eastern = dt.timezone(dt.timedelta(hours=-5))
    assert snapshot_hour(dt.datetime(2026, 11, 20, 10, 30, tzinfo=eastern)) == HOUR
