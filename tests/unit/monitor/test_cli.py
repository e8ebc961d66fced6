"""``relay monitor run|status`` on a home of its own: the verdict printed, recorded, read back."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from relay.cli import app
from relay.monitor.history import MonitoringHistory
from relay.monitor.retrain import GateRejection
from relay.settings import get_settings, reset_settings


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("RELAY_HOME", str(tmp_path))
    reset_settings()
    yield tmp_path
    reset_settings()


def _relay(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, list(args))
    return res.exit_code, res.output


def test_run_judges_one_window_and_status_shows_it(home: Path) -> None:
    code, output = _relay("monitor", "run", "--end", "2026-11-21T14:00")
    assert code == 0, output
    # Nothing is in production in a new home: the window is not judged, and says why.
    assert "20261121T1400Z production: OK" in output
    assert "SKIP: nothing is in production yet" in output
    (recorded,) = MonitoringHistory().verdicts()
    assert recorded["run_key"] == "20261121T1400Z"
    assert recorded["window_end"] == "2026-11-21T14:00:00+00:00"
    code, output = _relay("monitor", "status")
    assert code == 0, output
    assert "20261121T1400Z production: OK" in output and "nothing is in production" in output


def test_run_takes_an_offset_and_prints_json(home: Path) -> None:
    code, output = _relay("monitor", "run", "--end", "2026-11-21T15:30:00+01:00", "--json")
    assert code == 0, output
    verdict = json.loads(output)
    assert verdict["run_key"] == "20261121T1430Z" and verdict["action"] == "ok"


def test_a_bad_end_is_refused_naming_the_option(home: Path) -> None:
    code, output = _relay("monitor", "run", "--end", "yesterday")
    assert code == 2
    assert "--end" in output


def test_status_lists_the_last_verdicts_failures_reports_and_rejections(home: Path) -> None:
    history = MonitoringHistory()
    for hour, action in [(12, "ok"), (13, "retrain"), (14, "retrain")]:
        history.record_verdict(
            {
                "run_key": f"20261121T{hour}00Z",
                "action": action,
                "production_version": "eta_mlp_1.0.0_a",
                "reasons": [
                    "PASS: traffic: 900 predictions ≥ min 200",
                    f"{'FAIL' if action == 'retrain' else 'PASS'}: feature PSI: zone_id {hour}",
                ],
                "report_path": f"/reports/drift/20261121T{hour}00Z/report.html",
            }
        )
    history.add_rejection(
        GateRejection(
            run_id="drift__2026-11-20__abcd1234",
            kind="drift of eta_mlp_1.0.0_a",
            data_day=dt.date(2026, 11, 20),
            version="eta_mlp_1.1.0_b",
            rejected_at=dt.datetime(2026, 11, 21, 13, 40, tzinfo=dt.UTC),
        )
    )
    code, output = _relay("monitor", "status", "--last", "2")
    assert code == 0, output
    lines = output.splitlines()
    assert lines[0] == "20261121T1400Z eta_mlp_1.0.0_a: RETRAIN"
    assert "  FAIL: feature PSI: zone_id 14" in lines
    assert "PASS: traffic" not in output  # status shows what failed, not every check
    assert "  drift report: /reports/drift/20261121T1400Z/report.html" in lines
    assert "20261121T1300Z eta_mlp_1.0.0_a: RETRAIN" in lines
    assert "20261121T1200Z" not in output  # --last 2
    assert "gate rejected eta_mlp_1.1.0_b of drift__2026-11-20__abcd1234" in output
    code, output = _relay("monitor", "status", "--json")
    assert code == 0, output
    doc = json.loads(output)
    assert [v["run_key"] for v in doc["verdicts"]] == [
        "20261121T1400Z",
        "20261121T1300Z",
        "20261121T1200Z",
    ]
    assert doc["rejections"][0]["data_day"] == "2026-11-20"


def test_status_before_any_verdict_says_what_to_run(home: Path) -> None:
    assert get_settings().home == home.resolve()
    code, output = _relay("monitor", "status")
    assert code == 1
    assert "relay monitor run" in output
