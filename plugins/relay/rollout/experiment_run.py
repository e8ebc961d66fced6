"""Running an experiment: start it, tick it to its verdict, stop it; traffic under the lease.

:func:`start_experiment` records a spec (:mod:`relay.rollout.experiment`) as a scheduled
experiment; the cluster's controller (:mod:`relay.rollout.runner`) calls
:func:`experiment_once` every tick, which does nothing before ``spec.start``, then puts the
compiled split on Serve (the variant as candidate, targeting included: the same rule a rollout
step would ask for) and judges it with :func:`~relay.rollout.experiment.judge_experiment`.
A failing primary criterion ends it at once, the control taking all traffic back; at ``end``
the verdict is recorded and all traffic goes back to the control. :func:`stop_experiment`
ends it by hand, recorded with who and why.

An experiment reports a winner; it never promotes. The registry is left as it was (every
version keeps its stage and state): putting the winner into production is a rollout's job
(``relay rollout start VERSION``), whose steps then judge it on every order.

Each tick writes in an order such that a process killed between any two writes leaves a
state the next tick completes, as the rollout controller's do (:mod:`relay.rollout.controller`):

1. the record, by compare-and-set: running with the router's counters at that moment (its
   windows count from there), each verdict, the end;
2. Serve's traffic from the record, under the traffic lease (owner ``experiment:<id>``, held
   while it runs): the split while running, the control alone once it ended. Every later
   tick heals Serve from the record, an ended one only back to the control, never away.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

from relay.clock import as_utc, utcnow
from relay.registry import ModelState, Registry
from relay.registry.errors import ConcurrentUpdate, VersionNotFound
from relay.rollout.controller import apply_rule
from relay.rollout.experiment import ExperimentSpec, ExperimentVerdict, judge_experiment
from relay.rollout.experiment_record import (
    Experiment,
    ExperimentError,
    ExperimentNotFound,
    ExperimentState,
    ExperimentStore,
    experiment_owner,
    experiment_rule,
    stop_live,
)
from relay.rollout.lease import LeaseHeld, LeaseLost, TrafficLease, process_owner
from relay.rollout.manual import Endpoint, serve_endpoint
from relay.rollout.observe import QualityReader, labelled_quality
from relay.rollout.plan import TrafficRule
from relay.rollout.reconcile import describe
from relay.rollout.step_windows import step_window, windows
from relay.rollout.store import RolloutActive, RolloutStore
from relay.serve.traffic import TrafficSplit
from relay.settings import Settings, get_settings
from relay.verdict import FAIL, PASS

#: What a variant may be: a version that passed its gate or has served before.
DEPLOYABLE = frozenset({ModelState.VALIDATED, ModelState.SERVING, ModelState.DEPRECATED})

Emit = Callable[[str], None]


def _log(line: str) -> None:
    logging.getLogger(__name__).info(line)


def start_experiment(
    spec: ExperimentSpec,
    settings: Settings | None = None,
    *,
    registry: Registry | None = None,
    store: ExperimentStore | None = None,
    rollouts: RolloutStore | None = None,
    endpoint: Endpoint | None = None,
    lease: TrafficLease | None = None,
    by: str | None = None,
    now: dt.datetime | None = None,
) -> Experiment:
    """Record ``spec`` as a scheduled experiment; the controller's ticks run it from its start.

    Args:
        spec: the experiment (:func:`relay.rollout.experiment.load_spec`).
        settings: defaults to :func:`get_settings`.
        registry: defaults to the registry ``settings`` names; likewise the stores and lease.
        store: the experiment records.
        rollouts: the rollout records (none may be live).
        endpoint: Serve (:mod:`relay.serve.control` by default), asked what serves now.
        lease: the traffic lease, held while the record is written.
        by: who starts it (an owner name); this process by default.
        now: the time; the current UTC time by default.

    Raises:
        ExperimentError: the spec's end has passed or its id was used before, the variant is
            not deployable, or the control does not serve all orders now.
        RolloutActive: a rollout is live (it owns the traffic).
        ExperimentActive: another experiment is live.
        LeaseHeld: another owner holds the traffic lease.
    """
    s = settings or get_settings()
    reg, es = registry or Registry(s), store or ExperimentStore(s)
    rs = rollouts or RolloutStore(s, store=es.store)
    ep, tl = endpoint or serve_endpoint(), lease or TrafficLease.open(s)
    who, at = by or process_owner(), as_utc(now or utcnow())
    if at >= spec.end:
        raise ExperimentError(f"experiment {spec.id} ends {spec.end.isoformat()}, already past")
    try:
        used = es.get(spec.id).experiment
    except ExperimentNotFound:
        used = None
    if used is not None:
        raise ExperimentError(
            f"experiment {spec.id} was started already ({used.state.value}); "
            "give the spec a new id to run it again"
        )
    problem = _not_deployable(spec, reg)
    with tl.held(who):
        live = rs.current()
        if live is not None:
            r = live.rollout
            raise RolloutActive(
                f"cannot start experiment {spec.id}: rollout {r.id} of {r.candidate} owns the "
                f"traffic ({r.state}); `relay rollout abort --reason ...` it or let it end first"
            )
        problem = problem or _not_control_alone(spec, ep.current_traffic(s))
        if problem is not None:
            raise ExperimentError(f"cannot start experiment {spec.id}: {problem}")
        record = Experiment(spec=spec, created_at=at, updated_at=at, started_by=who)
        es.create(record)
    return record


def experiment_once(
    settings: Settings | None = None,
    *,
    registry: Registry | None = None,
    store: ExperimentStore | None = None,
    endpoint: Endpoint | None = None,
    lease: TrafficLease | None = None,
    now: dt.datetime | None = None,
    quality: QualityReader = labelled_quality,
    emit: Emit = _log,
) -> Experiment | None:
    """One tick of the latest experiment: start, judge or end it, then match Serve to it.

    Args:
        settings: defaults to :func:`get_settings`.
        registry: defaults to the registry ``settings`` names (read only: is the variant
            still deployable at the start); likewise ``store``, ``lease``.
        store: the experiment records.
        endpoint: Serve; :mod:`relay.serve.control` by default.
        lease: the traffic lease, taken (or renewed) for ``experiment:<id>``.
        now: the tick's time; the current UTC time by default.
        quality: reads labelled quality per version since a time (tests script it).
        emit: receives the tick's lines.

    Returns:
        The experiment as this tick left it, or None when there is none, another owner holds
        the lease, or the record changed meanwhile (a stop).
    """
    s = settings or get_settings()
    es = store or ExperimentStore(s)
    stored = es.latest()
    if stored is None:
        return None
    exp, at = stored.experiment, as_utc(now or utcnow())
    if exp.state is ExperimentState.SCHEDULED and at < exp.spec.start:
        emit(f"experiment {exp.id} is scheduled: it starts {exp.spec.start.isoformat()}")
        return exp
    ep, tl = endpoint or serve_endpoint(), lease or TrafficLease.open(s)
    who = experiment_owner(exp.id)
    if exp.state.final:
        return _heal_ended(exp, ep, tl, s, emit)
    try:
        tl.acquire(who)
    except LeaseHeld as held:
        emit(f"experiment {exp.id} not ticked: {held}")
        return None
    new = _next(exp, ep, at, registry or Registry(s), s, quality)
    try:
        es.put(new, stored.etag)
    except ConcurrentUpdate:
        emit(f"experiment {exp.id} changed while this tick judged it; the next tick goes on")
        return None
    try:
        tl.renew(who)  # a stop meanwhile took the lease over: its traffic is the truth
    except LeaseLost as lost:
        emit(f"traffic left alone: {lost}")
        return None
    lines = [new.headline, *new.verdict]
    if new.state is ExperimentState.RUNNING:
        lines += apply_rule(ep, experiment_rule(new.spec), s)
    else:
        lines += _back_to_control(new, ep, s)
        tl.release(who)
    for line in lines:
        emit(line)
    return new


def stop_experiment(
    by: str,
    reason: str,
    settings: Settings | None = None,
    *,
    experiment_id: str | None = None,
    store: ExperimentStore | None = None,
    endpoint: Endpoint | None = None,
    lease: TrafficLease | None = None,
    now: dt.datetime | None = None,
) -> Experiment:
    """Stop the live experiment (recording who and why), then put all traffic on the control.

    The record ends first, so no tick moves traffic for it afterwards except back to the
    control; the lease its ticks held is taken over. Should the restore fail (or another
    owner hold the lease), the next tick finishes it.

    Raises:
        ExperimentNotFound: no experiment is live (or ``experiment_id`` is not the live one).
        LeaseHeld: an owner other than the experiment holds the traffic lease (the record is
            stopped; the next tick restores the control).
    """
    s = settings or get_settings()
    es = store or ExperimentStore(s)
    ep, tl = endpoint or serve_endpoint(), lease or TrafficLease.open(s)
    stopped = stop_live(es, tl, by, reason, as_utc(now or utcnow()), experiment_id)
    if stopped is None:
        raise ExperimentNotFound(
            "no live experiment to stop; `relay experiment status` shows the latest"
        )
    with tl.held(by):
        _back_to_control(stopped, ep, s)
    return stopped


def _next(
    exp: Experiment,
    ep: Endpoint,
    at: dt.datetime,
    reg: Registry,
    s: Settings,
    quality: QualityReader,
) -> Experiment:
    """The record after this tick: started, judged, or ended (the lease is held)."""
    spec, current = exp.spec, ep.current_traffic(s)
    if exp.state is ExperimentState.SCHEDULED:
        problem = (
            "its end passed before a controller ran it"
            if at >= spec.end
            else _not_deployable(spec, reg) or _not_control_alone(spec, current)
        )
        if problem is not None:
            return _end(exp, at, [f"{FAIL}: not run: {problem}"], "NOT RUN")
        return exp.change(
            at,
            state=ExperimentState.RUNNING,
            running_since=at,
            start_metrics=dict(ep.live_metrics(s)),
            headline=f"experiment {spec.id}: running until {spec.end.isoformat()}",
            verdict=[f"{PASS}: started: {describe(experiment_rule(spec))}"],
        )
    if current is not None and current.stable != spec.control.version:
        moved = (
            f"{current.stable} serves the orders, not the control {spec.control.version} "
            "(restored by someone else): no verdict, traffic left alone"
        )
        return _end(exp, at, [*exp.verdict, f"{FAIL}: ended: {moved}"], "NO WINNER")
    verdict = _judge(exp, ep, at, s, quality)
    return exp.change(
        at,
        verdict=verdict.reasons,
        headline=verdict.headline(),
        winner=verdict.winner,
        state=ExperimentState.ENDED if verdict.final else ExperimentState.RUNNING,
        ended_at=at if verdict.final else None,
    )


def _judge(
    exp: Experiment, ep: Endpoint, at: dt.datetime, s: Settings, quality: QualityReader
) -> ExperimentVerdict:
    """Both versions' windows and labelled quality since the experiment began, judged."""
    spec = exp.spec
    versions = [spec.control.version, spec.variant.version]
    t = at.timestamp()
    latest, first = (
        windows(ep.live_metrics(s), versions, t),
        windows(exp.start_metrics or {}, versions, t),
    )
    control, variant = (step_window(latest[v], first[v]) for v in versions)
    labelled = quality(s, exp.running_since or spec.start)
    return judge_experiment(
        spec,
        control,
        variant,
        labelled.get(spec.control.version),
        labelled.get(spec.variant.version),
        at,
        s.rollout,
    )


