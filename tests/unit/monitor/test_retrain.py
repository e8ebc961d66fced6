"""One retrain at a time: the pure decision and the deterministic run id."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest

from relay.monitor.retrain import (
    KIND_KEY,
    GateRejection,
    reason_kind,
    rejection_of,
    retrain_run_id,
    should_trigger_retrain,
)

DAY = dt.date(2026, 11, 20)
AT = dt.datetime(2026, 11, 21, 3, tzinfo=dt.UTC)
#: Airflow's default ``allowed_run_id_pattern``.
AIRFLOW_RUN_ID = re.compile(r"^[A-Za-z0-9_.~:+\-]+$")


def _verdict(
    *,
    action: str = "retrain",
    production: str = "eta_mlp_1.0.0_20261119_0100",
    day: dt.date = DAY,
    hour: int = 3,
    features: tuple[str, ...] = ("zone_id",),
) -> dict[str, Any]:
    """A monitoring verdict as ``run_monitoring`` returns it (only what the decision reads)."""
    key = f"{day + dt.timedelta(days=1):%Y%m%d}T{hour:02d}00Z"
    return {
        "action": action,
        "production_version": production,
        "run_key": key,
        "drifted_features": list(features),
        "reasons": [f"FAIL: feature PSI: {', '.join(features)} over"],
        "conf": {
            "reason": f"eta_monitoring {key} retrain: feature PSI: {', '.join(features)}",
            "start_date": day.isoformat(),
            "end_date": day.isoformat(),
            "skip_tuning": True,
        }
        if action == "retrain"
        else {},
    }


def _rejected(verdict: dict[str, Any], day: dt.date = DAY) -> GateRejection:
    decision = should_trigger_retrain(verdict, 0, [], [day])
    assert decision.run_id is not None
    found = rejection_of(decision.run_id, decision.conf, "eta_mlp_1.1.0_x", AT)
    assert found is not None
    return found


def test_a_retrain_verdict_with_nothing_in_the_way_triggers_under_a_deterministic_id() -> None:
    decision = should_trigger_retrain(_verdict(), 0, [], [DAY])
    assert decision.trigger
    assert decision.run_id == retrain_run_id(reason_kind(_verdict()), DAY)
    assert decision.run_id is not None and decision.run_id.startswith("drift__2026-11-20__")
    assert AIRFLOW_RUN_ID.fullmatch(decision.run_id)
    # The training run gets the verdict's conf, plus what it needs to report a rejection.
    assert decision.conf["end_date"] == "2026-11-20" and decision.conf["skip_tuning"] is True
    assert decision.conf[KIND_KEY] == reason_kind(_verdict())


@pytest.mark.parametrize("action", ["ok", "rollback"])
def test_no_retrain_without_a_retrain_verdict(action: str) -> None:
    decision = should_trigger_retrain(_verdict(action=action), 0, [], [DAY])
    assert not decision.trigger and decision.run_id is None
    assert action in decision.reason


@pytest.mark.parametrize("open_runs", [1, 2])
def test_no_retrain_while_a_training_run_is_queued_or_running(open_runs: int) -> None:
    decision = should_trigger_retrain(_verdict(), open_runs, [], [DAY])
    assert not decision.trigger
    assert "queued or running" in decision.reason
    assert decision.run_id == should_trigger_retrain(_verdict(), 0, [], [DAY]).run_id


def test_hourly_verdicts_of_the_same_drift_and_data_map_to_one_run_id() -> None:
    # Hour to hour the drifted features and the numbers move; what the retrain would learn
    # (the same days, production's configuration) does not.
    ids = {
        should_trigger_retrain(_verdict(hour=h, features=f), 0, [], [DAY]).run_id
        for h, f in [(3, ("zone_id",)), (4, ("zone_id", "zone_weather")), (23, ("order_hour",))]
    }
    assert len(ids) == 1
    next_day = should_trigger_retrain(_verdict(day=DAY + dt.timedelta(days=1)), 0, [], [DAY])
    other_model = should_trigger_retrain(_verdict(production="eta_mlp_1.1.0_y"), 0, [], [DAY])
    assert len(ids | {next_day.run_id, other_model.run_id}) == 3


def test_the_same_reason_on_the_same_data_is_not_retrained_after_a_gate_rejection() -> None:
    rejected = _rejected(_verdict(hour=3))
    decision = should_trigger_retrain(_verdict(hour=4), 0, [rejected], [DAY - dt.timedelta(1), DAY])
    assert not decision.trigger
    assert "rejected" in decision.reason and rejected.run_id in decision.reason
    # The next day's window, before its orders landed, asks for the same data again: no.
    tomorrow = _verdict(day=DAY + dt.timedelta(days=1))
    assert not should_trigger_retrain(tomorrow, 0, [rejected], [DAY]).trigger


def test_a_rejected_retrain_is_asked_for_again_once_newer_data_lands() -> None:
    rejected = _rejected(_verdict())
    tomorrow = _verdict(day=DAY + dt.timedelta(days=1))
    decision = should_trigger_retrain(tomorrow, 0, [rejected], [DAY, DAY + dt.timedelta(1)])
    assert decision.trigger
    assert decision.run_id != rejected.run_id


def test_a_rejection_for_another_production_version_does_not_hold_back_this_one() -> None:
    rejected = _rejected(_verdict(production="eta_mlp_1.0.0_old"))
    newer = _verdict(production="eta_mlp_1.2.0_new")
    assert should_trigger_retrain(newer, 0, [rejected], [DAY]).trigger


def test_open_runs_are_judged_before_rejections() -> None:
    rejected = _rejected(_verdict())
    decision = should_trigger_retrain(_verdict(), 1, [rejected], [DAY])
    assert not decision.trigger and "queued or running" in decision.reason


def test_only_a_monitoring_retrain_leaves_a_rejection() -> None:
    scheduled = {"reason": "scheduled", "start_date": "", "end_date": ""}
    assert rejection_of("scheduled__2026-11-21T00:00:00+00:00", scheduled, "v", AT) is None
    assert rejection_of("manual__x", {}, "v", AT) is None
    conf = should_trigger_retrain(_verdict(), 0, [], [DAY]).conf
    found = rejection_of("drift__x", conf, "eta_mlp_1.1.0_x", AT)
    assert found is not None
    assert (found.kind, found.data_day) == (reason_kind(_verdict()), DAY)
    assert found.version == "eta_mlp_1.1.0_x"


def test_a_retrain_verdict_without_its_conf_is_refused_loudly() -> None:
    broken = {**_verdict(), "conf": {}}
    with pytest.raises(ValueError, match="end_date"):
        should_trigger_retrain(broken, 0, [], [DAY])
