"""The rollout reconciler's judgement: one pure tick from a record and what was measured.

Like an Argo Rollouts controller loop: the record (:mod:`relay.rollout.record`) is the truth;
each tick the controller measures the current step (both versions' windows since the step
began, and their labelled quality over the same period), and :func:`tick` says which traffic
Serve must answer with and what the record becomes: held, advanced, promoted, rolled back or
aborted, with the lines saying why. The controller writes that record by compare-and-set and
applies the traffic; it keeps nothing else, so a controller killed at any moment loses
nothing, and a tick is idempotent: the same record, observation and time give the same result,
and applying a result's record to the same observation again changes nothing.

Rules (thresholds in :class:`~relay.settings.RolloutSettings`, evidence minimums in the
plan's :class:`~relay.rollout.plan.Step`):

* **Evidence first.** A step holds (state ``holding``, the missing evidence listed) until its
  ``min_duration_s``, its ``min_requests`` candidate requests and, when it asks for labels,
  ``min_labelled`` labelled predictions of *both* versions (of the candidate alone at a full
  step, where stable serves nothing).
* **A real regression rolls back**, judged by the checks of :mod:`relay.rollout.rules` (P99,
  quality, throughput) on the whole step's windows; errors are judged here against stable's
  rate over the same window (:func:`error_check`), so an outage that hits both versions is not
  the candidate's fault. Every check is re-tested each tick, so one failing tick only holds (the
  failing checks recorded, :mod:`relay.rollout.streak`): a check rolls back once it failed on
  ``failure_threshold`` consecutive ticks with new evidence.
* **Not judged is not bad.** A step still short of evidence at ``max_duration_s`` ends the
  rollout ``aborted``: stable serves again and the candidate stays promotable.
* **Labels before promotion.** With ``require_labels`` (the default) a candidate is promoted
  only once its quality was judged on ``min_labelled`` labelled predictions of each version at
  some step; the step that judged it records a line starting :data:`QUALITY_JUDGED`.
* **Forced candidates are capped.** A candidate its evaluation gate rejected serves at most
  ``forced_max_share`` until a step before the current one judged it (labels, or an advance
  for teams without labels); the cap changes only between steps, so one step's windows are
  measured under one split.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from relay.clock import as_utc
from relay.rollout.lease import rollout_owner
from relay.rollout.plan import TrafficRule
from relay.rollout.record import (
    Rollout,
    RolloutState,
    VerdictAction,
    abort,
    advance,
    hold,
    promote,
    roll_back,
    traffic_of,
)
from relay.rollout.rules import (
    Check,
    QualityWindow,
    error_check,
    p99_check,
    quality_check,
    throughput_check,
)
from relay.rollout.streak import FailureStreak, extend
from relay.serve.log_read import VersionQuality
from relay.serve.windows import VersionWindow
from relay.settings import RolloutSettings
from relay.verdict import FAIL, PASS, reason_lines

#: The line a step's verdict carries when it judged quality on enough labels (and it passed).
QUALITY_JUDGED = f"{PASS}: quality judged"


@dataclass(frozen=True)
class Observation:
    """What the controller measured of the current step, from its start until now.

    Attributes:
        step: the step index the windows belong to (the record's ``step`` when measured).
        step_started_at: when that step began (the record's ``step_started_at``).
        applied: the traffic Serve answers with now; None when the traffic actor holds none
            (a restarted actor or head).
        candidate: the candidate's window since the step began, summed over every replica.
        stable: the stable version's window over the same interval.
        quality: labelled quality per version (keyed by version) of the predictions made
            since the step began, as :func:`relay.serve.log_read.quality_by_version` gives.
            At a full step stable serves nothing; its entry may then be its previous period's.
        stable_reference: stable's window before the step, the latency and error baseline
            when stable serves nothing in this one.
        gate_rejected: the candidate's evaluation gate rejected it (it was forced in).
        split_since: when Serve began answering with ``applied``; None: since the step began.
            A split changed within the step (a healed actor) leaves no nominal share to
            compare the candidate's throughput against.
    """

    step: int
    step_started_at: dt.datetime
    applied: TrafficRule | None
    candidate: VersionWindow
    stable: VersionWindow
    quality: Mapping[str, VersionQuality] = field(default_factory=dict)
    stable_reference: VersionWindow | None = None
    gate_rejected: bool = False
    split_since: dt.datetime | None = None


@dataclass(frozen=True)
class TickResult:
    """What one tick decided.

    Attributes:
        rollout: the record to write back (compare-and-set); the input itself when unchanged.
        traffic: the traffic Serve must answer with.
        action: what the step's verdict did; None when nothing was judged (the rollout had
            ended, the observation was of another step, or traffic had to be healed first).
        reasons: the lines saying why, ``PASS:``/``FAIL:`` per check.
    """

    rollout: Rollout
    traffic: TrafficRule
    action: VerdictAction | None
    reasons: list[str]

    @property
    def degrade_candidate(self) -> bool:
        """Whether the candidate proved bad (only a rollback; an abort leaves it promotable)."""
        return self.action is VerdictAction.ROLLBACK


def tick(
    rollout: Rollout, observed: Observation, now: dt.datetime, settings: RolloutSettings
) -> TickResult:
    """Judge the current step from what was measured, and say what the record becomes.

    Args:
        rollout: the record as read.
        observed: the step's measurements (see :class:`Observation`).
        now: the time of the tick; the record's timestamps come from it, never from a clock.
        settings: the rollout thresholds (``Settings.rollout``).

    Returns:
        The new record, the traffic to apply and the lines saying why.
    """
    now = as_utc(now)
    if rollout.state.final:
        line = f"rollout ended {rollout.state.value}: {rollout.serving_after} serves all orders"
        return TickResult(rollout, rollout.traffic, None, [line])
    wanted = desired_traffic(rollout, observed.gate_rejected, settings)
    measured = (observed.step, as_utc(observed.step_started_at))
    if measured != (rollout.step, rollout.step_started_at):
        # After an advance the old step's measurements say nothing of the new one.
        line = (
            f"observation of step {measured[0]} (from {measured[1].isoformat()}) is not of the "
            f"current step {rollout.step}: not judged"
        )
        return TickResult(rollout, wanted, None, [line])
    if observed.applied != wanted:
        line = (
            f"traffic healed: Serve answered with {describe(observed.applied)}, the record asks "
            f"for {describe(wanted)}; the step is judged once it serves what the record says"
        )
        return TickResult(rollout, wanted, None, [line])
    return _judge(rollout, observed, now, settings, wanted)


def desired_traffic(
    rollout: Rollout, gate_rejected: bool, settings: RolloutSettings
) -> TrafficRule:
    """The record's traffic, the candidate capped at ``forced_max_share`` when forced."""
    rule = traffic_of(rollout)
    if rollout.state.final or not gate_rejected or _judged_earlier(rollout, settings):
        return rule
    share = min(rule.candidate_share, settings.forced_max_share)
    return rule.model_copy(update={"candidate_share": share})


def describe(rule: TrafficRule | None) -> str:
    """E.g. ``v2 on 1% of all orders, v1 the rest`` or ``v1 alone``."""
    if rule is None:
        return "no split (the traffic actor holds none)"
    if rule.candidate is None or rule.candidate_share == 0:
        return f"{rule.stable} alone"
    where = "all orders" if rule.targeting is None else rule.targeting.describe()
    return (
        f"{rule.candidate} on {rule.candidate_share * 100:.6g}% of {where}, {rule.stable} the rest"
    )


def quality_judged(rollout: Rollout, before_step: int | None = None) -> bool:
    """Whether a verdict (of a step before ``before_step``, if given) judged quality."""
    return any(
        any(r.startswith(QUALITY_JUDGED) for r in v.reasons)
        for v in rollout.verdicts
        if before_step is None or v.step < before_step
    )


def _judge(
    rollout: Rollout,
    observed: Observation,
    now: dt.datetime,
    settings: RolloutSettings,
    wanted: TrafficRule,
) -> TickResult:
    step = rollout.current_step
    elapsed = max((now - rollout.step_started_at).total_seconds(), 0.0)
    quality = _quality(rollout, observed)
    # At a full step stable serves nothing: its window from before the step is the baseline.
    baseline = observed.stable if observed.stable.requests else observed.stable_reference
    share = _share(wanted, observed, rollout.step_started_at)
    checks = [
        (Check.ERROR_RATE, *error_check(observed.candidate, baseline, settings)),
        p99_check(observed.candidate, baseline, settings),
        quality_check(quality, settings),
        throughput_check(observed.candidate, observed.stable, share, settings),
    ]
    # The step's evidence (duration, requests, labels) is judged by _waits, not here.
    failing = [str(name) for name, ok, _ in checks if not ok]
    streak = extend(_streak(rollout), failing, _evidence(observed)) if failing else None
    regressed = streak is not None and streak.worst >= settings.failure_threshold
    reasons = reason_lines((ok, line) for _, ok, line in checks)
    judged_now = not failing and quality is not None and quality.n_labelled >= settings.min_labelled
    if judged_now and quality is not None:
        reasons.append(f"{QUALITY_JUDGED} on {quality.n_labelled} labelled predictions each")
    waits = _waits(rollout, observed, elapsed, settings, judged_now)
    if streak is not None and not regressed:
        runs = ", ".join(f"{c} on {n}" for c, n in streak.failures.items())
        waits.insert(
            0,
            f"{FAIL}: failing checks not yet confirmed ({runs} of "
            f"{settings.failure_threshold} consecutive ticks needed to roll back)",
        )
    reasons.extend(waits or [f"{PASS}: step {rollout.step} has its evidence"])
    by = rollout.lease.owner if rollout.lease is not None else rollout_owner(rollout.id)
    if regressed:
        new, action = roll_back(rollout, reasons, by=by, now=now), VerdictAction.ROLLBACK
    elif waits and elapsed >= step.max_duration_s:
        why = (
            f"not judged within the step's max duration {step.max_duration_s:g} s "
            f"({'; '.join(w.removeprefix(f'{FAIL}: ') for w in waits)}); "
            f"{rollout.candidate} stays promotable"
        )
        new, action = abort(rollout, by, why, now), VerdictAction.ABORT
        reasons.append(f"ABORT: {why}")
    elif waits:
        new = hold(rollout, reasons, by=by, now=now, streak=streak)
        action = VerdictAction.HOLD
    elif rollout.step + 1 == len(rollout.plan.steps):
        new, action = promote(rollout, reasons, by=by, now=now), VerdictAction.PROMOTE
    else:
        new, action = advance(rollout, reasons, by=by, now=now), VerdictAction.ADVANCE
    return TickResult(new, desired_traffic(new, observed.gate_rejected, settings), action, reasons)


def _quality(rollout: Rollout, observed: Observation) -> QualityWindow | None:
    cand = observed.quality.get(rollout.candidate)
    stab = observed.quality.get(rollout.stable)
    if cand is None or stab is None or not cand.n or not stab.n:
        return None
    se = None
    if cand.mae_se is not None and stab.mae_se is not None:
        se = math.hypot(cand.mae_se, stab.mae_se)
    # Judged on the fewer of the two: stable's MAE on five labels is no baseline.
    return QualityWindow(cand.mae, stab.mae, min(cand.n, stab.n), se)


def _share(rule: TrafficRule, observed: Observation, started: dt.datetime) -> float:
    # Under targeting the candidate's share of all requests depends on where orders come
    # from, and after a healed split part of the window ran on another one: the measured
    # share stands in, so throughput is then not compared against a share it never had.
    moved = observed.split_since is not None and as_utc(observed.split_since) > started
    if (rule.targeting is None and not moved) or not observed.candidate.requests:
        return rule.candidate_share
    total = observed.candidate.requests + observed.stable.requests
    return observed.candidate.requests / total


def _streak(rollout: Rollout) -> FailureStreak | None:
    # Only the current step's hold carries a run on: an advance or a new step starts afresh.
    last = rollout.verdicts[-1] if rollout.verdicts else None
    if last is None or rollout.state is not RolloutState.HOLDING or last.step != rollout.step:
        return None
    return last.streak if last.action is VerdictAction.HOLD else None


def _evidence(observed: Observation) -> int:
    # The windows and labels grow over the step: an observation of the same size is not new.
    labelled = sum(q.n for q in observed.quality.values())
    return observed.candidate.requests + observed.stable.requests + labelled


def _judged_earlier(rollout: Rollout, settings: RolloutSettings) -> bool:
    if settings.require_labels:
        return quality_judged(rollout, before_step=rollout.step)
    # Teams without labels: a step judged on errors and latency is what there is.
    return any(
        v.step < rollout.step and v.action is VerdictAction.ADVANCE for v in rollout.verdicts
    )


def _waits(
    rollout: Rollout,
    observed: Observation,
    elapsed: float,
    settings: RolloutSettings,
    judged_now: bool,
) -> list[str]:
    """The evidence the step still lacks, one ``FAIL:`` line each; empty when it has it."""
    step = rollout.current_step
    last = rollout.step + 1 == len(rollout.plan.steps)
    judged = _judged_earlier(rollout, settings) or judged_now
    waits = []
    if elapsed < step.min_duration_s:
        waits.append(f"duration {elapsed:.0f} s < min {step.min_duration_s:g} s")
    if observed.candidate.requests < step.min_requests:
        waits.append(
            f"evidence: {observed.candidate.requests} candidate requests < min {step.min_requests}"
        )
    need = step.min_labelled if settings.require_labels else 0
    if settings.require_labels and not judged and (last or observed.gate_rejected):
        need = max(need, settings.min_labelled)
    # At a full step stable serves nothing: only the candidate can gather labels there.
    versions = [rollout.candidate] if step.full else [rollout.candidate, rollout.stable]
    for version in versions:
        got = observed.quality.get(version)
        n = got.n if got is not None else 0
        if n < need:
            waits.append(f"labels: {n} labelled predictions of {version} < min {need}")
    # Without labels only a forced candidate needs a judged step before the last one.
    if last and not judged and (settings.require_labels or observed.gate_rejected):
        what = "quality never judged on labels" if settings.require_labels else "never judged"
        waits.append(f"{what}: {rollout.candidate} is not promoted unjudged")
    return [f"{FAIL}: {w}" for w in waits]
