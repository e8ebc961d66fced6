"""The rollout controller: one reconciler tick against the registry, the store and Serve.

:func:`reconcile_once` reads the rollout record, measures its current step, asks the pure
:func:`relay.rollout.reconcile.tick` what happens, and carries it out. The writes come in an
order such that a process killed between any two of them leaves a state the next call
completes:

1. the record, by compare-and-set: the truth, written before anything acts on it;
2. the step's start snapshot (:mod:`relay.rollout.observe`) after an advance;
3. Serve's traffic: missing versions deployed, then the split; every later call heals Serve
   from the record, and judges a step only once Serve answers as the record says;
4. once the rollout ended, the registry (production, or Degraded) and freeing a rolled-back
   candidate; a later call finishes what an ended record still lacks.

Once the rollout has ended and nothing is left to finish, each tick also runs the production
guard (:func:`relay.rollout.guarding.guard_once`): a promotion is watched for a bake period.

Every traffic change happens under the one traffic lease (:mod:`relay.rollout.lease`), which a
live rollout's controller holds and renews; :func:`abort_rollout` ends the record first, then
takes the lease over from it to restore stable, so the next tick has nothing left to undo.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable

from relay.clock import as_utc, utcnow
from relay.notify import send
from relay.registry import ModelState, Registry
from relay.registry.errors import ConcurrentUpdate
from relay.rollout.announce import aborted_notice, tick_notice
from relay.rollout.experiment_record import live_experiment
from relay.rollout.guarding import guard_once
from relay.rollout.lease import LeaseHeld, LeaseLost, TrafficLease, process_owner, rollout_owner
from relay.rollout.manual import Endpoint, mark_serving, serve_endpoint
from relay.rollout.observe import (
    QualityReader,
    StepStarts,
    labelled_quality,
    measure,
    next_start,
    reference_window,
    step_quality,
)
from relay.rollout.plan import Plan, TrafficRule, default_plan
from relay.rollout.reconcile import Observation, TickResult, describe, desired_traffic, tick
from relay.rollout.record import (
    Rollout,
    RolloutError,
    RolloutState,
    abort,
    acquire_lease,
    start_rollout,
)
from relay.rollout.store import RolloutActive, RolloutNotFound, RolloutStore
from relay.serve.traffic import TrafficSplit
from relay.settings import Settings, get_settings
from relay.verdict import FAIL

#: How a rollout's start records that its candidate was forced past a rejecting gate.
FORCED = "forced past its evaluation gate"
_GATE_REJECTED = "gate REJECTED"  # relay.evaluate.challenger's reason for a forced version

Emit = Callable[[str], None]


def _log(line: str) -> None:
    logging.getLogger(__name__).info(line)


def start_rollout_record(
    version: str,
    settings: Settings | None = None,
    *,
    registry: Registry | None = None,
    store: RolloutStore | None = None,
    endpoint: Endpoint | None = None,
    forced: bool = False,
    plan: Plan | None = None,
    lease: TrafficLease | None = None,
    by: str | None = None,
    now: dt.datetime | None = None,
    allow_rolled_back: bool = False,
) -> Rollout:
    """Start a rollout of ``version`` against the version serving now; the ticks move traffic.

    Under the traffic lease, the registry puts ``version`` in canary and the new record becomes
    the active rollout; nothing reaches Serve until the first :func:`reconcile_once`.

    Args:
        version: the candidate (Validated, or forced so).
        settings: defaults to :func:`get_settings`.
        registry: defaults to the registry ``settings`` names; likewise ``store``, ``lease``.
        store: where the record goes.
        endpoint: Serve (:mod:`relay.serve.control` by default), asked what serves now.
        forced: the candidate was forced past a rejecting gate: capped until judged.
        allow_rolled_back: a person's choice to roll out a version rolled back before (else
            refused: ``RolledBackVersion``).
        plan: the steps; :func:`relay.rollout.plan.default_plan` by default.
        lease: the traffic lease.
        by: who starts it (an owner name); this process by default.
        now: the start time; the current UTC time by default.

    Raises:
        RolloutError: nothing serves yet, or ``version`` already serves all traffic.
        RolloutActive: another rollout is live.
        LeaseHeld: another owner holds the traffic lease.
    """
    s = settings or get_settings()
    reg, rs = registry or Registry(s), store or RolloutStore(s)
    ep, tl = endpoint or serve_endpoint(), lease or TrafficLease.open(s)
    who, at = by or process_owner(), as_utc(now or utcnow())
    split = ep.current_traffic(s)
    production = reg.stage_version("production")
    stable = split.stable if split is not None else production.id if production else None
    if stable is None:
        raise RolloutError(f"nothing serves yet: `relay serve restore --version {version}` first")
    if stable == version:
        raise RolloutError(f"{version} already serves all traffic")
    with tl.held(who):
        experiment = live_experiment(s, store=rs.store)
        if experiment is not None:
            raise RolloutActive(
                f"experiment {experiment.id} is {experiment.state.value}; "
                "`relay experiment stop --reason ...` it or let it end first"
            )
        live = rs.current()
        if live is not None:
            raise RolloutActive(
                f"rollout {live.rollout.id} of {live.rollout.candidate} is {live.rollout.state}; "
                f"`relay rollout abort` it or let it end first"
            )
        why = f"canary against {stable}" + (f" ({FORCED})" if forced else "")
        reg.promote(version, "canary", reason=why, allow_rolled_back=allow_rolled_back)
        record = start_rollout(version, stable, plan or default_plan(s.rollout), by=who, now=at)
        if forced:
            first = record.history[0].model_copy(update={"reason": why})
            record = Rollout.model_validate({**dict(record), "history": [first]})
        rs.create(record)
    return record


def gate_rejected(rollout: Rollout, registry: Registry) -> bool:
    """Whether the candidate was forced in: at the start, or past its evaluation gate."""
    if FORCED in rollout.history[0].reason:
        return True
    return any(h.reason.startswith(_GATE_REJECTED) for h in registry.get(rollout.candidate).history)


def router_split(rule: TrafficRule) -> TrafficSplit:
    """The split the router applies for ``rule``, targeting included (no candidate: stable)."""
    if rule.candidate is None or rule.candidate_share == 0:
        return TrafficSplit(stable=rule.stable)
    return rule.split()


def reconcile_once(
    settings: Settings | None = None,
    *,
    registry: Registry | None = None,
    store: RolloutStore | None = None,
    lease: TrafficLease | None = None,
    endpoint: Endpoint | None = None,
    now: dt.datetime | None = None,
    owner: str | None = None,
    quality: QualityReader = labelled_quality,
    emit: Emit = _log,
) -> TickResult | None:
    """One reconciler tick: judge the active rollout's step, write the record, match Serve.

    Args:
        settings: defaults to :func:`get_settings`.
        registry: defaults to the registry ``settings`` names; likewise ``store``, ``lease``.
        store: the rollout records.
        lease: the traffic lease, taken (or renewed) for ``owner``.
        endpoint: Serve; :mod:`relay.serve.control` by default.
        now: the tick's time; the current UTC time by default.
        owner: the lease owner; ``rollout:<id>`` by default.
        quality: reads labelled quality per version since a time (tests script it).
        emit: receives the tick's lines.

    Returns:
        What the tick decided (for an ended rollout: what was finished), or None when there
        is no rollout, another owner holds the lease, or the record changed meanwhile.
    """
    s = settings or get_settings()
    reg, rs = registry or Registry(s), store or RolloutStore(s)
    ep, tl = endpoint or serve_endpoint(), lease or TrafficLease.open(s)
    at = as_utc(now or utcnow())
    stored = rs.latest()
    if stored is None:
        emit("no rollout to reconcile")
        return None
    rollout = stored.rollout
    who = owner or rollout_owner(rollout.id)
    if rollout.state.final:
        ended = _reconcile_ended(rollout, s, reg, tl, ep, who, emit)
        if ended is not None:  # finished, no rollout owns the traffic: the guard may watch
            guard_once(s, registry=reg, store=rs, endpoint=ep, lease=tl, now=at, emit=emit)
        return ended
    try:
        rollout = acquire_lease(rollout, who, at, s.rollout.lease_ttl_s)
        tl.acquire(who)
    except LeaseHeld as held:
        emit(f"not reconciled: {held}")
        return None
    forced = gate_rejected(rollout, reg)
    wanted = desired_traffic(rollout, forced, s.rollout)
    current = ep.current_traffic(s)
    applied = wanted if current == router_split(wanted) else _rule_of(current)
    metrics = ep.live_metrics(s)
    steps = StepStarts(rs.store, rs.model_name)
    measured = measure(rollout, metrics, steps.read(rollout.id), at)
    observed = Observation(
        step=rollout.step,
        step_started_at=rollout.step_started_at,
        applied=applied,
        candidate=measured.candidate,
        stable=measured.stable,
        quality=step_quality(rollout, s, quality),
        stable_reference=reference_window(measured.start),
        gate_rejected=forced,
        split_since=measured.start.split_since,
    )
    result = tick(rollout, observed, at, s.rollout)
    try:
        rs.put(result.rollout, stored.etag)
    except ConcurrentUpdate:
        emit(f"rollout {rollout.id} changed while this tick judged it; the next tick goes on")
        return None
    new = result.rollout
    if not new.state.final and new.step != rollout.step:
        steps.write(new.id, next_start(new, measured, metrics))
    elif not new.state.final and (measured.fresh or applied != result.traffic):
        healed = at if applied != result.traffic else measured.start.split_since
        steps.write(new.id, dataclasses.replace(measured.start, split_since=healed))
    try:
        tl.renew(who)  # an abort meanwhile took the lease over: its traffic is the truth
    except LeaseLost as lost:
        emit(f"traffic left alone: {lost}")
        return None
    lines = [*result.reasons, *apply_rule(ep, result.traffic, s)]
    if new.state.final:
        lines += _finish(new, reg, ep, s)
        tl.release(who)
    else:
        mark_serving(reg, new.candidate, f"canary: {describe(result.traffic)}")
    for line in lines:
        emit(line)
    notice = tick_notice(rollout, result, at)  # after the write: a lost tick tells nothing
    if notice is not None:
        send(notice, s)
    return dataclasses.replace(result, reasons=lines)


def abort_rollout(
    by: str,
    reason: str,
    settings: Settings | None = None,
    *,
    rollout_id: str | None = None,
    now: dt.datetime | None = None,
    registry: Registry | None = None,
    store: RolloutStore | None = None,
    endpoint: Endpoint | None = None,
    lease: TrafficLease | None = None,
) -> Rollout:
    """Abort the live rollout (recording who and why), then restore stable under the lease.

    The record ends first, so no controller tick moves traffic for it afterwards; the lease
    its controller held is taken over. Should the restore fail, the next tick finishes it.

    Raises:
        RolloutNotFound: no rollout is live (or ``rollout_id`` is not the live one).
        LeaseHeld: an owner other than the rollout holds the traffic lease (the record is
            aborted; the next tick restores stable).
    """
    s = settings or get_settings()
    reg, rs = registry or Registry(s), store or RolloutStore(s)
    ep, tl = endpoint or serve_endpoint(), lease or TrafficLease.open(s)
    live = rs.current()
    if live is None or (rollout_id is not None and live.rollout.id != rollout_id):
        named = f" {rollout_id}" if rollout_id else ""
        raise RolloutNotFound(f"no live rollout{named} to abort")
    held = live.rollout.lease
    ended = rs.update(live.rollout.id, lambda r: abort(r, by, reason, as_utc(now or utcnow())))
    tl.release(held.owner if held is not None else rollout_owner(ended.id))
    with tl.held(by):
        apply_rule(ep, ended.traffic, s)
        _finish(ended, reg, ep, s)
    send(aborted_notice(ended), s)
    return ended


def _rule_of(split: TrafficSplit | None) -> TrafficRule | None:
    return None if split is None else TrafficRule.model_validate(split.to_config())


def apply_rule(ep: Endpoint, rule: TrafficRule, s: Settings) -> list[str]:
    """Make Serve answer with ``rule``: deploy what is missing, then set the split."""
    split = router_split(rule)
    lines = []
    deployed = set(ep.deployed_models(s))
    for version in split.versions():
        if version not in deployed:
            ep.deploy_model(version, s)
            lines.append(f"deployed {version}")
    if ep.current_traffic(s) != split:
        ep.set_traffic(split, s)
        lines.append(f"traffic: {describe(rule)}")
    return lines


def _leftovers(rollout: Rollout, reg: Registry, ep: Endpoint, s: Settings) -> list[str]:
    """What an ended rollout's ending still lacks: ``traffic``, ``registry``, ``free``."""
    split = ep.current_traffic(s)
    target = TrafficSplit(stable=rollout.serving_after or rollout.stable)
    todo = []
    if split is None or (split.candidate == rollout.candidate and split != target):
        # The rollout's own split, or none: nobody moved traffic since (a restore or an
        # experiment that did is never undone).
        todo.append("traffic")
    cand = reg.get(rollout.candidate)
    # Done once the candidate's history names this rollout (not by its stage: a version rolled
    # out again keeps the stage a restore gave it, and a later restore must not be undone).
    recorded = any(f"rollout {rollout.id} " in h.reason for h in cand.history)
    if not recorded and (
        rollout.state is RolloutState.PROMOTED
        or (rollout.state is RolloutState.ROLLED_BACK and cand.state is not ModelState.DEGRADED)
    ):
        todo.append("registry")
    serving = set(target.versions() if "traffic" in todo or split is None else split.versions())
    rolled_back = rollout.state is RolloutState.ROLLED_BACK
    if (
        rolled_back
        and rollout.candidate not in serving
        and rollout.candidate in ep.deployed_models(s)
    ):
        todo.append("free")
    return todo


