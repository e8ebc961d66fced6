"""The closed loop on real services: Airflow (``airflow dags test``, the REST API, PostgreSQL),
a Ray cluster started like ``make up`` starts it (Jobs API, Serve), the lake and the registry.

One module-scoped stack: a Ray head (``ray start``, stopped by its process group) and an Airflow
home on SQLite (~15 min on 2 cores; ``make e2e`` runs this folder alone, ``make test`` runs it
with everything else). ``eta_training`` runs once end to end; the monitoring and rollback tests
then work on the model it left serving.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest

from relay.settings import get_settings, reset_settings

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DAYS = ("2026-11-17", "2026-11-18")
SERVE_PORT = 8011


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A Ray head and an Airflow home of their own, like ``make up`` sets them up."""
    from relay.infra import airflow_services as af
    from relay.infra import processes
    from relay.infra import stack as st

    home = tmp_path_factory.mktemp("orchestration")
    dash = _free_port()
    env = {
        "RELAY_HOME": str(home),
        "RELAY_RAY__DASHBOARD_URL": f"http://127.0.0.1:{dash}",
        "RELAY_RAY__GCS_PORT": str(_free_port()),
        "RELAY_SERVING__PORT": str(SERVE_PORT),
        "RELAY_DATA__ORDERS_PER_DAY": "2000",
        "RELAY_MONITORING__WINDOW_HOURS": "1",
        "RELAY_MONITORING__MIN_ROWS": "100",
        "RELAY_MONITORING__MIN_LABELLED": "50",
        # HAProxy's stats and metrics ports, so a stack already running here keeps its own.
        "RAY_SERVE_HAPROXY_STATS_PORT": str(_free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(_free_port()),
    }
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        reset_settings()
        s = get_settings()
        for k, v in af.airflow_env(s).items():
            mp.setenv(k, v)
        try:
            st.start_ray(s)
            af.airflow(["db", "migrate"], s)
            af.airflow(["pools", "set", af.GPU_POOL, "1", "Ray jobs that may use a GPU"], s)
            yield {"home": home, "settings": s}
        finally:
            processes.stop_all(s)  # also forgets the stopped head (Ray's current-cluster note)
            reset_settings()


def _airflow(*args: str, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "airflow"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ.copy(),
        check=False,
    )


def _db() -> sqlite3.Connection:
    url = os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    return sqlite3.connect(url.removeprefix("sqlite:///"))


def _runs(dag_id: str) -> list[tuple[str, str, str]]:
    with _db() as db:
        rows = db.execute(
            "SELECT run_id, state, conf FROM dag_run WHERE dag_id = ? ORDER BY id", (dag_id,)
        ).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


def _task_states(dag_id: str, run_id: str) -> dict[str, str]:
    with _db() as db:
        rows = db.execute(
            "SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ?",
            (dag_id, run_id),
        ).fetchall()
    return {r[0]: r[1] for r in rows}


def _post_eta(order: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{SERVE_PORT}/v1/eta",
        data=json.dumps(order).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


# --- The Ray job operator ----------------------------------------------------------------------


def _ti(task_id: str) -> SimpleNamespace:
    stamp = dt.datetime.now(dt.UTC).strftime("%H%M%S%f")
    return SimpleNamespace(
        dag_id="ops", task_id=task_id, run_id=f"test_{stamp}", map_index=-1, try_number=1
    )


def test_operator_streams_job_logs_and_fails_with_the_job(
    stack: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    from relay.airflow.operators import RayJobOperator
    from relay.infra.rayjobs import RayJobFailed

    op = RayJobOperator(
        task_id="failing",
        entrypoint=(
            "python -c \"import os, sys; print('step one of', os.environ['RELAY_HOME']); "
            "print('giving up', file=sys.stderr); sys.exit(3)\""
        ),
        poll_interval_s=0.5,
    )
    with pytest.raises(RayJobFailed) as err:
        op.execute({"ti": _ti("failing")})
    assert err.value.status == "FAILED"
    assert "exit code 3" in str(err.value)
    assert "giving up" in str(err.value)  # the job's last lines are in the task's error
    # The task log (Airflow's logger writes to stdout here) holds the job's lines as they came.
    assert f"[ray job] step one of {stack['home']}" in capsys.readouterr().out


def test_operator_stops_the_job_when_the_task_is_killed(stack: dict[str, Any]) -> None:
    from relay.airflow.operators import RayJobOperator
    from relay.infra import rayjobs
    from relay.infra.rayjobs import RayJobFailed

    op = RayJobOperator(
        task_id="long",
        entrypoint="python -c \"import time; print('working', flush=True); time.sleep(300)\"",
        poll_interval_s=0.5,
    )
    errors: list[BaseException] = []

    def run() -> None:
        try:
            op.execute({"ti": _ti("long")})
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    client = rayjobs.client()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if op.job_id and rayjobs.status(op.job_id, client) == "RUNNING":
            break
        time.sleep(0.2)  # waiting for Ray to start the job, bounded
    assert op.job_id and rayjobs.status(op.job_id, client) == "RUNNING"
    op.on_kill()
    worker.join(timeout=120)
    assert not worker.is_alive()
    assert rayjobs.status(op.job_id, client) == "STOPPED"
    assert len(errors) == 1 and isinstance(errors[0], RayJobFailed)


def test_cli_without_an_address_joins_the_head_make_up_started(stack: dict[str, Any]) -> None:
    # `relay train` after `make up`, no RELAY_RAY__ADDRESS set: ray.init refused to size a
    # cluster it had not started ("When connecting to an existing cluster, num_cpus ...").
    env = {k: v for k, v in os.environ.items() if k not in ("RELAY_RAY__ADDRESS", "RAY_ADDRESS")}
    code = (
        "from relay.infra.cluster import connect; ray = connect(); "
        "print('gcs', ray.get_runtime_context().gcs_address); ray.shutdown()"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert res.returncode == 0, res.stderr[-3000:]
    port = stack["settings"].ray.gcs_port
    assert re.search(rf"^gcs \S+:{port}$", res.stdout, re.M), res.stdout


# --- eta_training end to end -------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(stack: dict[str, Any]) -> dict[str, Any]:
    """``airflow dags test eta_training`` on two small days, skipping the search."""
    conf = {
        "start_date": DAYS[0],
        "end_date": DAYS[1],
        "skip_tuning": True,
        "epochs": 3,
        "window_days": 2,
        "reason": "integration test",
    }
    res = _airflow("dags", "test", "eta_training", "-c", json.dumps(conf))
    assert res.returncode == 0, res.stdout[-5000:] + res.stderr[-5000:]
    run_id = _runs("eta_training")[-1][0]
    return {"run_id": run_id, "output": res.stdout + res.stderr}


def test_training_dag_leaves_a_registered_model_serving(trained: dict[str, Any]) -> None:
    from relay.data.lake import RAW_ORDERS, Lake
    from relay.registry import Registry

    states = _task_states("eta_training", trained["run_id"])
    ran = {"ingest", "validate", "features", "training_set", "landed_drift", "train", "gate"}
    ran.add("rollout")
    assert {states[t] for t in ran} == {"success"}, states
    assert states["tune"] == "skipped" and states["gate_rejected"] == "skipped"
    assert "[ray job]" in trained["output"]  # the Ray jobs' logs are in the task logs

    production = Registry().stage_version("production")
    assert production is not None and production.state.value == "serving"
    assert production.lineage.data_partitions  # lineage names the lake partitions
    # The first model: nothing in production to compare its landed days with, and it says so.
    landed = production.lineage.landed_drift
    assert landed is not None and landed.status == "no_reference", landed
    assert [str(d) for d in landed.days] == list(DAYS)
    assert "landed drift of 2026-11-17..2026-11-18: no reference" in trained["output"]
    order = Lake().read(RAW_ORDERS, dt.date.fromisoformat(DAYS[1])).iloc[0]
    answer = _post_eta(
        {
            "order_id": str(order["order_id"]),
            "courier_id": str(order["courier_id"]),
            "merchant_id": str(order["merchant_id"]),
            "zone_id": str(order["zone_id"]),
            "distance_km": float(order["distance_km"]),
        }
    )
    assert answer["predictions"][0]["model_version"] == production.id
    assert 1 < answer["predictions"][0]["eta_minutes"] < 300


def test_serve_cli_reports_what_the_dag_deployed(trained: dict[str, Any]) -> None:
    """`relay serve status` joins the running cluster and shows the split and live metrics."""
    from relay.registry import Registry

    production = Registry().stage_version("production")
    assert production is not None
    res = subprocess.run(
        [str(BIN / "relay"), "serve", "status"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"},
        check=False,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"stable    {production.id}  100%" in res.stdout
    assert f"{production.id}: " in res.stdout and "requests" in res.stdout


#: Calls each of Ray's servers answers when the caller is let in (GCS, raylet, object manager,
#: dashboard agent, client server, a Serve replica's inter-deployment server).
RAY_METHODS = (
    "/ray.rpc.NodeInfoGcsService/GetAllNodeInfo",
    "/ray.rpc.NodeManagerService/GetNodeStats",
    "/ray.rpc.ObjectManagerService/Pull",
    "/ray.rpc.ReporterService/GetTraceback",
    "/ray.rpc.RayletDriver/ClusterInfo",
    "/ray.serve.ASGIService/HandleRequest",
)


def _routable_addresses() -> list[str]:
    """This machine's IPv4 addresses other than loopback: where a neighbour would connect."""
    import psutil

    return [
        a.address
        for addrs in psutil.net_if_addrs().values()
        for a in addrs
        if a.family.name == "AF_INET" and not a.address.startswith("127.")
    ]


def _ray_refuses_without_token(host: str, port: int) -> list[str]:
    """Each probe's gRPC status: a Ray server refuses calls without the token."""
    import grpc

    seen = []
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        for method in RAY_METHODS:
            try:
                channel.unary_unary(method)(b"", timeout=5)
                seen.append(f"{method}: OK")
            except grpc.RpcError as err:
                seen.append(f"{method}: {err.code().name}")
    return seen


def test_the_stack_is_closed_to_the_network(stack: dict[str, Any], trained: dict[str, Any]) -> None:
    """With Ray, Serve (HAProxy) and a model running: Ray's GCS, raylet, agent, client server
    and HAProxy (endpoint, stats, metrics) listen on loopback only; from the machine's own
    network address nothing answers but Ray's servers that Ray binds to every interface (a
    Serve replica's gRPC server), which refuse a caller without the token."""
    import socket

    from relay.infra.exposure import listeners

    found = listeners(stack["settings"])
    names = {item.process for item in found}
    assert {"gcs_server", "raylet", "haproxy"} <= names, names
    core = [
        i
        for i in found
        if i.process in ("gcs_server", "raylet", "haproxy") or "Dashboard" in i.process
    ]
    assert core and all(i.loopback for i in core), [i for i in core if not i.loopback]
    addresses = _routable_addresses()
    assert addresses, "no address but loopback: nothing to probe from"
    for item in found:
        host = addresses[0]
        if item.loopback:
            with pytest.raises(OSError), socket.create_connection((host, item.port), timeout=3):
                pass
        else:
            seen = _ray_refuses_without_token(host, item.port)
            assert not any(s.endswith(": OK") for s in seen), (item, seen)
            assert any(s.endswith(": UNAUTHENTICATED") for s in seen), (item, seen)


# --- eta_monitoring ----------------------------------------------------------------------------


def _serve_log(
    version: str, at: dt.datetime, scenario: str, day: str, shift_minutes: float = 0.0
) -> None:
    """Log what the endpoint serves for ``day``'s orders under ``scenario`` at hour ``at``:
    features as the training set computes them (point in time), the version's predictions,
    and the actual delivery times landed afterwards."""
    from relay.data.lake import ACTUALS, SERVING_LOG, Lake
    from relay.data.scenarios import scenario_batch
    from relay.features.store import training_frame
    from relay.model.bundle import ModelBundle
    from relay.registry import Registry
    from relay.serve.log_schema import to_frame, to_row

    s = get_settings()
    # The world the pipeline landed (same seed); a sample from the whole day, as traffic is.
    orders = scenario_batch(
        scenario, dt.date.fromisoformat(day), s.data.orders_per_day, s.data.seed
    )
    frame = training_frame(orders, s).sample(400, random_state=1).reset_index(drop=True)
    bundle = ModelBundle.from_registry(Registry(), version)
    eta = bundle.predict(frame) + shift_minutes
    not_served = {"order_id", "event_timestamp", "distance_km", "hour", "weekday"}
    features = [c for c in frame.columns if c not in not_served | {"delivery_minutes"}]
    rows = []
    for i, (rec, pred) in enumerate(zip(frame.to_dict("records"), eta, strict=True)):
        t = at + dt.timedelta(seconds=5 * i)
        record = {
            "request_id": f"{scenario}-{at:%H%M}-{i}",
            "order_id": f"{scenario}-{at:%H%M}-{rec['order_id']}",
            "requested_at": t,
            "model_version": version,
            "eta_minutes": float(pred),
            "latency_ms": 5.0,
            "missing_features": "",
            "features": {k: rec[k] for k in features if k in rec},
        }
        rows.append(to_row(record, t))
    log = to_frame(rows)
    lake = Lake()
    lake.append(log, SERVING_LOG, at.date())
    actuals = pd.DataFrame(
        {
            "order_id": log["order_id"],
            "delivered_at": log["requested_at"] + pd.Timedelta(minutes=40),
            "actual_minutes": frame["delivery_minutes"].to_numpy(),
        }
    )
    lake.append(actuals, ACTUALS, at.date())


def _monitor(at: dt.datetime) -> tuple[str, dict[str, str], str]:
    """``airflow dags test eta_monitoring`` for the hourly run whose window ends at ``at``."""
    res = _airflow("dags", "test", "eta_monitoring", at.isoformat())
    assert res.returncode == 0, res.stdout[-5000:] + res.stderr[-5000:]
    run_id = _runs("eta_monitoring")[-1][0]
    return run_id, _task_states("eta_monitoring", run_id), res.stdout + res.stderr


def test_monitoring_on_clean_traffic_does_nothing(trained: dict[str, Any]) -> None:
    from relay.registry import Registry

    production = Registry().stage_version("production")
    assert production is not None
    at = dt.datetime(2026, 11, 19, 3, tzinfo=dt.UTC)
    _serve_log(production.id, at - dt.timedelta(minutes=59), "normal", DAYS[1])
    before = len(_runs("eta_training"))
    _, states, output = _monitor(at)
    verdict = [line for line in output.splitlines() if "retrain" in line or "drift" in line]
    assert states["healthy"] == "success", (states, verdict[-20:])
    assert states["retrain"] == "skipped" and states["rollback"] == "skipped"
    assert len(_runs("eta_training")) == before
    report = re.search(r"drift report: (\S+\.html)", output)
    assert report is not None, "the task log names the drift report"
    assert Path(report.group(1)).stat().st_size > 100_000


def test_monitoring_on_drifted_traffic_triggers_training(trained: dict[str, Any]) -> None:
    from relay.registry import Registry

    production = Registry().stage_version("production")
    assert production is not None
    before = len(_runs("eta_training"))
    # A storm costs the model accuracy through inputs that drifted: drift seen. One window of
    # it waits (RELAY_MONITORING__PERSIST_WINDOWS, 2); the next one in a row retrains.
    first = dt.datetime(2026, 11, 19, 4, tzinfo=dt.UTC)
    _serve_log(production.id, first - dt.timedelta(minutes=59), "storm", DAYS[1])
    _, states, output = _monitor(first)
    assert states["healthy"] == "success", (states, output[-3000:])
    assert "drift seen in 1 of 2 consecutive windows; waiting" in output, output[-3000:]
    assert len(_runs("eta_training")) == before
    at = first + dt.timedelta(hours=1)
    _serve_log(production.id, at - dt.timedelta(minutes=59), "storm", DAYS[1])
    _, states, output = _monitor(at)
    assert states["retrain"] == "success", (states, output[-3000:])
    assert states["healthy"] == "skipped"
    runs = _runs("eta_training")
    assert len(runs) == before + 1
    conf = json.loads(runs[-1][2]) if isinstance(runs[-1][2], str) else runs[-1][2]
    assert "eta_monitoring" in str(conf) and "retrain" in str(conf)


def _bad_copy_of(version_id: str, home: Path) -> str:
    """Register a copy of ``version_id`` whose ETAs run ~late, forced past the gate."""
    import torch

    from relay.evaluate.challenger import evaluate_version
    from relay.model.bundle import OPTIMISE_FILES
    from relay.model.registration import register_trained
    from relay.monitor.window import reference_uri_of
    from relay.registry import Registry

    run = next(p for p in (home / "runs").iterdir() if (p / "model" / "model.pt").exists())
    bad = home / "bad_model"
    shutil.copytree(run / "model", bad, dirs_exist_ok=True)
    for name in OPTIMISE_FILES:  # the optimise stage judged the good weights, not these
        (bad / name).unlink(missing_ok=True)
    state = torch.load(bad / "model.pt")
    state["base.bias"] += 2.0  # a skewed output: every ETA far off
    torch.save(state, bad / "model.pt")
    good = Registry().get(version_id)
    version = register_trained(
        bad,
        training_set_uri=reference_uri_of(good),
        data_partitions=list(good.lineage.data_partitions),
    )
    evaluate_version(version.id, bad / "data" / "holdout.parquet", force=True)
    Registry().promote(version.id, "production", reason="test: a degraded model in production")
    return version.id


def test_monitoring_rolls_back_a_degraded_production_model(
    stack: dict[str, Any], trained: dict[str, Any]
) -> None:
    from relay.registry import Registry

    good = Registry().stage_version("production")
    assert good is not None
    bad = _bad_copy_of(good.id, stack["home"])
    at = dt.datetime(2026, 11, 19, 7, tzinfo=dt.UTC)
    _serve_log(bad, at - dt.timedelta(minutes=59), "normal", DAYS[1])
    _, states, output = _monitor(at)
    assert states["rollback"] == "success", (states, output[-3000:])
    reg = Registry()
    production = reg.stage_version("production")
    assert production is not None and production.id == good.id
    assert production.state.value == "serving"
    assert reg.get(bad).stage is not None and reg.get(bad).stage.value == "archived"
    order = {"order_id": "after-rollback", "courier_id": "C1", "merchant_id": "M1"}
    answer = _post_eta({**order, "zone_id": "Z01", "distance_km": 2.0})
    assert answer["predictions"][0]["model_version"] == good.id


# --- Airflow's REST API on PostgreSQL ----------------------------------------------------------


def test_rest_api_trigger_on_postgresql(stack: dict[str, Any], trained: dict[str, Any]) -> None:
    """The full Airflow (api-server, scheduler, dag-processor, triggerer) on PostgreSQL; a run
    triggered through the REST API as the UI does it."""
    import httpx
    import psycopg2

    from relay.infra import airflow_api, processes
    from relay.infra import airflow_services as af
    from relay.registry import Registry

    production = Registry().stage_version("production")
    assert production is not None
    db = f"relay_airflow_test_{os.getpid()}"
    admin = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{db}"')
        cur.execute(f'CREATE DATABASE "{db}"')
    s = get_settings().model_copy(deep=True)
    s.home = stack["home"] / "pg"
    s.airflow.database_url = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{db}"
    s.airflow.api_url = f"http://127.0.0.1:{_free_port()}"
    with pytest.MonkeyPatch.context() as mp:
        # The Ray jobs still see the module's RELAY_HOME (registry, lake): only Airflow moves.
        for k, v in af.airflow_env(s).items():
            mp.setenv(k, v)
        try:
            af.start_airflow(s)
            api = airflow_api.api(s)
            airflow_api.wait_for_dag(api, "eta_rollback")
            api.unpause("eta_rollback")
            with pytest.raises(httpx.HTTPStatusError) as bad:
                api.trigger("eta_rollback", {"target_version": 42})
            answer = bad.value.response
            assert answer.status_code == 400 and "target_version" in answer.text
            run_id = api.trigger("eta_rollback", {"target_version": production.id})
            assert api.wait("eta_rollback", run_id, timeout_s=600) == "success"
            assert api.task_states("eta_rollback", run_id) == {
                "check_target": "success",
                "restore": "success",
            }
        finally:
            processes.stop_all(s, timeout_s=10)  # what is still up then gets SIGKILL
            with admin.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            admin.close()
