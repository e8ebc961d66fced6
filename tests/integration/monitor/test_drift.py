"""The drift job on data the project generates: real Evidently, a serving log in a tmp lake.

A week of ordinary days is the reference (the training set, with point-in-time features); the
day after is served and logged, ordinary or under a drift scenario, with the actual delivery
times of most orders landed. The "model" is a least-squares fit on the reference: its
predictions move when the features move, as a real model's would.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from relay.data.generate import generate_orders
from relay.data.lake import ACTUALS, SERVING_LOG, Lake
from relay.data.scenarios import DRIFTS
from relay.features.catalog import NUMERIC
from relay.features.frames import feature_tables, point_in_time
from relay.features.store import entity_frame
from relay.model.preprocess import WEATHER_LEVELS
from relay.monitor.drift import DriftResult, NoServingTraffic
from relay.monitor.rules import Action, Check, decide
from relay.monitor.window import monitor_window
from relay.serve.log_schema import to_frame, to_row
from relay.settings import MonitoringSettings, Settings

pytestmark = pytest.mark.integration

WARM_UP = dt.date(2026, 10, 31)  # fills the features' 24-hour windows
REFERENCE_DAYS = [dt.date(2026, 11, 1) + dt.timedelta(days=i) for i in range(7)]
SERVED = dt.date(2026, 11, 8)
END = dt.datetime.combine(SERVED + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
ORDERS_PER_DAY = 2000
LABELLED_SHARE = 0.8
# What the Feast online read returns besides the numeric features (serving logs all of it).
ONLINE_EXTRA = (
    "courier_id",
    "merchant_id",
    "zone_id",
    "zone_weather",
    "order_distance_km",
    "order_hour",
    "order_weekday",
)


def _feature_frame(scenario: str) -> pd.DataFrame:
    """Reference days and the served day, with point-in-time features (as a training set)."""
    days = [WARM_UP, *REFERENCE_DAYS]
    orders = [generate_orders(d, ORDERS_PER_DAY) for d in days]
    conditions = None if scenario == "normal" else DRIFTS[scenario].conditions
    orders.append(generate_orders(SERVED, ORDERS_PER_DAY, conditions=conditions))
    every = pd.concat(orders, ignore_index=True)
    start = dt.datetime.combine(WARM_UP, dt.time(), tzinfo=dt.UTC)
    tables = feature_tables(every, start, END)
    served = every[every["created_at"] >= pd.Timestamp(REFERENCE_DAYS[0], tz="UTC")]
    frame = point_in_time(entity_frame(served), tables)
    frame["order_distance_km"] = frame["distance_km"]
    frame["order_hour"] = frame["hour"]
    frame["order_weekday"] = frame["weekday"]
    return frame


def _split(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    served = frame["event_timestamp"] >= pd.Timestamp(SERVED, tz="UTC")
    return frame[~served].reset_index(drop=True), frame[served].reset_index(drop=True)


class LinearModel:
    """Least squares on the numeric features, distance and weather level."""

    def __init__(self, reference: pd.DataFrame) -> None:
        self.means = {c: float(reference[c].astype(float).mean()) for c in NUMERIC}
        x = self._x(reference)
        self.beta = np.linalg.lstsq(x, reference["delivery_minutes"].to_numpy(), rcond=None)[0]
        # Its "registered" MAE: production's own accuracy, which a live quality loss is against.
        errors = self.predict(reference) - reference["delivery_minutes"].to_numpy()
        self.mae = float(np.mean(np.abs(errors)))

    def _x(self, frame: pd.DataFrame) -> np.ndarray:
        cols = [frame[c].astype(float).fillna(self.means[c]).to_numpy() for c in NUMERIC]
        cols.append(frame["order_distance_km"].astype(float).to_numpy())
        cols.append(frame["zone_weather"].map(WEATHER_LEVELS).fillna(1).to_numpy(dtype=float))
        cols.append(np.ones(len(frame)))
        return np.column_stack(cols)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return self._x(frame) @ self.beta


def _serve(
    settings: Settings,
    served: pd.DataFrame,
    predict: Callable[[pd.DataFrame], np.ndarray],
    version: Callable[[int], str] = lambda i: "v1",
    bias: Callable[[str], float] = lambda v: 0.0,
) -> None:
    """Log one prediction per order (at its creation) and land most actuals."""
    preds = predict(served)
    records = []
    for i, row in enumerate(served.itertuples(index=False)):
        features = {name: getattr(row, name) for name in (*NUMERIC, *ONLINE_EXTRA)}
        v = version(i)
        records.append(
            {
                "request_id": f"r{i}",
                "order_id": row.order_id,
                "requested_at": row.event_timestamp,
                "model_version": v,
                "eta_minutes": float(preds[i]) + bias(v),
                "latency_ms": 12.0,
                "features": features,
            }
        )
    logged_at = END - dt.timedelta(minutes=1)
    lake = Lake(settings)
    lake.append(to_frame(to_row(r, logged_at) for r in records), SERVING_LOG, SERVED)
    landed = served.sample(frac=LABELLED_SHARE, random_state=1)
    actuals = pd.DataFrame(
        {
            "order_id": landed["order_id"].to_numpy(),
            "delivered_at": landed["event_timestamp"] + pd.Timedelta(minutes=40),
            "actual_minutes": landed["delivery_minutes"].to_numpy(dtype=float),
        }
    )
    lake.append(actuals, ACTUALS, SERVED)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[str, LinearModel]:
    """The training set of the ordinary week as Parquet, and the model fitted on it."""
    ref, _ = _split(_feature_frame("normal"))
    path = tmp_path_factory.mktemp("training") / "part-0.parquet"
    ref.to_parquet(path, index=False)
    return str(path), LinearModel(ref)


def _monitored_day(tmp_path: Path, scenario: str, model: LinearModel, **serve) -> Settings:
    settings = Settings(home=tmp_path)
    _, served = _split(_feature_frame(scenario))
    _serve(settings, served, model.predict, **serve)
    return settings


def _check_reports(result: DriftResult) -> None:
    html = Path(result.report_path)
    assert html.parent.name == result.run_key == "20261109T0000Z"
    assert html.stat().st_size > 100_000
    text = html.read_text(encoding="utf-8")
    # Evidently embeds one plotly figure (data and layout as JSON) per compared distribution.
    assert text.count('"layout"') >= len(result.features)
    assert '"name": "reference"' in text and '"name": "current"' in text
    assert "zone_mean_delivery_24h" in text
    assert result.quality_report_path is not None and Path(result.quality_report_path).exists()
    summary = json.loads(Path(result.summary_path).read_text())
    assert DriftResult.from_dict(summary) == result


def _one_window(settings: Settings) -> MonitoringSettings:
    """The monitoring thresholds, one window of confirmed drift enough: these tests are about
    what the drift job measures on generated data, persistence is tests/unit/monitor's."""
    return settings.monitoring.model_copy(update={"persist_windows": 1})


