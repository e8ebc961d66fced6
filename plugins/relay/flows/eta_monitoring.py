"""One monitoring run: what the endpoint served against what production was trained on.

``dags/eta_monitoring.py`` calls :func:`run_monitoring` hourly and acts on its ``action``:
``ok`` (nothing), ``retrain`` (trigger ``eta_training`` with :func:`training_conf`) or
``rollback`` (restore ``previous_version``). Gathering the inputs is here; the decision is the
pure :func:`relay.monitor.rules.decide`.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from relay.settings import Settings, get_settings

log = logging.getLogger(__name__)


def run_monitoring(end: dt.datetime, settings: Settings | None = None) -> dict[str, Any]:
    """Drift and quality report for the window before ``end``, and the verdict.

    Returns:
        The verdict as a dict (``action``, ``reasons``, ``production_version``,
        ``previous_version``, ``report_path``, …) plus ``conf`` for a retrain run.
    """
    from relay.model.bundle import ModelBundle
    from relay.monitor.drift import NoServingTraffic
    from relay.monitor.rules import decide, registered_mae
    from relay.monitor.window import monitor_window, reference_uri_of
    from relay.registry import Registry

    s = settings or get_settings()
    reg = Registry(s)
    production = reg.stage_version("production")
    if production is None:
        return _quiet("nothing is in production yet")
    pointer = reg.stage_pointer("production")
    previous = pointer.previous_version_id if pointer else None
    previous_mae = registered_mae(reg.get(previous).training.metrics) if previous else None
    bundle = ModelBundle.from_registry(reg, production.id)
    try:
        result = monitor_window(end, reference_uri_of(production), s, predict=bundle.predict)
    except NoServingTraffic as exc:
        return _quiet(str(exc))
    verdict = decide(
        result,
        s.monitoring,
        production_version=production.id,
        previous_version=previous,
        previous_registered_mae=previous_mae,
    )
    log.info("%s\ndrift report: %s", verdict.summary(), result.report_path)
    out = verdict.to_dict()
    out["action"] = verdict.action.value  # plain strings for XCom
    out["conf"] = training_conf(verdict.to_conf()["reason"], end, s.gate.drift_slice_margin)
    out["quality_report_path"] = result.quality_report_path
    return out


def training_conf(
    reason: str, end: dt.datetime, slice_margin: float | None = None
) -> dict[str, Any]:
    """The ``eta_training`` conf of a retrain: the day before ``end`` (the last whole day of
    orders), the run's reason, production's hyperparameters and, when given, the gate's slice
    margin (``GateSettings.drift_slice_margin``).

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
    return conf


def _quiet(reason: str) -> dict[str, Any]:
    log.info("monitoring: %s", reason)
    return {"action": "ok", "reasons": [f"SKIP: {reason}"], "report_path": None, "conf": {}}
