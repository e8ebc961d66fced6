"""The training run's landed-drift step and its record on the registered version: the step
writes ``<run>/landed_drift/landed.json``, the gate's registration puts it in the lineage with
the report beside the model, and ``relay models lineage`` prints its line."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from relay.cli import app
from relay.flows.eta_training import landed_drift, register_and_gate
from relay.model.registration import register_trained
from relay.monitor.landed import FOLDER, RECORD_FILE
from relay.registry import LandedDrift, Registry
from relay.settings import Settings, get_settings, reset_settings
from tests.unit.flows.test_gate_retry import untrained_run

DAY = dt.date(2026, 11, 20)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """The flow reads the process's settings: this test's home, a gate no model passes."""
    monkeypatch.setenv("RELAY_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RELAY_GATE__MAX_MAE_MINUTES", "0.01")
    reset_settings()
    yield get_settings()
    reset_settings()


def _measured(folder: Path) -> LandedDrift:
    """A measured record as the step leaves it, with its report and summary on disk."""
    folder.mkdir(parents=True)
    (folder / "report.html").write_text("<html>the drift report</html>")
    (folder / "summary.json").write_text('{"drifted_share": 0.25}')
    record = LandedDrift(
        status="measured",
        days=[DAY],
        reference_version_id="eta_mlp_1.0.0_20261119_0100",
        reference_uri="/lake/training_sets/ts.parquet",
        report_uri=str(folder / "report.html"),
        summary_uri=str(folder / "summary.json"),
        rows=1500,
        reference_rows=4500,
        drifted_share=0.25,
        drifted_features=["zone_weather", "zone_mean_delivery_24h", "courier_deliveries_24h"],
        psi={"zone_weather": 8.52, "zone_mean_delivery_24h": 0.53, "zone_id": 0.04},
    )
    (folder / RECORD_FILE).write_text(record.model_dump_json())
    return record


def test_the_step_without_production_records_no_reference_and_returns_paths(home, tmp_path):
    run = tmp_path / "runs" / "manual__1"
    out = landed_drift([DAY], str(tmp_path / "nowhere.parquet"), run)
    assert out["status"] == "no_reference"
    assert out["record"] == str(run / FOLDER / RECORD_FILE)
    assert Path(out["record"]).is_file()
    assert out["line"] == f"landed drift of {DAY}..{DAY}: no reference (none in production)"


def test_the_gate_registers_the_runs_record_and_its_report(home, tmp_path):
    run = tmp_path / "runs" / "manual__2"
    record = _measured(run / FOLDER)
    outcome = register_and_gate(str(untrained_run(run / "model")), "train.parquet", [])
    registry = Registry(home)
    version = registry.get(outcome["version"])
    assert version.lineage.landed_drift == record
    html = registry.load_artifact(version.id, "landed_drift.html")
    assert html == b"<html>the drift report</html>"
    assert registry.load_artifact(version.id, "landed_drift.json") == b'{"drifted_share": 0.25}'

    res = CliRunner().invoke(app, ["models", "lineage", version.id])
    assert res.exit_code == 0, res.output
    assert (
        f"drift      landed drift of {DAY}..{DAY} vs eta_mlp_1.0.0_20261119_0100: 25% of "
        "features drifted (zone_weather, zone_mean_delivery_24h, courier_deliveries_24h); "
        "top PSI zone_weather 8.52, zone_mean_delivery_24h 0.53, zone_id 0.04"
    ) in " ".join(res.output.split("\n"))  # a narrow terminal wraps the line


def test_a_run_without_a_record_registers_none_and_a_skipped_one_no_report(home, tmp_path):
    plain = register_trained(untrained_run(tmp_path / "a" / "model"), training_set_uri="t")
    assert plain.lineage.landed_drift is None
    assert not {"landed_drift.html", "landed_drift.json"} & {a.name for a in plain.artifacts}
    skipped = LandedDrift(status="skipped", reason="ReferenceUnusable: gone", days=[DAY])
    version = register_trained(
        untrained_run(tmp_path / "b" / "model", seed=1),
        training_set_uri="t",
        landed_drift=skipped,
    )
    assert Registry(home).get(version.id).lineage.landed_drift == skipped
    assert not {"landed_drift.html", "landed_drift.json"} & {a.name for a in version.artifacts}
