"""Drift and live quality of the served model: an Evidently report and a typed summary.

:func:`monitor_window` is the front door: it reads the serving log of the ``window_hours``
before ``end`` (with the actual delivery times that have landed, left-joined on ``order_id``),
reads the reference (the training set the production model learned from) and calls
:func:`build_report`, which

* measures drift per feature with Evidently's ``DataDriftPreset`` (normalised Wasserstein
  distance for numeric features, Jensen-Shannon for categorical ones, threshold 0.1) and with
  the PSI, computed here on ten quantile bins of the reference, because the field's thresholds
  are PSI (0.1 moderate, 0.2 high);
* measures prediction drift: the served ``eta_minutes`` against the reference's predictions
  (the reference's own ``eta_minutes`` column, or ``predict(reference)`` when a predictor is
  given), else against the reference's label distribution;
* scores the predictions that have an actual: MAE per model version, and Evidently's
  ``RegressionPreset`` on them;
* writes ``{reports_dir}/drift/<run-key>/report.html`` (drift), ``quality.html`` (when labels
  exist) and ``summary.json`` (:meth:`DriftResult.to_dict`).

The run key comes from the window's end, so running the same interval again overwrites the same
folder. Frames above ``max_rows`` are sampled (seeded), so a run takes seconds. Nothing here
decides anything: :func:`relay.monitor.rules.decide` turns a :class:`DriftResult` into a verdict.

Evidently takes ~9 s to import: it is imported inside the functions that use it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from relay.errors import PartitionNotFound, RelayError
from relay.features import catalog
from relay.serve.log import features_of, join_actuals, read_actuals, read_serving_log
from relay.settings import Settings, get_settings

if TYPE_CHECKING:  # pragma: no cover, typing only
    from relay.data.lake import Lake
    from relay.registry import ModelVersion

log = logging.getLogger(__name__)

#: Every input the model reads, and the ones monitored by default (the feature catalog says
#: which are left out, and why).
MODEL_FEATURES: tuple[str, ...] = catalog.model_inputs()
MONITORED_FEATURES: tuple[str, ...] = catalog.monitored()
#: Features compared as categories (the others as numbers).
CATEGORICAL_FEATURES: frozenset[str] = catalog.categorical()

PREDICTION = "eta_minutes"
ACTUAL = "actual_minutes"
LABEL = catalog.LABEL
PSI_BINS = 10
PSI_EPS = 1e-4
DEFAULT_SEED = 0
REPORT_FILE = "report.html"
QUALITY_FILE = "quality.html"
SUMMARY_FILE = "summary.json"

Predictor = Callable[[pd.DataFrame], Any]
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
class VersionQuality:
    """Accuracy of one model version's predictions that have an actual delivery time.

    Attributes:
        version: the model version (``"all"`` for every version together).
        n: labelled predictions.
        mae: mean absolute error, minutes.
        bias: mean error (prediction - actual), minutes; positive: ETAs run late.
    """

    version: str
    n: int
    mae: float
    bias: float


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
        out = asdict(self)
        for key in ("window_start", "window_end"):
            value = getattr(self, key)
            out[key] = None if value is None else value.isoformat()
        return out

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

    @classmethod
    def load(cls, path: str | Path) -> DriftResult:
        """Read a ``summary.json`` written by :func:`build_report`."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


# ---------------------------------------------------------------------------------------------
# PSI


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


# ---------------------------------------------------------------------------------------------
# The report


