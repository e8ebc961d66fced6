"""A rollout as a persisted record: the plan, where it stands, every verdict, who changed what.

Like an Argo Rollouts object, the record is the truth and everything else is derived from it:
the traffic split (:func:`traffic_of`, also stored in the record's JSON as ``traffic``) is what
Serve must answer with, so a restarted cluster or controller carries on from the record alone.
Records are values: every function here is pure and returns a new record, which the caller
writes back by compare-and-set (:class:`relay.rollout.store.RolloutStore`). The plan and the
traffic rule are in :mod:`relay.rollout.plan`, the lease decision in :mod:`relay.rollout.lease`.

States: ``running`` (a step in progress) and ``holding`` (a step waiting for evidence) are live;
``promoted``, ``rolled_back`` and ``aborted`` are final and refuse every further move.
"""

from __future__ import annotations

import datetime as dt
import uuid
from enum import StrEnum
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, computed_field, model_validator

from relay.clock import as_utc
from relay.errors import RelayError
from relay.rollout.lease import Lease, drop_lease, take_lease
from relay.rollout.plan import Plan, Step, TrafficRule
from relay.rollout.streak import FailureStreak

ROLLOUT_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"


class RolloutError(RelayError):
    """Base class for the rollout record's errors."""


class IllegalRolloutMove(RolloutError):
    """A move the rollout's state does not allow."""

    def __init__(self, rollout: Rollout, move: str, why: str) -> None:
        self.rollout_id = rollout.id
        self.state = rollout.state
        self.move = move
        super().__init__(f"rollout {rollout.id} cannot {move}: {why}")


class RolloutFinished(IllegalRolloutMove):
    """The rollout already ended (promoted, rolled back or aborted); it moves no more."""

    def __init__(self, rollout: Rollout, move: str) -> None:
        super().__init__(
            rollout,
            move,
            f"it ended {rollout.state.value}; start a new rollout to put a version into service",
        )


class NoNextStep(IllegalRolloutMove):
    """An advance asked of a rollout already at its plan's last step (promote it instead)."""


class _Frozen(BaseModel):
    # Records are values: a change makes a new record, written with compare-and-set.
    model_config = ConfigDict(frozen=True, extra="forbid")


class RolloutState(StrEnum):
    """Where a rollout stands."""

    RUNNING = "running"
    HOLDING = "holding"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"

    @property
    def final(self) -> bool:
        """Whether the rollout has ended."""
        return self not in (RolloutState.RUNNING, RolloutState.HOLDING)


class VerdictAction(StrEnum):
    """What a step's verdict did."""

    HOLD = "hold"
    ADVANCE = "advance"
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    ABORT = "abort"


class StepVerdictRecord(_Frozen):
    """A step's verdict as recorded: what was decided, why, when, and (a hold) what fails."""

    step: int = Field(ge=0)
    action: VerdictAction
    reasons: list[str] = Field(default_factory=list)
    decided_at: dt.datetime
    streak: FailureStreak | None = Field(None, description="A hold's failing rollback checks")


class RolloutEvent(_Frozen):
    """One change of the record: who (an owner name) did what, when and why."""

    at: dt.datetime
    by: str
    action: str = Field(description="start, hold, advance, promote, rollback, abort, lease")
    reason: str = ""
    step: int
    from_state: RolloutState | None = Field(description="None for the start")
    to_state: RolloutState


