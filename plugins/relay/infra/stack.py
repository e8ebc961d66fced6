"""The local stack behind ``make up`` / ``make down``: Airflow, a Ray head, the Serve endpoint.

:func:`up` starts a Ray head (:func:`start_ray`) and Airflow
(:mod:`relay.infra.airflow_services`), each in process groups of their own
(:mod:`relay.infra.processes`, whose :func:`~relay.infra.processes.stop_all` is ``make down``),
then serves a first model through Airflow's REST API (:mod:`relay.infra.airflow_api`).
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from relay.clock import utcnow
from relay.infra.airflow_api import api, next_slot, task_progress, wait_for_dag
from relay.infra.airflow_services import start_airflow
from relay.infra.processes import http_ok, start_process, venv_bin, wait_until
from relay.settings import Settings, get_settings

#: The DAGs ``make up`` waits for before it triggers anything.
DAGS = ("eta_features", "eta_training", "eta_monitoring", "eta_rollback")


def start_ray(settings: Settings | None = None) -> int:
    """A Ray head with its dashboard (Jobs API) and metrics agent
    (``RELAY_RAY__METRICS_EXPORT_PORT``), Serve's HAProxy ingress enabled."""
    from relay.infra.cluster import node_env
    from relay.infra.rayjobs import auth_headers
    from relay.serve.control import HAPROXY_ENV

    s = settings or get_settings()
    ray_token_file()
    dash = urllib.parse.urlparse(s.ray.dashboard_url)
    argv = [
        venv_bin("ray"),
        "start",
        "--head",
        f"--port={s.ray.gcs_port}",
        f"--node-ip-address={s.ray.node_ip}",
        f"--num-cpus={s.ray.num_cpus}",
        f"--dashboard-host={dash.hostname or '127.0.0.1'}",
        f"--dashboard-port={dash.port or 8265}",
        # Prometheus scrapes Relay's Ray metrics (relay.serve.ray_metrics) here; on node_ip,
        # so loopback in the local profile.
        f"--metrics-export-port={s.ray.metrics_export_port}",
        "--disable-usage-stats",
    ]
    # Job entrypoints say `python`: make it this environment's, wherever make up was run from.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**HAPROXY_ENV, **node_env(s), "RELAY_HOME": str(s.home), "PATH": path}
    pid = start_process("ray", argv, env, s, daemonizes=True)
    url = f"{s.ray.dashboard_url}/api/version"
    wait_until(lambda: http_ok(url, auth_headers()), "Ray dashboard", 180)
    return pid


def ray_token_file() -> Path:
    """Ray's token file (its clients' and nodes' shared secret), mode 600: Ray 2.60 turns token
    authentication on by default and writes the file world-readable when it creates it, so
    Relay creates it first, or narrows one that exists."""
    import secrets

    from relay.infra.secret_files import write_private

    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if not write_private(path, secrets.token_hex(32)):
        path.chmod(0o600)
    return path


def first_run_conf(today: dt.date, days: int = 3) -> dict[str, Any]:
    """The first ``eta_training`` run of ``make up``: the ``days`` before today, no search."""
    return {
        "start_date": (today - dt.timedelta(days=days)).isoformat(),
        "end_date": (today - dt.timedelta(days=1)).isoformat(),
        "skip_tuning": True,
        "epochs": 8,
        "reason": "make up: first run",
    }


def up(
    settings: Settings | None = None,
    emit: Callable[[str], None] = print,
    first_run: bool = True,
    timeout_s: float = 1800,
) -> dict[str, Any]:
    """Start Ray, Airflow and (through the first ``eta_training`` run) the Serve endpoint.

    Returns the URLs and, when a first run was triggered, its id and state.
    """
    from relay.registry import Registry
    from relay.rollout.store import RolloutStore

    s = settings or get_settings()
    emit(f"Ray head (dashboard {s.ray.dashboard_url}) ...")
    start_ray(s)
    emit(
        f"Airflow on {s.airflow.database_url.split('@')[-1] if s.airflow.database_url else ''} ..."
    )
    start_airflow(s)
    client = api(s)
    for dag_id in DAGS:
        wait_for_dag(client, dag_id)
    info: dict[str, Any] = {"airflow": s.airflow.api_url, "ray": s.ray.dashboard_url}
    production = Registry(s).stage_version("production")
    live = RolloutStore(s).current()
    if live is not None:
        # A restarted stack in mid-rollout: the controller serves what the record says.
        emit(f"rollout {live.rollout.id} of {live.rollout.candidate} is live: resuming it ...")
        info["restored"] = restore_serving(live.rollout.id, s, emit, resume=True)
    elif production is not None:
        # A restarted stack: serve what was in production instead of training again.
        emit(f"production is {production.id}: serving it again ...")
        info["restored"] = restore_serving(production.id, s, emit)
    elif first_run:
        # The first run takes the schedule's pending slot (yesterday's interval), triggered
        # while the DAG is still paused: unpausing would otherwise start a scheduled run for
        # that interval first, and the two would train on the same days one after the other.
        # With the slot's data interval too: the scheduler then moves on to the next slot.
        conf = first_run_conf(utcnow().date())
        run_id = client.trigger("eta_training", conf, next_slot(client, "eta_training"))
        client.unpause("eta_training")
        emit(f"eta_training {run_id} triggered; waiting (progress in the Airflow UI) ...")
        progress = task_progress(emit, "eta_training")

        info["first_run"] = run_id
        info["first_run_state"] = client.wait("eta_training", run_id, timeout_s, progress)
    client.unpause("eta_training")
    client.unpause("eta_monitoring")
    client.unpause("eta_features")
    return info


def restore_serving(
    version: str,
    settings: Settings | None = None,
    emit: Callable[[str], None] = print,
    *,
    resume: bool = False,
) -> str:
    """Deploy ``version`` with all traffic through a Ray job (as ``eta_rollback`` does); with
    ``resume``, ``version`` is a live rollout's id and the job only starts the rollout
    controller, whose first tick serves what the record says."""
    from relay.infra import rayjobs

    s = settings or get_settings()
    stamp = utcnow().strftime("%Y%m%dT%H%M%S")
    command = "controller" if resume else f"restore --version {version}"
    spec = rayjobs.JobSpec(
        entrypoint=f"python -m ray_jobs.rollout {command}",
        submission_id=rayjobs.submission_id("stack-up-restore", version, stamp),
        env_vars={
            "RELAY_RESTORE_REASON": "stack restarted: serving production again",
            "RELAY_RESTORE_BY": "relay-stack-up",
        },
        metadata={"relay": "stack up"},
    )
    c = rayjobs.client(s)
    job_id = rayjobs.submit(spec, s, c)
    rayjobs.follow(job_id, c, lambda line: None, timeout_s=600)
    emit(f"  Ray job {job_id}: {'rollout controller for ' if resume else ''}{version} serving")
    return version
