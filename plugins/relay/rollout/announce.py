"""What the rollout controller tells people: a rollback, an abort, a step held past its time.

Pure: :func:`tick_notice` reads a tick's outcome against the record it judged, and says what to
tell (or None); the controller sends it once the tick's record is written (compare-and-set),
so a tick that lost the write tells nothing and the next one decides again.

"Held past its time" is told once per step, with no state of its own: it is the first hold
after the step's ``min_duration_s``. Holds before that minimum carry its ``duration`` wait, so
they never equal a later one and each is recorded with its time (:func:`relay.rollout.record.
hold` keeps a step's latest hold); the record's last hold of the step then says whether the
minimum had already passed when it was decided, i.e. whether people were already told.
"""

from __future__ import annotations

import datetime as dt

from relay.clock import as_utc
from relay.notify import Notification, NotificationKind
from relay.rollout.reconcile import TickResult
from relay.rollout.record import Rollout, RolloutState, VerdictAction
from relay.verdict import FAIL


def tick_notice(before: Rollout, result: TickResult, now: dt.datetime) -> Notification | None:
    """What to tell about one reconciler tick; None when nothing worth a person happened.

    Args:
        before: the record the tick judged (as read, with the controller's lease).
        result: what the tick decided (:func:`relay.rollout.reconcile.tick`).
        now: the tick's time.
    """
    new = result.rollout
    failing = [r.removeprefix(f"{FAIL}: ") for r in result.reasons if r.startswith(f"{FAIL}: ")]
    step = f"step {before.step} ({before.current_step.describe()})"
    if result.action is VerdictAction.ROLLBACK:
        return _notice(
            new,
            NotificationKind.ROLLBACK,
            f"rollout {new.id} rolled {new.candidate} back at {step}: "
            f"{new.stable} serves all orders again",
            "; ".join(failing),
        )
    if result.action is VerdictAction.ABORT:
        return aborted_notice(new)
    if result.action is VerdictAction.HOLD and held_past_time(before, now):
        minimum = before.current_step.min_duration_s
        return _notice(
            new,
            NotificationKind.ROLLOUT_HELD,
            f"rollout {new.id} of {new.candidate} held at {step} past its {minimum:g} s minimum",
            "; ".join(failing) or "waiting for evidence",
        )
    return None


def held_past_time(before: Rollout, now: dt.datetime) -> bool:
    """Whether a hold at ``now`` is the step's first one after its minimum duration."""
    if before.state.final:
        return False
    started = before.step_started_at
    minimum = dt.timedelta(seconds=before.current_step.min_duration_s)
    if as_utc(now) - started < minimum:
        return False
    last = before.verdicts[-1] if before.verdicts else None
    told = (
        last is not None
        and last.step == before.step
        and last.action is VerdictAction.HOLD
        and as_utc(last.decided_at) - started >= minimum
    )
    return not told


def aborted_notice(ended: Rollout) -> Notification:
    """A rollout that ended aborted: by its controller (a step never judged), or by a person
    or a restore (``relay rollout abort``, ``relay serve restore``)."""
    last = ended.history[-1]
    return _notice(
        ended,
        NotificationKind.ROLLOUT_ABORTED,
        f"rollout {ended.id} of {ended.candidate} aborted at step {ended.step} by {last.by}: "
        f"{ended.serving_after} serves all orders",
        last.reason,
    )


def restore_notices(
    version: str, replaced: str | None, by: str, why: str, aborted: Rollout | None
) -> list[Notification]:
    """What a restore tells: the rollout it aborted (if it did), and the rollback when it put
    ``version`` in place of another production version (``replaced``); a restore of the first
    version, or of the one already in production, is no rollback.

    Args:
        version: the version restored to all traffic.
        replaced: the version production pointed to before; None: nothing.
        by: who restored (``airflow:eta_rollback:…``, ``guard:…``, ``cli:…``).
        why: the restore's reason.
        aborted: the rollout record the restore ended, as it read it afterwards (ended by
            someone else meanwhile: not told here).
    """
    out = []
    ours = aborted is not None and aborted.history and aborted.history[-1].by == by
    if aborted is not None and ours and aborted.state is RolloutState.ABORTED:
        out.append(aborted_notice(aborted))
    if replaced is not None and replaced != version:
        out.append(
            Notification(
                kind=NotificationKind.ROLLBACK,
                subject=f"{version} restored to all traffic in place of {replaced} by {by}",
                reason=why,
                versions=[replaced, version],
                source=by,
            )
        )
    return out


def _notice(rollout: Rollout, kind: NotificationKind, subject: str, reason: str) -> Notification:
    return Notification(
        kind=kind,
        subject=subject,
        reason=reason,
        versions=[rollout.candidate, rollout.stable],
        run_id=rollout.id,
        source=f"rollout:{rollout.id}",
        details={"step": rollout.step, "state": rollout.state.value},
    )
