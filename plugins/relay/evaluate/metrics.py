"""Offline evaluation of ETA models: overall and per-slice metrics.

:func:`compute_metrics` scores one set of predictions; :func:`slice_metrics` scores it per value
of each slice (zone, hour band, weather); :func:`evaluate` bundles both in an
:class:`Evaluation` for one model version, which the gate (:mod:`relay.evaluate.gate`) compares
with the champion's, and :mod:`relay.evaluate.report` renders as a page a person can open.

Errors are ``prediction - actual`` in minutes: a positive bias means the model promises later
deliveries than happen.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from relay.data.schema import LABEL

WITHIN_MINUTES = 5.0
DEFAULT_MIN_SLICE_ROWS = 50
MISSING = "missing"

# (band, first hour, last hour), inclusive; together they cover 0-23 exactly once.
HOUR_BANDS: tuple[tuple[str, int, int], ...] = (
    ("night", 0, 6),
    ("morning", 7, 10),
    ("lunch", 11, 14),
    ("afternoon", 15, 16),
    ("dinner", 17, 21),
    ("late", 22, 23),
)

# A slice is a column name, or a function of the evaluation frame giving one key per row.
SliceSpec = str | Callable[[pd.DataFrame], "pd.Series[Any]"]


@dataclass(frozen=True)
class Metrics:
    """Error metrics of one set of predictions, in minutes.

    Attributes:
        n: number of orders.
        mae: mean absolute error.
        rmse: root mean squared error.
        p90_abs_error: 90th percentile of the absolute error.
        within_5_min: share of orders predicted within ±5 minutes (inclusive).
        bias: mean error (prediction - actual); positive means predictions run late.
        too_small: set on a slice with fewer rows than the evaluation's ``min_rows``; its
            numbers are reported but too noisy to judge.
    """

    n: int
    mae: float
    rmse: float
    p90_abs_error: float
    within_5_min: float
    bias: float
    too_small: bool = False


@dataclass(frozen=True)
class Evaluation:
    """Overall and per-slice metrics of one model version on one evaluation set.

    Attributes:
        model: model name, e.g. ``eta_mlp``.
        version: the registry's version id, or None for an unregistered model.
        overall: metrics over every order.
        slices: slice name -> slice value -> metrics, e.g. ``slices["zone_id"]["Z007"]``.
        min_slice_rows: the row count below which a slice was flagged ``too_small``.
    """

    model: str
    version: str | None
    overall: Metrics
    slices: dict[str, dict[str, Metrics]] = field(default_factory=dict)
    min_slice_rows: int = DEFAULT_MIN_SLICE_ROWS

    @property
    def label(self) -> str:
        """``model`` or ``model@version``, for tables and messages."""
        return self.model if self.version is None else f"{self.model}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of built-in types, ready for ``json.dumps``."""
        return {
            "model": self.model,
            "version": self.version,
            "min_slice_rows": self.min_slice_rows,
            "overall": asdict(self.overall),
            "slices": {
                name: {value: asdict(m) for value, m in values.items()}
                for name, values in self.slices.items()
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Evaluation:
        """Inverse of :meth:`to_dict` (e.g. the champion's evaluation read from the registry)."""
        return cls(
            model=str(data["model"]),
            version=None if data.get("version") is None else str(data["version"]),
            overall=Metrics(**data["overall"]),
            slices={
                name: {value: Metrics(**m) for value, m in values.items()}
                for name, values in data.get("slices", {}).items()
            },
            min_slice_rows=int(data.get("min_slice_rows", DEFAULT_MIN_SLICE_ROWS)),
        )


def compute_metrics(y_true: ArrayLike, y_pred: ArrayLike) -> Metrics:
    """Score predictions against actual delivery minutes.

    Args:
        y_true: actual delivery minutes.
        y_pred: predicted delivery minutes, same length and order.

    Returns:
        The metrics; ``too_small`` is left False (only slices are flagged).

    Raises:
        ValueError: the arrays are empty, of different lengths, or hold NaN or inf.
    """
    true = as_1d(y_true, "y_true")
    pred = as_1d(y_pred, "y_pred")
    if len(true) != len(pred):
        raise ValueError(f"y_true has {len(true)} values but y_pred has {len(pred)}")
    if len(true) == 0:
        raise ValueError("no orders to evaluate: y_true and y_pred are empty")
    err = pred - true
    abs_err = np.abs(err)
    return Metrics(
        n=len(true),
        mae=float(abs_err.mean()),
        rmse=float(np.sqrt(np.mean(err**2))),
        p90_abs_error=float(np.quantile(abs_err, 0.9)),
        within_5_min=float(np.mean(abs_err <= WITHIN_MINUTES)),
        bias=float(err.mean()),
    )


def hour_band(hour: int) -> str:
    """The named part of the day an hour (0-23) falls in, e.g. ``13 -> "lunch"``."""
    for name, first, last in HOUR_BANDS:
        if first <= hour <= last:
            return name
    raise ValueError(f"hour must be an integer in 0..23, got {hour!r}")


def hour_bands(hours: ArrayLike) -> pd.Series[Any]:
    """Vectorised :func:`hour_band`, as an ordered categorical (night first, late last)."""
    h = np.asarray(hours, dtype=float).ravel()
    bad = ~np.isfinite(h) | (h < 0) | (h > 23) | (h != np.floor(h))
    if bad.any():
        raise ValueError(f"hours must be integers in 0..23, got e.g. {h[bad][:5].tolist()}")
    names = np.array([hour_band(i) for i in range(24)], dtype=object)
    order = [name for name, _, _ in HOUR_BANDS]
    return pd.Series(pd.Categorical(names[h.astype(int)], categories=order, ordered=True))


def _hour_band_slice(frame: pd.DataFrame) -> pd.Series[Any]:
    return hour_bands(_column(frame, "hour", "hour_band"))


# Slice name -> column or derivation; the evaluation frame comes from the feature store, where
# the weather feature is the zone's ``zone_weather``.
DEFAULT_SLICES: Mapping[str, SliceSpec] = {
    "zone_id": "zone_id",
    "hour_band": _hour_band_slice,
    "weather": "zone_weather",
}


def slice_metrics(
    frame: pd.DataFrame,
    y_pred: ArrayLike,
    slices: Mapping[str, SliceSpec] | None = None,
    *,
    y_true: ArrayLike | None = None,
    label: str = LABEL,
    min_rows: int = DEFAULT_MIN_SLICE_ROWS,
) -> dict[str, dict[str, Metrics]]:
    """Metrics per value of each slice.

    Args:
        frame: the evaluation frame, one row per order, in the order of ``y_pred``.
        y_pred: predicted delivery minutes.
        slices: slice name -> column name or function of ``frame``; :data:`DEFAULT_SLICES`
            (zone, hour band, weather) by default.
        y_true: actual minutes; ``frame[label]`` by default.
        label: the label column, used when ``y_true`` is None.
        min_rows: slice values with fewer rows are kept but flagged ``too_small``.

    Returns:
        Slice name -> slice value (as a string; ``"missing"`` for nulls) -> metrics.

    Raises:
        ValueError: lengths differ, or a slice's column is missing from ``frame``.
    """
    pred = as_1d(y_pred, "y_pred")
    true = _truth(frame, y_true, label)
    if not len(frame) == len(pred) == len(true):
        raise ValueError(
            f"frame has {len(frame)} rows, y_pred {len(pred)} and y_true {len(true)}; "
            "they must be aligned row for row"
        )
    out: dict[str, dict[str, Metrics]] = {}
    for name, masks in _slice_masks(frame, slices):
        per_value: dict[str, Metrics] = {}
        for value, mask in masks:
            m = compute_metrics(true[mask], pred[mask])
            per_value[value] = dataclasses.replace(m, too_small=m.n < min_rows)
        out[name] = per_value
    return out


def _slice_masks(
    frame: pd.DataFrame, slices: Mapping[str, SliceSpec] | None
) -> Iterator[tuple[str, list[tuple[str, np.ndarray]]]]:
    """Each slice's name with (value key, row mask) per value, in slice-value order."""
    for name, spec in (DEFAULT_SLICES if slices is None else slices).items():
        keys = _column(frame, spec, name) if isinstance(spec, str) else spec(frame)
        if len(keys) != len(frame):
            raise ValueError(f"slice {name!r} gave {len(keys)} keys for {len(frame)} rows")
        # sort=True keeps categorical order (hour bands) and sorts everything else.
        codes, uniques = pd.factorize(keys, sort=True, use_na_sentinel=False)
        yield name, [(_key(value), codes == code) for code, value in enumerate(uniques)]


def paired_slice_se(
    frame: pd.DataFrame,
    y_true: ArrayLike,
    ours: ArrayLike,
    theirs: ArrayLike,
    slices: Mapping[str, SliceSpec] | None = None,
) -> dict[str, dict[str, float]]:
    """Standard error of the MAE difference between two models on the same rows, per slice value.

    Both models predict the same orders, so the difference of their MAEs on a slice is the mean
    of the paired differences ``|ours - true| - |theirs - true|``; its standard error (sample
    standard deviation / sqrt(n)) says how much of a slice's regression is noise. Pairing
    cancels the orders' own difficulty, which makes the test far sharper than comparing two
    independent MAEs. Slice values with fewer than two rows get ``inf``.

    Returns:
        Slice name -> slice value -> standard error in minutes (keys as in :func:`slice_metrics`).
    """
    true = as_1d(y_true, "y_true")
    diff = np.abs(as_1d(ours, "ours") - true) - np.abs(as_1d(theirs, "theirs") - true)
    if not len(frame) == len(diff):
        raise ValueError(f"frame has {len(frame)} rows, predictions {len(diff)}")
    out: dict[str, dict[str, float]] = {}
    for name, masks in _slice_masks(frame, slices):
        per_value: dict[str, float] = {}
        for value, mask in masks:
            d = diff[mask]
            per_value[value] = (
                float(np.std(d, ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("inf")
            )
        out[name] = per_value
    return out


def evaluate(
    model: str,
    version: str | None,
    frame: pd.DataFrame,
    y_pred: ArrayLike,
    slices: Mapping[str, SliceSpec] | None = None,
    *,
    y_true: ArrayLike | None = None,
    min_rows: int = DEFAULT_MIN_SLICE_ROWS,
) -> Evaluation:
    """Overall and per-slice metrics of one model version; arguments as in :func:`slice_metrics`
    (the actual minutes are ``y_true``, else the frame's label column)."""
    true = _truth(frame, y_true, LABEL)
    return Evaluation(
        model=model,
        version=version,
        overall=compute_metrics(true, y_pred),
        slices=slice_metrics(frame, y_pred, slices, y_true=true, min_rows=min_rows),
        min_slice_rows=min_rows,
    )


def as_1d(values: ArrayLike, name: str) -> np.ndarray:
    """``values`` as a flat float array.

    Raises:
        ValueError: a NaN or infinite value (``name`` says which input held it).
    """
    arr = np.asarray(values, dtype=float).ravel()
    if not np.isfinite(arr).all():
        # A NaN prediction would silently turn every metric into NaN and pass no gate.
        raise ValueError(f"{name} holds {int((~np.isfinite(arr)).sum())} NaN or inf values")
    return arr


def _truth(frame: pd.DataFrame, y_true: ArrayLike | None, label: str) -> np.ndarray:
    return as_1d(_column(frame, label, "y_true") if y_true is None else y_true, "y_true")


def _column(frame: pd.DataFrame, column: str, what: str) -> pd.Series[Any]:
    if column not in frame.columns:
        raise ValueError(
            f"{what} needs column {column!r}, which the evaluation frame lacks "
            f"(it has {sorted(map(str, frame.columns))})"
        )
    return frame[column].reset_index(drop=True)


def _key(value: Any) -> str:
    if not isinstance(value, str) and bool(pd.isna(value)):
        return MISSING
    return str(value)
