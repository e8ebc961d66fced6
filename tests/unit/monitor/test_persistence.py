"""A quality loss that no window confirms alone is confirmed by the persisting windows' labelled
rows together, each row counted once (pure; verdicts passed as the history records them)."""

from __future__ import annotations

import dataclasses
import datetime as dt

from relay.monitor.persistence import WindowLoss, drift_span, pooled_loss_check
from relay.monitor.rules import Action, Check, decide
from relay.serve.log_read import VersionQuality
from relay.settings import MonitoringSettings
from tests.unit.monitor.test_retrain_rules import IMPORTANCE
from tests.unit.monitor.test_rules import END, _result

SETTINGS = MonitoringSettings()
REGISTERED = 5.0  # the margin (5%) puts the line at 5.25 min
SE = 0.12  # a day of ~1,600 labelled orders: one window confirms only past 5.25 + 1.645 × 0.12
DAY = dt.timedelta(hours=24)


def _window(mae: float, *, end: dt.datetime = END, hours: int = 24, se: float | None = SE):
    """A window where a feature the model gives no weight drifted (a courier shortage's
    courier counts) and production served 1,600 labelled predictions at ``mae``."""
    result = _result(drifted=("courier_deliveries_24h",), psis={"courier_deliveries_24h": 0.5})
    return dataclasses.replace(
        result,
        run_key=f"{end:%Y%m%dT%H%MZ}",
        window_start=end - dt.timedelta(hours=hours),
        window_end=end,
        labelled_rows=1600,
        live_mae={"v2": VersionQuality("v2", 1600, mae, 0.0, se)},
    )


def _decide(result, recent=(), settings=SETTINGS):
    return decide(
        result,
        settings,
        production_version="v2",
        importance=IMPORTANCE,
        recent=list(recent),
        production_registered_mae=REGISTERED,
    )


def _days(*maes: float, hours: int = 24, step: dt.timedelta = DAY):
    """The verdicts of consecutive windows, oldest first, each given the ones before it."""
    verdicts: list = []
    for i, mae in enumerate(maes):
        end = END - step * (len(maes) - 1 - i)
        recent = [v.to_dict() for v in reversed(verdicts)]
        verdicts.append(_decide(_window(mae, end=end, hours=hours), recent))
    return verdicts


def test_a_modest_loss_suspected_one_day_and_confirmed_the_next_retrains_on_both_days_rows():
    # The courier shortage's shape: +8% (within one day's noise), then +18% (beyond it).
    first, second = _days(5.40, 5.90)
    assert first.action is Action.OK and not first.drift_seen and first.drift_suspected
    assert first.drift_streak == 1 and first.live_quality is not None
    assert first.live_quality["n"] == 1600 and first.live_quality["mae_se"] == SE
    assert first.reasons[-1].startswith(
        "SKIP: persistence: drift suspected (a loss past the margin, within this window's "
        "noise) in 1 of 2 consecutive windows; waiting"
    )
    assert second.action is Action.RETRAIN, second.summary()
    assert second.drift_seen and not second.drift_suspected and second.drift_streak == 2
    assert Check.POOLED_QUALITY_LOSS in second.failed_checks
    assert second.reasons[-2] == (
        "FAIL: quality loss over the windows: live MAE 5.65 over 2 windows (3200 labelled) vs "
        "its registered MAE 5.00 min (+13.0% > 5.0%, beyond noise 1.645 × SE 0.08)"
    )
    assert "confirmed by their quality loss together; no retrain before" in second.reasons[-1]
    assert "quality loss over the windows" in second.to_conf()["reason"]


def test_the_other_order_confirmed_then_suspected_retrains_too():
    first, second = _days(5.90, 5.40)
    assert first.drift_seen and Check.QUALITY_LOSS in first.failed_checks
    assert second.drift_suspected is False and second.drift_seen
    assert second.action is Action.RETRAIN, second.summary()


def test_two_windows_confirmed_alone_retrain_as_before_without_pooling():
    _, second = _days(5.90, 6.00)
    assert second.action is Action.RETRAIN
    assert Check.POOLED_QUALITY_LOSS not in second.failed_checks
    assert second.reasons[-1] == (
        "PASS: persistence: drift seen in 2 consecutive windows (≥ 2); no retrain before"
    )