def _end(exp: Experiment, at: dt.datetime, lines: list[str], outcome: str) -> Experiment:
    spec = exp.spec
    headline = (
        f"experiment {spec.id}: variant {spec.variant.version} vs control "
        f"{spec.control.version}: {outcome}"
    )
    return exp.change(
        at,
        state=ExperimentState.ENDED,
        ended_at=at,
        verdict=lines,
        headline=headline,
        winner=None,
    )


def _not_deployable(spec: ExperimentSpec, reg: Registry) -> str | None:
    """Why the variant's version may not serve, or None."""
    version = spec.variant.version
    try:
        state = reg.get(version).state
    except VersionNotFound:
        return f"variant {spec.variant.name}'s version {version} is not in the registry"
    if state not in DEPLOYABLE:
        allowed = ", ".join(sorted(s.value for s in DEPLOYABLE))
        return f"variant {spec.variant.name}'s version {version} is {state.value}, not {allowed}"
    return None


def _not_control_alone(spec: ExperimentSpec, split: TrafficSplit | None) -> str | None:
    """Why the control does not serve every order now, or None: an experiment starts there."""
    control = spec.control.version
    if split is None:
        return f"nothing serves yet: `relay serve restore --version {control}` first"
    if split != TrafficSplit(stable=control):
        now = describe(TrafficRule.model_validate(split.to_config()))
        return f"the control {control} must serve every order to start; Serve answers {now}"
    return None


