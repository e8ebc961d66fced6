"""How a lifecycle or stage move changes the registry's records (pure: records in, records out).

:class:`~relay.registry.registry.Registry` reads the records, asks these functions for the
changed ones (or for the error that refuses the move) and writes them with compare-and-set.
"""

from __future__ import annotations

import datetime as dt

from relay.registry.errors import ConcurrentUpdate, InvalidPromotion, RolledBackVersion
from relay.registry.models import HistoryEntry, ModelVersion, RollbackMark, StagePointer
from relay.registry.states import (
    POINTER_STAGES,
    PROMOTABLE,
    SERVING_STAGES,
    ModelState,
    Stage,
    check_transition,
    entering_serving_state,
    leaving_serving_state,
)


def pointer_stage(stage: Stage | str) -> Stage:
    """``stage`` as a stage with a pointer (staging, canary or production).

    Raises:
        InvalidPromotion: The stage has no pointer (archived).
    """
    value = Stage(stage)
    if value not in POINTER_STAGES:
        names = ", ".join(s.value for s in POINTER_STAGES)
        raise InvalidPromotion(
            f"{value.value} is not a stage with a pointer ({names}); archive a version with "
            f"transition(version_id, 'archived', reason)"
        )
    return value


def changed(
    version: ModelVersion,
    reason: str,
    at: dt.datetime,
    state: ModelState | None = None,
    stage: Stage | None = None,
    rolled_back: bool = False,
) -> ModelVersion:
    """The version in ``state`` and ``stage`` (None: unchanged), with the change in its history;
    with ``rolled_back`` also marked as rolled back (a mark still in force is kept)."""
    to_state = version.state if state is None else state
    to_stage = version.stage if stage is None else stage
    entry = HistoryEntry(
        at=at,
        reason=reason,
        from_state=version.state,
        to_state=to_state,
        from_stage=version.stage,
        to_stage=to_stage,
    )
    mark = version.rolled_back
    if rolled_back and not version.barred:
        mark = RollbackMark(at=at, reason=reason)
    return version.model_copy(
        update={
            "state": to_state,
            "stage": to_stage,
            "history": [*version.history, entry],
            "rolled_back": mark,
        }
    )


def transitioned(
    version: ModelVersion,
    target: ModelState,
    reason: str,
    at: dt.datetime,
    rolled_back: bool = False,
) -> ModelVersion:
    """The version moved to lifecycle state ``target``; archiving also archives its stage.
    ``rolled_back`` marks it (a rollout's rollback degrading its candidate, in one write).

    Raises:
        IllegalTransition: The transition table does not allow it.
    """
    check_transition(version.state, target)
    stage = Stage.ARCHIVED if target is ModelState.ARCHIVED else None
    return changed(version, reason, at, state=target, stage=stage, rolled_back=rolled_back)


def check_not_rolled_back(version: ModelVersion, stage: Stage, allow: bool = False) -> None:
    """Refuse a rolled-back version to a serving stage, unless a person allows it.

    Restoring a version promotes it and leaves the one it replaced as the pointer's previous
    version; without this, the next automatic rollback would restore the version just rolled
    back, and a rollout could canary it again.

    Raises:
        RolledBackVersion: The version carries a rollback mark and ``allow`` is False.
    """
    mark = version.rolled_back
    if mark is None or not version.barred or allow or stage not in SERVING_STAGES:
        return
    raise RolledBackVersion(
        f"{version.id} was rolled back at {mark.at.isoformat()} ({mark.reason}); no automatic "
        f"move puts it in {stage.value} again. A person may: `relay serve restore --force` or "
        f"`relay models promote --force`"
    )


