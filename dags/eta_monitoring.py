"""Hourly ETA monitoring: drift and live quality of what the endpoint served → act.

First compacts the serving log's last hours (each hour's small files into one file,
:func:`relay.serve.log_compact.compact_before`); then reads the serving log of the last
``RELAY_MONITORING__WINDOW_HOURS`` and the actual delivery times that have landed, writes an
Evidently report (HTML, path in the task log) and decides:

* **ok**: nothing to do;
* **retrain**: drift that matters, confirmed, seen in ``RELAY_MONITORING__PERSIST_WINDOWS``
  windows in a row (:mod:`relay.monitor.retrain_rules`): trigger ``eta_training`` with the
  reason, one run at a time and not again for a retrain the gate rejected on the same data
  (:mod:`relay.monitor.retrain`; a retrain not triggered shows as a skipped ``retrain``);
* **rollback**: production's live accuracy is down against the previous version: restore it.

The decision is :func:`relay.monitor.rules.decide` (pure, thresholds in ``RELAY_MONITORING__*``).
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import TriggerRule, dag, task

from relay.airflow.assets import DRIFT_REPORTS
from relay.airflow.notifier import RelayNotifier
from relay.airflow.operators import RayJobOperator


@dag(
    dag_id="eta_monitoring",
    schedule="@hourly",
    start_date=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    tags=["relay", "eta", "monitoring"],
    doc_md=__doc__,
    default_args={
        "owner": "relay",
        "retries": 1,
        "retry_delay": dt.timedelta(minutes=2),
        "execution_timeout": dt.timedelta(minutes=30),
    },
    on_failure_callback=RelayNotifier(),
)
def eta_monitoring() -> None:
    @task
    def compact_serving_log(data_interval_end: dt.datetime | None = None) -> int:
        from relay.data.lake import Lake
        from relay.serve.log_compact import compact_before

        done = compact_before(Lake(), data_interval_end or dt.datetime.now(dt.UTC))
        for c in done:
            print(f"{c.date} {c.hour:02d}h: {c.inputs} files -> {c.rows} rows, {c.removed} removed")
        return sum(c.inputs for c in done)

    # Compaction only makes the read cheaper: a failed one must not hold back the report.
    @task(outlets=[DRIFT_REPORTS], trigger_rule=TriggerRule.ALL_DONE)
    def drift_report(
        data_interval_end: dt.datetime | None = None, run_id: str | None = None
    ) -> dict:
        from relay.flows.eta_monitoring import run_monitoring

        end = data_interval_end or dt.datetime.now(dt.UTC)
        verdict = run_monitoring(end, run_id=run_id)
        print("\n".join([f"monitoring: {verdict['action'].upper()}", *verdict["reasons"]]))
        print(f"drift report: {verdict.get('report_path')}")
        if verdict.get("quality_report_path"):
            print(f"quality report: {verdict['quality_report_path']}")
        return verdict

    @task.branch
    def act(verdict: dict) -> str:
        return {"retrain": "retrain", "rollback": "rollback"}.get(verdict["action"], "healthy")

    @task
    def healthy() -> None:
        print("no drift beyond thresholds and no quality regression: nothing to do")

    @task
    def retrain(verdict: dict, **context: object) -> None:
        # One retrain at a time: skipped while eta_training is queued or running, after a gate
        # rejection of the same retrain until newer data lands, and for a run id already taken.
        from relay.airflow.retrain import trigger_retrain

        trigger_retrain(verdict, context)

    rollback = RayJobOperator(
        task_id="rollback",
        entrypoint=(
            "python -m ray_jobs.rollout restore "
            "--version {{ ti.xcom_pull(task_ids='drift_report')['previous_version'] }}"
        ),
        env_vars={
            "RELAY_RESTORE_REASON": "eta_monitoring: live accuracy of "
            "{{ ti.xcom_pull(task_ids='drift_report')['production_version'] }} down",
            "RELAY_RESTORE_BY": "airflow:eta_monitoring:{{ run_id }}",
        },
        retries=0,
    )

    verdict = drift_report()
    compact_serving_log() >> verdict
    act(verdict) >> [retrain(verdict), rollback, healthy()]


eta_monitoring()