class Rollout(_Frozen):
    """A candidate's way into production, persisted.

    Attributes:
        id: the rollout's id (a store key segment: letters, digits, ``_.-``).
        candidate: the version being rolled out.
        stable: the version serving production when it started.
        plan: the steps.
        step: the index of the current step in ``plan.steps``.
        step_started_at: when the current step began.
        state: running, holding, promoted, rolled_back or aborted.
        verdicts: each step's verdicts in order (a step's latest hold, then its final verdict).
        lease: the owner reconciling it and until when, or None.
        serving_after: the version serving all traffic once it ended (None while live).
        created_at: when it started.
        updated_at: when the record last changed.
        history: every change, with who made it.
    """

    id: str = Field(pattern=ROLLOUT_ID)
    candidate: str = Field(min_length=1)
    stable: str = Field(min_length=1)
    plan: Plan
    step: int = Field(0, ge=0)
    step_started_at: dt.datetime
    state: RolloutState = RolloutState.RUNNING
    verdicts: list[StepVerdictRecord] = Field(default_factory=list)
    lease: Lease | None = None
    serving_after: str | None = None
    created_at: dt.datetime
    updated_at: dt.datetime
    history: list[RolloutEvent] = Field(default_factory=list)

    # Re-derived on every load; the JSON carries it so readers (and the traffic actor after
    # a restart) need not know the derivation.
    @computed_field  # type: ignore[prop-decorator]
    @property
    def traffic(self) -> TrafficRule:
        """The traffic split this record asks Serve for (see :func:`traffic_of`)."""
        return traffic_of(self)

    @model_validator(mode="before")
    @classmethod
    def _drop_derived(cls, data: Any) -> Any:
        # `traffic` is derived: a stored copy is ignored rather than trusted.
        if isinstance(data, dict) and "traffic" in data:
            data = {k: v for k, v in data.items() if k != "traffic"}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.candidate == self.stable:
            raise ValueError(f"candidate and stable are the same version {self.candidate!r}")
        if self.step >= len(self.plan.steps):
            raise ValueError(f"step {self.step} is past the plan's {len(self.plan.steps)} steps")
        if self.state.final != (self.serving_after is not None):
            raise ValueError("serving_after is set exactly when the rollout has ended")
        return self

    @property
    def current_step(self) -> Step:
        """The step the rollout is at."""
        return self.plan.steps[self.step]


def traffic_of(rollout: Rollout) -> TrafficRule:
    """The traffic the record asks for: the current step's while live, one version once ended."""
    if rollout.serving_after is not None:
        return TrafficRule(stable=rollout.serving_after)
    step = rollout.current_step
    return TrafficRule(
        stable=rollout.stable,
        candidate=rollout.candidate,
        candidate_share=step.share,
        targeting=step.targeting,
    )


def start_rollout(
    candidate: str,
    stable: str,
    plan: Plan,
    *,
    by: str,
    now: dt.datetime,
    rollout_id: str | None = None,
) -> Rollout:
    """A new rollout at its first step, started by ``by`` at ``now``."""
    now = as_utc(now)
    rid = rollout_id or f"ro-{now:%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
    event = RolloutEvent(
        at=now,
        by=by,
        action="start",
        reason=f"{candidate} against {stable}",
        step=0,
        from_state=None,
        to_state=RolloutState.RUNNING,
    )
    times = dict.fromkeys(("step_started_at", "created_at", "updated_at"), now)
    return Rollout(id=rid, candidate=candidate, stable=stable, plan=plan, history=[event], **times)


def acquire_lease(rollout: Rollout, owner: str, now: dt.datetime, ttl_s: float) -> Rollout:
    """The record with ``owner`` holding its lease until ``now + ttl_s`` (a renewal if theirs).

    Raises:
        LeaseHeld: another owner holds an unexpired lease (the error names it and the expiry).
        RolloutFinished: the rollout has ended; there is nothing left to drive.
    """
    _live(rollout, "take the lease")
    now = as_utc(now)
    lease = take_lease(rollout.lease, owner, now, ttl_s)
    history = rollout.history
    if rollout.lease is None or rollout.lease.owner != owner:
        history = [*history, _event(rollout, now, owner, "lease", "took the lease", rollout.state)]
    return _with(rollout, {"lease": lease, "updated_at": now, "history": history})


def release_lease(rollout: Rollout, owner: str, now: dt.datetime) -> Rollout:
    """The record without ``owner``'s lease; unchanged when ``owner`` does not hold it."""
    lease = drop_lease(rollout.lease, owner)
    if lease is rollout.lease:
        return rollout
    return _with(rollout, {"lease": None, "updated_at": as_utc(now)})


def hold(
    rollout: Rollout,
    reasons: list[str],
    *,
    by: str,
    now: dt.datetime,
    streak: FailureStreak | None = None,
) -> Rollout:
    """Keep the current step, waiting for evidence or for a failing check's confirmation.

    A hold while already holding replaces the step's last hold verdict instead of adding one,
    so a step judged every minute for a week keeps one; an identical hold changes nothing.
    ``streak`` records the rollback checks failing and for how many ticks in a row.
    """
    _live(rollout, "hold")
    now = as_utc(now)
    verdict = StepVerdictRecord(
        step=rollout.step, action=VerdictAction.HOLD, reasons=reasons, decided_at=now, streak=streak
    )
    last = rollout.verdicts[-1] if rollout.verdicts else None
    again = (
        rollout.state is RolloutState.HOLDING
        and last is not None
        and (last.step, last.action) == (rollout.step, VerdictAction.HOLD)
    )
    if again and last is not None and (last.reasons, last.streak) == (reasons, streak):
        return rollout
    verdicts = [*rollout.verdicts[:-1], verdict] if again else [*rollout.verdicts, verdict]
    history = rollout.history
    if not again:
        history = [*history, _event(rollout, now, by, "hold", _why(reasons), RolloutState.HOLDING)]
    changes = {"state": RolloutState.HOLDING, "verdicts": verdicts, "history": history}
    return _with(rollout, {**changes, "updated_at": now})


