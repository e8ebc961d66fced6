"""What each decision tells people, and what a retrain carries into the new version's lineage:
the pure builders (no HTTP; the webhook itself: tests/integration/notify)."""

from __future__ import annotations

import datetime as dt
import logging
from types import SimpleNamespace

import pytest

from relay.airflow.notifier import failure_notice
from relay.flows.eta_monitoring import training_conf
from relay.flows.notices import (
    gate_rejected,
    monitoring_notice,
    retrain_trigger,
    training_trigger,
)
from relay.monitor.rules import Action, MonitoringVerdict
from relay.notify import Notification, NotificationKind, send
from relay.notify.message import MAX_REASON_CHARS
from relay.notify.webhook import where
from relay.registry import Lineage, TrainingTrigger
from relay.rollout.announce import held_past_time, restore_notices, tick_notice
from relay.rollout.plan import Plan, Step, TrafficRule
from relay.rollout.reconcile import TickResult
from relay.rollout.record import VerdictAction, abort, hold, roll_back, start_rollout
from relay.settings import Settings

T0 = dt.datetime(2026, 11, 21, 14, 0, tzinfo=dt.UTC)
STABLE, CANDIDATE = "eta_mlp_1.2.0_20261120_0300", "eta_mlp_1.3.0_20261121_0300"
PLAN = Plan(steps=[Step(share=0.1, min_duration_s=60, max_duration_s=600, min_requests=10)])
WAIT = "FAIL: evidence: 3 candidate requests < min 10"


def _at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def _retrain_verdict() -> MonitoringVerdict:
    return MonitoringVerdict(
        action=Action.RETRAIN,
        reasons=[
            "PASS: traffic: 900 predictions ≥ min 200",
            "FAIL: feature PSI: distance 0.4 > 0.2",
        ],
        failed_checks=["feature_psi"],
        drifted_features=["distance_km"],
        production_version=STABLE,
        run_key="20261121T1400",
        report_path="/reports/drift/20261121T1400.html",
    )


# the retrain's trigger: monitoring's conf → the new version's lineage -------------------------


def test_a_retrain_conf_carries_the_monitoring_run_and_report_into_the_lineage():
    verdict = _retrain_verdict()
    why = verdict.to_conf()
    trigger = retrain_trigger(why, "scheduled__2026-11-21T14:00:00+00:00")
    conf = training_conf(why["reason"], T0, 0.15, trigger=trigger)
    recorded = training_trigger(conf)
    assert recorded == TrainingTrigger(
        reason=why["reason"],
        triggered_by="eta_monitoring",
        run_id="scheduled__2026-11-21T14:00:00+00:00",
        monitoring_run="20261121T1400",
        drift_report="/reports/drift/20261121T1400.html",
        drifted_features=["distance_km"],
        production_version=STABLE,
    )
    assert "feature PSI: distance 0.4 > 0.2" in recorded.reason


def test_a_scheduled_run_records_its_reason_and_no_trigger_run():
    assert training_trigger({"reason": "scheduled", "trigger": {}}) == TrainingTrigger(
        reason="scheduled"
    )


def test_a_run_without_conf_records_no_trigger():
    assert training_trigger(None) is None
    assert training_trigger({}) is None
    assert training_trigger({"start_date": "2026-11-20"}) is None


def test_unknown_trigger_keys_are_ignored_and_the_top_level_triggered_by_fills_in():
    conf = {"reason": "r", "trigger": {"run_id": "m1", "new_key": 1}, "triggered_by": "eta_x"}
    assert training_trigger(conf) == TrainingTrigger(reason="r", run_id="m1", triggered_by="eta_x")


def test_a_trigger_of_the_wrong_shape_keeps_only_the_reason():
    conf = {"reason": "by hand", "trigger": {"drifted_features": 3, "run_id": "m1"}}
    assert training_trigger(conf) == TrainingTrigger(reason="by hand")


def test_a_lineage_stored_before_the_trigger_field_still_loads():
    old = {"feature_service": "eta_v1", "data_partitions": ["2026-11-20"]}
    assert Lineage.model_validate(old).trigger is None
    new = Lineage(feature_service="eta_v1", trigger=TrainingTrigger(reason="r", run_id="m1"))
    assert Lineage.model_validate_json(new.model_dump_json()) == new


