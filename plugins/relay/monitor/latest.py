"""The newest drift monitoring measured, for the serving metrics (``relay_drift_*`` gauges).

Monitoring runs in Airflow, outside Ray, once an hour. It records each window's verdict in the
monitoring history (:mod:`relay.monitor.history`, in the registry's store) and writes the
window's measurements as ``summary.json`` beside its drift report
(:func:`relay.monitor.report.build_report`). Every router replica re-reads the newest of them
every ``RELAY_SERVING__DRIFT_REFRESH_S`` and sets Ray gauges from it
(:class:`relay.serve.ray_metrics.DriftExport`), so drift sits in Prometheus beside the
serving metrics of the version it was measured on, with no Pushgateway to run.

The summary is read from the report's folder, which must be readable where the router runs:
the same machine (``make up``) or the ``relay-home`` volume every compose container mounts.
A verdict that carries its measurements itself (``feature_psi``, ``prediction_psi``,
``drifted_share``) is used as it is.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relay.monitor.report import SUMMARY_FILE

log = logging.getLogger(__name__)

#: Verdicts looked through for one with measurements (quiet hours record none).
VERDICTS_SEARCHED = 24


@dataclass(frozen=True)
class DriftReading:
    """One monitoring window's drift, for the gauges.

    Attributes:
        model_version: the production version whose served traffic was measured.
        run_key: the monitoring run (its report folder's name).
        window_end: the window's end, seconds since the epoch; None when not recorded.
        feature_psi: PSI per monitored feature (features without one are left out).
        prediction_psi: PSI of the served predictions; None when not measured.
        drifted_share: share of the features Evidently found drifted; None when not measured.
    """

    model_version: str
    run_key: str
    window_end: float | None = None
    feature_psi: dict[str, float] = field(default_factory=dict)
    prediction_psi: float | None = None
    drifted_share: float | None = None


def drift_reading(
    verdict: Mapping[str, Any], summary: Mapping[str, Any] | None
) -> DriftReading | None:
    """The gauges' values from a recorded verdict and its window's ``summary.json``.

    Args:
        verdict: one entry of :meth:`relay.monitor.history.MonitoringHistory.verdicts`.
        summary: the window's :meth:`relay.monitor.drift.DriftResult.to_dict`, or None when it
            could not be read.

    Returns:
        The reading, or None when the verdict names no version or neither side measured any
        PSI (a quiet hour: no traffic, nothing in production).
    """
    version = verdict.get("production_version")
    if not version:
        return None
    psi = {str(k): float(v) for k, v in (verdict.get("feature_psi") or {}).items() if _finite(v)}
    prediction = verdict.get("prediction_psi")
    share = verdict.get("drifted_share")
    if summary is not None:
        for f in summary.get("features") or ():
            if f.get("name") and _finite(f.get("psi")):
                psi.setdefault(str(f["name"]), float(f["psi"]))
        if prediction is None:
            prediction = (summary.get("prediction") or {}).get("psi")
        if share is None:
            share = summary.get("drifted_share")
    if not psi and _number(prediction) is None:
        return None
    return DriftReading(
        model_version=str(version),
        run_key=str(verdict.get("run_key") or ""),
        window_end=_epoch(verdict.get("window_end") or (summary or {}).get("window_end")),
        feature_psi=psi,
        prediction_psi=_number(prediction),
        drifted_share=_number(share),
    )


def newest_reading(
    verdicts: Sequence[Mapping[str, Any]],
    read_summary: Callable[[Mapping[str, Any]], Mapping[str, Any] | None],
) -> DriftReading | None:
    """The first reading among ``verdicts`` (newest first) that measured drift.

    Args:
        verdicts: recorded verdicts, newest first.
        read_summary: a verdict's ``summary.json``, or None (:func:`summary_beside_report`).
    """
    for verdict in verdicts:
        if not verdict.get("production_version"):
            continue
        reading = drift_reading(verdict, read_summary(verdict))
        if reading is not None:
            return reading
    return None


def summary_beside_report(verdict: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``summary.json`` in the verdict's drift report folder; None when it has no report
    or the file cannot be read here (another machine's disk)."""
    report = verdict.get("report_path")
    if not report:
        return None
    path = Path(str(report)).parent / SUMMARY_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def latest_drift(settings: Any = None) -> DriftReading | None:
    """The newest drift measured by monitoring (the history of ``settings``' registry)."""
    from relay.monitor.history import MonitoringHistory

    verdicts = MonitoringHistory(settings).verdicts(last=VERDICTS_SEARCHED)
    return newest_reading(verdicts, summary_beside_report)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _number(value: Any) -> float | None:
    return float(value) if _finite(value) else None


def _epoch(value: Any) -> float | None:
    if not value:
        return None
    try:
        at = dt.datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return (at if at.tzinfo else at.replace(tzinfo=dt.UTC)).timestamp()
