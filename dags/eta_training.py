"""Daily ETA training: data → features → tune → train → gate → rollout → production.

Beside the search and training, ``landed_drift`` compares the landed days with the production
model's training set; the new version's lineage records it.

Each step calls :mod:`relay.flows.eta_training` (or submits a Ray job); this file only wires them.
Trigger it from the UI with **Trigger DAG w/ config** to pick the days, skip tuning or force a
rejected model into canary. The monitoring DAG triggers it with ``reason`` in the conf.

Steps pass paths and ids through XCom, never data frames, and every step overwrites what it
wrote for the same days and run, so clearing a task and running it again is safe.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, task
from airflow.timetables.interval import CronDataIntervalTimetable

from relay.airflow.assets import FEATURE_TABLES, PRODUCTION_MODEL, VALIDATED_ORDERS
from relay.airflow.notifier import RelayNotifier
from relay.airflow.operators import RayJobOperator, RolloutWaitOperator

RUN = "{{ ti.xcom_pull(task_ids='plan')['run_dir'] }}"
TRAINING_SET = "{{ ti.xcom_pull(task_ids='training_set')['uri'] }}"


def _pipeline():  # type: ignore[no-untyped-def]
    # Imported when a task runs, not when the scheduler parses this file.
    from relay.flows import eta_training as pipeline

    return pipeline


@dag(
    dag_id="eta_training",
    # A data interval of [D, D+1) run after midnight: plain "@daily" is a trigger timetable in
    # Airflow 3, whose runs have an empty interval at midnight and would cover the new day.
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    start_date=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    tags=["relay", "eta", "training"],
    doc_md=__doc__,
    default_args={
        "owner": "relay",
        "retries": 2,
        "retry_delay": dt.timedelta(minutes=1),
        "execution_timeout": dt.timedelta(hours=2),
    },
    params={
        "start_date": Param(
            "", type="string", description="First day (YYYY-MM-DD); empty: the data interval"
        ),
        "end_date": Param("", type="string", description="Last day (YYYY-MM-DD); empty: start"),
        "orders_per_day": Param(
            0, type="integer", minimum=0, description="Orders landed per day; 0: the setting"
        ),
        "scenario": Param(
            "normal", type="string", description="Data scenario of the landed days (drills)"
        ),
        "overwrite_raw": Param(
            False, type="boolean", description="Land days again even if already landed"
        ),
        "window_days": Param(7, type="integer", minimum=1, description="Days in the training set"),
        "skip_tuning": Param(False, type="boolean", description="Reuse production's config"),
        "tune_trials": Param(4, type="integer", minimum=1, maximum=64),
        "epochs": Param(8, type="integer", minimum=1, maximum=200),
        "workers": Param(2, type="integer", minimum=1, maximum=64),
        "hyperparameters": Param(
            {}, type="object", description="Overrides on top of the tuned config"
        ),
        "force_deploy": Param(
            False, type="boolean", description="Deploy as canary even if the gate rejects it"
        ),
        "slice_margin": Param(
            None,
            type=["null", "number"],
            minimum=0,
            description="Largest slice regression the gate allows (0.05 = 5%); "
            "empty: RELAY_GATE__SLICE_MARGIN. Drift retrains use the drift margin.",
        ),
        "reason": Param("scheduled", type="string", description="Why this run (monitoring)"),
        "trigger": Param(
            {},
            type="object",
            description="What asked for this run (monitoring fills it: its run id, the drift "
            "report); the new version's lineage records it",
        ),
    },
    on_failure_callback=RelayNotifier(),
)
def eta_training() -> None:
    @task
    def plan(
        params: dict | None = None,
        data_interval_start: dt.datetime | None = None,
        data_interval_end: dt.datetime | None = None,
        run_id: str | None = None,
    ) -> dict:
        p = params or {}
        end = data_interval_end or dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0)
        start = data_interval_start or end - dt.timedelta(days=1)
        days = _pipeline().run_days(p.get("start_date"), p.get("end_date"), start, end)
        print(f"run {run_id} ({p.get('reason')}): days {days[0]} to {days[-1]}")
        return {
            "days": [d.isoformat() for d in days],
            # The run's folder every step shares: a path (local) or s3:// (prod); each step works
            # on its node's copy (relay.flows.run_store).
            "run_dir": _pipeline().run_uri(run_id or "manual"),
        }

    @task.short_circuit
    def has_new_data(plan: dict, dag_run: object = None) -> bool:
        # Only the schedule skips: a run someone triggered always runs.
        if getattr(dag_run, "run_type", "") != "scheduled":
            return True
        new = _pipeline().has_new_days(_days(plan))
        print("new days to learn from" if new else "production already trained on these days")
        return bool(new)

    def _days(plan: dict) -> list[dt.date]:
        return [dt.date.fromisoformat(d) for d in plan["days"]]

    @task
    def ingest(plan: dict, params: dict | None = None) -> list[str]:
        p = params or {}
        return _pipeline().ingest(
            _days(plan), p.get("orders_per_day") or None, p["scenario"], p["overwrite_raw"]
        )

    @task(outlets=[VALIDATED_ORDERS], retries=0)
    def validate(plan: dict, landed: list[str]) -> list[str]:
        return _pipeline().validate(_days(plan))

    @task(outlets=[FEATURE_TABLES])
    def features(plan: dict, docs: list[str]) -> str:
        return _pipeline().publish_features(_days(plan))

    @task
    def training_set(plan: dict, materialized: str, params: dict | None = None) -> dict:
        return _pipeline().training_set(_days(plan), (params or {})["window_days"])

    @task
    def landed_drift(plan: dict, tset: dict) -> dict:
        # Beside the search and training: it records, it never stops the run (validation does).
        out = _pipeline().landed_drift(_days(plan), tset["uri"], plan["run_dir"])
        print(out["line"], f"(report {out['report_uri']})" if out["report_uri"] else "")
        return out

    @task.branch
    def search_or_reuse(params: dict | None = None) -> str:
        return "reuse_hyperparameters" if (params or {}).get("skip_tuning") else "tune"

    tune = RayJobOperator(
        task_id="tune",
        entrypoint=(
            f"python -m ray_jobs.tune --training-set {TRAINING_SET} --output {RUN}/tune "
            f"--trials {{{{ params.tune_trials }}}} --storage-path {RUN}/tune/ray"
        ),
        pool="ray_gpu",
    )

    @task
    def reuse_hyperparameters(plan: dict) -> str:
        return _pipeline().reuse_hyperparameters(f"{plan['run_dir']}/tune")

    @task(trigger_rule="none_failed_min_one_success")
    def hyperparameters(plan: dict, params: dict | None = None) -> str:
        config = f"{plan['run_dir']}/tune/best_config.json"
        return _pipeline().merge_overrides(config, (params or {}).get("hyperparameters"))

    train = RayJobOperator(
        task_id="train",
        entrypoint=(
            f"python -m ray_jobs.train --training-set {TRAINING_SET} --output {RUN}/model "
            f"--config {{{{ ti.xcom_pull(task_ids='hyperparameters') }}}} "
            "--epochs {{ params.epochs }} --workers {{ params.workers }} "
            f"--name train --storage-path {RUN}/ray_results"
        ),
        pool="ray_gpu",
    )

    @task
    def gate(plan: dict, tset: dict, params: dict | None = None) -> dict:
        return _pipeline().register_and_gate(
            f"{plan['run_dir']}/model",
            tset["uri"],
            tset["partitions"],
            force=bool((params or {}).get("force_deploy")),
            slice_margin=(params or {}).get("slice_margin"),
            conf=params,  # its reason and trigger: the version records why it was trained
        )

    @task.branch
    def deploy_or_stop(outcome: dict) -> str:
        return "rollout" if outcome["deploy"] else "gate_rejected"

    @task
    def gate_rejected(outcome: dict, run_id: str | None = None, dag_run: object = None) -> None:
        from relay.flows.eta_retrain import note_gate_rejection

        print(f"{outcome['version']} not deployed: the gate rejected it\n{outcome['summary']}")
        print(f"evaluation report: {outcome['report']}")
        # A monitoring retrain: not asked for again on the same data (relay.monitor.retrain).
        note_gate_rejection(run_id or "manual", getattr(dag_run, "conf", None), outcome["version"])

    # Starts the rollout (the first version simply serves) and returns; the cluster's rollout
    # controller walks it through its steps. Retrying is safe: a live rollout is followed.
    rollout = RayJobOperator(
        task_id="rollout",
        entrypoint=(
            "python -m ray_jobs.rollout rollout "
            "--version {{ ti.xcom_pull(task_ids='gate')['version'] }} "
            f"--outcome {RUN}/begun.json"
        ),
    )

    # Waits in the triggerer for the rollout's end (hours to days), logging each step's verdict.
    rollout_result = RolloutWaitOperator(
        task_id="rollout_result",
        begun=f"{RUN}/begun.json",
        outcome=f"{RUN}/rollout.json",
        outlets=[PRODUCTION_MODEL],
        execution_timeout=None,
    )

    planned = plan()
    landed = ingest(planned)
    has_new_data(planned) >> landed
    docs = validate(planned, landed)
    materialized = features(planned, docs)
    ts = training_set(planned, materialized)
    branch = search_or_reuse()
    ts >> branch
    reused = reuse_hyperparameters(planned)
    branch >> [tune, reused]
    config = hyperparameters(planned)
    [tune, reused] >> config
    config >> train
    drift = landed_drift(planned, ts)
    outcome = gate(planned, ts)
    [train, drift] >> outcome  # the gate registers the version with the drift's record
    decision = deploy_or_stop(outcome)
    decision >> [rollout, gate_rejected(outcome)]
    rollout >> rollout_result


eta_training()
