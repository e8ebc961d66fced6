"""Live features: one definition, the same values offline (from landed orders) and online
(pushed after each group of events)."""

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from relay.data.generate import generate_orders
from relay.features.catalog import live_views, names, view_features
from relay.features.live import created_events, latest_rows, live_tables, live_view

DAY = dt.date(2026, 11, 20)
START = pd.Timestamp(DAY, tz="UTC")
END = START + pd.Timedelta(days=1)


@pytest.fixture(scope="module")
def orders() -> pd.DataFrame:
    return pd.concat(
        [generate_orders(DAY - dt.timedelta(days=1), 3000), generate_orders(DAY, 3000)],
        ignore_index=True,
    )


def test_each_order_gets_its_entities_rows_as_of_its_own_creation(orders):
    tables = live_tables(orders, START, END)
    assert sorted(tables) == sorted(v.name for v in live_views())
    for v in live_views():
        assert list(tables[v.name].columns) == [
            v.entity,
            "event_timestamp",
            *names(view_features(v.name)),
        ]
        ts = tables[v.name]["event_timestamp"]
        assert ts.min() >= START and ts.max() < END
    day = orders[orders["created_at"] >= START]
    zone = tables["zone_live"].set_index(["zone_id", "event_timestamp"])
    for _, o in day.sample(25, random_state=2).iterrows():
        t = o["created_at"]
        mine = orders[orders["zone_id"] == o["zone_id"]]
        window = mine[(mine["created_at"] > t - pd.Timedelta(hours=1)) & (mine["created_at"] <= t)]
        row = zone.loc[(o["zone_id"], t)]
        assert row["zone_orders_1h"] == len(window) >= 1  # the order itself counts
        latest = mine[mine["created_at"] <= t].sort_values(["created_at", "order_id"])
        assert row["zone_weather"] == latest["weather"].iloc[-1]


def test_a_later_order_never_changes_an_earlier_row(orders):
    before = live_tables(orders, START, END)["courier_live"]
    later = orders.copy()
    i = later.index[later["created_at"] >= START + pd.Timedelta(hours=12)][0]
    cid = later.at[i, "courier_id"]
    extra = later.loc[[i]].assign(
        order_id="extra", created_at=later.at[i, "created_at"] + pd.Timedelta(minutes=5)
    )
    after = live_tables(pd.concat([later, extra], ignore_index=True), START, END)["courier_live"]
    cut = extra["created_at"].iloc[0]
    key = ["courier_id", "event_timestamp"]
    merged = before.merge(after, on=key, suffixes=("_b", "_a"))
    earlier = merged[merged["event_timestamp"] < cut]
    assert (earlier["courier_orders_1h_b"] == earlier["courier_orders_1h_a"]).all()
    new = after[(after["courier_id"] == cid) & (after["event_timestamp"] == cut)]
    assert len(new) == 1


def test_events_pushed_one_group_at_a_time_give_the_offline_rows(orders):
    """The online computation, fed the stored events as they arrive in groups, pushes for
    each touched entity exactly the row the offline table has at that entity's latest event."""
    tables = live_tables(orders, START, END)
    offline = {
        name: df.set_index([live_view(name).entity, "event_timestamp"])
        for name, df in tables.items()
    }
    events = created_events(orders).sort_values("created_at", kind="stable")
    events = events.reset_index(drop=True)
    day_start = int((events["created_at"] >= START).to_numpy().argmax())
    rng = np.random.default_rng(5)
    checked = 0
    i = day_start
    while i < len(events) and checked < 400:
        n = int(rng.integers(1, 6))
        group = events.iloc[i : i + n]
        stored = events.iloc[: i + n]
        touched = {v.name: sorted(set(group[v.entity])) for v in live_views()}
        rows = latest_rows(stored, touched)
        for name, df in rows.items():
            key = live_view(name).entity
            for _, r in df.iterrows():
                expected = offline[name].loc[(r[key], r["event_timestamp"])]
                for f in names(view_features(name)):
                    assert r[f] == expected[f], (name, r[key], f)
                checked += 1
        i += n
    assert checked >= 400


def test_orders_without_weather_keep_the_last_report(orders):
    day = orders[orders["created_at"] >= START - pd.Timedelta(hours=2)].head(400).copy()
    zone = day["zone_id"].mode()[0]
    mine = day.index[day["zone_id"] == zone]
    day.loc[mine[-1], "weather"] = None
    rows = latest_rows(created_events(day), {"zone_live": [zone]})["zone_live"]
    assert rows["zone_weather"].iloc[0] == day.loc[mine[-2], "weather"]
    assert rows["event_timestamp"].iloc[0] == day.loc[mine[-1], "created_at"]
