"""A retrain needs drift in features that matter, confirmed, over consecutive windows, outside
the cooldown after the last retrain (pure; the history round trip on a local store)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest

from relay.flows.eta_monitoring import last_retrain_at
from relay.monitor.history import MonitoringHistory
from relay.monitor.retrain_rules import drift_streak, feature_weights
from relay.monitor.rules import Action, Check, decide
from relay.registry import Lineage, ModelState, ModelVersion, TrainingTrigger
from relay.serve.log_read import VersionQuality
from relay.settings import MonitoringSettings, Settings
from tests.unit.monitor.test_rules import END, FEATURES, _drifted_before, _result

SETTINGS = MonitoringSettings()
#: What the model relies on: the distance most, the zone's orders hardly at all.
IMPORTANCE = {
    "order_distance_km": 0.45,
    "zone_id": 0.2,
    "merchant_mean_prep_24h": 0.15,
    "courier_mean_delivery_24h": 0.1,
    "zone_weather": 0.06,
    "zone_orders_1h": 0.02,
    "merchant_orders_1h": 0.02,
}


def _drift(feature: str, *, prediction_psi: float = 0.4):
    """A window where ``feature`` drifted (Evidently's flag and a PSI of 0.8)."""
    return _result(drifted=(feature,), psis={feature: 0.8}, prediction_psi=prediction_psi)


def _decide(result, **kwargs):
    kwargs.setdefault("importance", IMPORTANCE)
    return decide(result, kwargs.pop("settings", SETTINGS), production_version="v2", **kwargs)


def test_drift_in_a_feature_the_model_hardly_uses_does_not_retrain():
    verdict = _decide(_drift("zone_orders_1h"), recent=[_drifted_before()])
    assert verdict.action is Action.OK, verdict.summary()
    assert Check.FEATURE_DRIFT not in verdict.failed_checks and not verdict.drift_seen
    assert (
        "share 0.02 < 0.3 (zone_orders_1h 0.02 drifted; weights: production's importance"
        in (verdict.reasons[2])
    )


def test_the_same_drift_in_a_feature_the_model_relies_on_retrains_once_persisted():
    first = _decide(_drift("order_distance_km"))
    assert first.action is Action.OK and first.drift_seen and first.drift_streak == 1
    assert first.reasons[-1] == (
        "SKIP: persistence: drift seen in 1 of 2 consecutive windows; waiting"
    )
    assert first.drifted_features == ["order_distance_km"]
    second = _decide(_drift("order_distance_km"), recent=[_drifted_before()])
    assert second.action is Action.RETRAIN, second.summary()
    assert second.drift_streak == 2
    assert second.reasons[-1] == (
        "PASS: persistence: drift seen in 2 consecutive windows (≥ 2); no retrain before"
    )


def test_features_add_up_by_their_weights():
    # Two mid-weight features (0.15 + 0.1 = 0.25) are not enough; with zone_id (0.2) they are.
    two = _result(
        drifted=("merchant_mean_prep_24h", "courier_mean_delivery_24h"), prediction_psi=0.4
    )
    assert not _decide(two).drift_seen
    three = dataclasses.replace(
        two,
        features=[dataclasses.replace(f, drifted=True) if f.name == "zone_id" else f
                  for f in two.features],
    )  # fmt: skip
    verdict = _decide(three)
    assert verdict.drift_seen, verdict.summary()
    assert verdict.drifted_features == [
        "zone_id",
        "merchant_mean_prep_24h",
        "courier_mean_delivery_24h",
    ]  # heaviest first


def test_feature_drift_without_confirmation_waits():
    unconfirmed = _drift("order_distance_km", prediction_psi=0.05)
    verdict = _decide(unconfirmed, recent=[_drifted_before()])
    assert verdict.action is Action.OK and not verdict.drift_seen, verdict.summary()
    assert verdict.failed_checks == [Check.FEATURE_DRIFT]
    assert verdict.reasons[-1].startswith(
        "SKIP: retrain: feature drift that matters, not confirmed by prediction drift or a "
        "quality loss"
    )
    # A measured quality loss (production against its own registered MAE) confirms it.
    costly = dataclasses.replace(
        unconfirmed, live_mae={"v2": VersionQuality("v2", 3000, 6.0, 0.0, 0.05)}
    )
    verdict = _decide(costly, recent=[_drifted_before()], production_registered_mae=5.0)
    assert verdict.action is Action.RETRAIN, verdict.summary()
    assert verdict.failed_checks == [Check.FEATURE_DRIFT, Check.QUALITY_LOSS]
    # Within noise (a minute of standard error on 120 labels) is no loss.
    noisy = dataclasses.replace(
        unconfirmed, live_mae={"v2": VersionQuality("v2", 120, 5.6, 0.0, 1.0)}
    )
    verdict = _decide(noisy, recent=[_drifted_before()], production_registered_mae=5.0)
    assert verdict.action is Action.OK and "within noise 1.645 × SE 1.00" in verdict.reasons[4]


def test_a_quality_loss_shows_that_drift_in_a_light_feature_matters():
    """A storm: the weather, which hardly varied in the training week (6% of the importance),
    drifted, the predictions barely moved, and production lost a fifth of its accuracy."""
    storm = dataclasses.replace(
        _drift("zone_weather", prediction_psi=0.05),
        live_mae={"v2": VersionQuality("v2", 3000, 6.0, 0.0, 0.05)},
    )
    first = _decide(storm, production_registered_mae=5.0)
    assert first.failed_checks == [Check.QUALITY_LOSS] and first.drift_seen, first.summary()
    assert first.drifted_features == ["zone_weather"]
    second = _decide(storm, production_registered_mae=5.0, recent=[_drifted_before()])
    assert second.action is Action.RETRAIN, second.summary()
    assert "zone_weather" in second.to_conf()["drifted_features"]
    # Without the loss, the same weather is no reason to retrain.
    calm = dataclasses.replace(storm, live_mae={"v2": VersionQuality("v2", 3000, 5.1, 0.0, 0.05)})
    assert not _decide(calm, production_registered_mae=5.0).drift_seen
    # A loss with no input and no prediction drifted at all is not drift: rollback's to judge.
    still = dataclasses.replace(_result(), live_mae=storm.live_mae)
    verdict = _decide(still, production_registered_mae=5.0, recent=[_drifted_before()])
    assert verdict.action is Action.OK and not verdict.drift_seen, verdict.summary()
    assert verdict.reasons[-1].startswith(
        "SKIP: retrain: a quality loss without drift in the inputs or the predictions"
    )


@pytest.mark.parametrize(
    ("hours_ago", "action"),
    [(1, Action.OK), (23.9, Action.OK), (24, Action.RETRAIN), (72, Action.RETRAIN)],
)
def test_no_retrain_within_the_cooldown_of_the_last_one(hours_ago, action):
    last = END - dt.timedelta(hours=hours_ago)
    verdict = _decide(_drift("order_distance_km"), recent=[_drifted_before()], last_retrain_at=last)
    assert verdict.action is action, verdict.summary()
    assert verdict.drift_seen  # recorded either way: the streak carries on past the cooldown
    if action is Action.OK:
        assert verdict.reasons[-1].startswith("SKIP: retrain held: drift seen in 2 consecutive")
        assert "within the cooldown of 86400 s" in verdict.reasons[-1]
    else:
        assert "past the cooldown of 86400 s" in verdict.reasons[-1]


def test_without_importance_every_monitored_feature_weighs_the_same():
    for importance in (None, {}, {"courier_id": 1.0}):
        weights, source = feature_weights(FEATURES, importance)
        assert list(weights.values()) == pytest.approx([1 / len(FEATURES)] * len(FEATURES))
        assert source.startswith(f"equal over {len(FEATURES)} features: ")
    verdict = _decide(_drift("zone_orders_1h"), importance=None)
    assert "zone_orders_1h 0.10 drifted; weights: equal over 10 features: production records no " \
        "feature importance" in verdict.reasons[2]  # fmt: skip
    # Weights follow the importance, renormalised over the monitored features.
    weights, _ = feature_weights(["a", "b", "c"], {"a": 3.0, "b": 1.0, "x": 4.0})
    assert weights == {"a": 0.75, "b": 0.25, "c": 0.0}


def test_the_streak_counts_earlier_windows_of_the_same_version_in_a_row():
    two = [_drifted_before(hours=1), _drifted_before(hours=2)]
    assert drift_streak(two, "v2", END) == 2
    # This window's own earlier record (a re-run) is passed over, not counted.
    assert drift_streak([_drifted_before(hours=0), *two], "v2", END) == 2
    quiet = {**_drifted_before(hours=2), "drift_seen": False}
    assert drift_streak([_drifted_before(hours=1), quiet, _drifted_before(hours=3)], "v2", END) == 1
    old_record = {k: v for k, v in _drifted_before().items() if k != "drift_seen"}
    assert drift_streak([old_record], "v2", END) == 0
    # Drift against another version's reference says nothing about this one.
    assert drift_streak([_drifted_before(version="v1")], "v2", END) == 0
    s = SETTINGS.model_copy(update={"persist_windows": 3})
    verdict = _decide(_drift("order_distance_km"), recent=two[:1], settings=s)
    assert verdict.reasons[-1] == (
        "SKIP: persistence: drift seen in 2 of 3 consecutive windows; waiting"
    )
    assert _decide(_drift("order_distance_km"), recent=two, settings=s).action is Action.RETRAIN


def test_drift_seen_goes_through_the_history_to_the_next_window(tmp_path: Path):
    history = MonitoringHistory(Settings(home=tmp_path))
    hour = dt.timedelta(hours=1)
    actions = []
    for i in range(3):
        end = END + i * hour
        window = dataclasses.replace(
            _drift("order_distance_km"), window_end=end, run_key=f"{end:%Y%m%dT%H%MZ}"
        )
        verdict = _decide(window, recent=history.verdicts(SETTINGS.persist_windows))
        history.record_verdict({**verdict.to_dict(), "action": verdict.action.value})
        actions.append(verdict.action)
    assert actions == [Action.OK, Action.RETRAIN, Action.RETRAIN]
    assert [v["drift_streak"] for v in history.verdicts(3)] == [3, 2, 1]


def _version(i: int, trigger: TrainingTrigger | None) -> ModelVersion:
    return ModelVersion(
        id=f"eta_mlp_1.{i}.0",
        name="eta_mlp",
        version=f"1.{i}.0",
        owner="pipeline",
        created_at=END - dt.timedelta(days=10 - i),
        state=ModelState.TRAINED,
        lineage=Lineage(feature_service="eta_v1", trigger=trigger),
    )


def test_the_last_retrain_is_the_newest_version_monitoring_asked_for():
    scheduled = TrainingTrigger(reason="scheduled")
    drift = TrainingTrigger(reason="drift", triggered_by="eta_monitoring")
    versions = [_version(1, drift), _version(2, drift), _version(3, scheduled), _version(4, None)]
    assert last_retrain_at(versions) == END - dt.timedelta(days=8)
    assert last_retrain_at(versions[2:]) is None
