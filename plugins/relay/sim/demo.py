"""``make demo``: the life cycle, played on the local stack through Airflow's REST API.

1. Day 1: ``eta_training`` trains v1 and serves it (``make up``'s first run).
2. Drifted days: yesterday's orders land under a drift scenario and are replayed to the
   endpoint, with their actual delivery times arriving behind them.
3. ``eta_monitoring`` sees the drift and triggers ``eta_training`` by itself; v2 passes the gate
   and the cluster's rollout controller walks it through the plan's steps (0.1%-style
   shares, a zone-targeted step, 100%) on live traffic (replayed meanwhile) to production.
4. A deliberately bad model (a crippled learning rate) is stopped by the gate.
5. The same bad model forced into canary is capped at a small share and rolled back by live
   metrics (its accuracy against the labels that arrive during the step).

Every stage prints what happened; the end lists the versions and the reports written. The demo
drives only public interfaces: the REST API, the endpoint, the lake, the registry.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from relay.clock import utcnow
from relay.settings import Settings, get_settings

#: What makes a model bad on purpose: it barely moves from its random start.
BAD_HYPERPARAMETERS = {"learning_rate": 1e-7}
DRIFT_SCENARIO = "new_zone"
#: Orders per second replayed while v2 walks the canary steps.
CANARY_RATE = 15


class Traffic:
    """Replays a day's orders to the endpoint in a background thread until stopped."""

    def __init__(
        self,
        day: dt.date,
        scenario: str | None,
        rate: float,
        emit: Callable[[str], None],
        start: int = 0,
    ):
        self.day, self.scenario, self.rate, self.emit = day, scenario, rate, emit
        self.start = start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.sent = 0

    def _run(self) -> None:
        from relay.sim.config import ReplayConfig
        from relay.sim.orders import load_orders
        from relay.sim.replay import replay

        day_orders = len(load_orders(self.day, self.scenario)[0])
        skip = self.start % day_orders
        while not self._stop.is_set():
            # Move through the day: the split hashes order ids, so replaying the same few
            # hundred orders again would send a 1% canary the same handful every time.
            cfg = ReplayConfig(
                date=self.day,
                rate=self.rate,
                scenario=self.scenario,
                max_orders=int(self.rate * 20),
                max_seconds=20,
                label_delay_s=2.0,
                skip=skip,
            )
            try:
                res = replay(cfg)
                self.sent += res.orders_answered
                skip = (skip + max(1, res.orders_sent)) % day_orders
            except Exception as exc:  # the endpoint may be between deployments; keep going
                self.emit(f"  (traffic paused: {exc})")
                self._stop.wait(2)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def _stage(emit: Callable[[str], None], n: int, title: str) -> None:
    emit(f"\n=== {n}. {title} ===")


def _run_and_wait(
    client: Any, conf: dict[str, Any], emit: Callable[[str], None], timeout_s: float = 2400
) -> tuple[str, dict[str, str]]:
    run_id = client.trigger("eta_training", conf)
    emit(f"eta_training {run_id}: {conf.get('reason')}")
    return _wait_run(client, "eta_training", run_id, emit, timeout_s)


def _wait_run(
    client: Any, dag_id: str, run_id: str, emit: Callable[[str], None], timeout_s: float
) -> tuple[str, dict[str, str]]:
    from relay.infra.airflow_api import task_progress

    state = client.wait(dag_id, run_id, timeout_s, task_progress(emit, dag_id))
    return state, client.task_states(dag_id, run_id)


def _outcome(
    settings: Settings, run_id: str, label: str, emit: Callable[[str], None]
) -> dict[str, Any]:
    """The rollout outcome of an ``eta_training`` run (empty when it wrote none), told step by
    step with each verdict's reasons; its ``outcome`` is ``promoted``, ``rolled_back``,
    ``aborted`` or ``first_deploy``."""
    from relay.flows import run_store

    path = f"{run_store.run_uri(run_id, settings)}/rollout.json"
    found = run_store.exists(path, settings)
    outcome = dict(json.loads(run_store.read_text(path, settings))) if found else {}
    emit(f"{label}: {outcome.get('outcome')}; stable {outcome.get('stable')}")
    for step in outcome.get("steps", []):
        emit(f"  step {step['step']} ({step['target']}): {step['action']}")
        for reason in step["reasons"]:
            emit(f"      {reason}")
    return outcome