def test_training_conf_without_a_trigger_is_unchanged():
    assert "trigger" not in training_conf("r", T0)


# monitoring and the gate ----------------------------------------------------------------------


def test_a_retrain_verdict_tells_its_failed_checks_and_drift_report():
    out = {**_retrain_verdict().to_dict(), "action": "retrain"}
    notice = monitoring_notice(out, "scheduled__1", training_run="retrain__1")
    assert notice is not None and notice.kind is NotificationKind.DRIFT_RETRAIN
    assert notice.reason == "FAIL: feature PSI: distance 0.4 > 0.2"
    assert notice.report == "/reports/drift/20261121T1400.html"
    assert (notice.run_id, notice.details["training_run"]) == ("scheduled__1", "retrain__1")
    assert "distance_km" in notice.subject


def test_a_rollback_verdict_names_both_versions_and_ok_tells_nothing():
    out = {
        "action": "rollback",
        "reasons": ["FAIL: quality: v2 live MAE 9.00 vs v1's live MAE 6.00 min (+50.0% > 5.0%)"],
        "production_version": "v2",
        "previous_version": "v1",
        "report_path": "/r.html",
    }
    notice = monitoring_notice(out, "scheduled__2")
    assert notice is not None and notice.kind is NotificationKind.ROLLBACK
    assert notice.versions == ["v2", "v1"]
    assert "+50.0%" in notice.reason
    assert monitoring_notice({"action": "ok", "reasons": []}, "r") is None


def test_a_gate_rejection_says_whether_it_was_forced():
    notice = gate_rejected("v3", "gate REJECTED: MAE 12.0 > 8.0", "/e.html", forced=True)
    assert notice.kind is NotificationKind.GATE_REJECTED
    assert "forced" in notice.subject and notice.details["forced"] is True
    assert "not deployed" in gate_rejected("v3", "x", "/e.html", forced=False).subject


# the rollout controller -----------------------------------------------------------------------


def _held(seconds: float) -> TickResult:
    started = start_rollout(CANDIDATE, STABLE, PLAN, by="cli:t", now=T0, rollout_id="ro-1")
    return _result(hold(started, [WAIT], by="rollout:ro-1", now=_at(seconds)), VerdictAction.HOLD)


def _result(rollout, action) -> TickResult:  # type: ignore[no-untyped-def]
    return TickResult(
        rollout, TrafficRule(stable=STABLE), action, list(rollout.verdicts[-1].reasons)
    )


def test_a_step_held_past_its_minimum_is_told_once():
    started = start_rollout(CANDIDATE, STABLE, PLAN, by="cli:t", now=T0, rollout_id="ro-1")
    assert not held_past_time(started, _at(30))  # within the step's minimum
    assert held_past_time(started, _at(61))  # first judged after it: told
    early = _held(30).rollout
    assert held_past_time(early, _at(90))  # the last hold was before the minimum: told now
    told = _held(90).rollout
    assert not held_past_time(told, _at(120))  # already told at 90 s
    notice = tick_notice(early, _held(90), _at(90))
    assert notice is not None and notice.kind is NotificationKind.ROLLOUT_HELD
    assert notice.reason == "evidence: 3 candidate requests < min 10"
    assert notice.run_id == "ro-1"
    assert tick_notice(told, _held(120), _at(120)) is None


def test_a_rollback_and_an_abort_by_the_controller_are_told():
    before = _held(30).rollout
    back = roll_back(before, ["FAIL: error rate 20% > 1%"], by="rollout:ro-1", now=_at(60))
    notice = tick_notice(before, _result(back, VerdictAction.ROLLBACK), _at(60))
    assert notice is not None and notice.kind is NotificationKind.ROLLBACK
    assert notice.reason == "error rate 20% > 1%"
    assert notice.versions == [CANDIDATE, STABLE]
    ended = abort(before, "rollout:ro-1", "not judged within 600 s", _at(600))
    notice = tick_notice(before, _result(ended, VerdictAction.ABORT), _at(600))
    assert notice is not None and notice.kind is NotificationKind.ROLLOUT_ABORTED
    assert notice.reason == "not judged within 600 s"


