"""``RelayNotifier``: a failed DAG run (or task) told through :mod:`relay.notify`.

Every Relay DAG sets ``on_failure_callback=RelayNotifier()``: Airflow calls it with the run's
context when the run fails, and it sends a ``dag_failed`` notification naming the DAG, the run,
the failed task and its log, and the error. What is sent is built by the pure
:func:`failure_notice` from the context dict, so it is tested without Airflow running. Sending
never raises (:func:`relay.notify.send`): a notifier that failed would only add a second error
to the callback's log.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow.sdk.bases.notifier import BaseNotifier

from relay.notify import Notification, NotificationKind, send
from relay.settings import Settings


class RelayNotifier(BaseNotifier):
    """Send a run's failure to the webhook (``RELAY_NOTIFY__*``).

    Args:
        settings: defaults to :func:`relay.settings.get_settings`, read when a failure is
            sent, never when the DAG file is parsed.
    """

    def __init__(self, settings: Settings | None = None) -> None:
        super().__init__()
        self._settings = settings

    def notify(self, context: Any) -> None:
        """Build the notification from Airflow's context and send it; never raises."""
        try:
            notice = failure_notice(context)
        except Exception as exc:  # a malformed context still tells someone something
            notice = Notification(
                kind=NotificationKind.DAG_FAILED,
                subject="a Relay DAG run failed",
                reason=f"the failure's context was unreadable ({type(exc).__name__})",
                source="airflow",
            )
        send(notice, self._settings)


def failure_notice(context: Mapping[str, Any]) -> Notification:
    """The ``dag_failed`` notification for an Airflow callback context.

    Reads what DAG-level and task-level callbacks pass: ``dag`` or ``dag_run`` (the DAG id),
    ``run_id``, ``ti`` (the failed task and its log URL), ``exception`` and ``reason`` (a DAG
    run's failure reason, e.g. ``task_failure``).
    """
    dag, dag_run = context.get("dag"), context.get("dag_run")
    ti = context.get("ti") or context.get("task_instance")
    dag_id = (
        getattr(dag, "dag_id", None)
        or getattr(dag_run, "dag_id", None)
        or context.get("dag_id")
        or "a Relay DAG"
    )
    run_id = context.get("run_id") or getattr(dag_run, "run_id", None)
    task_id = getattr(ti, "task_id", None)
    error = context.get("exception")
    if error is not None:
        reason = (
            f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
        )
    else:
        reason = str(context.get("reason") or "the run failed (see its task logs)")
    where = f" at task {task_id}" if task_id else ""
    return Notification(
        kind=NotificationKind.DAG_FAILED,
        subject=f"{dag_id} run {run_id or '(unknown run)'} failed{where}",
        reason=reason,
        report=getattr(ti, "log_url", None),
        run_id=str(run_id) if run_id else None,
        source=str(dag_id),
        details={"task_id": task_id} if task_id else {},
    )