def _leftover(exp: Experiment, split: TrafficSplit | None) -> bool:
    """Whether Serve still answers with this experiment's split (or none) after it ended."""
    if exp.running_since is None:
        return False  # it never moved traffic
    if split is None:
        return True
    spec = exp.spec
    return split.stable == spec.control.version and split.candidate == spec.variant.version


def _back_to_control(exp: Experiment, ep: Endpoint, s: Settings) -> list[str]:
    """All traffic back on the control, if the experiment's split is still there."""
    if not _leftover(exp, ep.current_traffic(s)):
        return []
    return apply_rule(ep, TrafficRule(stable=exp.spec.control.version), s)


def _heal_ended(
    exp: Experiment, ep: Endpoint, tl: TrafficLease, s: Settings, emit: Emit
) -> Experiment | None:
    """An ended experiment's tick: finish putting the control back, if a crash left it."""
    lines = [f"experiment {exp.id} {exp.state.value}: {exp.headline}"]
    if _leftover(exp, ep.current_traffic(s)):
        try:
            with tl.held(experiment_owner(exp.id)):
                lines += _back_to_control(exp, ep, s)
        except LeaseHeld as held:
            emit(f"experiment {exp.id} not finished: {held}")
            return None
    for line in lines:
        emit(line)
    return exp