def test_losses_past_the_margin_too_small_even_together_do_not_retrain():
    first, second = _days(5.30, 5.30)
    assert first.drift_suspected and second.drift_suspected and second.drift_streak == 2
    assert second.action is Action.OK, second.summary()
    assert second.reasons[-1].startswith(
        "SKIP: retrain: drift in 2 consecutive windows, not confirmed in each, nor by their "
        "quality loss together (live MAE 5.30 over 2 windows"
    )
    assert "within noise 1.645 × SE 0.08" in second.reasons[-1]


def test_a_bad_day_does_not_carry_an_ordinary_one_the_loss_must_persist():
    # Pooled, 5.90 and 5.20 would be beyond noise; but the second day lost nothing past the
    # margin: no drift persisted.
    first, second = _days(5.90, 5.20)
    assert first.drift_seen
    assert not second.drift_seen and not second.drift_suspected and second.drift_streak == 0
    assert second.action is Action.OK and second.drifted_features == []


def test_overlapping_hourly_windows_are_not_pooled_their_rows_count_once():
    # Two 24-hour windows an hour apart share 23 hours: pooled as if apart they would confirm
    # 5.40 (SE 0.12/√2); judged by the newest alone they do not.
    apart = _days(5.40, 5.40)
    assert apart[1].action is Action.RETRAIN, apart[1].summary()
    first, second = _days(5.40, 5.40, step=dt.timedelta(hours=1))
    assert first.drift_suspected and second.drift_suspected
    assert second.action is Action.OK, second.summary()
    assert "live MAE 5.40 over 1 window (1600 labelled)" in second.reasons[-1]


def test_one_window_persistence_asks_the_window_alone():
    one = SETTINGS.model_copy(update={"persist_windows": 1})
    suspected = _decide(_window(5.40), settings=one)
    assert suspected.action is Action.OK and suspected.drift_suspected
    confirmed = _decide(_window(5.90), settings=one)
    assert confirmed.action is Action.RETRAIN and confirmed.drift_seen


def test_an_earlier_record_without_its_live_mae_confirms_nothing_by_pooling():
    old = {
        "run_key": "x",
        "window_end": (END - DAY).isoformat(),
        "production_version": "v2",
        "drift_seen": True,
    }
    assert _decide(_window(5.40), [old]).action is Action.OK
    # Confirmed in this window too, the old record's drift_seen counts as before.
    assert _decide(_window(5.90), [old]).action is Action.RETRAIN


def test_drift_span_counts_seen_and_suspected_windows_of_the_same_version():
    seen = {"window_end": (END - DAY).isoformat(), "production_version": "v2", "drift_seen": True}
    suspected = {**seen, "drift_seen": False, "drift_suspected": True}
    quiet = {**seen, "drift_seen": False}
    assert len(drift_span([suspected, seen], "v2", END)) == 2
    assert drift_span([quiet, seen], "v2", END) == []
    assert drift_span([{**suspected, "production_version": "v1"}], "v2", END) == []


def test_pooled_loss_needs_every_window_past_the_margin():
    current = WindowLoss(1600, 5.60, SE, END - DAY, END)
    earlier = WindowLoss(1600, 5.60, SE, END - 2 * DAY, END - DAY)
    verdict = {"window_end": (END - DAY).isoformat(), "live_quality": earlier.to_dict()}
    lost, why = pooled_loss_check(current, [verdict], REGISTERED, SETTINGS)
    assert lost and "over 2 windows" in why, why
    below = {**verdict, "live_quality": {**earlier.to_dict(), "mae": 5.2}}
    lost, why = pooled_loss_check(current, [below], REGISTERED, SETTINGS)
    assert not lost and why.endswith("lost no quality past the margin"), why


def test_window_loss_round_trips_and_refuses_garbage():
    loss = WindowLoss(1600, 5.4, 0.12, END - DAY, END)
    assert WindowLoss.from_dict(loss.to_dict()) == loss
    assert WindowLoss.from_dict(None) is None
    assert WindowLoss.from_dict({"n": "many", "mae": 5}) is None