def build_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    out_dir: str | Path,
    *,
    run_key: str,
    features: Sequence[str] | None = None,
    predict: Predictor | None = None,
    max_rows: int = 20_000,
    seed: int = DEFAULT_SEED,
    drift_share: float = 0.3,
    window: tuple[dt.datetime, dt.datetime] | None = None,
    reference_uri: str | None = None,
) -> DriftResult:
    """Measure drift and live quality of ``current`` against ``reference`` and write reports.

    Args:
        reference: the training set (feature columns by name, ``delivery_minutes``) or any
            frame with the feature columns; an ``eta_minutes`` column is taken as the model's
            predictions on it.
        current: serving-log rows (:func:`relay.serve.log.read_serving_log`: ``f_<feature>``
            columns, ``model_version``, ``eta_minutes``), optionally left-joined with actuals
            (``actual_minutes``; null where none landed yet).
        out_dir: folder for ``report.html``, ``quality.html`` and ``summary.json``; created.
        run_key: the run's name, recorded in the result.
        features: features to monitor; :data:`MONITORED_FEATURES` by default. Those missing
            from either side are skipped and listed in ``skipped_features``.
        predict: the production model's predictor (e.g. ``ModelBundle.predict``), used to score
            the sampled reference when it has no ``eta_minutes`` column.
        max_rows: at most this many rows of each side go into the drift report (seeded sample).
        seed: the sample's seed.
        drift_share: the drifted share the report's headline and test judge by (the
            monitoring setting ``drift_share_threshold``; Evidently's default is 0.5).
        window: the window's (start, end), recorded in the result.
        reference_uri: where the reference came from, recorded in the result.

    Returns:
        The measurements and the paths written.

    Raises:
        NoServingTraffic: ``current`` is empty.
        ReferenceUnusable: the reference is empty or has none of the monitored features.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    if current.empty:
        raise NoServingTraffic(f"run {run_key}: no predictions to compare with the reference")
    if reference.empty:
        raise ReferenceUnusable(f"run {run_key}: the reference {reference_uri or ''} is empty")
    reference = reference.reset_index(drop=True)
    current = current.reset_index(drop=True)
    cur_features = features_of(current) if _has_prefixed(current) else current
    wanted = list(MONITORED_FEATURES if features is None else features)
    monitored = [f for f in wanted if f in reference.columns and f in cur_features.columns]
    skipped = [f for f in wanted if f not in monitored]
    if not monitored:
        raise ReferenceUnusable(
            f"run {run_key}: none of the monitored features {wanted} is in both the reference "
            f"{reference_uri or ''} (columns {sorted(map(str, reference.columns))}) and the "
            "serving log; is the reference a training set of this model?"
        )
    if skipped:
        log.warning(
            "run %s: features %s not in both reference and window: skipped", run_key, skipped
        )

    ref_s = _sample(reference, max_rows, seed)
    cur_idx = _sample(current, max_rows, seed).index
    kinds = {f: _kind(f, reference[f]) for f in monitored}
    ref_x = _prepare(ref_s, monitored, kinds)
    cur_x = _prepare(cur_features.loc[cur_idx], monitored, kinds)

    pred_ref, pred_source = _reference_predictions(ref_s, predict)
    has_pred = False
    if pred_ref is not None and PREDICTION in current.columns:
        ref_x[PREDICTION] = pred_ref
        cur_x[PREDICTION] = current.loc[cur_idx, PREDICTION].to_numpy(dtype=float)
        has_pred = bool(ref_x[PREDICTION].notna().any() and cur_x[PREDICTION].notna().any())

    # A column that is all null on one side cannot be compared (by Evidently or the PSI): it
    # counts as drifted, method "missing".
    comparable = [f for f in monitored if ref_x[f].notna().any() and cur_x[f].notna().any()]
    numerical = [f for f in comparable if kinds[f] == "numerical"]
    categorical = [f for f in comparable if kinds[f] == "categorical"]
    if has_pred:
        numerical.append(PREDICTION)
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)
    columns = [*comparable, *([PREDICTION] if has_pred else [])]
    metrics: list[Any] = []
    if comparable:
        metrics.append(DataDriftPreset(columns=comparable, drift_share=drift_share))
    if has_pred:
        metrics.append(ValueDrift(column=PREDICTION))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report_path = out / REPORT_FILE
    scores: dict[str, tuple[str, float, float, bool]] = {}
    if metrics:
        snapshot = Report(metrics, include_tests=True).run(
            Dataset.from_pandas(cur_x[columns], data_definition=definition),
            Dataset.from_pandas(ref_x[columns], data_definition=definition),
        )
        snapshot.save_html(str(report_path))
        scores = _value_drifts(snapshot.dict())

    feature_drift = []
    for f in monitored:
        cur_missing = float(cur_x[f].isna().mean())
        p = None
        if f in comparable:
            p = psi(ref_x[f], cur_x[f], categorical=kinds[f] == "categorical")
        if f in scores:
            method, score, threshold, drifted = scores[f]
        else:
            method, score, threshold, drifted = "missing", cur_missing, 0.0, True
        feature_drift.append(
            FeatureDrift(
                name=f,
                kind=kinds[f],
                method=method,
                score=score,
                threshold=threshold,
                drifted=drifted,
                psi=p,
                current_missing=cur_missing,
                reference_missing=float(ref_x[f].isna().mean()),
            )
        )
    prediction = None
    if has_pred and PREDICTION in scores:
        method, score, threshold, drifted = scores[PREDICTION]
        prediction = PredictionDrift(
            reference=pred_source,
            method=method,
            score=score,
            threshold=threshold,
            drifted=drifted,
            psi=psi(ref_x[PREDICTION], cur_x[PREDICTION]),
            reference_mean=float(np.nanmean(ref_x[PREDICTION])),
            current_mean=float(np.nanmean(cur_x[PREDICTION])),
        )

    labelled = _labelled(current)
    live, overall = _quality(labelled)
    quality_path = None
    (out / QUALITY_FILE).unlink(missing_ok=True)  # a re-run must not leave an older one
    if len(labelled):
        quality_path = str(_quality_report(_sample(labelled, max_rows, seed), out / QUALITY_FILE))

    result = DriftResult(
        run_key=run_key,
        window_start=None if window is None else window[0],
        window_end=None if window is None else window[1],
        rows=len(current),
        labelled_rows=len(labelled),
        reference_rows=len(reference),
        features=feature_drift,
        drifted_share=sum(f.drifted for f in feature_drift) / len(feature_drift),
        prediction=prediction,
        live_mae=live,
        overall=overall,
        report_path=str(report_path) if metrics else "",
        quality_report_path=quality_path,
        summary_path=str(out / SUMMARY_FILE),
        reference_uri=reference_uri,
        skipped_features=skipped,
        sampled_rows=len(cur_idx),
    )
    Path(result.summary_path).write_text(
        json.dumps(result.to_dict(), indent=2, sort_keys=True), encoding="utf-8"
    )
    return result


def _has_prefixed(frame: pd.DataFrame) -> bool:
    return any(str(c).startswith("f_") for c in frame.columns)


def _sample(frame: pd.DataFrame, max_rows: int, seed: int) -> pd.DataFrame:
    if len(frame) <= max_rows:
        return frame
    return frame.sample(n=max_rows, random_state=seed).sort_index()


def _kind(name: str, values: pd.Series) -> Literal["numerical", "categorical"]:
    if name in CATEGORICAL_FEATURES:
        return "categorical"
    numeric = pd.to_numeric(values.dropna(), errors="coerce")
    return "numerical" if numeric.notna().all() else "categorical"


def _prepare(
    frame: pd.DataFrame, features: Sequence[str], kinds: Mapping[str, str]
) -> pd.DataFrame:
    """Numbers as float64, categories as strings; nulls stay null."""
    out = pd.DataFrame(index=range(len(frame)))
    for f in features:
        col = frame[f].reset_index(drop=True)
        if kinds[f] == "categorical":
            out[f] = (
                col.astype(object)
                .where(col.notna(), None)
                .map(lambda v: v if v is None else str(v))
            )
        else:
            out[f] = pd.to_numeric(col, errors="coerce").astype("float64")
    return out


def _reference_predictions(
    reference: pd.DataFrame, predict: Predictor | None
) -> tuple[np.ndarray | None, Literal["predictions", "label"]]:
    if PREDICTION in reference.columns:
        return reference[PREDICTION].to_numpy(dtype=float), "predictions"
    if predict is not None:
        values = np.asarray(predict(reference.reset_index(drop=True)), dtype=float).ravel()
        if len(values) != len(reference):
            raise ValueError(f"predict gave {len(values)} values for {len(reference)} rows")
        return values, "predictions"
    if LABEL in reference.columns:
        return reference[LABEL].to_numpy(dtype=float), "label"
    return None, "label"


def _status_failed(status: Any) -> bool:
    text = str(getattr(status, "value", status)).upper()
    return text.endswith("FAIL")


def _value_drifts(snapshot: Mapping[str, Any]) -> dict[str, tuple[str, float, float, bool]]:
    """Column -> (method, score, threshold, drifted) from a snapshot's ValueDrift metrics."""
    by_id: dict[str, str] = {}
    out: dict[str, tuple[str, float, float, bool]] = {}
    for m in snapshot.get("metrics", []):
        cfg = m.get("config") or {}
        if str(cfg.get("type", "")).endswith(":ValueDrift"):
            column = str(cfg["column"])
            by_id[str(m.get("id"))] = column
            score = float(m["value"])
            out[column] = (str(cfg.get("method")), score, float(cfg.get("threshold") or 0.0), False)
    for t in snapshot.get("tests", []):
        mc = t.get("metric_config") or {}
        params = mc.get("params") or {}
        name = by_id.get(str(mc.get("metric_id"))) or str(params.get("column"))
        is_drift = str(params.get("type", "")).endswith(":ValueDrift")
        if name in out and is_drift and _status_failed(t["status"]):
            method, score, threshold, _ = out[name]
            out[name] = (method, score, threshold, True)
    return out


