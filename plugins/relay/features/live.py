"""Live features: what every order event changes, computed one way offline and online.

A live view's value for an entity *as of* time ``t`` is a function of the ``created`` events
of that entity up to and including ``t``:

* ``courier_orders_1h``, ``merchant_orders_1h``, ``zone_orders_1h``: orders created in
  ``(t - 1 h, t]``;
* ``zone_weather``: the weather reported with the zone's latest order in that window that
  reported one (null when none did).

:func:`values_as_of` is that function. Offline, :func:`live_tables` applies it at every order's
own creation time: one row per order and entity, stamped at ``created_at``, so an order's
point-in-time training row is the value as of its own creation, itself included. Online, the
events API (:mod:`relay.ingest.event_sink`) applies it, after each group of events is stored,
at each touched entity's latest event time and pushes the rows (Feast ``PushSource``): an
order whose ``created`` event was acknowledged before its ETA request is served exactly the
row training will see. Late events correct the entity's latest row the same way.

Nothing here touches a store; both sides pass frames of ``created`` events.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from relay.features.catalog import VIEWS, View, live_views, names, view_features

WINDOW = pd.Timedelta(hours=1)
"""The live counts' window: ``(t - WINDOW, t]``."""

EVENT_COLUMNS = ("order_id", "created_at", "courier_id", "merchant_id", "zone_id", "weather")
"""What the live features read of a ``created`` event (``weather`` may be null)."""

#: Each live view's count column.
COUNTS = {
    "courier_live": "courier_orders_1h",
    "merchant_live": "merchant_orders_1h",
    "zone_live": "zone_orders_1h",
}


def live_view(name: str) -> View:
    """The live view called ``name``."""
    for v in VIEWS:
        if v.name == name and v.live:
            return v
    raise KeyError(f"no live view {name!r}")


def _key(view: View) -> str:
    if view.entity is None:
        raise ValueError(f"{view.name} is not keyed by an entity")
    return view.entity


def created_events(orders: pd.DataFrame) -> pd.DataFrame:
    """The ``created`` events of landed orders (the offline side's input)."""
    out = orders[list(EVENT_COLUMNS)].copy()
    out["created_at"] = pd.to_datetime(out["created_at"], utc=True)
    return out.reset_index(drop=True)


def _micros(ts: pd.Series | pd.DatetimeIndex) -> np.ndarray:
    """UTC times as integer microseconds (the resolution events and the lake keep)."""
    values = pd.to_datetime(ts, utc=True)
    return np.asarray(values.astype("datetime64[us, UTC]").astype("int64"), dtype=np.int64)


def values_as_of(view: View, events: pd.DataFrame, at: pd.DataFrame) -> pd.DataFrame:
    """``view``'s features for each ``(entity, event_timestamp)`` row of ``at``.

    Args:
        view: a live view.
        events: ``created`` events (:data:`EVENT_COLUMNS`); at least those of ``at``'s entities
            in the window before each time.
        at: the view's join key and ``event_timestamp``.

    Returns:
        ``at``'s rows, in its order, with the view's features added.
    """
    key = _key(view)
    out = at[[key, "event_timestamp"]].reset_index(drop=True).copy()
    codes, uniques = pd.factorize(pd.concat([events[key], out[key]], ignore_index=True))
    ev_code, at_code = codes[: len(events)], codes[len(events) :]
    ev_t, at_t = _micros(events["created_at"]), _micros(out["event_timestamp"])
    # By entity, then time; orders created at the same instant by id, the same on both sides.
    ids = pd.factorize(events["order_id"].astype(str), sort=True)[0]
    order = np.lexsort((ids, ev_t, ev_code))
    ev_code, ev_t = ev_code[order], ev_t[order]
    starts = np.searchsorted(ev_code, np.arange(len(uniques)), side="left")
    ends = np.searchsorted(ev_code, np.arange(len(uniques)), side="right")
    window = int(WINDOW / pd.Timedelta(microseconds=1))
    upto = np.empty(len(out), dtype=np.int64)
    after = np.empty(len(out), dtype=np.int64)
    # Per entity: one searchsorted over its own sorted times.
    for code in np.unique(at_code):
        rows = np.flatnonzero(at_code == code)
        lo, hi = starts[code], ends[code]
        times = ev_t[lo:hi]
        upto[rows] = lo + np.searchsorted(times, at_t[rows], side="right")
        after[rows] = lo + np.searchsorted(times, at_t[rows] - window, side="right")
    count = COUNTS[view.name]
    out[count] = (upto - after).astype(np.int64)
    if "zone_weather" in names(view_features(view.name)):
        weather = events["weather"].to_numpy(dtype=object)[order]
        out["zone_weather"] = _latest_reported(weather, upto, after)
    return out[[key, "event_timestamp", *names(view_features(view.name))]]


def _latest_reported(weather: np.ndarray, upto: np.ndarray, after: np.ndarray) -> np.ndarray:
    """The last non-null weather among each row's window of events, positions
    ``[after, upto)`` of the entity-sorted events (None when none in the window reported)."""
    reported = pd.Series(weather).notna().to_numpy()
    # Index of the latest reported event at or before each position (-1: none yet).
    idx = np.where(reported, np.arange(len(weather)), -1)
    latest = np.maximum.accumulate(idx) if len(idx) else idx
    out = np.full(len(upto), None, dtype=object)
    pos = upto - 1
    found = np.where(pos >= 0, latest[np.clip(pos, 0, None)] if len(latest) else -1, -1)
    # Within the window, hence the same entity's (positions are grouped by entity).
    ok = (pos >= after) & (found >= after)
    out[ok] = weather[found[ok]]
    return out


def live_tables(
    orders: pd.DataFrame, start: dt.datetime, end: dt.datetime
) -> dict[str, pd.DataFrame]:
    """Offline rows of every live view: one per order created in ``[start, end)`` and entity,
    stamped at its creation, as of that time.

    Args:
        orders: landed orders; include the hour before ``start`` so windows are complete.
        start: first creation time included (UTC).
        end: first creation time excluded (UTC).
    """
    events = created_events(orders)
    t = events["created_at"]
    own = events[(t >= pd.Timestamp(start)) & (t < pd.Timestamp(end))]
    tables = {}
    for view in live_views():
        key = _key(view)
        at = own[[key, "created_at"]].rename(columns={"created_at": "event_timestamp"})
        rows = values_as_of(view, events, at)
        # One row per (entity, instant): orders created at the same instant share it.
        rows = rows.drop_duplicates([key, "event_timestamp"], keep="last")
        tables[view.name] = rows.sort_values(["event_timestamp", key], kind="stable").reset_index(
            drop=True
        )
    return tables


def latest_rows(events: pd.DataFrame, touched: dict[str, list[str]]) -> dict[str, pd.DataFrame]:
    """The online side: each touched entity's row as of its latest ``created`` event.

    Args:
        events: the stored ``created`` events of the touched entities, at least those within
            :data:`WINDOW` of each one's latest.
        touched: live view name -> the entity ids a group of events changed.

    Returns:
        Live view name -> rows to push (entities with no ``created`` event are left out).
    """
    out = {}
    for name, ids in touched.items():
        view = live_view(name)
        key = _key(view)
        mine = events[events[key].isin(ids)]
        if mine.empty:
            continue
        latest = mine.groupby(key, sort=True)["created_at"].max()
        at = pd.DataFrame({key: latest.index.to_numpy(), "event_timestamp": latest.to_numpy()})
        out[name] = values_as_of(view, mine, at)
    return out
