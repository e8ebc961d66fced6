"""The monitoring DAG's ``retrain`` task: trigger one ``eta_training`` run, at most, per reason
and data.

Airflow is asked through the Task SDK (``ti.get_dr_count``, ``TriggerDagRunOperator``), the way
every task talks to Airflow 3: through the execution API its supervisor already holds. That is
the same under ``airflow dags test`` and under a real scheduler, and needs no REST credentials
on the worker. The decision itself is :func:`relay.flows.eta_retrain.plan_retrain`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow.sdk.exceptions import AirflowSkipException

from relay.monitor.retrain import OPEN_STATES, TRAINING_DAG


def trigger_retrain(verdict: Mapping[str, Any], context: Mapping[str, Any]) -> None:
    """Trigger the verdict's retrain unless :func:`~relay.flows.eta_retrain.plan_retrain`
    says not to.

    The task ends **success** when it triggered a run, and **skipped** (with the reason in its
    log) when it did not: a training run queued or running, the same retrain rejected on the
    same data, or the deterministic run id already taken (Airflow refuses a duplicate run id;
    that is "already triggered", not an error).

    Args:
        verdict: the ``drift_report`` task's verdict (``run_monitoring``'s output).
        context: the task's Airflow context (``ti`` and what the trigger operator needs).

    Raises:
        AirflowSkipException: nothing was triggered.
    """
    # Imported here: the trigger operator pulls in SQLAlchemy (~1 s), and the DAG file imports
    # this module only inside its task.
    from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator

    from relay.flows.eta_retrain import plan_retrain
    from relay.flows.notices import notify_retrain

    open_runs = int(context["ti"].get_dr_count(dag_id=TRAINING_DAG, states=list(OPEN_STATES)))
    decision = plan_retrain(verdict, open_runs)
    print(decision.reason)
    if not decision.trigger:
        raise AirflowSkipException(decision.reason)
    print(f"triggering {TRAINING_DAG} run {decision.run_id}: {decision.conf.get('reason')}")
    # Told before execute(): it raises the trigger request, and nothing after it runs.
    notify_retrain(verdict, context.get("run_id"), decision.run_id)
    # Raises the SDK's trigger request; the task runner creates the run after this returns.
    # skip_when_already_exists: a run id already there is this retrain, triggered before.
    TriggerDagRunOperator(
        task_id="trigger_eta_training",
        trigger_dag_id=TRAINING_DAG,
        trigger_run_id=decision.run_id,
        conf=decision.conf,
        skip_when_already_exists=True,
    ).execute(context)  # type: ignore[arg-type]