def play(settings: Settings | None = None, emit: Callable[[str], None] = print) -> dict[str, Any]:
    """Play the whole life cycle on a running stack (``relay stack up`` first)."""
    from relay.flows.eta_training import ingest, publish_features, validate
    from relay.infra.airflow_api import api
    from relay.registry import Registry
    from relay.sim.config import ReplayConfig
    from relay.sim.replay import replay

    s = settings or get_settings()
    client = api(s)
    today = utcnow().date()
    yesterday = today - dt.timedelta(days=1)
    reg = Registry(s)
    summary: dict[str, Any] = {}

    _stage(emit, 1, "day 1: v1 trained and serving")
    v1 = reg.stage_version("production")
    if v1 is None:
        raise RuntimeError("nothing in production: run `make up` first")
    emit(f"production: {v1.id} (val MAE {v1.training.metrics.get('val_mae', float('nan')):.2f})")
    summary["v1"] = v1.id

    _stage(emit, 2, f"drifted days: yesterday's orders under '{DRIFT_SCENARIO}', replayed")
    ingest([yesterday], scenario=DRIFT_SCENARIO, overwrite=True, settings=s)
    validate([yesterday])
    publish_features([yesterday])
    res = replay(
        ReplayConfig(
            date=yesterday, rate=60, scenario=DRIFT_SCENARIO, max_orders=900, max_seconds=40
        )
    )
    emit(res.summary())

    _stage(emit, 3, "eta_monitoring: drift → retrain → gate → canary → promoted")
    client.unpause("eta_monitoring")
    mon = client.trigger("eta_monitoring", {})
    state, tasks = _wait_run(client, "eta_monitoring", mon, emit, 900)
    if tasks.get("retrain") != "success":
        raise RuntimeError(f"monitoring did not trigger a retrain: {tasks}")
    runs = client.get("/api/v2/dags/eta_training/dagRuns?limit=100")["dag_runs"]
    triggered = [r for r in runs if "eta_monitoring" in str((r.get("conf") or {}).get("reason"))]
    retrain_id = max(triggered, key=lambda r: str(r.get("run_after")))["dag_run_id"]
    emit(f"retrain run {retrain_id} triggered by eta_monitoring")
    # 15 orders/s: at the 100% step one candidate replica takes all of it, on the same two
    # cores as Airflow, Ray and this client; at 30/s 5% of its requests passed 100 ms here.
    with Traffic(yesterday, DRIFT_SCENARIO, CANARY_RATE, emit, start=res.orders_sent):
        state, tasks = _wait_run(client, "eta_training", retrain_id, emit, 3600)
    outcome = _outcome(s, retrain_id, f"retrain: {state}; rollout", emit)
    summary["v2"] = outcome.get("version")
    summary["v2_outcome"] = outcome.get("outcome")

    _stage(emit, 4, "a deliberately bad model: the gate stops it")
    bad_conf = {
        "start_date": yesterday.isoformat(),
        "end_date": yesterday.isoformat(),
        "skip_tuning": True,
        "epochs": 1,
        "hyperparameters": BAD_HYPERPARAMETERS,
        "reason": "demo: a bad model",
    }
    state, tasks = _run_and_wait(client, bad_conf, emit)
    emit(
        f"bad model run {state}: gate_rejected {tasks.get('gate_rejected')}, "
        f"rollout {tasks.get('rollout')}"
    )
    summary["gate_rejected"] = tasks.get("gate_rejected") == "success"

    _stage(emit, 5, "the same bad model forced into canary: live metrics roll it back")
    with Traffic(yesterday, DRIFT_SCENARIO, 30, emit, start=10_000):
        forced = {**bad_conf, "force_deploy": True, "reason": "demo: bad model forced to canary"}
        run_id = client.trigger("eta_training", forced)
        emit(f"eta_training {run_id}: {forced['reason']}")
        state, tasks = _wait_run(client, "eta_training", run_id, emit, 3600)
    outcome = _outcome(s, run_id, "forced canary", emit)
    summary["forced_outcome"] = outcome.get("outcome")

    _stage(emit, 6, "versions and reports")
    for v in Registry(s).list_versions():
        emit(f"  {v.id:32} {v.state.value:10} {(v.stage.value if v.stage else ''):10}")
    reports = sorted(str(p) for p in Path(s.reports_dir).rglob("*.html"))
    for p in reports:
        emit(f"  report: {p}")
    summary["reports"] = reports
    return summary