def _labelled(current: pd.DataFrame) -> pd.DataFrame:
    if ACTUAL not in current.columns:
        return current.iloc[0:0]
    ok = current[ACTUAL].notna() & current[PREDICTION].notna()
    return current.loc[ok]


def _quality(labelled: pd.DataFrame) -> tuple[dict[str, VersionQuality], VersionQuality | None]:
    if labelled.empty:
        return {}, None
    err = labelled[PREDICTION].astype(float) - labelled[ACTUAL].astype(float)
    frame = pd.DataFrame({"version": labelled["model_version"].astype(str), "err": err})
    live = {
        str(version): VersionQuality(
            str(version), len(g), float(g["err"].abs().mean()), float(g["err"].mean())
        )
        for version, g in frame.groupby("version", sort=True)
    }
    overall = VersionQuality("all", len(frame), float(err.abs().mean()), float(err.mean()))
    return live, overall


def _quality_report(labelled: pd.DataFrame, path: Path) -> Path:
    from evidently import DataDefinition, Dataset, Regression, Report
    from evidently.presets import RegressionPreset

    frame = pd.DataFrame(
        {
            PREDICTION: labelled[PREDICTION].to_numpy(dtype=float),
            ACTUAL: labelled[ACTUAL].to_numpy(dtype=float),
            "model_version": labelled["model_version"].astype(str).to_numpy(),
        }
    )
    definition = DataDefinition(
        numerical_columns=[PREDICTION, ACTUAL],
        categorical_columns=["model_version"],
        regression=[Regression(target=ACTUAL, prediction=PREDICTION)],
    )
    with warnings.catch_warnings():
        # Evidently scores its error-by-target plot per bin of the target; a bin holding one
        # long delivery makes sklearn warn that R² is undefined there. Nothing to act on.
        warnings.filterwarnings("ignore", message=r"R\^2 score is not well-defined")
        snapshot = Report([RegressionPreset()]).run(
            Dataset.from_pandas(frame, data_definition=definition), None
        )
    snapshot.save_html(str(path))
    return path


