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
