"""The event store and its group commit: durable, idempotent, pushed from the store, landed."""

import datetime as dt
import threading
from typing import Any

import pandas as pd
import pytest
import sqlalchemy

from relay.data.generate import generate_orders
from relay.data.lake import ACTUALS, ORDER_EVENTS, Lake
from relay.features.live import live_tables
from relay.ingest.event_sink import EventSink, land
from relay.ingest.event_store import EventStore
from relay.settings import Settings

DAY = dt.date(2026, 11, 20)


class Recorder:
    """Stands in for the online store's push (the Feast round trip is in the integration
    tests): keeps the latest row per entity, as an online store does."""

    def __init__(self, fail: bool = False) -> None:
        self.online: dict[str, dict[str, dict[str, Any]]] = {}
        self.calls = 0
        self.fail = fail

    def push(self, push_source_name: str, df: pd.DataFrame) -> None:
        self.calls += 1
        if self.fail:
            raise ConnectionError("online store down")
        view = push_source_name.removesuffix("_push")
        key = df.columns[0]
        for row in df.to_dict("records"):
            self.online.setdefault(view, {})[row[key]] = row


def _events(orders: pd.DataFrame) -> list[dict[str, Any]]:
    created = [
        {
            "order_id": o.order_id,
            "type": "created",
            "occurred_at": o.created_at.to_pydatetime(),
            "courier_id": o.courier_id,
            "merchant_id": o.merchant_id,
            "zone_id": o.zone_id,
            "distance_km": o.distance_km,
            "weather": o.weather,
        }
        for o in orders.itertuples()
    ]
    done = [
        {"order_id": o.order_id, "type": kind, "occurred_at": getattr(o, col).to_pydatetime()}
        for o in orders.itertuples()
        for kind, col in (("picked_up", "picked_up_at"), ("delivered", "delivered_at"))
    ]
    return created + done


@pytest.fixture
def store(tmp_path) -> EventStore:
    s = EventStore(f"sqlite:///{tmp_path / 'events' / 'events.db'}")
    yield s
    s.close()


@pytest.fixture
def orders() -> pd.DataFrame:
    return generate_orders(DAY, 600).sort_values("created_at").reset_index(drop=True)


def test_a_resent_event_is_recognised_and_stored_once(store):
    t = dt.datetime(2026, 11, 20, 12, tzinfo=dt.UTC)
    event = {"order_id": "o1", "type": "delivered", "occurred_at": t}
    assert store.add([event], t) == [True]
    assert store.add([event, {**event, "type": "picked_up"}], t) == [False, True]
    # Twice in one group (two requests committed together): the first is the new one.
    again = {**event, "order_id": "o2"}
    assert store.add([again, again], t) == [True, False]
    assert store.count() == 3


def test_each_request_is_answered_after_its_group_is_stored_and_pushed(store, orders):
    pusher = Recorder()
    sink = EventSink(store, pusher)
    try:
        events = [e for e in _events(orders) if e["type"] == "created"]
        futures = [sink.submit(events[i : i + 7]) for i in range(0, len(events), 7)]
        answers = [f.result(timeout=30) for f in futures]
        assert sum(a.accepted for a in answers) == len(events)
        assert sink.groups < len(futures)  # requests shared transactions
        # Sent again: nothing new, and the online values stay those of the offline tables.
        assert sink.submit(events).result(timeout=30).duplicates == len(events)
    finally:
        sink.close()
    start = pd.Timestamp(DAY, tz="UTC")
    offline = live_tables(orders, start, start + pd.Timedelta(days=1))
    for view, table in offline.items():
        key = table.columns[0]
        latest = table.sort_values("event_timestamp").groupby(key).tail(1).set_index(key)
        online = pd.DataFrame(pusher.online[view].values()).set_index(key).loc[latest.index]
        pd.testing.assert_frame_equal(online[latest.columns], latest, check_dtype=False)


def test_a_failed_push_keeps_the_events_and_the_next_event_pushes_again(store, orders):
    down = Recorder(fail=True)
    sink = EventSink(store, down)
    events = [e for e in _events(orders.head(20)) if e["type"] == "created"]
    try:
        assert sink.submit(events[:10]).result(timeout=30).accepted == 10
        assert sink.freshness.push_failures == 1 and store.count() == 10
        sink.pusher = up = Recorder()
        sink.submit(events[10:]).result(timeout=30)
    finally:
        sink.close()
    # Computed from the store: the zone's count includes the events whose push failed.
    zone = events[-1]["zone_id"]
    mine = [e for e in events if e["zone_id"] == zone]
    assert up.online["zone_live"][zone]["zone_orders_1h"] == len(mine)
    assert sink.freshness.age_s("zone_live") is not None


def test_a_failed_store_fails_every_request_of_the_group(tmp_path):
    store = EventStore(f"sqlite:///{tmp_path / 'events.db'}")
    store.engine.dispose()
    (tmp_path / "events.db").unlink()
    (tmp_path / "events.db").mkdir()  # the database is gone: nothing can be stored
    sink = EventSink(store, Recorder())
    t = dt.datetime(2026, 11, 20, 12, tzinfo=dt.UTC)
    try:
        future = sink.submit([{"order_id": "o", "type": "delivered", "occurred_at": t}])
        with pytest.raises(sqlalchemy.exc.OperationalError):
            future.result(timeout=30)
    finally:
        sink.close()


