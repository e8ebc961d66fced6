"""Drift of landed data before training (:mod:`relay.monitor.landed`), on generated days.

Production's training set is three ordinary days with point-in-time features (as the drift job's
tests build them); the new run's training set is those days plus one landed day, ordinary or a
storm. Real Evidently, a registry on local disk under the test's folder.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pytest

from relay.data.scenarios import scenario_batch
from relay.features.frames import feature_tables, point_in_time
from relay.features.store import entity_frame
from relay.monitor.landed import (
    RECORD_FILE,
    NoLandedRows,
    landed_rows,
    measure,
    read_record,
)
from relay.monitor.report import REPORT_FILE, SUMMARY_FILE
from relay.registry import (
    LandedDrift,
    Lineage,
    ModelState,
    ModelVersion,
    Registry,
    Stage,
    TrainingSetRef,
)
from relay.settings import Settings

WARM_UP = dt.date(2026, 10, 31)  # fills the features' 24-hour windows
REFERENCE_DAYS = [dt.date(2026, 11, 1) + dt.timedelta(days=i) for i in range(3)]
LANDED = dt.date(2026, 11, 4)
ORDERS_PER_DAY = 1500


def _training_set(scenario: str) -> pd.DataFrame:
    """The reference days and the landed day under ``scenario``, as a training set."""
    days = [WARM_UP, *REFERENCE_DAYS]
    orders = [scenario_batch("normal", d, ORDERS_PER_DAY) for d in days]
    orders.append(scenario_batch(scenario, LANDED, ORDERS_PER_DAY))
    every = pd.concat(orders, ignore_index=True)
    start = dt.datetime.combine(WARM_UP, dt.time(), tzinfo=dt.UTC)
    end = dt.datetime.combine(LANDED + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    kept = every[every["created_at"] >= pd.Timestamp(REFERENCE_DAYS[0], tz="UTC")]
    frame = point_in_time(entity_frame(kept), feature_tables(every, start, end))
    # The on-demand view's columns, as Feast's historical retrieval adds them.
    frame["order_distance_km"] = frame["distance_km"]
    frame["order_hour"] = frame["hour"]
    return frame


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Production's training set and the new runs' training sets, as Parquet files."""
    folder = tmp_path_factory.mktemp("training_sets")
    out = {}
    for scenario in ("normal", "storm"):
        frame = _training_set(scenario)
        out[scenario] = str(folder / f"{scenario}.parquet")
        frame.to_parquet(out[scenario], index=False)
        if scenario == "normal":
            reference = frame[frame["event_timestamp"] < pd.Timestamp(LANDED, tz="UTC")]
            out["reference"] = str(folder / "reference.parquet")
            reference.to_parquet(out["reference"], index=False)
    return out


def _production(settings: Settings, reference_uri: str) -> ModelVersion:
    registry = Registry(settings)
    lineage = Lineage(feature_service="eta_v1", training_set=TrainingSetRef(uri=reference_uri))
    v = registry.register({"model.pt": b"w"}, lineage=lineage, owner="t", state=ModelState.TRAINED)
    registry.transition(v.id, ModelState.EVALUATING, "test")
    registry.transition(v.id, ModelState.VALIDATED, "test")
    registry.promote(v.id, Stage.PRODUCTION, reason="test")
    return registry.get(v.id)


def test_a_storm_day_is_recorded_as_drifted_in_the_weather_and_an_ordinary_day_much_less(
    tmp_path: Path, lake: dict[str, str]
) -> None:
    settings = Settings(home=tmp_path)
    production = _production(settings, lake["reference"])
    storm = measure(lake["storm"], [LANDED], tmp_path / "storm", settings)
    normal = measure(lake["normal"], [LANDED], tmp_path / "normal", settings)

    for record in (storm, normal):
        assert record.status == "measured" and record.reason == ""
        assert record.reference_version_id == production.id
        assert record.reference_uri == lake["reference"]
        assert record.days == [LANDED]
        assert record.rows == ORDERS_PER_DAY  # the landed day only, not the whole window
        assert record.reference_rows == ORDERS_PER_DAY * len(REFERENCE_DAYS)
        assert list(record.psi.values()) == sorted(record.psi.values(), reverse=True)
    # The storm: the weather and the zones' delivery times, by Evidently and by the PSI.
    assert {"zone_weather", "zone_mean_delivery_24h"} <= set(storm.drifted_features)
    assert list(storm.psi)[:2] == ["zone_weather", "zone_mean_delivery_24h"]
    assert storm.psi["zone_weather"] > 2.0 and storm.psi["zone_mean_delivery_24h"] > 0.3
    # An ordinary day: Evidently's Wasserstein (threshold 0.1) flags a few count-like features
    # that move from day to day, so its drifted share is not far below the storm's; the PSI
    # is: no feature reaches the field's "high" band (0.2).
    assert "zone_weather" not in normal.drifted_features
    assert storm.drifted_share is not None and normal.drifted_share is not None
    assert storm.drifted_share > normal.drifted_share, (storm.line(), normal.line())
    assert max(normal.psi.values()) < 0.2 < sorted(storm.psi.values())[-2]
    assert storm.psi["zone_weather"] > 100 * normal.psi["zone_weather"]

    folder = tmp_path / "storm"
    assert storm.report_uri == str(folder / REPORT_FILE)
    assert Path(storm.report_uri).stat().st_size > 50_000
    summary = json.loads((folder / SUMMARY_FILE).read_text())
    assert summary["drifted_share"] == storm.drifted_share
    assert read_record(folder) == storm  # what registration reads
    line = storm.line()
    assert line.startswith(f"landed drift of {LANDED}..{LANDED} vs {production.id}: ")
    assert "top PSI zone_weather " in line


