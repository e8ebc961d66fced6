"""One monitoring run: what the endpoint served against what production was trained on.

``dags/eta_monitoring.py`` calls :func:`run_monitoring` hourly and acts on its ``action``:
``ok`` (nothing), ``retrain`` (trigger ``eta_training`` with :func:`training_conf`) or
``rollback`` (restore ``previous_version``). Gathering the inputs is here; the decision is the
pure :func:`relay.monitor.rules.decide`.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from relay.settings import Settings, get_settings

if TYPE_CHECKING:
    from relay.registry.models import ModelVersion

log = logging.getLogger(__name__)


def run_monitoring(
    end: dt.datetime, settings: Settings | None = None, run_id: str | None = None
) -> dict[str, Any]:
    """Drift and quality report for the window before ``end``, and the verdict.

    A rollback verdict is sent as a notification (:mod:`relay.notify`) with its failed checks
    and the drift report (a retrain is told by the task that triggers it:
    :func:`relay.flows.notices.monitoring_notice`). A retrain's conf carries the verdict's
    provenance under ``trigger`` (:func:`relay.flows.notices.retrain_trigger`), which the new
    version's lineage records.

    Args:
        end: the window's end (the DAG run's data interval end).
        settings: defaults to :func:`get_settings`.
        run_id: the monitoring DAG run, named by the notification and the retrain's trigger.

    Returns:
        The verdict as a dict (``action``, ``reasons``, ``production_version``,
        ``previous_version``, ``report_path``, …) plus ``conf`` for a retrain run.
    """
    from relay.flows.notices import monitoring_notice, retrain_trigger
    from relay.model.bundle import ModelBundle
    from relay.monitor.drift import NoServingTraffic
    from relay.monitor.history import MonitoringHistory
    from relay.monitor.rules import Action, decide, registered_mae
    from relay.monitor.window import monitor_window, reference_uri_of
    from relay.notify import send
    from relay.registry import Registry

    s = settings or get_settings()
    reg = Registry(s)
    production = reg.stage_version("production")
    if production is None:
        return _recorded(_quiet("nothing is in production yet"), end, s)
    pointer = reg.stage_pointer("production")
    previous = pointer.previous_version_id if pointer else None
    before = reg.get(previous) if previous else None
    previous_mae = registered_mae(before.training.metrics) if before else None
    bundle = ModelBundle.from_registry(reg, production.id)
    try:
        result = monitor_window(end, reference_uri_of(production), s, predict=bundle.predict)
    except NoServingTraffic as exc:
        return _recorded(_quiet(str(exc)), end, s)
    # Persistence counts the windows before this one: the last persist_windows verdicts hold
    # them even when this window's own earlier record (a re-run) is among them.
    recent = MonitoringHistory(s).verdicts(s.monitoring.persist_windows)
    verdict = decide(
        result,
        s.monitoring,
        production_version=production.id,
        previous_version=previous,
        previous_registered_mae=previous_mae,
        previous_rolled_back=before is not None and before.barred,
        last_rollback_at=reg.last_rollback_at(production.name),
        importance=production.training.feature_importance,
        previous_importance=before.training.feature_importance if before else None,
        recent=recent,
        production_registered_mae=registered_mae(production.training.metrics),
        last_retrain_at=last_retrain_at(reg.list_versions(production.name)),
    )
    log.info("%s\ndrift report: %s", verdict.summary(), result.report_path)
    out = verdict.to_dict()
    out["action"] = verdict.action.value  # plain strings for XCom
    why = verdict.to_conf()
    trigger = retrain_trigger(why, run_id)
    out["conf"] = training_conf(why["reason"], end, s.gate.drift_slice_margin, trigger=trigger)
    out["quality_report_path"] = result.quality_report_path
    # The measurements travel with the verdict in the registry's store, so the serving drift
    # gauges (relay.monitor.latest) need no access to this worker's report folder.
    out["feature_psi"] = {f.name: f.psi for f in result.features if f.psi is not None}
    out["prediction_psi"] = None if result.prediction is None else result.prediction.psi
    out["drifted_share"] = result.drifted_share
    notice = monitoring_notice(out, run_id)
    if notice is not None and verdict.action is Action.ROLLBACK:
        send(notice, s)  # a retrain is told where it is triggered (the storm limits may skip it)
    return _recorded(out, end, s)


def training_conf(
    reason: str,
    end: dt.datetime,
    slice_margin: float | None = None,
    *,
    trigger: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``eta_training`` conf of a retrain: the day before ``end`` (the last whole day of
    orders), the run's reason, production's hyperparameters and, when given, the gate's slice
    margin (``GateSettings.drift_slice_margin``) and what triggered it (``trigger``: the
    monitoring run and drift report, recorded in the new version's lineage).

    Drift asks for a model of the new data, not a new architecture: refitting production's
    configuration on the fresh window answers in minutes and changes one thing at a time, so
    the gate compares like with like. The daily run keeps searching.
    """
    day = (end - dt.timedelta(days=1)).date().isoformat()
    conf: dict[str, Any] = {
        "reason": reason[:500],
        "start_date": day,
        "end_date": day,
        "skip_tuning": True,
    }
    if slice_margin is not None:
        conf["slice_margin"] = slice_margin
    if trigger:
        conf["trigger"] = dict(trigger)
    return conf


def last_retrain_at(versions: Iterable[ModelVersion]) -> dt.datetime | None:
    """When the newest version trained at monitoring's request was registered, or None.

    The retrain cooldown counts from it: a retrain that happened, whatever became of it
    (promoted, rejected by the gate, rolled back). A retrain asked for and still running is
    :mod:`relay.monitor.retrain`'s to hold, and a verdict that asked for one the trigger then
    skipped started nothing to cool down from.
    """
    from relay.monitor.rules import TRIGGERED_BY

    made = [
        v.created_at
        for v in versions
        if v.lineage.trigger is not None and v.lineage.trigger.triggered_by == TRIGGERED_BY
    ]
    return max(made, default=None)


def _quiet(reason: str) -> dict[str, Any]:
    log.info("monitoring: %s", reason)
    return {"action": "ok", "reasons": [f"SKIP: {reason}"], "report_path": None, "conf": {}}


def _recorded(verdict: dict[str, Any], end: dt.datetime, s: Settings) -> dict[str, Any]:
    # Every window's verdict, quiet ones too, goes to the monitoring history under its run
    # key: `relay monitor status` reads it, and an hour with no traffic is worth seeing.
    from relay.clock import as_utc
    from relay.monitor.history import MonitoringHistory
    from relay.monitor.window import run_key

    verdict["run_key"] = verdict.get("run_key") or run_key(end)
    verdict["window_end"] = verdict.get("window_end") or as_utc(end).isoformat()
    MonitoringHistory(s).record_verdict(verdict)
    return verdict