# ---------------------------------------------------------------------------------------------
# Reading a window


def run_key(end: dt.datetime) -> str:
    """The report folder's name for a window ending at ``end``, e.g. ``20261121T1400Z``."""
    return _utc(end).strftime("%Y%m%dT%H%MZ")


def read_reference(uri: str, settings: Settings | None = None) -> pd.DataFrame:
    """A reference frame from Parquet: a file or a folder, a local path or ``s3://``.

    Raises:
        ReferenceUnusable: nothing can be read there.
    """
    import pyarrow.parquet as pq

    from relay.data.lake import filesystem

    fs, path = filesystem(uri.removeprefix("file://"), settings)
    try:
        return pq.read_table(path, filesystem=fs).to_pandas()
    except (OSError, ValueError) as exc:
        raise ReferenceUnusable(
            f"cannot read the reference {uri}: {exc}. Pass the training-set Parquet of the "
            "production model (reference_uri_of(version))."
        ) from exc


def read_window(lake: Lake, start: dt.datetime, end: dt.datetime) -> pd.DataFrame:
    """Serving-log rows with ``start <= requested_at < end``, left-joined with the actuals
    landed in the partitions of those days (``actual_minutes`` null where none yet).

    Raises:
        NoServingTraffic: no prediction was logged in the window.
    """
    start, end = _utc(start), _utc(end)
    where = f"between {start:%Y-%m-%d %H:%M} and {end:%Y-%m-%d %H:%M} UTC under {lake.root}"
    try:
        log_df = read_serving_log(lake, start.date(), end.date())
    except PartitionNotFound as exc:
        raise NoServingTraffic(
            f"no serving log {where}: is the endpoint serving, and its log being flushed?"
        ) from exc
    requested = pd.to_datetime(log_df["requested_at"], utc=True)
    log_df = log_df.loc[(requested >= start) & (requested < end)].reset_index(drop=True)
    if log_df.empty:
        raise NoServingTraffic(
            f"the serving log has no prediction {where}: is the endpoint serving, and its log "
            "being flushed?"
        )
    try:
        actuals = read_actuals(lake, start.date(), end.date())
    except PartitionNotFound:
        actuals = pd.DataFrame(columns=["order_id", "delivered_at", ACTUAL])
    return join_actuals(log_df, actuals, how="left")