def test_landing_copies_every_event_once_and_the_labels_they_complete(store, orders, tmp_path):
    lake = Lake(Settings(home=tmp_path))
    events = _events(orders)
    received = dt.datetime(2026, 12, 1, 9, tzinfo=dt.UTC)
    store.add(events[: len(orders)], received)  # created only
    assert land(store, lake) == len(orders)
    assert lake.partitions(ACTUALS) == []  # nothing delivered yet
    store.add(events[len(orders) :], received)
    assert land(store, lake) == 2 * len(orders)
    assert land(store, lake) == 0
    days = lake.partitions(ORDER_EVENTS)
    landed = lake.read_all(ORDER_EVENTS, days[0], days[-1])
    assert len(landed) == 3 * len(orders)
    assert not landed.duplicated(["order_id", "type"]).any()
    labels = lake.read_all(ACTUALS, received.date(), received.date())
    assert len(labels) == len(orders)
    merged = labels.merge(orders, on="order_id")
    pd.testing.assert_series_equal(
        merged["actual_minutes"], merged["delivery_minutes"], check_names=False, atol=1e-3
    )


def test_a_crash_between_landing_and_marking_lands_again_without_losing(store, orders, tmp_path):
    lake = Lake(Settings(home=tmp_path))
    store.add(_events(orders.head(50)), dt.datetime(2026, 12, 1, tzinfo=dt.UTC))
    real = store.mark_landed

    def crash(seqs):
        raise SystemExit("killed")

    store.mark_landed = crash
    with pytest.raises(SystemExit):
        land(store, lake)
    store.mark_landed = real
    assert land(store, lake) == 150
    day = lake.partitions(ORDER_EVENTS)
    landed = lake.read_all(ORDER_EVENTS, day[0], day[-1])
    assert landed.drop_duplicates(["order_id", "type"]).shape[0] == 150


def test_the_sink_lands_in_the_background(store, orders, tmp_path):
    lake = Lake(Settings(home=tmp_path))
    sink = EventSink(store, None, lake, land_every_s=0.05)
    landed = threading.Event()
    try:
        sink.submit(_events(orders.head(5))).result(timeout=30)
        for _ in range(200):
            if sink.landed >= 15:
                landed.set()
                break
            landed.wait(0.05)
    finally:
        sink.close()
    assert landed.is_set(), "nothing landed before close()"
    assert sink.landed == 15


def test_a_store_created_before_prep_minutes_gains_the_column_and_keeps_its_events(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:  # the table as the first release of the events API made it
        conn.execute(
            sqlalchemy.text(
                "CREATE TABLE order_events (seq INTEGER PRIMARY KEY, order_id VARCHAR(64) NOT "
                "NULL, type VARCHAR(16) NOT NULL, occurred_us BIGINT NOT NULL, received_us "
                "BIGINT NOT NULL, courier_id VARCHAR(64), merchant_id VARCHAR(64), zone_id "
                "VARCHAR(32), distance_km FLOAT, weather VARCHAR(16), landed BOOLEAN NOT NULL, "
                "CONSTRAINT uq_order_event UNIQUE (order_id, type))"
            )
        )
        conn.execute(
            sqlalchemy.text(
                "INSERT INTO order_events (order_id, type, occurred_us, received_us, landed) "
                "VALUES ('old', 'picked_up', 1, 1, 0)"
            )
        )
    engine.dispose()
    at = dt.datetime(2026, 12, 2, tzinfo=dt.UTC)
    store = EventStore(url)
    try:
        row = {"order_id": "new", "type": "picked_up", "occurred_at": at, "prep_minutes": 9.5}
        assert store.add([row], at) == [True]
        events = store.frame().set_index("order_id")
        assert events.loc["new", "prep_minutes"] == 9.5
        assert pd.isna(events.loc["old", "prep_minutes"])
    finally:
        store.close()
    EventStore(url).close()  # opening it again changes nothing


def test_freshness_names_each_view_and_flags_the_stale_ones():
    from relay.ingest.event_sink import Freshness, freshness_text

    seen = Freshness(pushed_at={"zone_live": 1000.0, "courier_live": 400.0})
    text = freshness_text(
        seen,
        alert_s=300.0,
        now=1010.0,
        snapshots={"courier_stats": 1800.0, "merchant_stats": 9000.0, "zone_stats": None},
        snapshot_alert_s=7200.0,
    )
    lines = set(text.splitlines())
    assert 'relay_feature_age_seconds{view="zone_live"} 10.000' in lines
    assert 'relay_feature_age_seconds{view="courier_stats"} 1800.000' in lines
    for view, stale in [
        ("zone_live", 0),
        ("courier_live", 1),  # 610 s > 300 s
        ("merchant_live", 1),  # never pushed by this replica
        ("courier_stats", 0),
        ("merchant_stats", 1),  # the hourly run is 2.5 h late
        ("zone_stats", 1),  # never materialized
    ]:
        assert f'relay_feature_stale{{view="{view}"}} {stale}' in lines, view
