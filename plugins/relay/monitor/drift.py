"""What the drift job measures, and the population stability index it measures with.

:class:`DriftResult` is one monitoring window's measurements (drift per feature, drift of the
predictions, live accuracy per model version) and round-trips through ``summary.json``.
:func:`psi` is computed here, on ten quantile bins of the reference, because the field's
thresholds are PSI (0.1 moderate, 0.2 high). Building the result is
:func:`relay.monitor.report.build_report`; reading a window of the serving log for it is
:func:`relay.monitor.window.monitor_window`; deciding what to do is
:func:`relay.monitor.rules.decide`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from relay.clock import asdict_iso
from relay.errors import RelayError
from relay.serve.log_read import VersionQuality

PSI_BINS = 10
PSI_EPS = 1e-4

ArrayLikeOrSeries = pd.Series | np.ndarray | Sequence[Any]


class MonitoringError(RelayError):
    """The drift job could not run on the inputs it was given."""


class NoServingTraffic(MonitoringError):
    """The serving log holds no prediction in the window."""


class ReferenceUnusable(MonitoringError):
    """The reference data cannot be read or lacks the monitored features."""


# ---------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class FeatureDrift:
    """Drift of one feature between the reference and the window.

    Attributes:
        name: the feature.
        kind: ``numerical`` or ``categorical``.
        method: Evidently's drift method, e.g. ``Wasserstein distance (normed)``; ``missing``
            when one side had no value at all.
        score: Evidently's drift score (for ``missing``: the share of missing values).
        threshold: Evidently's threshold for that method.
        drifted: Evidently's verdict.
        psi: population stability index against the reference's quantile bins (categories
            for a categorical feature), nulls left out (:func:`psi`); None when one side had
            no value at all.
        current_missing: share of the window's (sampled) rows where the feature was null.
        reference_missing: the same share in the (sampled) reference.
    """

    name: str
    kind: Literal["numerical", "categorical"]
    method: str
    score: float
    threshold: float
    drifted: bool
    psi: float | None
    current_missing: float = 0.0
    reference_missing: float = 0.0


@dataclass(frozen=True)
class PredictionDrift:
    """Drift of the served predictions.

    Attributes:
        reference: what the predictions were compared with: ``predictions`` (the model's
            predictions on the reference) or ``label`` (the reference's delivery times, when no
            predictions were available; predictions are narrower than labels, so read the
            numbers with care).
        method: Evidently's drift method.
        score: Evidently's drift score.
        threshold: Evidently's threshold.
        drifted: Evidently's verdict.
        psi: PSI of the predictions against the reference's quantile bins.
        reference_mean: mean of the reference column (minutes).
        current_mean: mean served prediction (minutes).
    """

    reference: Literal["predictions", "label"]
    method: str
    score: float
    threshold: float
    drifted: bool
    psi: float
    reference_mean: float
    current_mean: float


@dataclass(frozen=True)
class DriftResult:
    """What the drift job measured in one window; JSON round-trips with :meth:`to_dict`.

    Attributes:
        run_key: the report folder's name, from the window's end (e.g. ``20261121T1400Z``).
        window_start: first instant of the window (UTC), or None for an ad-hoc frame.
        window_end: end of the window, exclusive.
        rows: predictions served in the window (before sampling).
        labelled_rows: those with an actual delivery time.
        reference_rows: rows of the reference (before sampling).
        features: drift per monitored feature, in monitoring order.
        drifted_share: share of ``features`` that Evidently found drifted.
        prediction: drift of the predictions, or None when neither predictions nor a label
            were available on the reference side.
        live_mae: accuracy per model version that served labelled predictions.
        overall: accuracy of every labelled prediction, or None without labels.
        report_path: the drift report (HTML).
        quality_report_path: the regression-quality report (HTML), or None without labels.
        summary_path: this result as JSON.
        reference_uri: where the reference came from, when read from a URI.
        skipped_features: monitored features absent from the reference or the window.
        sampled_rows: rows of the window used for drift (at most ``max_rows``).
    """

    run_key: str
    window_start: dt.datetime | None
    window_end: dt.datetime | None
    rows: int
    labelled_rows: int
    reference_rows: int
    features: list[FeatureDrift]
    drifted_share: float
    prediction: PredictionDrift | None
    live_mae: dict[str, VersionQuality] = field(default_factory=dict)
    overall: VersionQuality | None = None
    report_path: str = ""
    quality_report_path: str | None = None
    summary_path: str = ""
    reference_uri: str | None = None
    skipped_features: list[str] = field(default_factory=list)
    sampled_rows: int = 0

    @property
    def drifted_features(self) -> list[str]:
        """Names of the features Evidently found drifted."""
        return [f.name for f in self.features if f.drifted]

    def feature(self, name: str) -> FeatureDrift:
        """The drift of one feature.

        Raises:
            KeyError: the feature was not monitored.
        """
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(f"{name!r} was not monitored; monitored: {[f.name for f in self.features]}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of built-in types, ready for ``json.dumps`` (times as ISO strings)."""
        return asdict_iso(self, "window_start", "window_end")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DriftResult:
        """Inverse of :meth:`to_dict` (e.g. ``summary.json`` read back by the deciding task)."""
        d = dict(data)
        for key in ("window_start", "window_end"):
            d[key] = None if d.get(key) is None else dt.datetime.fromisoformat(d[key])
        d["features"] = [FeatureDrift(**f) for f in d.get("features", [])]
        d["prediction"] = (
            None if d.get("prediction") is None else PredictionDrift(**d["prediction"])
        )
        d["live_mae"] = {k: VersionQuality(**v) for k, v in d.get("live_mae", {}).items()}
        d["overall"] = None if d.get("overall") is None else VersionQuality(**d["overall"])
        return cls(**d)