def monitor_window(
    end: dt.datetime,
    reference_uri: str,
    settings: Settings | None = None,
    *,
    predict: Predictor | None = None,
    features: Sequence[str] | None = None,
    lake: Lake | None = None,
) -> DriftResult:
    """Build the monitoring report for the ``window_hours`` of serving log before ``end``.

    Args:
        end: the window's end, exclusive (a DAG passes its ``data_interval_end``); naive means
            UTC.
        reference_uri: the training-set Parquet of the production model
            (:func:`reference_uri_of`), or any Parquet with the feature columns.
        settings: Relay's settings (``monitoring`` and ``reports_dir``); the process's
            settings when None.
        predict: the production model's predictor, to score the reference when it has no
            ``eta_minutes`` column (prediction drift then compares like with like).
        features: features to monitor; :data:`MONITORED_FEATURES` by default.
        lake: the lake to read; one opened from ``settings`` when None.

    Returns:
        The result; its reports are under ``{reports_dir}/drift/<run_key>/``.

    Raises:
        NoServingTraffic: no prediction was logged in the window.
        ReferenceUnusable: the reference cannot be read or lacks the monitored features.
    """
    from relay.data.lake import Lake

    s = settings or get_settings()
    end = _utc(end)
    start = end - dt.timedelta(hours=s.monitoring.window_hours)
    current = read_window(lake or Lake(s), start, end)
    reference = read_reference(reference_uri, s)
    key = run_key(end)
    return build_report(
        reference,
        current,
        s.reports_dir / "drift" / key,
        run_key=key,
        features=features,
        predict=predict,
        max_rows=s.monitoring.max_rows,
        drift_share=s.monitoring.drift_share_threshold,
        window=(start, end),
        reference_uri=reference_uri,
    )


def reference_uri_of(version: ModelVersion) -> str:
    """The training-set URI a registered version was trained on (from its registration).

    Raises:
        ReferenceUnusable: the version's history records no training set.
    """
    prefix = "trained on "
    for entry in version.history:
        if entry.reason.startswith(prefix):
            return entry.reason.removeprefix(prefix).strip()
    raise ReferenceUnusable(
        f"{version.id} records no training set in its history; pass reference_uri explicitly"
    )


def _utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
