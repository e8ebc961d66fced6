"""Reading the serving log back: predictions, the actual delivery times, and live accuracy.

:func:`read_served` is the one reader of "what was served in a time range, with the actuals that
have landed", and :func:`quality_by_version` the one place that turns it into MAE per model
version; the rollout controller (:func:`relay.rollout.observe.labelled_quality`) and the drift job
(:func:`relay.monitor.window.read_window`) both call them.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Literal

import pandas as pd

from relay.clock import as_utc, utcnow
from relay.data.lake import ACTUALS, Lake
from relay.errors import PartitionNotFound
from relay.serve.log_schema import ACTUAL_COLUMNS, FEATURE_PREFIX
from relay.serve.log_store import day_bounds, read_log

PREDICTION = "eta_minutes"
ACTUAL = "actual_minutes"


@dataclass(frozen=True)
class VersionQuality:
    """Accuracy of one model version's predictions that have an actual delivery time.

    Attributes:
        version: the model version (``"all"`` for every version together).
        n: labelled predictions.
        mae: mean absolute error, minutes.
        bias: mean error (prediction - actual), minutes; positive: ETAs run late.
        mae_se: standard error of ``mae`` (sd of the absolute errors over √n); None below two
            labelled predictions.
    """

    version: str
    n: int
    mae: float
    bias: float
    mae_se: float | None = None


def read_serving_log(lake: Lake, start: dt.date, end: dt.date, dedupe: bool = True) -> pd.DataFrame:
    """The serving log of the UTC days ``start`` to ``end`` inclusive, oldest request first.

    Args:
        lake: the lake the writer wrote to.
        start: first day (UTC date of ``requested_at``).
        end: last day, inclusive.
        dedupe: drop rows whose (``request_id``, ``order_id``) was already seen (a retried
            write); one request may carry many orders.

    Raises:
        PartitionNotFound: no prediction was logged in the range.
    """
    return read_log_between(lake, *day_bounds(start, end), dedupe=dedupe)


def read_log_between(
    lake: Lake, start: dt.datetime, end: dt.datetime, dedupe: bool = True
) -> pd.DataFrame:
    """The serving log with ``start <= requested_at < end``, oldest request first; only the
    hour partitions of the range are opened (:func:`relay.serve.log_store.scan_log`).

    Args:
        lake: the lake the writer wrote to.
        start: first instant; naive means UTC.
        end: end, exclusive.
        dedupe: as for :func:`read_serving_log`.

    Raises:
        PartitionNotFound: no serving-log file in the range's hours.
    """
    return read_log(lake, start, end, dedupe)


def read_actuals(lake: Lake, start: dt.date, end: dt.date) -> pd.DataFrame:
    """Actual delivery minutes (``order_id``, ``delivered_at``, ``actual_minutes``) landed
    in the ``serving/actuals`` partitions ``start`` to ``end`` inclusive."""
    return lake.read_all(ACTUALS, start, end)


def features_of(log_df: pd.DataFrame) -> pd.DataFrame:
    """The feature columns of a serving log frame, under their feature names (prefix removed)."""
    cols = [c for c in log_df.columns if c.startswith(FEATURE_PREFIX)]
    return log_df[cols].rename(columns=lambda c: c.removeprefix(FEATURE_PREFIX))


def join_actuals(
    log_df: pd.DataFrame,
    actuals_df: pd.DataFrame,
    how: Literal["inner", "left"] = "inner",
) -> pd.DataFrame:
    """Predictions joined with the actual delivery times that have landed, on ``order_id``.

    Adds ``delivered_at``, ``actual_minutes`` and ``error_minutes`` (prediction minus actual:
    positive means the ETA ran late). When an order has several actuals, the latest
    ``delivered_at`` wins, so a prediction never appears twice.

    Args:
        log_df: rows of the serving log (:func:`read_serving_log`).
        actuals_df: ``order_id``, ``delivered_at``, ``actual_minutes``.
        how: ``"inner"`` keeps only predictions with an actual; ``"left"`` keeps every
            prediction, with nulls where the actual has not landed yet.

    Raises:
        KeyError: a frame lacks a column the join needs.
    """
    missing = [c for c in ACTUAL_COLUMNS if c not in actuals_df.columns]
    if missing or "order_id" not in log_df.columns:
        raise KeyError(
            f"join_actuals needs order_id in the log and {list(ACTUAL_COLUMNS)} in the actuals; "
            f"actuals lack {missing}"
        )
    actuals = (
        actuals_df[list(ACTUAL_COLUMNS)]
        .sort_values("delivered_at", kind="stable")
        .drop_duplicates("order_id", keep="last")
        .astype({"order_id": str})
    )
    # A lookup in the (unique) actuals' index, not DataFrame.merge: on a day of log (1.7 M
    # rows) merge's key validation and copies took seconds.
    keys = log_df["order_id"].astype(str)
    by_order = actuals.set_index("order_id")
    found = by_order.reindex(keys.to_numpy())
    out = log_df.copy(deep=False)
    out["order_id"] = keys
    out["delivered_at"] = found["delivered_at"].to_numpy()
    out[ACTUAL] = pd.to_numeric(found[ACTUAL], errors="coerce").to_numpy(dtype=float)
    if how == "inner":
        out = out.loc[by_order.index.get_indexer(pd.Index(keys)) >= 0]
    out = out if isinstance(out.index, pd.RangeIndex) else out.reset_index(drop=True)
    out["error_minutes"] = out[PREDICTION] - out[ACTUAL]
    return out


def read_served(lake: Lake, start: dt.datetime, end: dt.datetime | None = None) -> pd.DataFrame:
    """Every prediction served with ``start <= requested_at < end``, left-joined with the
    actuals landed in the partitions of those days (``actual_minutes`` null where none yet).

    Args:
        lake: the lake the serving log and the actuals are in.
        start: first instant; naive means UTC.
        end: end, exclusive; None: everything logged up to now.

    Returns:
        :func:`join_actuals`'s columns; no row when nothing was served in the range.

    Raises:
        PartitionNotFound: no serving log partition holds an hour of the range.
    """
    start = as_utc(start)
    # None: up to the end of today, as the day-partitioned reader always read.
    last = as_utc(end) if end is not None else day_bounds(utcnow().date(), utcnow().date())[1]
    served = read_log_between(lake, start, last)
    try:
        actuals = read_actuals(lake, start.date(), last.date())
    except PartitionNotFound:
        actuals = pd.DataFrame(columns=list(ACTUAL_COLUMNS))
    return join_actuals(served, actuals, how="left")


def labelled(served: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``served`` that have both a prediction and an actual delivery time."""
    if ACTUAL not in served.columns:
        return served.iloc[0:0]
    return served.loc[served[ACTUAL].notna() & served[PREDICTION].notna()]


def quality_by_version(
    served: pd.DataFrame,
) -> tuple[dict[str, VersionQuality], VersionQuality | None]:
    """MAE and bias per model version, and of all versions together, on the labelled rows.

    Args:
        served: serving-log rows (``model_version``, ``eta_minutes``), with ``actual_minutes``
            where an actual landed (:func:`read_served`).

    Returns:
        Per version (sorted by version), and overall; ``({}, None)`` without a labelled row.
    """
    rows = labelled(served)
    if rows.empty:
        return {}, None
    err = rows[PREDICTION].astype(float) - rows[ACTUAL].astype(float)
    frame = pd.DataFrame({"version": rows["model_version"].astype(str), "err": err})
    live = {
        str(version): _quality(str(version), g["err"])
        for version, g in frame.groupby("version", sort=True)
    }
    return live, _quality("all", frame["err"])


def _quality(version: str, err: pd.Series) -> VersionQuality:
    n = len(err)
    se = math.sqrt(err.abs().var(ddof=1) / n) if n > 1 else math.nan
    return VersionQuality(
        version, n, float(err.abs().mean()), float(err.mean()), se if math.isfinite(se) else None
    )