def advance(rollout: Rollout, reasons: list[str], *, by: str, now: dt.datetime) -> Rollout:
    """Move to the plan's next step, which starts at ``now``.

    Raises:
        RolloutFinished: the rollout has ended.
        NoNextStep: it is at the last step (promote it instead).
    """
    _live(rollout, "advance")
    if rollout.step + 1 >= len(rollout.plan.steps):
        raise NoNextStep(rollout, "advance", "it is at its plan's last step; promote it instead")
    now = as_utc(now)
    return _decided(
        rollout,
        VerdictAction.ADVANCE,
        reasons,
        by,
        now,
        RolloutState.RUNNING,
        step=rollout.step + 1,
        step_started_at=now,
    )


def promote(rollout: Rollout, reasons: list[str], *, by: str, now: dt.datetime) -> Rollout:
    """End the rollout with the candidate serving all traffic."""
    _live(rollout, "promote")
    return _ended(rollout, (VerdictAction.PROMOTE, reasons), by, now)


def roll_back(rollout: Rollout, reasons: list[str], *, by: str, now: dt.datetime) -> Rollout:
    """End the rollout with the stable version serving all traffic again."""
    _live(rollout, "roll back")
    return _ended(rollout, (VerdictAction.ROLLBACK, reasons), by, now)


def abort(
    rollout: Rollout, by: str, reason: str, now: dt.datetime, *, serving: str | None = None
) -> Rollout:
    """End the rollout without judging the candidate (it stays promotable).

    Args:
        rollout: the live rollout.
        by: who aborted it (an owner name: ``cli:…``, ``rollout:…``, ``monitoring:…``).
        reason: why, as the history and the verdict show it.
        now: when.
        serving: the version that serves all traffic afterwards (a restore names the version
            it restored); the rollout's stable version when None.
    """
    _live(rollout, "abort")
    return _ended(rollout, (VerdictAction.ABORT, [reason]), by, now, serving=serving)


def _with(rollout: Rollout, changes: dict[str, Any]) -> Rollout:
    # model_copy(update=...) skips validation; a changed record must meet every invariant.
    return Rollout.model_validate({**dict(rollout), **changes})


_ENDS = {
    VerdictAction.PROMOTE: RolloutState.PROMOTED,
    VerdictAction.ROLLBACK: RolloutState.ROLLED_BACK,
    VerdictAction.ABORT: RolloutState.ABORTED,
}


def _live(rollout: Rollout, move: str) -> None:
    if rollout.state.final:
        raise RolloutFinished(rollout, move)


def _ended(
    rollout: Rollout,
    verdict: tuple[VerdictAction, list[str]],
    by: str,
    now: dt.datetime,
    *,
    serving: str | None = None,
) -> Rollout:
    action, reasons = verdict
    state = _ENDS[action]
    after = serving or (rollout.candidate if state is RolloutState.PROMOTED else rollout.stable)
    # An ended rollout drives nothing: its reconciler has no lease left to hold.
    return _decided(
        rollout, action, reasons, by, as_utc(now), state, serving_after=after, lease=None
    )


def _decided(
    rollout: Rollout,
    action: VerdictAction,
    reasons: list[str],
    by: str,
    now: dt.datetime,
    state: RolloutState,
    **changes: Any,
) -> Rollout:
    verdict = StepVerdictRecord(step=rollout.step, action=action, reasons=reasons, decided_at=now)
    event = _event(rollout, now, by, action.value, _why(reasons), state)
    return _with(
        rollout,
        {
            "state": state,
            "verdicts": [*rollout.verdicts, verdict],
            "updated_at": now,
            "history": [*rollout.history, event],
            **changes,
        },
    )


def _event(
    rollout: Rollout, now: dt.datetime, by: str, action: str, reason: str, to: RolloutState
) -> RolloutEvent:
    return RolloutEvent(
        at=now,
        by=by,
        action=action,
        reason=reason,
        step=rollout.step,
        from_state=rollout.state,
        to_state=to,
    )


def _why(reasons: list[str]) -> str:
    return "; ".join(reasons)
