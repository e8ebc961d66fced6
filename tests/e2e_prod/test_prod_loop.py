"""The closed loop in the prod profile, on a two-node Ray cluster (``make e2e-prod``).

Stages, each on what the one before left: the cluster's two nodes; ``eta_training`` end to end
through Airflow's scheduler, with Ray Train's workers on both nodes (the node list printed while
they run); a monitoring run that sees drift and triggers a retrain, whose canary the rollout
controller walks to promotion on live traffic; a rollback through ``eta_rollback``.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from typing import Any

import httpx
import pytest

from relay.clock import utcnow

pytestmark = [pytest.mark.e2e_prod, pytest.mark.slow]


def _stage(label: str, t0: float) -> None:
    print(f"[e2e-prod] {label}: {time.monotonic() - t0:.1f} s", flush=True)


class NodeWatch:
    """Polls the node list while a run is on; keeps the first table that shows live Train
    workers on two nodes (printed at once: `make e2e-prod` runs with -s)."""

    def __init__(self, dashboard_url: str) -> None:
        self.url = dashboard_url
        self.table: str | None = None
        self.live: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from relay.infra.local_cluster import node_table, train_worker_nodes

        while self.table is None and not self._stop.is_set():
            try:
                live = train_worker_nodes(self.url, alive_only=True)
                if len(live) >= 2:
                    self.live, self.table = live, node_table(self.url)
                    print(f"\n[e2e-prod] Ray nodes while training:\n{self.table}", flush=True)
            except httpx.HTTPError:
                pass  # the dashboard is busy on 2 cores; the next poll asks again
            self._stop.wait(2)  # a poll interval, not a synchronisation

    def __enter__(self) -> NodeWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def _days() -> tuple[dt.date, dt.date, dt.date]:
    """Two days to train on, and yesterday (the drifted day), as ``make demo`` has them."""
    today = utcnow().date()
    return today - dt.timedelta(days=3), today - dt.timedelta(days=2), today - dt.timedelta(days=1)


def test_two_nodes_each_with_its_own_home(prod_stack: dict[str, Any]) -> None:
    from relay.infra.local_cluster import alive_nodes, node_table

    cluster = prod_stack["cluster"]
    found = alive_nodes(cluster.dashboard_url)
    print(f"\n[e2e-prod] Ray nodes:\n{node_table(cluster.dashboard_url)}")
    assert len(found) == 2 and sorted(bool(n.get("is_head_node")) for n in found) == [False, True]
    assert cluster.head.home != cluster.worker.home
    assert cluster.head.temp_dir != cluster.worker.temp_dir
    # Each node's session lives in its own temp dir.
    assert list(cluster.head.temp_dir.glob("session_*")), cluster.head.temp_dir
    assert list(cluster.worker.temp_dir.glob("session_*")), cluster.worker.temp_dir


@pytest.fixture(scope="module")
def first_run(prod_stack: dict[str, Any]) -> dict[str, Any]:
    """``eta_training`` through the scheduler (REST API), on two days, no search."""
    from relay.infra.airflow_api import next_slot, task_progress

    client = prod_stack["api"]
    first, second, _ = _days()
    conf = {
        "start_date": first.isoformat(),
        "end_date": second.isoformat(),
        "skip_tuning": True,
        "epochs": 3,
        "window_days": 2,
        "reason": "e2e-prod: first run",
    }
    t0 = time.monotonic()
    # As `make up`: the schedule's pending slot, taken while the DAG is paused, so unpausing
    # starts no scheduled run on top of this one.
    run_id = client.trigger("eta_training", conf, next_slot(client, "eta_training"))
    client.unpause("eta_training")
    with NodeWatch(prod_stack["cluster"].dashboard_url) as watch:
        state = client.wait("eta_training", run_id, 2400, task_progress(print, "eta_training"))
    _stage("eta_training (first run, end to end)", t0)
    return {
        "run_id": run_id,
        "state": state,
        "tasks": client.task_states("eta_training", run_id),
        "watch": watch,
    }


def test_training_runs_end_to_end_with_workers_on_both_nodes(
    prod_stack: dict[str, Any], first_run: dict[str, Any]
) -> None:
    from relay.infra.local_cluster import alive_nodes, node_table, train_worker_nodes

    assert first_run["state"] == "success", first_run["tasks"]
    for task in ("ingest", "validate", "features", "training_set", "train", "gate", "rollout"):
        assert first_run["tasks"][task] == "success", first_run["tasks"]
    url = prod_stack["cluster"].dashboard_url
    node_ids = {str(n["node_id"]) for n in alive_nodes(url)}
    hosted = train_worker_nodes(url)
    print(f"\n[e2e-prod] Ray nodes after the run:\n{node_table(url)}")
    assert set(hosted) == node_ids, (hosted, node_ids)  # every node hosted a Train worker
    watch = first_run["watch"]
    assert watch.table is not None, "Train workers were never seen alive on both nodes"
    assert set(watch.live) == node_ids


def _post_eta(settings: Any, order: dict[str, Any]) -> dict[str, Any]:
    from relay.serve.auth import read_secret

    key = read_secret(settings.serving.api_keys_file, "API_KEYS_FILE")
    res = httpx.post(
        f"{settings.serving.url}/v1/eta",
        json=order,
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    res.raise_for_status()
    return dict(res.json())


ORDER = {"order_id": "e2e-prod-1", "courier_id": "C1", "merchant_id": "M1", "zone_id": "Z01"}


def test_the_first_model_serves(prod_stack: dict[str, Any], first_run: dict[str, Any]) -> None:
    from relay.registry import Registry

    s = prod_stack["settings"]
    production = Registry(s).stage_version("production")
    assert production is not None and production.state.value == "serving"
    answer = _post_eta(s, {**ORDER, "distance_km": 2.5})
    assert answer["predictions"][0]["model_version"] == production.id
    assert 1 < answer["predictions"][0]["eta_minutes"] < 300


@pytest.fixture(scope="module")
def retrained(prod_stack: dict[str, Any], first_run: dict[str, Any]) -> dict[str, Any]:
    """``make demo``'s stages 2 and 3: drifted orders replayed, monitoring retrains, the
    candidate walks the canary plan on live traffic.

    The drift is a storm (as in the local closed loop), not the demo's new zone: this run's first
    model (3 epochs on 4,000 orders) answers a new zone with a prediction shift just under the
    0.2 PSI bar (0.18 measured), so issue 16's rule rightly leaves that unconfirmed feature drift
    alone; a storm costs it accuracy that the live labels confirm. The whole day (2,000 orders,
    4 a request) is replayed: a storm costs this model ~8% of MAE, which 456 labelled rows could
    not tell from noise (z 1.57 measured; the bar is 1.645).
    """
    from relay.flows.eta_training import ingest, publish_features, validate
    from relay.monitor.history import MonitoringHistory
    from relay.registry import Registry
    from relay.rollout.store import RolloutStore
    from relay.sim.config import ReplayConfig
    from relay.sim.demo import CANARY_RATE, Traffic, _outcome, _wait_run
    from relay.sim.replay import replay

    s, client = prod_stack["settings"], prod_stack["api"]
    _, _, yesterday = _days()
    scenario = "storm"
    v1 = Registry(s).stage_version("production")
    assert v1 is not None
    t0 = time.monotonic()
    ingest([yesterday], scenario=scenario, overwrite=True, settings=s)
    validate([yesterday])
    publish_features([yesterday])
    res = replay(
        ReplayConfig(
            date=yesterday, rate=30, batch=4, scenario=scenario, max_orders=2000, max_seconds=60
        )
    )
    print(f"[e2e-prod] {res.summary()}")
    _stage("drifted day landed and replayed", t0)
    t0 = time.monotonic()
    client.unpause("eta_monitoring")
    mon = client.trigger("eta_monitoring", {})
    _, monitoring = _wait_run(client, "eta_monitoring", mon, print, 900)
    _stage("eta_monitoring", t0)
    verdicts = MonitoringHistory(s).verdicts(1)
    print(f"[e2e-prod] monitoring verdict: {json.dumps(verdicts, default=str)[:4000]}")
    runs = client.get("/api/v2/dags/eta_training/dagRuns?limit=100")["dag_runs"]
    triggered = [r for r in runs if "eta_monitoring" in str((r.get("conf") or {}).get("reason"))]
    assert triggered, (monitoring, verdicts)
    retrain_id = max(triggered, key=lambda r: str(r.get("run_after")))["dag_run_id"]
    t0 = time.monotonic()
    with Traffic(yesterday, scenario, CANARY_RATE, print, start=res.orders_sent):
        state, tasks = _wait_run(client, "eta_training", retrain_id, print, 3600)
    _stage("retrain, gate and canary to promotion", t0)
    print(f"[e2e-prod] gate: {_gate_summary(client, retrain_id)}")
    _outcome(s, retrain_id, f"retrain: {state}; rollout", print)  # each step's verdict
    latest = RolloutStore(s).latest()
    assert latest is not None
    return {
        "v1": v1.id,
        "monitoring": monitoring,
        "state": state,
        "tasks": tasks,
        "rollout": latest.rollout,
    }


def _gate_summary(client: Any, run_id: str) -> str:
    """The gate task's verdict (its XCom), as the Airflow UI shows it."""
    from urllib.parse import quote

    path = (
        f"/api/v2/dags/eta_training/dagRuns/{quote(run_id, safe='')}"
        "/taskInstances/gate/xcomEntries/return_value"
    )
    try:
        value = client.get(path).get("value")
    except Exception as exc:  # a printout for the log; the asserts judge
        return f"(no gate result: {exc})"
    return str(value.get("summary") if isinstance(value, dict) else value)[:3000]


