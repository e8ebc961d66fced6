"""The drift the serving metrics export: the newest measured window of the monitoring history,
read from its verdict and its ``summary.json`` (relay.monitor.latest)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from relay.monitor.drift import DriftResult, FeatureDrift, PredictionDrift
from relay.monitor.history import MonitoringHistory
from relay.monitor.latest import drift_reading, latest_drift, newest_reading
from relay.settings import get_settings

END = dt.datetime(2026, 11, 21, 14, tzinfo=dt.UTC)


def _summary(folder: Path, psi: dict[str, float | None], prediction_psi: float = 0.05) -> Path:
    """A window's summary.json as build_report writes it (DriftResult.to_dict); the report's
    path beside it."""
    result = DriftResult(
        run_key="20261121T1400Z",
        window_start=END - dt.timedelta(hours=24),
        window_end=END,
        rows=100,
        labelled_rows=0,
        reference_rows=100,
        features=[
            FeatureDrift(name, "numerical", "Wasserstein", 0.1, 0.1, (p or 0) > 0.2, p)
            for name, p in psi.items()
        ],
        drifted_share=0.5,
        prediction=PredictionDrift(
            "predictions", "Wasserstein", 0.0, 0.1, False, prediction_psi, 30.0, 31.0
        ),
        report_path=str(folder / "report.html"),
        summary_path=str(folder / "summary.json"),
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(result.to_dict()))
    return folder / "report.html"


def test_a_verdict_and_its_summary_give_every_measured_psi(tmp_path):
    report = _summary(tmp_path, {"order_distance_km": 0.03, "zone_weather": 0.41, "empty": None})
    verdict = {
        "production_version": "v7",
        "run_key": "20261121T1400Z",
        "report_path": str(report),
        "window_end": END.isoformat(),
    }
    summary = json.loads((tmp_path / "summary.json").read_text())
    reading = drift_reading(verdict, summary)
    assert reading is not None
    assert reading.model_version == "v7"
    assert reading.feature_psi == {"order_distance_km": 0.03, "zone_weather": 0.41}
    assert reading.prediction_psi == 0.05 and reading.drifted_share == 0.5
    assert reading.window_end == END.timestamp()


def test_quiet_windows_and_unreadable_summaries_give_no_reading():
    assert drift_reading({"action": "ok", "reasons": ["SKIP: nothing in production"]}, None) is None
    assert drift_reading({"production_version": "v7"}, None) is None  # no summary, no PSI
    # The verdict's own measurements are enough (a monitoring run that records them).
    own = drift_reading({"production_version": "v7", "feature_psi": {"a": 0.3}}, None)
    assert own is not None and own.feature_psi == {"a": 0.3} and own.prediction_psi is None


def test_the_newest_measured_window_wins_over_older_and_quiet_ones(tmp_path):
    old = _summary(tmp_path / "old", {"a": 0.9})
    new = _summary(tmp_path / "new", {"a": 0.1})
    verdicts = [
        {"action": "ok", "reasons": ["SKIP: no traffic"], "report_path": None},
        {"production_version": "v8", "report_path": str(new)},
        {"production_version": "v7", "report_path": str(old)},
    ]
    from relay.monitor.latest import summary_beside_report

    reading = newest_reading(verdicts, summary_beside_report)
    assert reading is not None and (reading.model_version, reading.feature_psi) == (
        "v8",
        {"a": 0.1},
    )


def test_latest_drift_reads_the_recorded_history(tmp_path):
    s = get_settings().model_copy(deep=True)
    s.registry.uri = str(tmp_path / "registry")
    history = MonitoringHistory(s)
    assert latest_drift(s) is None
    report = _summary(tmp_path / "drift" / "20261121T1400Z", {"courier_load": 0.27})
    history.record_verdict(
        {
            "action": "retrain",
            "reasons": [],
            "production_version": "v9",
            "run_key": "20261121T1400Z",
            "report_path": str(report),
            "window_end": END.isoformat(),
        }
    )
    history.record_verdict(
        {"action": "ok", "reasons": ["SKIP: no traffic"], "run_key": "20261121T1500Z"}
    )
    reading = latest_drift(s)
    assert reading is not None
    assert reading.model_version == "v9" and reading.feature_psi == {
        "courier_load": pytest.approx(0.27)
    }
