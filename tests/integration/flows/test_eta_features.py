"""The hourly ``eta_features`` run on a real Feast store: events in the store → the 24-hour
snapshots at the hour in the lake and online, idempotent, replaced by the day's tables."""

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from relay.data.generate import generate_orders
from relay.data.lake import COURIER_STATS, SNAPSHOT_TABLES, Lake
from relay.features.store import apply, get_store, snapshot_ages
from relay.features.tables import COURIER_FEATURES, compute_feature_tables
from relay.flows.eta_features import refresh_snapshots
from relay.ingest.event_store import EventStore
from relay.settings import Settings
from relay.sim.lifecycle import order_events
from tests.integration.conftest import _feast_settings

pytestmark = [pytest.mark.integration]

DAY = dt.date(2026, 11, 25)


@pytest.fixture(scope="module")
def orders() -> pd.DataFrame:
    return pd.concat(
        [generate_orders(DAY - dt.timedelta(days=1), 1500), generate_orders(DAY, 1500)],
        ignore_index=True,
    )


@pytest.fixture(scope="module")
def settings(orders: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Its own lake, Feast store (SQLite) and event store, holding every event of ``orders``."""
    root: Path = tmp_path_factory.mktemp("hourly")
    s = _feast_settings("sqlite")
    s.lake.uri = str(root / "lake")
    s.events.database_url = f"sqlite:///{root / 'events.db'}"
    apply(s)
    bodies = order_events(orders)
    rows = [b | {"occurred_at": pd.Timestamp(b["occurred_at"]).to_pydatetime()} for b in bodies]
    store = EventStore(s.events.database_url)
    store.add(rows, dt.datetime.now(dt.UTC))
    store.close()
    return s


def _online(s: Settings, couriers: list[str]) -> pd.DataFrame:
    refs = [f"courier_stats:{name}" for name in COURIER_FEATURES]
    rows = [{"courier_id": c} for c in couriers]
    got = get_store(s).get_online_features(features=refs, entity_rows=rows).to_df()
    return got.set_index("courier_id")[list(COURIER_FEATURES)]


def _expected(orders: pd.DataFrame, hour: dt.datetime) -> pd.DataFrame:
    tables = compute_feature_tables(orders, hour - dt.timedelta(hours=1), hour)
    return tables["courier_stats"].set_index("courier_id")[list(COURIER_FEATURES)]


def test_each_hour_lands_and_serves_its_snapshot(settings, orders):
    lake = Lake(settings)
    previous = None
    for hour in (10, 11):
        at = dt.datetime.combine(DAY, dt.time(hour, 20), tzinfo=dt.UTC)
        done = refresh_snapshots(at, settings)
        stamp = at.replace(minute=0)
        assert done.hour == stamp and done.orders > 1000
        for ds in SNAPSHOT_TABLES:
            assert done.files[ds.name].endswith(f"/date={DAY}/hour-{hour:02d}.parquet")
            assert done.materialized[ds.name][1] == stamp
        expected = _expected(orders, stamp)
        assert len(expected) > 200
        online = _online(settings, expected.index.to_list())
        np.testing.assert_allclose(
            online.to_numpy(dtype=float), expected.to_numpy(dtype=float), rtol=1e-9
        )
        if previous is not None:  # the hour moved the values on
            both = expected.index.intersection(previous.index)
            assert (expected.loc[both] != previous.loc[both]).any(axis=None)
        previous = expected
    # A retried run of 11:00 writes the same file and materializes nothing again.
    again = refresh_snapshots(dt.datetime.combine(DAY, dt.time(11, 59), tzinfo=dt.UTC), settings)
    assert again.files == done.files
    assert again.materialized["courier_stats"][0] == again.materialized["courier_stats"][1]
    # /metrics' freshness of the snapshot views: their newest value is the 11:00 one.
    noon = dt.datetime.combine(DAY, dt.time(12), tzinfo=dt.UTC)
    ages = snapshot_ages(get_store(settings), noon)
    assert ages == {ds.name: 3600.0 for ds in SNAPSHOT_TABLES}
    hourly = lake.read_all(COURIER_STATS, DAY, DAY)
    assert sorted(hourly["event_timestamp"].unique()) == [
        pd.Timestamp(DAY, tz="UTC") + pd.Timedelta(hours=h) for h in (10, 11)
    ]


def test_the_days_tables_replace_its_hourly_files(settings, orders):
    lake = Lake(settings)
    refresh_snapshots(dt.datetime.combine(DAY, dt.time(12), tzinfo=dt.UTC), settings)
    assert len(lake.files(COURIER_STATS, DAY)) >= 1
    start = pd.Timestamp(DAY, tz="UTC")
    day = compute_feature_tables(orders, start, start + pd.Timedelta(days=1))["courier_stats"]
    lake.write(day, COURIER_STATS, DAY, only=True)
    (only,) = lake.files(COURIER_STATS, DAY)
    assert only.endswith("/part-0.parquet")
    assert len(lake.read_all(COURIER_STATS, DAY, DAY)) == len(day)