def test_a_restore_tells_a_rollback_only_when_it_replaced_another_version():
    assert restore_notices("v1", None, "cli:a", "first", None) == []
    assert restore_notices("v1", "v1", "cli:a", "again", None) == []
    (notice,) = restore_notices("v1", "v2", "guard:v2", "p99 up", None)
    assert (notice.kind, notice.versions, notice.reason) == (
        NotificationKind.ROLLBACK,
        ["v2", "v1"],
        "p99 up",
    )
    live = _held(30).rollout
    mine = abort(live, "cli:a", "restore of v1", _at(40), serving="v1")
    kinds = [n.kind for n in restore_notices("v1", "v2", "cli:a", "why", mine)]
    assert kinds == [NotificationKind.ROLLOUT_ABORTED, NotificationKind.ROLLBACK]
    # Ended by someone else before the restore read it: not this restore's abort to tell.
    theirs = abort(live, "rollout:ro-1", "not judged", _at(40))
    assert restore_notices("v1", "v1", "cli:a", "why", theirs) == []


# Airflow's failure callback, the message, the log ------------------------------------------


def test_a_failure_context_names_the_dag_run_task_error_and_log():
    ti = SimpleNamespace(task_id="gate", log_url="http://airflow/log/1")
    notice = failure_notice(
        {
            "dag_run": SimpleNamespace(dag_id="eta_training", run_id="manual__1"),
            "ti": ti,
            "exception": ValueError("holdout missing"),
        }
    )
    assert notice.kind is NotificationKind.DAG_FAILED
    assert notice.subject == "eta_training run manual__1 failed at task gate"
    assert notice.reason == "ValueError: holdout missing"
    assert (notice.report, notice.run_id) == ("http://airflow/log/1", "manual__1")
    dag_level = failure_notice({"dag_id": "eta_features", "run_id": "r", "reason": "task_failure"})
    assert (dag_level.subject, dag_level.reason) == ("eta_features run r failed", "task_failure")


def test_a_long_reason_is_cut_and_the_payload_has_a_text_line():
    notice = Notification(kind=NotificationKind.ROLLBACK, subject="s", reason="x" * 5000)
    assert len(notice.reason) == MAX_REASON_CHARS
    body = notice.payload()
    assert body["kind"] == "rollback" and body["text"].startswith("[relay] rollback: s")


def test_only_the_scheme_and_host_of_a_webhook_are_ever_shown():
    url = "https://user:pw@hooks.example.com:8443/services/T0/B0/SECRET?token=abc"
    assert where(url) == "https://hooks.example.com:8443"


def test_a_webhook_that_is_not_http_is_not_used(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("RELAY_NOTIFY__WEBHOOK_URL", "file:///etc/secret-hook")
    notice = Notification(kind=NotificationKind.ROLLBACK, subject="v1 restored")
    with caplog.at_level(logging.INFO, logger="relay.notify"):
        assert send(notice, Settings(home=tmp_path)) is False
    assert "not http(s)" in caplog.text and "secret-hook" not in caplog.text


def test_without_a_webhook_a_notification_is_only_logged(tmp_path, caplog):
    s = Settings(home=tmp_path)
    assert s.notify.webhook_url is None
    notice = Notification(kind=NotificationKind.GATE_REJECTED, subject="v3 rejected", reason="r")
    with caplog.at_level(logging.INFO, logger="relay.notify"):
        assert send(notice, s) is False
    assert "[relay] gate_rejected: v3 rejected" in caplog.text


def test_notify_settings_come_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RELAY_NOTIFY__WEBHOOK_URL", "http://127.0.0.1:9/hook")
    monkeypatch.setenv("RELAY_NOTIFY__ATTEMPTS", "2")
    s = Settings(home=tmp_path)
    assert s.notify.webhook_url is not None and s.notify.attempts == 2
    assert s.notify.webhook_url.get_secret_value() == "http://127.0.0.1:9/hook"
    # A settings dump or repr never shows the URL: it may carry the webhook's token.
    assert "/hook" not in repr(s) and "/hook" not in str(s.model_dump(mode="json"))
    monkeypatch.setenv("RELAY_NOTIFY__ATTEMPTS", "0")
    with pytest.raises(ValueError, match="attempts"):
        Settings(home=tmp_path)