def test_monitoring_retrains_and_the_canary_is_promoted(
    prod_stack: dict[str, Any], retrained: dict[str, Any]
) -> None:
    from relay.registry import Registry

    assert retrained["monitoring"].get("retrain") == "success", retrained["monitoring"]
    assert retrained["state"] == "success", retrained["tasks"]
    rollout = retrained["rollout"]
    assert rollout.state == "promoted" and rollout.stable == retrained["v1"], rollout
    production = Registry(prod_stack["settings"]).stage_version("production")
    assert production is not None and production.id == rollout.candidate
    answer = _post_eta(prod_stack["settings"], {**ORDER, "distance_km": 3.0})
    assert answer["predictions"][0]["model_version"] == production.id


def test_rollback_restores_the_previous_version(
    prod_stack: dict[str, Any], retrained: dict[str, Any]
) -> None:
    from relay.registry import Registry

    s, client = prod_stack["settings"], prod_stack["api"]
    t0 = time.monotonic()
    client.unpause("eta_rollback")
    conf = {"target_version": retrained["v1"], "reason": "e2e-prod: roll back"}
    run_id = client.trigger("eta_rollback", conf)
    assert client.wait("eta_rollback", run_id, timeout_s=900) == "success"
    _stage("eta_rollback", t0)
    production = Registry(s).stage_version("production")
    assert production is not None and production.id == retrained["v1"]
    answer = _post_eta(s, {**ORDER, "distance_km": 3.0})
    assert answer["predictions"][0]["model_version"] == retrained["v1"]
