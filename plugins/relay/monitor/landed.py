"""Drift of landed data, judged before training: the run's new days against production's data.

The training run compares the rows of its new training set that come from the days it landed
(:func:`landed_rows`) with the training set the production version learned from
(:func:`relay.monitor.window.reference_uri_of`), with the drift job's own report
(:func:`relay.monitor.report.build_report`: Evidently's drift preset and the PSI). It writes
``report.html``, ``summary.json`` and the record ``landed.json`` (a
:class:`relay.registry.LandedDrift`) into the run's ``landed_drift/`` folder; registration puts
the record in the new version's lineage.

It records and never stops a run: the validation suite stops bad data, and drift is
information for the gate and for people. Nothing in production: recorded as ``no_reference``.
A failure to compute it (an unreadable reference, a training set without the landed days) is
logged and recorded as ``skipped`` with its reason.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from pydantic import ValidationError

from relay.monitor.drift import DriftResult, MonitoringError
from relay.monitor.report import QUALITY_FILE, REPORT_FILE, SUMMARY_FILE, build_report
from relay.monitor.window import read_reference, reference_uri_of
from relay.registry import LandedDrift, Registry, Stage
from relay.settings import Settings, get_settings

log = logging.getLogger(__name__)

#: The run folder's subfolder for the report, the summary and the record.
FOLDER = "landed_drift"
RECORD_FILE = "landed.json"
#: The column that dates a training-set row (the order's creation, the Feast entity time).
TIMESTAMP = "event_timestamp"


class NoLandedRows(MonitoringError):
    """The training set holds no row of the days the run landed."""


def landed_rows(training_set: pd.DataFrame, days: Sequence[dt.date]) -> pd.DataFrame:
    """The rows of ``training_set`` whose ``event_timestamp`` falls on one of ``days`` (UTC).

    Raises:
        NoLandedRows: no such row, or the frame has no ``event_timestamp``.
    """
    if TIMESTAMP not in training_set.columns:
        raise NoLandedRows(
            f"the training set has no {TIMESTAMP} column (columns "
            f"{sorted(map(str, training_set.columns))}): its rows cannot be dated"
        )
    dates = pd.to_datetime(training_set[TIMESTAMP], utc=True).dt.strftime("%Y-%m-%d")
    rows = training_set.loc[dates.isin({d.isoformat() for d in days})]
    if rows.empty:
        raise NoLandedRows(
            f"the training set has no row from {_span(days)}: were those days validated?"
        )
    return rows.reset_index(drop=True)


def from_result(
    result: DriftResult, days: Sequence[dt.date], reference_version_id: str
) -> LandedDrift:
    """The record of a measured comparison: drifted share, drifted features, PSI highest first."""
    psi = sorted(
        ((f.name, f.psi) for f in result.features if f.psi is not None), key=lambda kv: -kv[1]
    )
    return LandedDrift(
        status="measured",
        days=sorted(days),
        reference_version_id=reference_version_id,
        reference_uri=result.reference_uri,
        report_uri=result.report_path or None,
        summary_uri=result.summary_path or None,
        rows=result.rows,
        reference_rows=result.reference_rows,
        drifted_share=result.drifted_share,
        drifted_features=result.drifted_features,
        psi={name: round(value, 4) for name, value in psi},
    )


def measure(
    training_set_uri: str,
    days: Sequence[dt.date],
    out_dir: Path | str,
    settings: Settings | None = None,
    *,
    registry: Registry | None = None,
) -> LandedDrift:
    """Compare the landed ``days`` of the new training set with production's training set.

    Writes ``report.html`` and ``summary.json`` (when measured) and ``landed.json`` (always)
    into ``out_dir``, and logs :meth:`LandedDrift.line`. Never raises for the data: no
    production version gives ``no_reference``, a failure gives ``skipped`` with its reason.

    Args:
        training_set_uri: the run's training set (Parquet, local or ``s3://``).
        days: the days the run landed (its ``start_date`` to ``end_date``).
        out_dir: the run's ``landed_drift/`` folder; created.
        settings: Relay's settings (``monitoring.max_rows`` and ``drift_share_threshold``,
            shared with the drift job); the process's when None.
        registry: where production is looked up; one opened from ``settings`` when None.

    Returns:
        The record, as written to ``landed.json``.
    """
    s = settings or get_settings()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    days = sorted(days)
    try:
        production = (registry or Registry(s)).stage_version(Stage.PRODUCTION)
        if production is None:
            record = LandedDrift(status="no_reference", reason="none in production", days=days)
        else:
            reference_uri = reference_uri_of(production)
            current = landed_rows(read_reference(training_set_uri, s), days)
            result = build_report(
                read_reference(reference_uri, s),
                current,
                out,
                run_key=f"landed_{_span(days)}",
                max_rows=s.monitoring.max_rows,
                drift_share=s.monitoring.drift_share_threshold,
                reference_uri=reference_uri,
            )
            record = from_result(result, days, production.id)
    except Exception as exc:  # recorded as skipped: a drift measurement never fails training
        log.warning("landed drift of %s not measured", _span(days), exc_info=True)
        record = LandedDrift(status="skipped", reason=f"{type(exc).__name__}: {exc}", days=days)
    if record.status != "measured":
        # A re-run of the same run folder must not leave an older run's report behind.
        for name in (REPORT_FILE, SUMMARY_FILE, QUALITY_FILE):
            (out / name).unlink(missing_ok=True)
    (out / RECORD_FILE).write_text(record.model_dump_json(indent=2), encoding="utf-8")
    log.info("%s%s", record.line(), f"\nreport: {record.report_uri}" if record.report_uri else "")
    return record


def read_record(out_dir: Path | str) -> LandedDrift | None:
    """The record :func:`measure` left in ``out_dir``; None when there is none or it is unreadable
    (a run that did not measure, or a run folder from before this step)."""
    path = Path(out_dir) / RECORD_FILE
    try:
        return LandedDrift.model_validate_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValidationError) as exc:
        log.warning("landed drift record %s unreadable, not recorded: %s", path, exc)
        return None


def _span(days: Sequence[dt.date]) -> str:
    if not days:
        return "no day"
    first, last = min(days), max(days)
    return str(first) if first == last else f"{first}..{last}"