def promotion(
    version: ModelVersion,
    stage: Stage,
    pointer: StagePointer | None,
    expected_current: str | None,
    reason: str,
    at: dt.datetime,
    allow_rolled_back: bool = False,
) -> StagePointer:
    """The pointer that puts ``version`` in ``stage``: ``pointer`` itself when it does already.

    Args:
        version: The version to promote.
        stage: A stage with a pointer.
        pointer: The stage's pointer as read now; None if never set.
        expected_current: The version id the caller believes the stage points to, or None.
        reason: Recorded on the pointer.
        at: The time of the move.
        allow_rolled_back: A person's explicit choice: a rolled-back version is accepted.

    Raises:
        InvalidPromotion: The version's state does not allow this stage.
        RolledBackVersion: The version was rolled back (see :func:`check_not_rolled_back`).
        ConcurrentUpdate: The stage does not point to ``expected_current``.
    """
    if version.state not in PROMOTABLE[stage]:
        allowed = ", ".join(sorted(s.value for s in PROMOTABLE[stage]))
        raise InvalidPromotion(
            f"{version.id} is {version.state.value}; only a version that is {allowed} "
            f"can be promoted to {stage.value}"
        )
    current = None if pointer is None else pointer.version_id
    # Even when the pointer names it already: a rolled-back candidate stays in canary's.
    check_not_rolled_back(version, stage, allow_rolled_back)
    if expected_current is not None and current != expected_current:
        raise ConcurrentUpdate(
            f"{stage.value} of {version.name} points to {current or 'no version'}, "
            f"not {expected_current}; re-read it and decide again"
        )
    if pointer is not None and current == version.id:
        return pointer
    return StagePointer(
        name=version.name,
        stage=stage,
        version_id=version.id,
        previous_version_id=current,
        generation=0 if pointer is None else pointer.generation + 1,
        updated_at=at,
        reason=reason,
    )


def rolled_back(
    pointer: StagePointer,
    target: ModelVersion,
    name: str,
    stage: Stage,
    reason: str,
    at: dt.datetime,
    allow_rolled_back: bool = False,
) -> StagePointer:
    """``name``'s ``stage`` pointer back at ``target``; it records no previous version, so a
    second rollback in a row is refused.

    Raises:
        InvalidPromotion: The target can no longer serve this stage (e.g. archived).
        RolledBackVersion: The target was rolled back itself and ``allow_rolled_back`` is False.
    """
    if target.state not in PROMOTABLE[stage]:
        raise InvalidPromotion(
            f"cannot roll {stage.value} of {name} back to {target.id}: it is "
            f"{target.state.value}; promote another version instead"
        )
    check_not_rolled_back(target, stage, allow_rolled_back)
    return StagePointer(
        name=name,
        stage=stage,
        version_id=target.id,
        previous_version_id=None,
        generation=pointer.generation + 1,
        updated_at=at,
        reason=reason,
    )


def entered(
    version: ModelVersion, stage: Stage, reason: str, at: dt.datetime, forced: bool = False
) -> ModelVersion:
    """The version once a stage's pointer has moved to it; a serving stage starts deploying it.

    ``forced``: a person put a rolled-back version back on traffic; its mark is cleared (kept,
    with the time), so the rest of its way (a rollout's promotion) is not refused."""
    state = version.state
    if stage in SERVING_STAGES and version.state in PROMOTABLE[stage]:
        state = entering_serving_state(version.state)
    moved = changed(version, reason, at, state=state, stage=stage)
    mark = version.rolled_back
    if forced and mark is not None and version.barred and stage in SERVING_STAGES:
        cleared = mark.model_copy(update={"cleared_at": at})
        moved = moved.model_copy(update={"rolled_back": cleared})
    return moved


def left(
    version: ModelVersion, stage: Stage, reason: str, at: dt.datetime, rolled_back: bool = False
) -> ModelVersion | None:
    """The version once a stage's pointer has moved away from it: archived, and deprecated if it
    served traffic; None when it has moved on to another stage since. ``rolled_back``: the move
    was a rollback, and the version is marked so."""
    if version.stage is not stage:
        return None
    state = leaving_serving_state(version.state) if stage in SERVING_STAGES else None
    return changed(version, reason, at, state=state, stage=Stage.ARCHIVED, rolled_back=rolled_back)
