"""One hourly feature run: the 24-hour snapshot views brought up to the hour, from events.

``dags/eta_features.py`` calls :func:`refresh_snapshots` for each hour. The live views
(the last hour's counts, the weather) are pushed as events arrive; the 24-hour aggregates
(deliveries, mean delivery and preparation times, orders) change with every event too, but
slowly, so they are computed once an hour, the way training computes them:

1. the orders of the 24 hours before the hour (and :attr:`EventSettings.snapshot_lookback_h`
   more, whose pickups and deliveries fall inside) are rebuilt from the event store
   (:meth:`relay.ingest.event_store.EventStore.orders`);
2. :func:`relay.features.tables.compute_feature_tables` stamps their snapshot at the hour, the
   same function the training flow runs over the validated orders;
3. the rows land in the lake as ``hour-HH.parquet`` in the day's partition (the training
   flow's ``part-0.parquet`` of the whole day replaces them later), and the snapshot views are
   materialized up to the hour.

Keyed on the hour: a retried or cleared run rewrites the same file and materializes nothing
twice.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import pandas as pd

from relay.data.lake import SNAPSHOT_TABLES, Lake
from relay.features.tables import WINDOW_HOURS, compute_feature_tables
from relay.ingest.event_store import EventStore
from relay.settings import Settings, get_settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SnapshotHour:
    """What one hourly run wrote."""

    hour: dt.datetime
    orders: int
    rows: dict[str, int]
    files: dict[str, str]
    materialized: dict[str, tuple[dt.datetime | None, dt.datetime]]

    def summary(self) -> str:
        rows = ", ".join(f"{name} {n}" for name, n in self.rows.items())
        return f"snapshots at {self.hour.isoformat()} from {self.orders} orders' events: {rows}"


def snapshot_hour(end: dt.datetime) -> dt.datetime:
    """The snapshot time of a run ending at ``end``: the hour boundary at or before it (UTC)."""
    return pd.Timestamp(end).tz_convert("UTC").floor("h").to_pydatetime()


def snapshot_rows(
    store: EventStore, hour: dt.datetime, lookback: dt.timedelta
) -> tuple[dict[str, pd.DataFrame], int]:
    """The snapshot views' rows stamped ``hour``, computed from the stored events, and how
    many orders they were computed from."""
    since = hour - dt.timedelta(hours=WINDOW_HOURS) - lookback
    orders = store.orders(since, hour)
    if orders.empty:
        return {ds.name: pd.DataFrame() for ds in SNAPSHOT_TABLES}, 0
    tables = compute_feature_tables(orders, hour - dt.timedelta(hours=1), hour)
    return {ds.name: tables[ds.name] for ds in SNAPSHOT_TABLES}, len(orders)


def refresh_snapshots(end: dt.datetime, settings: Settings | None = None) -> SnapshotHour:
    """Compute, land and materialize the 24-hour snapshots at the hour of ``end``."""
    from relay.features.store import materialize

    s = settings or get_settings()
    if s.events.database_url is None:  # pragma: no cover, the settings validator fills it
        raise ValueError("RELAY_EVENTS__DATABASE_URL is not set")
    hour = snapshot_hour(end)
    store = EventStore(s.events.database_url)
    try:
        tables, n_orders = snapshot_rows(
            store, hour, dt.timedelta(hours=s.events.snapshot_lookback_h)
        )
    finally:
        store.close()
    lake = Lake(s)
    # The row stamped at midnight closes the day before: it belongs to that day's partition,
    # as in the training flow's daily tables.
    day = (hour - dt.timedelta(hours=1)).date()
    written = [ds for ds in SNAPSHOT_TABLES if len(tables[ds.name])]
    files = {
        ds.name: lake.write_part(tables[ds.name], ds, day, f"hour-{hour:%H}.parquet")
        for ds in written
    }
    done = materialize(hour, settings=s, tables=written) if written else {}
    result = SnapshotHour(
        hour=hour,
        orders=n_orders,
        rows={name: len(df) for name, df in tables.items()},
        files=files,
        materialized=done,
    )
    log.info(result.summary())
    return result