def _finish(rollout: Rollout, reg: Registry, ep: Endpoint, s: Settings) -> list[str]:
    """Carry out what an ended rollout's ending still lacks, in write order; its lines."""
    lines = []
    todo = _leftovers(rollout, reg, ep, s)
    if "traffic" in todo:
        lines += apply_rule(ep, TrafficRule(stable=rollout.serving_after or rollout.stable), s)
    last = rollout.verdicts[-1] if rollout.verdicts else None
    if "registry" in todo and rollout.state is RolloutState.PROMOTED:
        why = f"rollout {rollout.id} passed every step against {rollout.stable}"
        reg.promote(rollout.candidate, "production", expected_current=rollout.stable, reason=why)
        mark_serving(reg, rollout.candidate, "serving all traffic")
        lines.append(f"PROMOTED: {rollout.candidate} serves all traffic ({why})")
    elif "registry" in todo:
        failed = [r for r in (last.reasons if last else []) if r.startswith(FAIL)]
        why = f"rollout {rollout.id} rolled it back at step {rollout.step}: " + "; ".join(failed)
        mark_serving(reg, rollout.candidate, "canary served")
        reg.transition(rollout.candidate, ModelState.DEGRADED, why, rolled_back=True)
        lines.append(f"ROLLED BACK: {rollout.candidate} is Degraded ({why})")
    if "free" in todo:
        # A rolled-back version left running holds CPUs the next training job waits for.
        ep.remove_model(rollout.candidate)
        lines.append(f"freed {rollout.candidate}: rolled back, no traffic")
    return lines


def _reconcile_ended(
    rollout: Rollout,
    s: Settings,
    reg: Registry,
    tl: TrafficLease,
    ep: Endpoint,
    who: str,
    emit: Emit,
) -> TickResult | None:
    lines = [f"rollout {rollout.id} ended {rollout.state.value}: {rollout.serving_after} serves"]
    if _leftovers(rollout, reg, ep, s):
        try:
            with tl.held(who):
                lines += _finish(rollout, reg, ep, s)
        except LeaseHeld as held:
            emit(f"not finished: {held}")
            return None
    for line in lines:
        emit(line)
    return TickResult(rollout, rollout.traffic, None, lines)
