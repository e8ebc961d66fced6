"""A version that was rolled back is never put on traffic again by anything automatic: not a
restore, a rollout, the registry's rollback, nor monitoring; a person still may, with force.

A registry and rollout store on local disk and the controller tests' fake Serve endpoint.
"""

from __future__ import annotations

import pytest

from relay.registry import ModelState, NothingToRollBack, RolledBackVersion, Stage
from relay.rollout.manual import restore
from relay.rollout.record import RolloutState
from relay.serve.traffic import TrafficSplit
from tests.unit.rollout.fakes import validated
from tests.unit.rollout.test_controller import PLAN, World


def _restore(w: World, version: str, force: bool = False) -> None:
    restore(
        version,
        w.s,
        by="airflow:eta_monitoring:run_1",
        reason="eta_monitoring: live accuracy down",
        registry=w.reg,
        store=w.store,
        endpoint=w.ep,
        lease=w.lease,
        now=w.now,
        force=force,
    )


def _promoted_then_restored(w: World) -> None:
    """The candidate rolled out and promoted, then monitoring restored the stable version."""
    w.start()
    assert w.run_out() is RolloutState.PROMOTED
    _restore(w, w.stable)
    assert w.reg.stage_pointer("production").previous_version_id == w.candidate


def test_a_restore_marks_the_version_it_replaces_rolled_back(world: World) -> None:
    w = world
    _promoted_then_restored(w)
    rolled = w.reg.get(w.candidate)
    assert rolled.barred and rolled.rolled_back is not None
    assert "eta_monitoring: live accuracy down" in rolled.rolled_back.reason
    assert rolled.state is ModelState.DEPRECATED  # promotable by state alone: the mark stops it
    assert not w.reg.get(w.stable).barred
    assert w.reg.last_rollback_at() == rolled.rolled_back.at


def test_a_rolled_back_version_is_never_restored_or_promoted_automatically(world: World) -> None:
    w = world
    _promoted_then_restored(w)
    with pytest.raises(RolledBackVersion, match="was rolled back"):
        _restore(w, w.candidate)  # monitoring's next hour, restoring "previous"
    with pytest.raises(RolledBackVersion):
        w.start()  # a rollout of it (the training DAG's rollout task, retried)
    with pytest.raises(RolledBackVersion):
        w.reg.promote(w.candidate, Stage.PRODUCTION)
    with pytest.raises(RolledBackVersion):
        w.reg.rollback()  # production's pointer names it as the previous version
    assert w.ep.split == TrafficSplit(stable=w.stable)
    assert w.reg.stage_version("production").id == w.stable
    assert w.store.current() is None  # the refused rollout left no record


def test_a_person_may_restore_it_with_force_and_then_it_is_a_version_like_any(
    world: World,
) -> None:
    w = world
    _promoted_then_restored(w)
    _restore(w, w.candidate, force=True)
    back = w.reg.get(w.candidate)
    assert w.ep.split == TrafficSplit(stable=w.candidate)
    assert not back.barred and back.rolled_back is not None  # kept, with when it was cleared
    assert back.rolled_back.cleared_at is not None
    assert w.reg.get(w.stable).barred  # the force-restore replaced it: a rollback too


def test_a_rollout_that_rolls_its_candidate_back_marks_it(world: World) -> None:
    w = world
    w.start()
    w.ep.error_rates[w.candidate] = 0.5  # the candidate fails half its requests
    assert w.run_out() is RolloutState.ROLLED_BACK
    assert w.reg.get(w.candidate).state is ModelState.DEGRADED and w.reg.get(w.candidate).barred
    # It leaves canary when the next version takes it: Deprecated, promotable by state…
    nxt = validated(w.reg)
    w.reg.promote(nxt, Stage.CANARY)
    assert w.reg.get(w.candidate).state is ModelState.DEPRECATED
    with pytest.raises(RolledBackVersion):  # …and still refused
        w.reg.promote(w.candidate, Stage.CANARY)


def test_the_registrys_rollback_marks_what_it_rolled_back_from(world: World) -> None:
    w = world
    w.reg.promote(w.candidate, Stage.PRODUCTION, reason="by hand")
    w.reg.rollback(reason="drift on the candidate")
    assert w.reg.get(w.candidate).barred
    with pytest.raises(NothingToRollBack):
        w.reg.rollback()
    with pytest.raises(RolledBackVersion):
        w.reg.promote(w.candidate, Stage.PRODUCTION)
    w.reg.promote(w.candidate, Stage.PRODUCTION, allow_rolled_back=True)  # a person's choice
    assert w.reg.stage_version(Stage.PRODUCTION).id == w.candidate


def test_a_person_may_roll_it_out_again_and_its_promotion_goes_through(world: World) -> None:
    from relay.rollout.controller import start_rollout_record

    w = world
    _promoted_then_restored(w)  # the canary pointer still names the rolled-back candidate
    start_rollout_record(
        w.candidate,
        w.s,
        registry=w.reg,
        store=w.store,
        endpoint=w.ep,
        lease=w.lease,
        plan=PLAN,
        by="cli:oncall",
        now=w.now,
        allow_rolled_back=True,
    )
    assert not w.reg.get(w.candidate).barred
    w.wait()
    assert w.run_out() is RolloutState.PROMOTED
    assert w.reg.stage_version("production").id == w.candidate
