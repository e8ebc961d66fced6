"""The long-lived rollout controller: a detached Ray actor that ticks the reconciler.

Why an actor on the Ray cluster and not an Airflow DAG on a schedule: a step is judged on a
few seconds of new evidence at a time (``RELAY_ROLLOUT__TICK_S``), and every tick talks to
Serve. Airflow's smallest practical schedule is a minute, and each run would cost a task
process plus a Ray job to reach Serve (seconds of CPU a tick, on the machines that serve). The
actor lives on the cluster whose traffic it moves, costs nothing between ticks, and Ray
restarts it when its process dies (``max_restarts=-1``). Killed at any moment it loses nothing:
everything a tick knows is in the record, the step snapshot and the lease, and the restarted
actor's next tick goes on. Whoever starts a rollout (``relay rollout start``, the training
DAG's ``rollout`` task, ``relay stack up``) first makes sure it runs (:func:`ensure_controller`);
two controllers would do no harm, since each tick takes the traffic lease and writes the
record by compare-and-set.

:func:`begin` is what the training DAG's ``rollout`` task runs: the first version simply
becomes stable; a later one starts a rollout (or, on a retry, finds the one it started) and
returns at once; the DAG then waits for the record to end in the triggerer
(:class:`relay.airflow.triggers.RolloutTrigger`), not in a worker slot.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from relay.registry import Registry
from relay.rollout.controller import reconcile_once, start_rollout_record
from relay.rollout.experiment_run import experiment_once
from relay.rollout.lease import process_owner
from relay.rollout.manual import Endpoint, restore, serve_endpoint
from relay.rollout.record import Rollout
from relay.rollout.store import RolloutStore
from relay.serve.traffic_state import TRAFFIC_NAMESPACE, named_actor
from relay.settings import Settings, get_settings

log = logging.getLogger(__name__)

CONTROLLER_ACTOR = "relay-rollout-controller"
CONTROLLER_NAMESPACE = TRAFFIC_NAMESPACE  # Relay's actors live together


class _Controller:
    """Ticks :func:`reconcile_once` (rollouts, then the production guard) and
    :func:`~relay.rollout.experiment_run.experiment_once` every ``tick_s`` in a thread of its
    own (the actor's body).

    Each tick's lines go to the actor's log (the Ray dashboard shows it), said once while
    they repeat; an error is logged and the next tick tries again.
    """

    def __init__(self, tick_s: float) -> None:
        self.tick_s = tick_s
        self.ticks = 0
        self.errors = 0
        self.last: list[str] = []
        self._said: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="relay-rollout", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            lines: list[str] = []
            try:
                reconcile_once(emit=lines.append)
                experiment_once(emit=lines.append)
            except Exception as exc:
                self.errors += 1
                lines.append(f"tick failed, the next one retries: {type(exc).__name__}: {exc}")
                log.exception("rollout tick failed")
            self.ticks += 1
            self.last = lines
            if lines != self._said:
                for line in lines:
                    log.info(line)
                self._said = lines
            if self._stop.wait(self.tick_s):  # the tick schedule, not a synchronisation
                return

    def status(self) -> dict[str, Any]:
        """Ticks so far, failed ticks, the last tick's lines and this process's pid."""
        return {"ticks": self.ticks, "errors": self.errors, "last": self.last, "pid": os.getpid()}

    def stop(self) -> None:
        self._stop.set()


def ensure_controller(settings: Settings | None = None) -> Any:
    """The cluster's rollout controller actor, started if none runs (needs ``ray.init``).

    It reads the same settings as the caller (its ``RELAY_*`` environment, never secrets: Ray
    shows an actor's runtime_env in its dashboard).
    """
    import ray

    from relay.infra.rayjobs import relay_job_env

    s = settings or get_settings()
    actor: Any = ray.remote(num_cpus=0, max_restarts=-1)(_Controller)
    env = {"env_vars": relay_job_env(s)}
    for attempt in range(2):
        handle = named_actor(actor, CONTROLLER_ACTOR, s.rollout.tick_s, runtime_env=env)
        try:
            ray.get(handle.status.remote(), timeout=120)  # started, or its error raised here
            return handle
        except ray.exceptions.ActorDiedError:
            # A controller stopped by someone else a moment ago still held the name: wait for
            # the name to be free, then start ours.
            if attempt:
                raise
            _wait_until_gone(CONTROLLER_ACTOR)
    raise AssertionError("unreachable")


def _wait_until_gone(name: str, timeout_s: float = 60.0) -> None:
    """Return once no live actor holds ``name`` (``ray.kill`` is asynchronous: a killed actor
    keeps its name for a moment, and ``get_if_exists`` would hand back the dying one)."""
    import ray

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get_actor(name, namespace=CONTROLLER_NAMESPACE)
        except ValueError:
            return  # the GCS has it dead: the name is free
        time.sleep(0.1)  # polling the GCS for the name's release, bounded by the deadline
    raise TimeoutError(f"the actor {name!r} was still alive {timeout_s} s after it was killed")


def stop_controller() -> bool:
    """Stop the cluster's controller actor; returns whether one ran. A live rollout waits,
    its lease lapsing, until a controller runs again."""
    import ray

    try:
        handle = ray.get_actor(CONTROLLER_ACTOR, namespace=CONTROLLER_NAMESPACE)
    except ValueError:
        return False
    ray.kill(handle, no_restart=True)
    _wait_until_gone(CONTROLLER_ACTOR)  # the next ensure_controller starts a fresh one
    return True


@dataclass
class Begun:
    """What :func:`begin` did.

    Attributes:
        version: the candidate.
        outcome: ``first_deploy`` (nothing served: it became stable), ``already_serving``,
            ``started`` (a new rollout) or ``following`` (the live rollout of this version).
        stable: the version serving all traffic now.
        rollout_id: the rollout, when one runs.
    """

    version: str
    outcome: str
    stable: str
    rollout_id: str | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def begin(
    version: str,
    settings: Settings | None = None,
    *,
    registry: Registry | None = None,
    store: RolloutStore | None = None,
    endpoint: Endpoint | None = None,
    by: str | None = None,
) -> Begun:
    """Put ``version`` on its way to production; returns without waiting for the rollout.

    Idempotent, so a retried task is safe: a live rollout of ``version`` is followed, not
    started again.

    Raises:
        RolloutActive: a rollout of another version is live.
        LeaseHeld: a restore or a manual move holds the traffic lease.
    """
    s = settings or get_settings()
    reg, rs = registry or Registry(s), store or RolloutStore(s)
    ep = endpoint or serve_endpoint()
    who = by or process_owner("rollout-task")
    live = rs.current()
    if live is not None and live.rollout.candidate == version:
        return Begun(version, "following", live.rollout.stable, live.rollout.id)
    split = ep.current_traffic(s)
    if split is None and reg.stage_version("production") is None:
        done = restore(version, s, by=who, reason="first deployment", registry=reg, endpoint=ep)
        return Begun(version, "first_deploy", done.split.stable)
    if split is not None and split.stable == version and split.candidate is None:
        return Begun(version, "already_serving", version)
    record = start_rollout_record(version, s, registry=reg, store=rs, endpoint=ep, by=who)
    return Begun(version, "started", record.stable, record.id)


def outcome_of(rollout: Rollout) -> dict[str, Any]:
    """An ended (or live) rollout as the DAG's ``rollout.json`` tells it: each step's verdict."""
    steps = [
        {
            "step": v.step,
            "target": rollout.plan.steps[v.step].describe(),
            "action": v.action.value,
            "reasons": list(v.reasons),
        }
        for v in rollout.verdicts
        if v.action.value != "hold"
    ]
    return {
        "version": rollout.candidate,
        "outcome": rollout.state.value,
        "stable": rollout.serving_after or rollout.stable,
        "rollout_id": rollout.id,
        "steps": steps,
    }