def test_without_production_it_is_recorded_as_no_reference(
    tmp_path: Path, lake: dict[str, str]
) -> None:
    settings = Settings(home=tmp_path)
    record = measure(lake["storm"], [LANDED], tmp_path / "run", settings)
    assert record.status == "no_reference" and record.reference_version_id is None
    assert record.drifted_share is None and record.report_uri is None
    assert read_record(tmp_path / "run") == record
    assert not (tmp_path / "run" / REPORT_FILE).exists()
    assert "no reference" in record.line()


def test_an_unreadable_reference_is_skipped_with_the_reason(
    tmp_path: Path, lake: dict[str, str]
) -> None:
    settings = Settings(home=tmp_path)
    gone = tmp_path / "gone.parquet"
    _production(settings, str(gone))
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / REPORT_FILE).write_text("an older run's report")  # a re-run must not keep it
    record = measure(lake["storm"], [LANDED], folder, settings)
    assert record.status == "skipped"
    assert record.reason.startswith("ReferenceUnusable: cannot read the reference")
    assert str(gone) in record.reason
    assert not (folder / REPORT_FILE).exists()
    assert read_record(folder) == record
    assert record.line().startswith(f"landed drift of {LANDED}..{LANDED}: skipped (")


def test_a_training_set_without_the_landed_days_is_skipped(
    tmp_path: Path, lake: dict[str, str]
) -> None:
    settings = Settings(home=tmp_path)
    _production(settings, lake["reference"])
    record = measure(lake["normal"], [dt.date(2026, 12, 1)], tmp_path / "run", settings)
    assert record.status == "skipped"
    assert record.reason.startswith("NoLandedRows: the training set has no row from 2026-12-01")


def test_landed_rows_are_those_of_the_days_in_utc() -> None:
    stamps = pd.to_datetime(
        [
            "2026-11-03T23:59:59Z",
            "2026-11-04T00:00:00Z",
            "2026-11-04T23:59:59Z",
            "2026-11-05T00:00:00Z",
        ]
    )
    frame = pd.DataFrame({"event_timestamp": stamps, "x": [1, 2, 3, 4]})
    assert landed_rows(frame, [LANDED])["x"].tolist() == [2, 3]
    assert landed_rows(frame, [LANDED, LANDED + dt.timedelta(days=1)])["x"].tolist() == [2, 3, 4]
    with pytest.raises(NoLandedRows, match="no row from 2026-11-10"):
        landed_rows(frame, [dt.date(2026, 11, 10)])
    with pytest.raises(NoLandedRows, match="no event_timestamp column"):
        landed_rows(frame.drop(columns="event_timestamp"), [LANDED])


def test_a_missing_or_corrupt_record_reads_as_none(tmp_path: Path) -> None:
    assert read_record(tmp_path) is None
    (tmp_path / RECORD_FILE).write_text('{"status": "maybe"}')
    assert read_record(tmp_path) is None


def test_an_old_lineage_without_the_field_still_loads() -> None:
    old = {"feature_service": "eta_v1", "data_partitions": ["validated/orders/date=2026-11-19"]}
    lineage = Lineage.model_validate(old)
    assert lineage.landed_drift is None
    record = LandedDrift(status="measured", days=[LANDED], psi={"zone_weather": 3.1, "x": 0.2})
    again = Lineage.model_validate_json(
        lineage.model_copy(update={"landed_drift": record}).model_dump_json()
    )
    assert again.landed_drift == record
    # Stored with sorted keys by the registry: the line ranks the PSI itself.
    resorted = record.model_copy(update={"psi": {"x": 0.2, "zone_weather": 3.1}})
    assert resorted.line().endswith("top PSI zone_weather 3.10, x 0.20")
