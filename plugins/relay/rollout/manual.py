"""Traffic moves asked for by a person or a DAG, under the one traffic lease.

A restore puts one version on all traffic: the very first deployment, ``eta_rollback``,
monitoring's rollback, ``relay serve restore|rollback``. ``relay serve deploy|promote`` move a
candidate by hand. Each takes the traffic lease (:mod:`relay.rollout.lease`), so it never
interleaves with a rollout controller's tick, and records the move in the registry before it
touches Serve, so a failure in between leaves a registry that says what Serve should answer
and a retry that converges.

A restore during a live rollout aborts it first (recorded with who and why, ending with the
restored version serving), then takes the lease over from its controller: an in-flight tick
finds the record changed and writes nothing, and any later tick of the ended record heals
Serve towards the restored version, never away from it. A live experiment is stopped the same
way (recorded), since it holds the lease for its whole run. A restore that replaces production,
and the rollout it aborts, are told (:mod:`relay.notify`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from relay.clock import as_utc, utcnow
from relay.notify import send
from relay.registry import ModelState, Registry, Stage
from relay.registry.moves import check_not_rolled_back
from relay.rollout.announce import restore_notices
from relay.rollout.experiment_record import ExperimentStore, stop_live
from relay.rollout.lease import TrafficLease, process_owner, rollout_owner
from relay.rollout.record import Rollout, RolloutError, abort
from relay.rollout.store import RolloutActive, RolloutStore
from relay.serve.traffic import TrafficSplit
from relay.settings import Settings, get_settings


class Endpoint(Protocol):
    """What the controllers need of Serve (``relay.serve.control`` provides it)."""

    def current_traffic(self, settings: Settings | None = None) -> TrafficSplit | None: ...

    def deploy_model(self, version: str, settings: Settings | None = None) -> str: ...

    def set_traffic(
        self, split: TrafficSplit, settings: Settings | None = None
    ) -> TrafficSplit: ...

    def live_metrics(self, settings: Settings | None = None) -> dict[str, Any]: ...

    def remove_model(self, version: str) -> None: ...

    def deployed_models(self, settings: Settings | None = None) -> list[str]: ...


def serve_endpoint() -> Endpoint:
    """``relay.serve.control``: Serve on the Ray cluster this process joined."""
    from relay.serve import control

    return control


@dataclass(frozen=True)
class Restored:
    """What a restore did: the split now served, and the rollout it aborted (if one was live)."""

    split: TrafficSplit
    aborted: Rollout | None = None


def restore(
    version: str,
    settings: Settings | None = None,
    *,
    by: str | None = None,
    reason: str = "",
    registry: Registry | None = None,
    store: RolloutStore | None = None,
    endpoint: Endpoint | None = None,
    lease: TrafficLease | None = None,
    now: dt.datetime | None = None,
    force: bool = False,
) -> Restored:
    """Serve ``version`` with all traffic and point production at it, under the lease.

    Used for the first version, and to restore an earlier one. A live rollout is aborted
    first, with ``by`` and ``reason`` recorded. The replaced version keeps running, so moving
    back is quick. A restore is a rollback: the version it replaces in production is marked
    rolled back, and no automatic move (monitoring, the guard, a rollout) serves it again;
    one marked so is refused here unless a person forces it (``force``).

    Raises:
        LeaseHeld: another restore or manual move holds the traffic lease.
        RolledBackVersion: ``version`` was rolled back and ``force`` is False (refused before
            anything is aborted).
        VersionNotFound / IllegalTransition: the registry refuses ``version``.
    """
    s = settings or get_settings()
    reg, rs = registry or Registry(s), store or RolloutStore(s)
    ep, tl = endpoint or serve_endpoint(), lease or TrafficLease.open(s)
    who, at = by or process_owner(), as_utc(now or utcnow())
    why = reason or f"restored {version}"
    check_not_rolled_back(reg.get(version), Stage.PRODUCTION, force)
    aborted = _abort_live(rs, tl, who, f"restore of {version}: {why}", at, version)
    # A live experiment holds the lease for its whole run: a restore ends it too (recorded).
    stop_live(ExperimentStore(s, store=rs.store), tl, who, f"restore of {version}: {why}", at)
    with tl.held(who, wait_s=s.rollout.lease_wait_s):
        replaced = reg.stage_version("production")
        split = serve_alone(version, s, reg, ep, why, rolling_back=True, force=force)
    before = None if replaced is None else replaced.id
    for notice in restore_notices(version, before, who, why, aborted):
        send(notice, s)
    return Restored(split, aborted)


def _abort_live(
    rs: RolloutStore, tl: TrafficLease, who: str, why: str, at: dt.datetime, serving: str
) -> Rollout | None:
    live = rs.current()
    if live is None:
        return None

    def end(r: Rollout) -> Rollout | None:
        return None if r.state.final else abort(r, who, why, at, serving=serving)

    ended = rs.update(live.rollout.id, end)
    held = live.rollout.lease
    tl.release(held.owner if held is not None else rollout_owner(ended.id))
    return ended


def serve_alone(
    version: str,
    s: Settings,
    reg: Registry,
    ep: Endpoint,
    reason: str,
    *,
    rolling_back: bool = False,
    force: bool = False,
) -> TrafficSplit:
    """Registry first (production is ``version``), then Serve; the caller holds the lease.

    ``rolling_back`` marks the version it replaces rolled back; ``force`` serves a version
    that was rolled back (a person's choice)."""
    current = reg.stage_version("production")
    if current is None or current.id != version:
        reg.promote(
            version,
            "production",
            reason=reason,
            rolling_back=rolling_back,
            allow_rolled_back=force,
        )
    ep.deploy_model(version, s)
    split = ep.set_traffic(TrafficSplit(stable=version), s)
    mark_serving(reg, version, "serving all traffic")
    return split


def canary(
    version: str,
    share: float,
    settings: Settings | None = None,
    *,
    by: str | None = None,
    registry: Registry | None = None,
    store: RolloutStore | None = None,
    endpoint: Endpoint | None = None,
    lease: TrafficLease | None = None,
) -> TrafficSplit:
    """By hand: ``version`` beside the stable one with ``share`` of orders (nothing judges it).

    Raises:
        RolloutActive: a rollout is live (it owns the traffic until it ends or is aborted).
        RolloutError: nothing serves yet (restore a version first).
    """
    with _by_hand("move traffic by hand", settings, by, registry, store, endpoint, lease) as (
        s,
        reg,
        ep,
    ):
        now = ep.current_traffic(s)
        if now is None:
            raise RolloutError(f"nothing serves yet: `relay serve restore --version {version}`")
        if now.stable != version:
            reg.promote(version, "canary", reason=f"manual canary at {share:.1%}")
        ep.deploy_model(version, s)
        split = ep.set_traffic(TrafficSplit(now.stable, version, share), s)
        mark_serving(reg, version, f"manual canary at {share:.1%}")
        return split


def promote_candidate(
    settings: Settings | None = None,
    *,
    by: str | None = None,
    registry: Registry | None = None,
    store: RolloutStore | None = None,
    endpoint: Endpoint | None = None,
    lease: TrafficLease | None = None,
) -> TrafficSplit:
    """By hand: the candidate serving now takes all traffic and becomes production.

    Raises:
        RolloutActive: a rollout is live.
        RolloutError: no candidate serves.
    """
    with _by_hand("promote by hand", settings, by, registry, store, endpoint, lease) as (
        s,
        reg,
        ep,
    ):
        now = ep.current_traffic(s)
        if now is None or not now.candidate:
            raise RolloutError("no candidate serves: nothing to promote")
        return serve_alone(now.candidate, s, reg, ep, f"promoted by hand over {now.stable}")


def free_idle_models(
    endpoint: Endpoint | None = None,
    settings: Settings | None = None,
    emit: Callable[[str], None] = print,
) -> list[str]:
    """Delete the deployed model versions that take no traffic; returns them.

    A promotion keeps the replaced version running so that a rollback that day is quick; the
    next training run calls this first, because on a small cluster those replicas hold the CPUs
    its workers need (`make demo` waited forever for 1 CPU with two versions deployed).
    """
    ep = endpoint or serve_endpoint()
    deployed = ep.deployed_models(settings)
    if not deployed:  # asking for the split would start Serve on a cluster without it
        return []
    split = ep.current_traffic(settings)
    keep = set(split.versions()) if split else set(deployed)
    idle = [v for v in deployed if v not in keep]
    for version in idle:
        ep.remove_model(version)
        emit(f"freed {version}: deployed, no traffic")
    return idle


def mark_serving(reg: Registry, version: str, reason: str) -> None:
    """Deploying → Serving once Serve answers with ``version``."""
    if reg.get(version).state is ModelState.DEPLOYING:
        reg.transition(version, ModelState.SERVING, reason)


def _no_live_rollout(rs: RolloutStore, what: str) -> None:
    live = rs.current()
    if live is not None:
        r = live.rollout
        raise RolloutActive(
            f"cannot {what}: rollout {r.id} of {r.candidate} owns the traffic ({r.state}); "
            f"`relay rollout abort --reason ...` it first, or `relay serve restore`"
        )


@contextmanager
def _by_hand(
    what: str,
    settings: Settings | None,
    by: str | None,
    registry: Registry | None,
    store: RolloutStore | None,
    endpoint: Endpoint | None,
    lease: TrafficLease | None,
) -> Iterator[tuple[Settings, Registry, Endpoint]]:
    """A manual move's frame: the traffic lease held, and no rollout owning the traffic."""
    s = settings or get_settings()
    rs, tl = store or RolloutStore(s), lease or TrafficLease.open(s)
    with tl.held(by or process_owner()):
        _no_live_rollout(rs, what)
        yield s, registry or Registry(s), endpoint or serve_endpoint()
