"""A retrain's two ends, as plain functions: monitoring asks for it, the training run's gate
may reject it.

``dags/eta_monitoring.py``'s ``retrain`` task counts the open ``eta_training`` runs (Airflow
knows them) and calls :func:`plan_retrain`, which reads what else the decision needs (the
remembered rejections, the landed days) and applies the pure
:func:`relay.monitor.retrain.should_trigger_retrain`. ``dags/eta_training.py``'s
``gate_rejected`` task calls :func:`note_gate_rejection`, so the next hour's monitoring does not
ask for the same retrain on the same data again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from relay.monitor.retrain import RetrainDecision
from relay.settings import Settings, get_settings

log = logging.getLogger(__name__)


def plan_retrain(
    verdict: Mapping[str, Any], open_runs: int, settings: Settings | None = None
) -> RetrainDecision:
    """Whether the monitoring verdict triggers an ``eta_training`` run, and which.

    Args:
        verdict: :func:`relay.flows.eta_monitoring.run_monitoring`'s output.
        open_runs: ``eta_training`` runs queued or running now (the caller asks Airflow).
        settings: defaults to :func:`get_settings`.
    """
    from relay.data.lake import RAW_ORDERS, Lake
    from relay.monitor.history import MonitoringHistory
    from relay.monitor.retrain import should_trigger_retrain

    s = settings or get_settings()
    if verdict.get("action") != "retrain":  # nothing to read for a verdict that asks for none
        return should_trigger_retrain(verdict, open_runs, [], [])
    decision = should_trigger_retrain(
        verdict,
        open_runs,
        MonitoringHistory(s).rejections(),
        Lake(s).partitions(RAW_ORDERS),
    )
    log.info("retrain: %s", decision.reason)
    return decision


def note_gate_rejection(
    run_id: str, conf: Mapping[str, Any] | None, version: str, settings: Settings | None = None
) -> bool:
    """Remember that the gate rejected the model of training run ``run_id``, when that run was
    a monitoring retrain (its conf carries :data:`relay.monitor.retrain.KIND_KEY`).

    Returns:
        Whether a rejection was recorded (False for a scheduled or hand-triggered run).
    """
    from relay.clock import utcnow
    from relay.monitor.history import MonitoringHistory
    from relay.monitor.retrain import rejection_of

    rejection = rejection_of(run_id, conf or {}, version, utcnow())
    if rejection is None:
        return False
    MonitoringHistory(settings).add_rejection(rejection)
    log.info(
        "remembered: %s rejected for %s on data up to %s; no retrain for it until newer data",
        run_id,
        rejection.kind,
        rejection.data_day,
    )
    return True
