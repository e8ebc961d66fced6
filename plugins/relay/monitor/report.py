"""The drift job's report: Evidently's drift and regression presets plus the PSI, as HTML and JSON.

:func:`build_report` compares a window of the serving log with the reference (the training set
the production model learned from):

* drift per feature with Evidently's ``DataDriftPreset`` (normalised Wasserstein distance for
  numeric features, Jensen-Shannon for categorical ones, threshold 0.1) and with the PSI
  (:func:`relay.monitor.drift.psi`);
* prediction drift: the served ``eta_minutes`` against the reference's predictions (the
  reference's own ``eta_minutes`` column, or ``predict(reference)`` when a predictor is given),
  else against the reference's label distribution;
* the predictions that have an actual: MAE per model version
  (:func:`relay.serve.log_read.quality_by_version`), and Evidently's ``RegressionPreset``;
* it writes ``report.html`` (drift), ``quality.html`` (when labels exist) and ``summary.json``
  (:meth:`DriftResult.to_dict`).

Frames above ``max_rows`` are sampled (seeded), so a run takes seconds. Nothing here decides
anything: :func:`relay.monitor.rules.decide` turns a :class:`DriftResult` into a verdict.

Evidently takes ~9 s to import: it is imported inside the functions that use it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import pandas as pd

from relay.features import catalog
from relay.monitor.drift import (
    DriftResult,
    FeatureDrift,
    NoServingTraffic,
    PredictionDrift,
    ReferenceUnusable,
    psi,
)
from relay.serve.log_read import ACTUAL, PREDICTION, features_of, labelled, quality_by_version

log = logging.getLogger(__name__)

#: The inputs monitored by default (the feature catalog says which are left out, and why).
MONITORED_FEATURES: tuple[str, ...] = catalog.monitored()
#: Features compared as categories (the others as numbers).
CATEGORICAL_FEATURES: frozenset[str] = catalog.categorical()

LABEL = catalog.LABEL
DEFAULT_SEED = 0
REPORT_FILE = "report.html"
QUALITY_FILE = "quality.html"
SUMMARY_FILE = "summary.json"

Predictor = Callable[[pd.DataFrame], Any]
Kind = Literal["numerical", "categorical"]


class _Score(NamedTuple):
    """Evidently's judgement of one column."""

    method: str
    score: float
    threshold: float
    drifted: bool


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
        current: serving-log rows (:func:`relay.serve.log_read.read_served`: ``f_<feature>``
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
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report_path = out / REPORT_FILE
    scores = _drift_report(
        ref_x,
        cur_x,
        comparable,
        kinds,
        has_pred=has_pred,
        drift_share=drift_share,
        path=report_path,
    )

    feature_drift = []
    for f in monitored:
        cur_missing = float(cur_x[f].isna().mean())
        p = None
        if f in comparable:
            p = psi(ref_x[f], cur_x[f], categorical=kinds[f] == "categorical")
        score = scores[f] if f in scores else _Score("missing", cur_missing, 0.0, True)
        feature_drift.append(
            FeatureDrift(
                name=f,
                kind=kinds[f],
                **score._asdict(),
                psi=p,
                current_missing=cur_missing,
                reference_missing=float(ref_x[f].isna().mean()),
            )
        )
    prediction = None
    if has_pred and PREDICTION in scores:
        prediction = PredictionDrift(
            reference=pred_source,
            **scores[PREDICTION]._asdict(),
            psi=psi(ref_x[PREDICTION], cur_x[PREDICTION]),
            reference_mean=float(np.nanmean(ref_x[PREDICTION])),
            current_mean=float(np.nanmean(cur_x[PREDICTION])),
        )

    scored = labelled(current)
    live, overall = quality_by_version(current)
    quality_path = None
    (out / QUALITY_FILE).unlink(missing_ok=True)  # a re-run must not leave an older one
    if len(scored):
        quality_path = str(_quality_report(_sample(scored, max_rows, seed), out / QUALITY_FILE))

    result = DriftResult(
        run_key=run_key,
        window_start=None if window is None else window[0],
        window_end=None if window is None else window[1],
        rows=len(current),
        labelled_rows=len(scored),
        reference_rows=len(reference),
        features=feature_drift,
        drifted_share=sum(f.drifted for f in feature_drift) / len(feature_drift),
        prediction=prediction,
        live_mae=live,
        overall=overall,
        report_path=str(report_path) if comparable or has_pred else "",
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


def _drift_report(
    ref_x: pd.DataFrame,
    cur_x: pd.DataFrame,
    comparable: Sequence[str],
    kinds: Mapping[str, Kind],
    *,
    has_pred: bool,
    drift_share: float,
    path: Path,
) -> dict[str, _Score]:
    """Run Evidently's drift checks on the comparable columns, save the HTML at ``path`` and
    return its judgement per column; nothing is run or saved when nothing is comparable."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    numerical = [f for f in comparable if kinds[f] == "numerical"]
    categorical = [f for f in comparable if kinds[f] == "categorical"]
    if has_pred:
        numerical.append(PREDICTION)
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)
    columns = [*comparable, *([PREDICTION] if has_pred else [])]
    metrics: list[Any] = []
    if comparable:
        metrics.append(DataDriftPreset(columns=list(comparable), drift_share=drift_share))
    if has_pred:
        metrics.append(ValueDrift(column=PREDICTION))
    if not metrics:
        return {}
    snapshot = Report(metrics, include_tests=True).run(
        Dataset.from_pandas(cur_x[columns], data_definition=definition),
        Dataset.from_pandas(ref_x[columns], data_definition=definition),
    )
    snapshot.save_html(str(path))
    return _value_drifts(snapshot.dict())


def _has_prefixed(frame: pd.DataFrame) -> bool:
    return any(str(c).startswith("f_") for c in frame.columns)


def _sample(frame: pd.DataFrame, max_rows: int, seed: int) -> pd.DataFrame:
    if len(frame) <= max_rows:
        return frame
    return frame.sample(n=max_rows, random_state=seed).sort_index()


def _kind(name: str, values: pd.Series) -> Kind:
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


def _value_drifts(snapshot: Mapping[str, Any]) -> dict[str, _Score]:
    """Column -> Evidently's judgement, from a snapshot's ValueDrift metrics and tests."""
    by_id: dict[str, str] = {}
    out: dict[str, _Score] = {}
    for m in snapshot.get("metrics", []):
        cfg = m.get("config") or {}
        if str(cfg.get("type", "")).endswith(":ValueDrift"):
            column = str(cfg["column"])
            by_id[str(m.get("id"))] = column
            score = float(m["value"])
            out[column] = _Score(
                str(cfg.get("method")), score, float(cfg.get("threshold") or 0.0), False
            )
    for t in snapshot.get("tests", []):
        mc = t.get("metric_config") or {}
        params = mc.get("params") or {}
        name = by_id.get(str(mc.get("metric_id"))) or str(params.get("column"))
        is_drift = str(params.get("type", "")).endswith(":ValueDrift")
        if name in out and is_drift and _status_failed(t["status"]):
            out[name] = out[name]._replace(drifted=True)
    return out


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
