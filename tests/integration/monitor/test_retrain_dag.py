"""The monitoring DAG on a real Airflow (``dag.test()`` on SQLite): persistent drift for hours
triggers one ``eta_training`` run, not one per hour.

The drift itself is not what is tested here (tests/integration/monitor/test_drift.py and
tests/e2e measure it on real data): ``run_monitoring`` is replaced, in the process that runs
the DAG, by one that returns a retrain verdict for every window. Everything after it is real:
the branch, the ``retrain`` task asking Airflow's execution API for open training runs, the
trigger with its deterministic run id, and the rejection the training DAG's
``gate_rejected`` step leaves in the registry's store.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.settings import get_settings, reset_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[3]

#: Runs in a process of its own, where Airflow reads the test's Airflow home.
SCRIPT = r"""
import datetime as dt, json, os, sqlite3, sys

import relay.flows.eta_monitoring as monitoring
from relay.flows.eta_retrain import note_gate_rejection


def drifted(end, settings=None, run_id=None):
    day = (end - dt.timedelta(days=1)).date().isoformat()
    key = end.strftime("%Y%m%dT%H%MZ")
    return {
        "action": "retrain",
        "reasons": ["FAIL: feature PSI: zone_id 0.90 > 0.2"],
        "production_version": "eta_mlp_1.0.0_20261119_0100",
        "previous_version": None,
        "run_key": key,
        "report_path": None,
        "conf": {
            "reason": f"eta_monitoring {key} retrain: feature PSI: zone_id 0.90 > 0.2",
            "start_date": day,
            "end_date": day,
            "skip_tuning": True,
        },
    }


monitoring.run_monitoring = drifted  # the task imports it from the module when it runs

from airflow.dag_processing.dagbag import DagBag

dag = DagBag(dag_folder=sys.argv[1]).get_dag("eta_monitoring")
db = os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].removeprefix("sqlite:///")
hours = [dt.datetime(2026, 11, 21, h, tzinfo=dt.UTC) for h in (3, 4)]
for at in hours:
    dag.test(logical_date=at)
# The retrain ran and its model was rejected by the gate (as the training DAG records it).
with sqlite3.connect(db) as con:
    ((run_id, conf),) = con.execute(
        "SELECT run_id, conf FROM dag_run WHERE dag_id = 'eta_training'"
    ).fetchall()
    con.execute("UPDATE dag_run SET state = 'success' WHERE run_id = ?", (run_id,))
conf = json.loads(conf)
print("NOTED", note_gate_rejection(run_id, conf, "eta_mlp_1.1.0_rejected"))
dag.test(logical_date=dt.datetime(2026, 11, 21, 5, tzinfo=dt.UTC))
"""


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """An Airflow home of its own on SQLite, migrated: the env its commands run with."""
    from relay.infra import airflow_services as af

    home = tmp_path_factory.mktemp("retrain_dag")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RELAY_HOME", str(home))
        reset_settings()
        try:
            s = get_settings()
            env = {**os.environ, **af.airflow_env(s)}
            af.airflow(["db", "migrate"], s)
            yield env
        finally:
            reset_settings()


def _rows(env: dict[str, str], sql: str) -> list[tuple[Any, ...]]:
    db = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].removeprefix("sqlite:///")
    with sqlite3.connect(db) as con:
        return con.execute(sql).fetchall()


def test_hours_of_persistent_drift_trigger_one_training_run(airflow_home: dict[str, str]) -> None:
    env = airflow_home
    res = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(ROOT / "dags")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    output = res.stdout + res.stderr
    assert res.returncode == 0, output[-6000:]
    monitoring = _rows(
        env, "SELECT run_id FROM dag_run WHERE dag_id = 'eta_monitoring' ORDER BY logical_date"
    )
    assert len(monitoring) == 3, monitoring
    retrain = {
        run_id: state
        for run_id, state in _rows(
            env,
            "SELECT run_id, state FROM task_instance "
            "WHERE dag_id = 'eta_monitoring' AND task_id = 'retrain'",
        )
    }
    first, second, third = (retrain[run_id] for (run_id,) in monitoring)
    # Hour 1 triggers; hour 2 finds that run queued; hour 3 finds it rejected on the same data.
    assert (first, second, third) == ("success", "skipped", "skipped"), retrain
    training = _rows(env, "SELECT run_id, run_type FROM dag_run WHERE dag_id = 'eta_training'")
    assert len(training) == 1, training
    ((run_id, run_type),) = training
    assert run_id.startswith("drift__2026-11-20__") and run_type == "operator_triggered"
    assert "queued or running" in output
    assert "NOTED True" in output and "the gate rejected eta_mlp_1.1.0_rejected" in output
