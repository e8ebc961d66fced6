"""Every feature table for a range, and point-in-time rows from them, without Feast.

What Feast's offline store does for a training set, as a pandas ``merge_asof`` per keyed view:
each row gets, for each view, the latest row stamped at or before its ``event_timestamp``. Tests
and benchmarks that need training rows for generated orders without a feature store use it; the
platform's training sets come from Feast (:func:`relay.features.store.training_frame`).
"""

from __future__ import annotations

import datetime as dt

import pandas as pd

from relay.features.catalog import VIEWS
from relay.features.live import live_tables
from relay.features.tables import compute_feature_tables


def entity_frame(orders: pd.DataFrame) -> pd.DataFrame:
    """The entity rows Feast needs for a set of orders: keys, request fields, timestamp.

    Keeps ``order_id`` and, when present, the label ``delivery_minutes``.
    """
    created = orders["created_at"]
    out = pd.DataFrame(
        {
            "order_id": orders["order_id"].to_numpy(),
            "courier_id": orders["courier_id"].to_numpy(),
            "merchant_id": orders["merchant_id"].to_numpy(),
            "zone_id": orders["zone_id"].to_numpy(),
            "event_timestamp": created.to_numpy(),
            "distance_km": orders["distance_km"].to_numpy(dtype=float),
            "hour": created.dt.hour.to_numpy(dtype="int64"),
            "weekday": created.dt.weekday.to_numpy(dtype="int64"),
        }
    )
    out["event_timestamp"] = pd.to_datetime(out["event_timestamp"], utc=True)
    if "delivery_minutes" in orders:
        out["delivery_minutes"] = orders["delivery_minutes"].to_numpy(dtype=float)
    return out


def feature_tables(
    orders: pd.DataFrame, start: dt.datetime, end: dt.datetime
) -> dict[str, pd.DataFrame]:
    """The hourly snapshots stamped in ``(start, end]`` and the live views' rows of orders
    created in ``[start, end)``, by view name (include the day before ``start`` in ``orders``)."""
    return compute_feature_tables(orders, start, end) | live_tables(orders, start, end)


def point_in_time(rows: pd.DataFrame, tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """``rows`` (entity keys and ``event_timestamp``) with every keyed view's features as of
    their time, sorted by ``event_timestamp``."""
    out = rows.sort_values("event_timestamp", kind="stable").reset_index(drop=True)
    for view in VIEWS:
        if view.entity is None:
            continue
        table = tables[view.name].sort_values("event_timestamp", kind="stable")
        out = pd.merge_asof(out, table, on="event_timestamp", by=view.entity)
    return out


def offline_rows(orders: pd.DataFrame, start: dt.datetime, end: dt.datetime) -> pd.DataFrame:
    """Training-set rows of the orders created in ``[start, end)``, without Feast: the keyed
    views as of each order, and the on-demand view's outputs (include the day before ``start``
    in ``orders`` to fill the 24-hour windows)."""
    tables = feature_tables(orders, start - dt.timedelta(days=1), end)
    created = orders["created_at"]
    inside = orders[(created >= pd.Timestamp(start)) & (created < pd.Timestamp(end))]
    frame = point_in_time(entity_frame(inside), tables)
    # What the on-demand view computes from the request, under its output names.
    frame["order_distance_km"] = frame["distance_km"]
    frame["order_hour"] = frame["hour"]
    frame["order_weekday"] = frame["weekday"]
    return frame