def psi(
    reference: ArrayLikeOrSeries,
    current: ArrayLikeOrSeries,
    *,
    categorical: bool = False,
    bins: int = PSI_BINS,
    eps: float = PSI_EPS,
) -> float:
    """Population stability index of ``current`` against ``reference``.

    ``sum((c - r) * ln(c / r))`` over bins, each share floored at ``eps``. Numeric values fall
    in ``bins`` quantile bins of the reference (open at both ends, merged where quantiles
    coincide); categorical values are their own bins, a category the reference never had
    included. Missing values (None, NaN) are left out on both sides: a change in how often a
    feature is missing is a data-quality matter (``FeatureDrift.current_missing``), and with
    the ``eps`` floor a few percent of nulls against none would weigh like a real shift.

    Args:
        reference: the reference values.
        current: the values to compare.
        categorical: compare as categories rather than numbers.
        bins: quantile bins of the reference (numeric only).
        eps: floor of a bin's share, so an empty bin does not give an infinite PSI.

    Raises:
        ValueError: one side has no value that is not missing.
    """
    ref = _present(reference, categorical)
    cur = _present(current, categorical)
    if ref.size == 0 or cur.size == 0:
        raise ValueError(
            f"PSI needs values on both sides: {ref.size} reference, {cur.size} current"
        )
    if categorical:
        cats, codes = np.unique(np.concatenate([ref, cur]), return_inverse=True)
        r_share = np.bincount(codes[: ref.size], minlength=len(cats)) / ref.size
        c_share = np.bincount(codes[ref.size :], minlength=len(cats)) / cur.size
    else:
        inner = np.linspace(0, 1, bins + 1)[1:-1]
        edges = np.unique(np.quantile(ref, inner))
        k = len(edges) + 1
        r_share = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=k) / ref.size
        c_share = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=k) / cur.size
    r = np.clip(r_share, eps, None)
    c = np.clip(c_share, eps, None)
    return float(np.sum((c - r) * np.log(c / r)))


def _present(values: ArrayLikeOrSeries, categorical: bool) -> np.ndarray:
    """The values that are not missing: strings for categories, float64 for numbers."""
    series = pd.Series(np.asarray(values, dtype=object) if categorical else values)
    if categorical:
        return series[series.notna()].astype(str).to_numpy(dtype=str)
    numbers = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)
    return numbers[~np.isnan(numbers)]
