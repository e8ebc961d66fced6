"""Feature tables computed from validated orders, point-in-time safe by construction.

Every table is an hourly snapshot: the row stamped ``T`` aggregates only orders whose relevant
event (creation, pickup, delivery) happened strictly before ``T``. A delivery time is known when
the order is delivered, a preparation time when it is picked up, so a training row for an order
created at ``C`` can only see values from rows stamped ``T <= C``: nothing from its own future.
The features every order event changes (the last hour's counts, the weather) are live views:
:mod:`relay.features.live`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd

from relay.features.catalog import names, view_features

HOUR = pd.Timedelta(hours=1)
WINDOW_HOURS = 24

# The columns of each table (besides its key and timestamp), as the catalog declares them.
COURIER_FEATURES = names(view_features("courier_stats"))
MERCHANT_FEATURES = names(view_features("merchant_stats"))
ZONE_FEATURES = names(view_features("zone_stats"))


@dataclass(frozen=True)
class _Grid:
    """Hour buckets from ``origin``: bucket k holds events in [origin + k h, origin + (k+1) h)."""

    origin: pd.Timestamp
    n: int

    def bucket(self, ts: pd.Series) -> np.ndarray:
        # Not happened yet (NaT: an order not yet picked up or delivered): no bucket (-1).
        return ((ts - self.origin) // HOUR).fillna(-1).to_numpy(dtype=np.int64)

    def stamps(self) -> pd.DatetimeIndex:
        # Boundary j closes bucket j-1: it may use buckets k < j only.
        return pd.date_range(self.origin, periods=self.n + 1, freq="h")


def _counts(
    codes: np.ndarray,
    buckets: np.ndarray,
    n_ent: int,
    grid: _Grid,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """Dense (entity, boundary) cumulative sums: out[e, j] = sum over buckets k < j."""
    m = np.zeros((n_ent, grid.n + 1))
    ok = (buckets >= 0) & (buckets < grid.n)
    np.add.at(m, (codes[ok], buckets[ok] + 1), 1.0 if weights is None else weights[ok])
    return np.cumsum(m, axis=1)


def _window(cum: np.ndarray, hours: int) -> np.ndarray:
    out = cum.copy()
    out[:, hours:] -= cum[:, :-hours]
    return out


def _frame(
    key: str,
    ids: pd.Index,
    grid: _Grid,
    keep: np.ndarray,
    start: pd.Timestamp,
    end: pd.Timestamp,
    columns: dict[str, np.ndarray],
) -> pd.DataFrame:
    stamps = grid.stamps()
    in_range = np.asarray((stamps > start) & (stamps <= end))
    mask = keep & in_range[None, :]
    ent, j = np.nonzero(mask)
    out = pd.DataFrame({key: ids.to_numpy()[ent], "event_timestamp": stamps[j]})
    for name, values in columns.items():
        out[name] = values[ent, j]
    return out.reset_index(drop=True)


def compute_feature_tables(
    orders: pd.DataFrame, start: dt.datetime, end: dt.datetime
) -> dict[str, pd.DataFrame]:
    """Courier, merchant and zone snapshots stamped on each hour in ``(start, end]``.

    Args:
        orders: validated orders; include the day before ``start`` so that 24-hour windows at
            the start of the range are complete.
        start: exclusive lower bound of the snapshot times (UTC).
        end: inclusive upper bound of the snapshot times (UTC).

    Returns:
        ``{"courier_stats": …, "merchant_stats": …, "zone_stats": …}``, each with its entity
        key, ``event_timestamp`` and features. An entity gets a row at an hour only if it was
        active in the 24 hours before it.
    """
    start_ts, end_ts = pd.Timestamp(start), pd.Timestamp(end)
    origin = min(orders["created_at"].min().floor("h"), start_ts - WINDOW_HOURS * HOUR)
    grid = _Grid(origin, int(np.ceil((end_ts - origin) / HOUR)))
    created = grid.bucket(orders["created_at"])
    picked = grid.bucket(orders["picked_up_at"])
    delivered = grid.bucket(orders["delivered_at"])
    minutes = orders["delivery_minutes"].to_numpy(dtype=float)

    with np.errstate(invalid="ignore", divide="ignore"):
        # Couriers: deliveries and mean delivery time over 24 h.
        c_codes, c_ids = pd.factorize(orders["courier_id"], sort=True)
        c_n = len(c_ids)
        c_del = _window(_counts(c_codes, delivered, c_n, grid), WINDOW_HOURS)
        c_sum = _window(_counts(c_codes, delivered, c_n, grid, minutes), WINDOW_HOURS)
        c_cum_created = _counts(c_codes, created, c_n, grid)
        courier = _frame(
            "courier_id",
            pd.Index(c_ids),
            grid,
            _window(c_cum_created, WINDOW_HOURS) > 0,
            start_ts,
            end_ts,
            {
                "courier_deliveries_24h": c_del.astype(np.int64),
                "courier_mean_delivery_24h": np.where(c_del > 0, c_sum / c_del, np.nan),
            },
        )

        # Merchants: mean preparation time of orders picked up in 24 h, orders in 24 h.
        m_codes, m_ids = pd.factorize(orders["merchant_id"], sort=True)
        m_n = len(m_ids)
        prep = orders["prep_minutes"].to_numpy(dtype=float)
        # A pickup whose preparation time was not reported (events without prep_minutes)
        # is left out of the mean rather than making it NaN.
        reported = np.where(np.isnan(prep), -1, picked)
        m_pick = _window(_counts(m_codes, reported, m_n, grid), WINDOW_HOURS)
        m_prep = _window(_counts(m_codes, reported, m_n, grid, prep), WINDOW_HOURS)
        m_cum_created = _counts(m_codes, created, m_n, grid)
        m_24 = _window(m_cum_created, WINDOW_HOURS)
        merchant = _frame(
            "merchant_id",
            pd.Index(m_ids),
            grid,
            m_24 > 0,
            start_ts,
            end_ts,
            {
                "merchant_mean_prep_24h": np.where(m_pick > 0, m_prep / m_pick, np.nan),
                "merchant_orders_24h": m_24.astype(np.int64),
            },
        )

        # Zones: mean delivery time over 24 h.
        z_codes, z_ids = pd.factorize(orders["zone_id"], sort=True)
        z_n = len(z_ids)
        z_cum_created = _counts(z_codes, created, z_n, grid)
        z_del = _window(_counts(z_codes, delivered, z_n, grid), WINDOW_HOURS)
        z_sum = _window(_counts(z_codes, delivered, z_n, grid, minutes), WINDOW_HOURS)
        zone = _frame(
            "zone_id",
            pd.Index(z_ids),
            grid,
            _window(z_cum_created, WINDOW_HOURS) > 0,
            start_ts,
            end_ts,
            {
                "zone_mean_delivery_24h": np.where(z_del > 0, z_sum / z_del, np.nan),
            },
        )
    return {"courier_stats": courier, "merchant_stats": merchant, "zone_stats": zone}
