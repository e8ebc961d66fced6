"""Manual rollback: serve an earlier model version with all traffic, now.

Trigger from the UI with **Trigger DAG w/ config** and the version id (``relay models list``
shows them). The version must still be deployable (validated, serving or deprecated); the
registry points production at it and the endpoint moves all traffic to it at once. A rollout
running meanwhile is aborted (recorded with this run's id and the reason) and nothing undoes it.
The version replaced is marked rolled back; a version marked so is restored only with ``force``.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, task

from relay.airflow.notifier import RelayNotifier
from relay.airflow.operators import RayJobOperator


@dag(
    dag_id="eta_rollback",
    schedule=None,
    start_date=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
    catchup=False,
    tags=["relay", "eta", "serving"],
    doc_md=__doc__,
    default_args={"owner": "relay", "retries": 1, "retry_delay": dt.timedelta(seconds=30)},
    on_failure_callback=RelayNotifier(),
    params={
        "target_version": Param(
            type="string", minLength=1, description="Version id to restore, e.g. eta_mlp_1.2.0_…"
        ),
        "reason": Param("manual rollback from the Airflow UI", type="string"),
        "force": Param(
            False,
            type="boolean",
            description="Restore it even if it was rolled back before (nothing automatic will)",
        ),
    },
)
def eta_rollback() -> None:
    @task(retries=0)
    def check_target(params: dict | None = None) -> str:
        from relay.registry import Registry

        target = (params or {})["target_version"]
        version = Registry().get(target)  # VersionNotFound names it
        print(
            f"restoring {version.id} ({version.state.value}); production is now "
            f"{getattr(Registry().stage_version('production'), 'id', None)}"
        )
        return version.id

    restore = RayJobOperator(
        task_id="restore",
        entrypoint=(
            "python -m ray_jobs.rollout restore "
            "--version {{ ti.xcom_pull(task_ids='check_target') }}"
            "{{ ' --force' if params.force else '' }}"
        ),
        # Free text goes through the environment, never through the shell command line.
        env_vars={
            "RELAY_RESTORE_REASON": "{{ params.reason }}",
            "RELAY_RESTORE_BY": "airflow:eta_rollback:{{ run_id }}",
        },
    )
    check_target() >> restore


eta_rollback()
