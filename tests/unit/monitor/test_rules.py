"""Monitoring decisions: each rule on its own, their precedence, thresholds from settings; PSI."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Mapping

import numpy as np
import pytest

from relay.monitor.drift import DriftResult, FeatureDrift, PredictionDrift, psi
from relay.monitor.rules import Action, Check, decide, registered_mae
from relay.serve.log_read import VersionQuality
from relay.settings import MonitoringSettings, Settings

SETTINGS = MonitoringSettings()
FEATURES = (
    "courier_deliveries_24h",
    "courier_mean_delivery_24h",
    "merchant_mean_prep_24h",
    "zone_mean_delivery_24h",
    "order_distance_km",
    "order_hour",
    "zone_id",
    "zone_weather",
    "zone_orders_1h",
    "merchant_orders_1h",
)
END = dt.datetime(2026, 11, 21, 14, tzinfo=dt.UTC)


def _result(
    *,
    rows: int = 5000,
    drifted: tuple[str, ...] = (),
    psis: Mapping[str, float | None] | None = None,
    prediction_psi: float | None = 0.01,
    live: Mapping[str, tuple[int, float]] | None = None,
) -> DriftResult:
    """A measured window: ``drifted`` features flagged by Evidently, PSI 0.01 unless given."""
    psis = psis or {}
    features = [
        FeatureDrift(
            name=name,
            kind="categorical" if name in ("zone_id", "zone_weather") else "numerical",
            method="Wasserstein distance (normed)",
            score=0.3 if name in drifted else 0.02,
            threshold=0.1,
            drifted=name in drifted,
            psi=psis.get(name, 0.01),
        )
        for name in FEATURES
    ]
    prediction = None
    if prediction_psi is not None:
        prediction = PredictionDrift(
            "predictions", "Wasserstein distance (normed)", 0.02, 0.1, False, prediction_psi, 35, 36
        )
    return DriftResult(
        run_key="20261121T1400Z",
        window_start=END - dt.timedelta(hours=24),
        window_end=END,
        rows=rows,
        labelled_rows=sum(n for n, _ in (live or {}).values()),
        reference_rows=20_000,
        features=features,
        drifted_share=len(drifted) / len(FEATURES),
        prediction=prediction,
        live_mae={v: VersionQuality(v, n, mae, 0.0) for v, (n, mae) in (live or {}).items()},
        report_path="/reports/drift/20261121T1400Z/report.html",
    )


def _failing(verdict) -> list[str]:
    return [r for r in verdict.reasons if r.startswith("FAIL: ")]


def test_a_quiet_window_is_ok_and_lists_every_check():
    verdict = decide(_result(), SETTINGS, production_version="v2")
    assert verdict.action is Action.OK, verdict.summary()
    assert verdict.failed_checks == [] and verdict.drifted_features == []
    assert len(verdict.reasons) == 5 and all(r.startswith("PASS: ") for r in verdict.reasons)
    assert verdict.summary().startswith("monitoring 20261121T1400Z of v2: OK")
    assert verdict.window_end == END.isoformat()
    assert json.loads(json.dumps(verdict.to_dict()))["action"] == "ok"


def test_too_little_traffic_is_ok_whatever_the_numbers_say():
    result = _result(
        rows=SETTINGS.min_rows - 1,
        drifted=FEATURES,
        psis=dict.fromkeys(FEATURES, 3.0),
        prediction_psi=2.0,
        live={"v2": (150, 9.0), "v1": (150, 5.0)},
    )
    verdict = decide(result, SETTINGS, production_version="v2", previous_version="v1")
    assert verdict.action is Action.OK
    assert len(verdict.reasons) == 1
    assert verdict.reasons[0].startswith("SKIP: not enough traffic: 199 predictions < min 200")


def _drifted_before(version: str = "v2", hours: int = 1) -> dict[str, object]:
    """The recorded verdict of an earlier window that saw drift."""
    ended = END - dt.timedelta(hours=hours)
    return {
        "run_key": f"{ended:%Y%m%dT%H%MZ}",
        "window_end": ended.isoformat(),
        "production_version": version,
        "action": "ok",
        "drift_seen": True,
    }


def test_a_drifted_share_at_the_threshold_retrains_once_confirmed_and_persisted():
    # No importance recorded: every monitored feature weighs 1/10, so 3 drifted are 30%.
    drifted = FEATURES[:3]
    result = _result(drifted=drifted, prediction_psi=0.4)
    verdict = decide(result, SETTINGS, production_version="v2", recent=[_drifted_before()])
    assert verdict.action is Action.RETRAIN, verdict.summary()
    assert verdict.failed_checks == [Check.FEATURE_DRIFT, Check.PREDICTION_DRIFT]
    assert verdict.drifted_features == list(drifted)
    assert _failing(verdict)[0].startswith(
        "FAIL: feature drift: importance-weighted share 0.30 ≥ 0.3 (courier_deliveries_24h 0.10"
    )
    assert (
        "weights: equal over 10 features: production records no feature importance"
        in (_failing(verdict)[0])
    )
    assert verdict.drift_seen and verdict.drift_streak == 2
    # One feature fewer is below the threshold: the drifted features are named, nothing done.
    calm = decide(
        _result(drifted=FEATURES[:2], prediction_psi=0.4),
        SETTINGS,
        production_version="v2",
        recent=[_drifted_before()],
    )
    assert calm.action is Action.OK and calm.drifted_features == [] and not calm.drift_seen
    assert "courier_deliveries_24h 0.10, courier_mean_delivery_24h 0.10 drifted" in calm.reasons[2]


def test_a_feature_over_its_psi_threshold_counts_as_drifted_by_its_weight():
    result = _result(psis={"merchant_mean_prep_24h": 0.25}, prediction_psi=0.4)
    heavy = {"merchant_mean_prep_24h": 0.4, "order_distance_km": 0.6}
    verdict = decide(
        result, SETTINGS, production_version="v2", importance=heavy, recent=[_drifted_before()]
    )
    assert verdict.action is Action.RETRAIN, verdict.summary()
    assert verdict.drifted_features == ["merchant_mean_prep_24h"]
    assert "merchant_mean_prep_24h" in verdict.to_conf()["reason"]
    light = {"merchant_mean_prep_24h": 0.05, "order_distance_km": 0.95}
    ignored = decide(
        result, SETTINGS, production_version="v2", importance=light, recent=[_drifted_before()]
    )
    assert ignored.action is Action.OK, ignored.summary()
    assert "share 0.05 < 0.3 (merchant_mean_prep_24h 0.05 drifted" in ignored.reasons[2]


def test_a_feature_with_a_catalog_threshold_is_judged_by_its_psi_alone():
    s = SETTINGS.model_copy(update={"psi_thresholds": {"zone_weather": 1.0}})
    weather = {"zone_weather": 1.0}
    flagged = _result(drifted=("zone_weather",), psis={"zone_weather": 0.9})
    assert decide(flagged, s, production_version="v2", importance=weather).failed_checks == []
    over = _result(psis={"zone_weather": 1.1})
    assert decide(over, s, production_version="v2", importance=weather).failed_checks == [
        Check.FEATURE_DRIFT
    ]


def test_weather_is_weighed_by_its_importance_not_a_threshold_of_its_own():
    assert SETTINGS.psi_thresholds == {}  # nothing fitted to the simulator's weather
    rainy = _result(drifted=("zone_weather",), psis={"zone_weather": 0.9}, prediction_psi=0.4)
    minor = {"zone_weather": 0.1, "order_distance_km": 0.9}
    verdict = decide(
        rainy, SETTINGS, production_version="v2", importance=minor, recent=[_drifted_before()]
    )
    assert verdict.action is Action.OK and not verdict.drift_seen, verdict.summary()
    major = {"zone_weather": 0.5, "order_distance_km": 0.5}
    verdict = decide(
        rainy, SETTINGS, production_version="v2", importance=major, recent=[_drifted_before()]
    )
    assert verdict.action is Action.RETRAIN, verdict.summary()
    assert verdict.drifted_features == ["zone_weather"]


def test_a_feature_without_values_in_the_window_is_not_judged_by_psi():
    result = _result(psis={"order_hour": None})
    verdict = decide(result, SETTINGS, production_version="v2")
    assert verdict.action is Action.OK, verdict.summary()


def test_prediction_drift_alone_waits_for_a_quality_loss():
    drifted = _result(prediction_psi=0.3)
    verdict = decide(drifted, SETTINGS, production_version="v2", recent=[_drifted_before()])
    assert verdict.action is Action.OK and not verdict.drift_seen, verdict.summary()
    assert verdict.failed_checks == [Check.PREDICTION_DRIFT]
    assert _failing(verdict)[0].startswith("FAIL: prediction drift: PSI 0.300 > 0.2")
    assert verdict.reasons[-1].startswith("SKIP: retrain: predictions drifted without feature")
    # With production measurably worse than its own registered MAE, it is drift that costs.
    costly = dataclasses.replace(
        drifted, live_mae={"v2": VersionQuality("v2", 4000, 6.0, 0.0, 0.05)}
    )
    verdict = decide(
        costly,
        SETTINGS,
        production_version="v2",
        production_registered_mae=5.0,
        recent=[_drifted_before()],
    )
    assert verdict.action is Action.RETRAIN, verdict.summary()
    assert verdict.failed_checks == [Check.PREDICTION_DRIFT, Check.QUALITY_LOSS]
    assert (
        "quality loss: v2 live MAE 6.00 vs its registered MAE 5.00 min (+20.0% > 5.0%"
        in (_failing(verdict)[1])
    )
    no_reference = decide(_result(prediction_psi=None), SETTINGS, production_version="v2")
    assert no_reference.action is Action.OK
    assert "not judged" in no_reference.reasons[3]


def test_production_worse_than_the_previous_version_live_rolls_back():
    result = _result(live={"v2": (400, 6.0), "v1": (400, 5.0)})
    verdict = decide(result, SETTINGS, production_version="v2", previous_version="v1")
    assert verdict.action is Action.ROLLBACK, verdict.summary()
    assert verdict.failed_checks == [Check.QUALITY] and verdict.baseline == "live"
    assert _failing(verdict) == [
        "FAIL: quality: v2 live MAE 6.00 vs v1's live MAE 5.00 min (+20.0% > 5.0%, 400 labelled)"
    ]


def test_a_regression_within_the_margin_is_ok():
    result = _result(live={"v2": (400, 5.2), "v1": (400, 5.0)})  # +4%
    verdict = decide(result, SETTINGS, production_version="v2", previous_version="v1")
    assert verdict.action is Action.OK, verdict.summary()
    assert verdict.baseline == "live"


def test_a_rollback_takes_precedence_over_a_retrain():
    result = _result(
        drifted=FEATURES[:5],
        psis={"zone_id": 1.2},
        prediction_psi=0.5,
        live={"v2": (400, 7.0), "v1": (400, 5.0)},
    )
    verdict = decide(result, SETTINGS, production_version="v2", previous_version="v1")
    assert verdict.action is Action.ROLLBACK, verdict.summary()
    assert verdict.failed_checks == [Check.QUALITY, Check.FEATURE_DRIFT, Check.PREDICTION_DRIFT]
    assert verdict.drift_seen  # recorded for the next window, whatever this one decided


def test_the_registered_mae_is_the_baseline_when_the_previous_version_did_not_serve():
    result = _result(live={"v2": (400, 6.0), "v1": (30, 4.0)})  # v1: too few labels to count
    verdict = decide(
        result,
        SETTINGS,
        production_version="v2",
        previous_version="v1",
        previous_registered_mae=5.5,
    )
    assert verdict.action is Action.ROLLBACK, verdict.summary()
    assert verdict.baseline == "registered"
    assert "v1's registered MAE 5.50" in _failing(verdict)[0]
    close = decide(
        result,
        SETTINGS,
        production_version="v2",
        previous_version="v1",
        previous_registered_mae=5.9,
    )
    assert close.action is Action.OK and close.baseline == "registered"


@pytest.mark.parametrize(
    ("live", "production", "registered", "why"),
    [
        ({"v2": (99, 9.0), "v1": (400, 5.0)}, "v2", None, "99 labelled predictions < min 100"),
        ({"v1": (400, 5.0)}, "v2", None, "0 labelled predictions < min 100"),
        ({"v2": (400, 9.0)}, "v2", None, "no previous production version to compare with"),
        ({"v2": (400, 9.0), "v1": (400, 5.0)}, None, 5.0, "no production version given"),
    ],
)
def test_quality_is_not_judged_without_enough_evidence(live, production, registered, why):
    result = _result(live=live)
    verdict = decide(
        result,
        SETTINGS,
        production_version=production,
        previous_version="v1",
        previous_registered_mae=registered,
    )
    assert verdict.action is Action.OK, verdict.summary()
    assert verdict.baseline is None
    quality = verdict.reasons[1]
    assert quality.startswith("PASS: quality: ") and why in quality and "not judged" in quality


def test_thresholds_come_from_the_settings(monkeypatch):
    monkeypatch.setenv("RELAY_MONITORING__MIN_ROWS", "50")
    monkeypatch.setenv("RELAY_MONITORING__PSI_THRESHOLD", "0.5")
    monkeypatch.setenv("RELAY_MONITORING__PSI_THRESHOLDS", '{"zone_weather": 0.3}')
    monkeypatch.setenv("RELAY_MONITORING__IMPORTANCE_DRIFT_THRESHOLD", "0.6")
    monkeypatch.setenv("RELAY_MONITORING__PERSIST_WINDOWS", "1")
    monkeypatch.setenv("RELAY_MONITORING__MAX_MAE_REGRESSION", "0.25")
    monkeypatch.setenv("RELAY_MONITORING__MIN_LABELLED", "10")
    s = Settings().monitoring
    assert (s.min_rows, s.psi_threshold, s.psi_thresholds) == (50, 0.5, {"zone_weather": 0.3})
    assert (s.importance_drift_threshold, s.persist_windows) == (0.6, 1)
    assert s.window_hours == 24  # untouched defaults stay

    result = _result(
        rows=60,
        # 5 of 10 equal weights: 50% < 60%; zone_weather, flagged by Evidently, is judged by
        # its own PSI threshold alone (0.25 ≤ 0.3).
        drifted=(*FEATURES[:5], "zone_weather"),
        psis={"merchant_mean_prep_24h": 0.45, "order_hour": 0.45, "zone_weather": 0.25},
        prediction_psi=0.3,
        live={"v2": (20, 6.0), "v1": (20, 5.0)},  # +20% ≤ 25%
    )
    verdict = decide(result, s, production_version="v2", previous_version="v1")
    assert verdict.action is Action.OK, verdict.summary()
    assert "share 0.50 < 0.6" in verdict.reasons[2]
    # zone_weather over its own 0.3 adds 10%: 60%, confirmed, and one window is enough.
    stormy = _result(rows=60, drifted=FEATURES[:5], psis={"zone_weather": 0.35}, prediction_psi=0.3)
    verdict = decide(stormy, s, production_version="v2")
    assert verdict.action is Action.RETRAIN, verdict.summary()
    assert "drift seen in 1 consecutive window (≥ 1)" in verdict.reasons[-1]
    # With the defaults, 60 predictions are too little traffic to judge anything.
    default = decide(result, SETTINGS, production_version="v2", previous_version="v1")
    assert default.action is Action.OK and default.reasons[0].startswith("SKIP: ")


def test_monitoring_settings_refuse_nonsense():
    with pytest.raises(ValueError, match="drift_share_threshold"):
        MonitoringSettings(drift_share_threshold=1.5)
    with pytest.raises(ValueError, match="importance_drift_threshold"):
        MonitoringSettings(importance_drift_threshold=0)
    with pytest.raises(ValueError, match="persist_windows"):
        MonitoringSettings(persist_windows=0)
    with pytest.raises(ValueError, match="retrain_cooldown_s"):
        MonitoringSettings(retrain_cooldown_s=-1)
    with pytest.raises(ValueError, match="psi_threshold"):
        MonitoringSettings(psi_threshold=0)
    with pytest.raises(ValueError, match="PSI thresholds must be > 0"):
        MonitoringSettings(psi_thresholds={"zone_weather": 0.0})


def test_to_conf_is_the_training_runs_conf():
    verdict = decide(
        _result(psis={"zone_id": 1.3}, prediction_psi=0.3),
        SETTINGS,
        production_version="v2",
        importance={"zone_id": 0.5, "order_distance_km": 0.5},
        recent=[_drifted_before()],
    )
    conf = verdict.to_conf()
    assert json.loads(json.dumps(conf)) == conf
    assert conf["reason"].startswith(
        "eta_monitoring 20261121T1400Z retrain: feature drift: importance-weighted share 0.50 "
        "≥ 0.3 (zone_id 0.50 drifted; weights: production's importance; 8 with none); "
        "prediction drift: PSI 0.300 > 0.2"
    )
    assert conf["triggered_by"] == "eta_monitoring"
    assert conf["monitoring_run"] == "20261121T1400Z"
    assert conf["production_version"] == "v2"
    assert conf["drifted_features"] == ["zone_id"]
    assert conf["drift_report"].endswith("/report.html")


def test_registered_mae_reads_the_best_metric_there_is():
    assert registered_mae({"val_mae": 6.1, "mae_minutes": 5.2}) == 5.2
    assert registered_mae({"val_mae": 6.1, "val_loss": 0.3}) == 6.1
    assert registered_mae({"mae_minutes": float("nan"), "val_mae": 6.1}) == 6.1
    assert registered_mae({"val_loss": 0.3}) is None


def test_a_drift_result_round_trips_through_json():
    result = _result(drifted=("zone_id",), live={"v2": (400, 6.0)})
    back = DriftResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert back == result
    assert back.drifted_features == ["zone_id"]
    assert back.feature("zone_id").kind == "categorical"
    with pytest.raises(KeyError, match="was not monitored"):
        back.feature("courier_id")


# PSI ------------------------------------------------------------------------------------------


def test_psi_of_the_same_distribution_is_near_zero_and_of_a_shift_is_high():
    rng = np.random.default_rng(0)
    reference = rng.normal(30, 8, 20_000)
    assert psi(reference, rng.normal(30, 8, 5_000)) < 0.02
    assert 0.1 < psi(reference, rng.normal(33, 8, 5_000)) < 0.25
    assert psi(reference, rng.normal(40, 8, 5_000)) > 1.0


def test_psi_leaves_nulls_out():
    rng = np.random.default_rng(1)
    reference = rng.normal(0, 1, 10_000)
    current = rng.normal(0, 1, 10_000)
    with_nulls = np.where(rng.random(10_000) < 0.05, np.nan, reference)
    assert psi(with_nulls, current) == pytest.approx(psi(reference[~np.isnan(with_nulls)], current))
    assert psi(with_nulls, current) < 0.02


def test_psi_of_categories_counts_a_new_category():
    reference = ["Z01"] * 500 + ["Z02"] * 500
    assert psi(reference, ["Z01"] * 50 + ["Z02"] * 50, categorical=True) == pytest.approx(0.0)
    new_zone = ["Z01"] * 400 + ["Z02"] * 400 + ["Z99"] * 200
    assert psi(reference, new_zone, categorical=True) > 1.0
    assert psi(reference, [None, *new_zone], categorical=True) == pytest.approx(
        psi(reference, new_zone, categorical=True)
    )


def test_psi_of_discrete_counts_merges_tied_quantiles():
    reference = [0] * 800 + [1] * 150 + [2] * 50  # every decile edge is 0 or 1
    assert psi(reference, reference) == pytest.approx(0.0)
    assert psi(reference, [0] * 500 + [1] * 300 + [2] * 200) > 0.2


def test_psi_needs_values_on_both_sides():
    with pytest.raises(ValueError, match="needs values on both sides"):
        psi([1.0, 2.0], [np.nan, np.nan])


def test_the_reference_of_a_version_is_the_training_set_it_was_registered_with():
    from relay.monitor.drift import ReferenceUnusable
    from relay.monitor.window import reference_uri_of
    from relay.registry import Lineage, ModelState, ModelVersion, TrainingSetRef

    uri = "s3://lake/eta/training/eta_20261114_20261120/date=2026-11-20/part-0.parquet"
    version = ModelVersion(
        id="eta_mlp_1.2.0_20261121_1402",
        name="eta_mlp",
        version="1.2.0",
        owner="pipeline",
        created_at=END,
        state=ModelState.TRAINED,
        lineage=Lineage(feature_service="eta_v1", training_set=TrainingSetRef(uri=uri)),
    )
    assert reference_uri_of(version) == uri
    # A version registered before lineage carried its training set.
    old = version.model_copy(update={"lineage": Lineage(feature_service="eta_v1")})
    with pytest.raises(ReferenceUnusable, match="records no training set"):
        reference_uri_of(old)
