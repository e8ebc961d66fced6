"""Monitoring's rollback does not flap: only beyond chance, outside the cooldown, never back to a
version that was rolled back, and not on a registered baseline in a drifted world (pure)."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from relay.monitor.rules import Action, Check, decide
from relay.serve.log_read import VersionQuality
from relay.settings import MonitoringSettings, Settings
from tests.unit.monitor.test_rules import END, FEATURES, _drifted_before, _result

SETTINGS = MonitoringSettings()


def _window(
    production: tuple[int, float, float],
    previous: tuple[int, float, float] | None = None,
    **drift: object,
):
    """A window where v2 (production) and v1 served ``(labelled, MAE, SE of the MAE)``."""
    live = {"v2": VersionQuality("v2", production[0], production[1], 0.0, production[2])}
    if previous is not None:
        live["v1"] = VersionQuality("v1", previous[0], previous[1], 0.0, previous[2])
    return dataclasses.replace(_result(**drift), live_mae=live)  # type: ignore[arg-type]


def _decide(result, **kwargs):
    return decide(result, SETTINGS, production_version="v2", previous_version="v1", **kwargs)


def test_a_noisy_regression_past_the_margin_does_not_roll_back():
    # +10% on 120 labels each, with a minute of standard error on each MAE: chance.
    verdict = _decide(_window((120, 5.5, 1.0), (120, 5.0, 1.0)))
    assert verdict.action is Action.OK, verdict.summary()
    assert Check.QUALITY not in verdict.failed_checks
    assert "within noise 2.326 × SE 1.41" in verdict.reasons[1]


def test_a_clear_regression_rolls_back():
    # The same +10%, measured on thousands of orders: SE 0.05 each.
    verdict = _decide(_window((4000, 5.5, 0.05), (4000, 5.0, 0.05)))
    assert verdict.action is Action.ROLLBACK, verdict.summary()
    assert "beyond noise" in verdict.reasons[1]


def test_against_a_registered_mae_only_productions_noise_counts():
    noisy = _decide(_window((150, 6.0, 0.5)), previous_registered_mae=5.0)  # +20%, 0.75 past
    clear = _decide(_window((150, 6.0, 0.1)), previous_registered_mae=5.0)
    assert noisy.action is Action.OK and clear.action is Action.ROLLBACK
    assert clear.baseline == "registered"


def test_a_regression_against_a_registered_mae_in_a_drifted_world_retrains():
    # zone_id, half of what the model relies on, drifted; production is also well past its
    # own registered MAE: drift that costs, seen in the window before too.
    drifted = _window((4000, 7.0, 0.05), psis={"zone_id": 1.2})
    context = {
        "importance": {"zone_id": 0.5, "order_distance_km": 0.5},
        "production_registered_mae": 5.2,
        "recent": [_drifted_before()],
    }
    verdict = _decide(drifted, previous_registered_mae=5.0, **context)
    assert verdict.action is Action.RETRAIN, verdict.summary()
    assert verdict.failed_checks == [Check.QUALITY, Check.FEATURE_DRIFT, Check.QUALITY_LOSS]
    held = next(r for r in verdict.reasons if r.startswith("SKIP: rollback held"))
    assert held.startswith("SKIP: rollback held: the baseline is a registered MAE")
    # Against the previous version's live MAE in the same drifted window, it rolls back.
    live = _window((4000, 7.0, 0.05), (4000, 5.0, 0.05), psis={"zone_id": 1.2})
    assert _decide(live, **context).action is Action.ROLLBACK
    # A drift in a feature the model hardly uses is no reason to doubt the registered MAE.
    minor = {"zone_id": 0.05, "order_distance_km": 0.95}
    assert _decide(drifted, previous_registered_mae=5.0, importance=minor).action is (
        Action.ROLLBACK
    )


def test_the_drift_that_holds_a_rollback_is_judged_by_what_the_previous_version_relies_on():
    # The previous version, whose registered MAE is the baseline, leans on zone_id, which
    # drifted: that baseline is stale, and the regression is the world's (the retrain's).
    drifted = _window((4000, 7.0, 0.05), psis={"zone_id": 1.2})
    leans = {"zone_id": 0.9, "order_distance_km": 0.1}
    held = _decide(drifted, previous_registered_mae=5.0, previous_importance=leans)
    assert held.action is Action.OK, held.summary()
    assert any(
        r.startswith("SKIP: rollback held: the baseline is a registered MAE") for r in held.reasons
    )
    # The same drift in a feature the previous version ignores leaves its MAE a fair baseline,
    # though production, weighing every input alike, would have called it drift that matters.
    ignores = {"zone_id": 0.0, "order_distance_km": 1.0}
    alike = {"zone_id": 0.5, "order_distance_km": 0.5}
    assert _decide(drifted, previous_registered_mae=5.0, importance=alike).action is Action.OK
    verdict = _decide(
        drifted, previous_registered_mae=5.0, importance=alike, previous_importance=ignores
    )
    assert verdict.action is Action.ROLLBACK, verdict.summary()


def test_a_model_whose_predictions_moved_on_unchanged_inputs_rolls_back_against_a_registered_mae():
    # A broken model in production (every ETA late): its predictions drifted, the world did not.
    broken = _window((4000, 9.0, 0.05), prediction_psi=2.5)
    verdict = _decide(broken, previous_registered_mae=5.0)
    assert verdict.action is Action.ROLLBACK, verdict.summary()
    assert verdict.failed_checks == [Check.QUALITY, Check.PREDICTION_DRIFT]


@pytest.mark.parametrize(
    ("hours_ago", "action"),
    [(1, Action.OK), (23.9, Action.OK), (24, Action.ROLLBACK), (48, Action.ROLLBACK)],
)
def test_no_second_rollback_within_the_cooldown(hours_ago, action):
    clear = _window((4000, 5.5, 0.05), (4000, 5.0, 0.05))
    last = END - dt.timedelta(hours=hours_ago)
    verdict = _decide(clear, last_rollback_at=last)
    assert verdict.action is action, verdict.summary()
    if action is Action.OK:
        assert verdict.failed_checks == [Check.QUALITY]  # it did fail; the rollback waits
        assert "within the cooldown of 86400 s" in verdict.reasons[-1]


def test_within_the_cooldown_drift_still_retrains():
    # About the rollback cooldown, not persistence: one window of confirmed drift suffices.
    drifted = _window(
        (4000, 5.5, 0.05), (4000, 5.0, 0.05), drifted=FEATURES[:5], prediction_psi=0.5
    )
    verdict = decide(
        drifted,
        SETTINGS.model_copy(update={"persist_windows": 1}),
        production_version="v2",
        previous_version="v1",
        last_rollback_at=END - dt.timedelta(hours=2),
    )
    assert verdict.action is Action.RETRAIN, verdict.summary()


def test_a_rolled_back_previous_version_is_never_proposed():
    # Production was restored over v1, which was rolled back: however much better v1 looks
    # (a registered MAE, or live in the window), monitoring never proposes it again.
    much_worse = _window((4000, 9.0, 0.05), (4000, 5.0, 0.05))
    for registered in (None, 5.0):
        verdict = _decide(much_worse, previous_registered_mae=registered, previous_rolled_back=True)
        assert verdict.action is Action.OK, verdict.summary()
        assert verdict.baseline is None and verdict.failed_checks == []
        assert "was rolled back; no version to roll back to, not judged" in verdict.reasons[1]


def test_the_cooldown_and_z_come_from_the_settings(monkeypatch):
    monkeypatch.setenv("RELAY_MONITORING__ROLLBACK_COOLDOWN_S", "3600")
    monkeypatch.setenv("RELAY_MONITORING__QUALITY_Z", "0")
    s = Settings().monitoring
    assert (s.rollback_cooldown_s, s.quality_z) == (3600.0, 0.0)
    noisy = _window((120, 5.5, 1.0), (120, 5.0, 1.0))
    two_hours = END - dt.timedelta(hours=2)
    verdict = decide(
        noisy, s, production_version="v2", previous_version="v1", last_rollback_at=two_hours
    )
    assert verdict.action is Action.ROLLBACK, verdict.summary()  # z 0: any excess; cooled down
    with pytest.raises(ValueError, match="rollback_cooldown_s"):
        MonitoringSettings(rollback_cooldown_s=-1)
