"""What the DAG steps tell people, and what a retrain carries from monitoring to the registry.

Each function turns a step's outcome into a :class:`~relay.notify.Notification` (or None) or
a conf into a :class:`~relay.registry.TrainingTrigger`, without I/O; the steps send and record
(:func:`notify_retrain` builds and sends, for the Airflow task that triggers a retrain).

A drift retrain's lineage travels in the ``eta_training`` conf: monitoring puts the verdict's
trigger (:func:`retrain_trigger`) under ``trigger`` and its reason under ``reason``;
:func:`training_trigger` reads both back when the new version is registered, so the version
names the monitoring run and drift report that caused it long after the DAG run is gone.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from relay.notify import Notification, NotificationKind, send
from relay.registry import TrainingTrigger
from relay.settings import Settings
from relay.verdict import FAIL

log = logging.getLogger(__name__)

#: The keys of a monitoring verdict's conf (``MonitoringVerdict.to_conf``) kept as the trigger.
TRIGGER_KEYS = (
    "triggered_by",
    "monitoring_run",
    "production_version",
    "drifted_features",
    "drift_report",
)


def retrain_trigger(verdict_conf: Mapping[str, Any], run_id: str | None) -> dict[str, Any]:
    """The ``trigger`` of a retrain's conf: the verdict's provenance and the monitoring run.

    Args:
        verdict_conf: ``MonitoringVerdict.to_conf()``.
        run_id: the monitoring DAG run that decided (None outside Airflow).
    """
    out = {key: verdict_conf[key] for key in TRIGGER_KEYS if verdict_conf.get(key) is not None}
    if run_id:
        out["run_id"] = run_id
    return out


def training_trigger(conf: Mapping[str, Any] | None) -> TrainingTrigger | None:
    """What triggered a training run, from its conf (``reason`` and ``trigger``); None
    without either. Unknown keys are ignored: a conf written by a newer monitoring still
    registers."""
    if not conf:
        return None
    given = conf.get("trigger")
    trigger = dict(given) if isinstance(given, Mapping) else {}
    if trigger and conf.get("triggered_by") and "triggered_by" not in trigger:
        trigger["triggered_by"] = conf["triggered_by"]
    reason = conf.get("reason")
    if not trigger and not reason:
        return None
    known = {k: v for k, v in trigger.items() if k in TrainingTrigger.model_fields}
    try:
        return TrainingTrigger.model_validate({**known, "reason": str(reason or "")})
    except ValidationError as err:
        # A hand-written trigger of the wrong shape must not fail the registration it annotates.
        log.warning("trigger not recorded, only the reason: %s", err.errors()[0]["msg"])
        return TrainingTrigger(reason=str(reason or ""))


def gate_rejected(
    version: str,
    summary: str,
    report: str,
    *,
    forced: bool,
    run_id: str | None = None,
    trigger: TrainingTrigger | None = None,
) -> Notification:
    """The evaluation gate rejected ``version`` (deployed anyway when ``forced``)."""
    what = "deployed as a capped canary anyway (forced)" if forced else "not deployed"
    details: dict[str, Any] = {"forced": forced}
    if trigger is not None:
        details["trigger"] = trigger.model_dump(mode="json")
    return Notification(
        kind=NotificationKind.GATE_REJECTED,
        subject=f"{version} rejected by the evaluation gate: {what}",
        reason=summary,
        versions=[version],
        report=report,
        run_id=run_id,
        source="eta_training",
        details=details,
    )


def monitoring_notice(
    verdict: Mapping[str, Any], run_id: str | None, training_run: str | None = None
) -> Notification | None:
    """A retrain or rollback verdict of :func:`relay.flows.eta_monitoring.run_monitoring` as a
    notification; None for ``ok``.

    Args:
        verdict: ``run_monitoring``'s output.
        run_id: the monitoring DAG run that decided.
        training_run: for a retrain, the ``eta_training`` run triggered (sent once it is
            triggered, not for a retrain the storm limits skip: :mod:`relay.monitor.retrain`).
    """
    action = verdict.get("action")
    failing = [r for r in verdict.get("reasons", []) if str(r).startswith(f"{FAIL}: ")]
    production = verdict.get("production_version")
    previous = verdict.get("previous_version")
    common: dict[str, Any] = {
        "reason": "; ".join(failing),
        "report": verdict.get("report_path") or None,
        "run_id": run_id,
        "source": "eta_monitoring",
    }
    if action == "retrain":
        drifted = list(verdict.get("drifted_features") or [])
        return Notification(
            kind=NotificationKind.DRIFT_RETRAIN,
            subject=f"drift: retraining {production or 'production'}"
            + (f" ({', '.join(drifted)} drifted)" if drifted else ""),
            versions=[production] if production else [],
            details={"drifted_features": drifted, "training_run": training_run},
            **common,
        )
    if action == "rollback":
        return Notification(
            kind=NotificationKind.ROLLBACK,
            subject=f"live accuracy of {production} down: rolling back to {previous}",
            versions=[v for v in (production, previous) if v],
            details={"baseline": verdict.get("baseline")},
            **common,
        )
    return None


def notify_retrain(
    verdict: Mapping[str, Any],
    monitoring_run: object,
    training_run: str | None,
    settings: Settings | None = None,
) -> bool:
    """Tell people that the verdict's retrain is being triggered (``drift_retrain``).

    Called where the retrain is triggered, after the storm limits let it through
    (:mod:`relay.airflow.retrain`), so an hour whose retrain is skipped tells nothing.

    Args:
        verdict: ``run_monitoring``'s output (a retrain verdict; any other sends nothing).
        monitoring_run: the monitoring DAG run's id (Airflow's context ``run_id``).
        training_run: the ``eta_training`` run id triggered.
        settings: defaults to :func:`relay.settings.get_settings`.

    Returns:
        Whether a webhook accepted it (:func:`relay.notify.send`; never raises).
    """
    notice = monitoring_notice(
        verdict, str(monitoring_run) if monitoring_run else None, training_run
    )
    return (
        notice is not None
        and notice.kind is NotificationKind.DRIFT_RETRAIN
        and send(notice, settings)
    )