def test_an_ordinary_day_needs_nothing(tmp_path, reference):
    uri, model = reference
    settings = _monitored_day(tmp_path, "normal", model)
    result = monitor_window(END, uri, settings, predict=model.predict)

    assert result.rows == ORDERS_PER_DAY
    assert result.labelled_rows == round(ORDERS_PER_DAY * LABELLED_SHARE)
    assert result.window_start == END - dt.timedelta(hours=24)
    assert result.drifted_share < settings.monitoring.drift_share_threshold
    assert result.prediction is not None and result.prediction.reference == "predictions"
    assert result.prediction.psi < 0.05
    assert set(result.live_mae) == {"v1"} and result.live_mae["v1"].n == result.labelled_rows
    assert result.live_mae["v1"].mae < 10
    _check_reports(result)

    verdict = decide(result, _one_window(settings), production_version="v1")
    assert verdict.action is Action.OK, verdict.summary()
    assert verdict.drifted_features == []


def test_a_storm_triggers_a_retrain_naming_the_weather(tmp_path, reference):
    uri, model = reference
    settings = _monitored_day(tmp_path, "storm", model)
    # No predictor: prediction drift falls back to the reference's delivery times.
    result = monitor_window(END, uri, settings)

    assert result.prediction is not None and result.prediction.reference == "label"
    weather = result.feature("zone_weather")
    assert weather.drifted and weather.psi > 2.0, weather
    verdict = decide(
        result, _one_window(settings), production_version="v1", production_registered_mae=model.mae
    )
    assert verdict.action is Action.RETRAIN, verdict.summary()
    assert "zone_weather" in verdict.drifted_features
    assert "zone_weather" in verdict.to_conf()["reason"]


def test_new_zones_are_drift_that_matters_named_and_retrained_once_confirmed(tmp_path, reference):
    uri, model = reference
    settings = _monitored_day(tmp_path, "new_zone", model)
    result = monitor_window(END, uri, settings, predict=model.predict)

    zone = result.feature("zone_id")
    assert zone.kind == "categorical" and zone.drifted and zone.psi > 0.5, zone
    assert result.drifted_share >= settings.monitoring.drift_share_threshold
    verdict = decide(
        result, _one_window(settings), production_version="v1", production_registered_mae=model.mae
    )
    assert Check.FEATURE_DRIFT in verdict.failed_checks, verdict.summary()
    assert "zone_id" in verdict.drifted_features
    # This least-squares model reads no zone: whether its predictions or its accuracy moved
    # enough to confirm the drift is the day's; a retrain follows exactly when they did.
    confirmed = {Check.PREDICTION_DRIFT, Check.QUALITY_LOSS} & set(verdict.failed_checks)
    assert verdict.drift_seen == bool(confirmed), verdict.summary()
    assert (verdict.action is Action.RETRAIN) == verdict.drift_seen, verdict.summary()


def test_a_worse_production_version_is_rolled_back(tmp_path, reference):
    uri, model = reference
    # Half the orders served by the new production version v2, which runs 5 minutes late.
    settings = _monitored_day(
        tmp_path,
        "normal",
        model,
        version=lambda i: "v2" if i % 2 else "v1",
        bias=lambda v: 5.0 if v == "v2" else 0.0,
    )
    result = monitor_window(END, uri, settings, predict=model.predict)

    assert set(result.live_mae) == {"v1", "v2"}
    assert result.live_mae["v2"].mae > result.live_mae["v1"].mae * 1.05
    verdict = decide(result, _one_window(settings), production_version="v2", previous_version="v1")
    assert verdict.action is Action.ROLLBACK, verdict.summary()
    assert verdict.baseline == "live"


def test_a_window_without_traffic_is_a_named_error(tmp_path, reference):
    uri, _ = reference
    with pytest.raises(NoServingTraffic, match="no serving log"):
        monitor_window(END, uri, Settings(home=tmp_path))
