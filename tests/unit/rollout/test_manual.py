"""Restores and manual moves under the traffic lease, against a local registry and rollout
store and the fake Serve endpoint of the controller's tests."""

from __future__ import annotations

import pytest

from relay.registry import ModelState
from relay.rollout.lease import LeaseHeld
from relay.rollout.manual import canary, free_idle_models, promote_candidate, restore
from relay.rollout.record import RolloutState
from relay.rollout.store import RolloutActive
from relay.serve.traffic import TrafficSplit
from tests.unit.rollout.test_controller import FakeEndpoint, World


def test_a_restore_during_a_rollout_aborts_it_and_no_tick_undoes_it(world: World) -> None:
    w = world
    w.start()
    w.tick()
    w.wait()
    w.tick()
    assert w.ep.split is not None and w.ep.split.candidate == w.candidate  # canary serving
    done = restore(
        w.stable,
        w.s,
        by="airflow:eta_rollback",
        reason="on-call: orders late in Z03",
        registry=w.reg,
        store=w.store,
        endpoint=w.ep,
        lease=w.lease,
        now=w.now,
    )
    assert done.split == TrafficSplit(stable=w.stable)
    record = w.record()
    assert record.state is RolloutState.ABORTED and record.serving_after == w.stable
    aborted = record.history[-1]
    assert aborted.by == "airflow:eta_rollback" and "orders late in Z03" in aborted.reason
    assert w.lease.holder() is None
    for _ in range(3):  # the controller keeps ticking: nothing moves traffic back
        w.wait()
        w.tick()
    assert w.ep.split == TrafficSplit(stable=w.stable)
    assert w.reg.stage_version("production").id == w.stable
    assert w.reg.get(w.candidate).state is not ModelState.DEGRADED  # still promotable


def test_a_restore_of_another_version_is_what_an_in_flight_tick_heals_towards(world: World):
    w = world
    w.start()
    w.tick()
    restore(
        w.candidate,
        w.s,
        by="cli:oncall",
        registry=w.reg,
        store=w.store,
        endpoint=w.ep,
        lease=w.lease,
        now=w.now,
    )
    # A tick that had read the record before the abort wrote its old split afterwards.
    w.ep.set_traffic(TrafficSplit(w.stable, w.candidate, 0.5))
    w.wait()
    w.tick()
    assert w.ep.split == TrafficSplit(stable=w.candidate)
    assert w.reg.stage_version("production").id == w.candidate


def test_a_restore_waits_for_no_one_but_refuses_a_held_lease(world: World) -> None:
    w = world
    w.s.rollout.lease_wait_s = 0.5  # how long it waits is the setting's; that it gives up is this
    w.lease.acquire("cli:someone-else")
    with pytest.raises(LeaseHeld, match="someone-else"):
        restore(w.candidate, w.s, registry=w.reg, store=w.store, endpoint=w.ep, lease=w.lease)
    assert w.ep.split == TrafficSplit(stable=w.stable)
    assert w.reg.stage_version("production").id == w.stable


def test_a_restore_brings_back_a_deprecated_version(world: World) -> None:
    w = world
    w.start()
    assert w.run_out() is RolloutState.PROMOTED
    assert w.reg.get(w.stable).state is ModelState.DEPRECATED
    done = restore(
        w.stable, w.s, registry=w.reg, store=w.store, endpoint=w.ep, lease=w.lease, now=w.now
    )
    assert done.split == TrafficSplit(stable=w.stable) and done.aborted is None
    assert w.reg.stage_version("production").id == w.stable
    assert w.reg.stage_pointer("production").previous_version_id == w.candidate
    assert w.reg.get(w.stable).state is ModelState.SERVING
    assert w.reg.get(w.candidate).state is ModelState.DEPRECATED


def test_manual_moves_are_refused_while_a_rollout_owns_the_traffic(world: World) -> None:
    w = world
    w.start()
    kw = {"registry": w.reg, "store": w.store, "endpoint": w.ep, "lease": w.lease}
    with pytest.raises(RolloutActive, match="relay rollout abort"):
        canary(w.candidate, 0.5, w.s, **kw)  # type: ignore[arg-type]
    with pytest.raises(RolloutActive):
        promote_candidate(w.s, **kw)  # type: ignore[arg-type]
    assert w.ep.split == TrafficSplit(stable=w.stable)
    assert w.lease.holder() is None


def test_a_manual_canary_then_promotion_is_recorded_in_the_registry(world: World) -> None:
    w = world
    kw = {"registry": w.reg, "store": w.store, "endpoint": w.ep, "lease": w.lease}
    assert canary(w.candidate, 0.25, w.s, **kw) == TrafficSplit(w.stable, w.candidate, 0.25)  # type: ignore[arg-type]
    assert w.reg.get(w.candidate).stage.value == "canary"
    assert promote_candidate(w.s, **kw) == TrafficSplit(stable=w.candidate)  # type: ignore[arg-type]
    assert w.reg.stage_version("production").id == w.candidate
    assert w.lease.holder() is None


# free_idle_models ------------------------------------------------------------------------------


def test_training_frees_versions_that_take_no_traffic() -> None:
    # v1 stayed deployed after v2's promotion (a quick rollback that day); training frees it.
    ep = FakeEndpoint(split=TrafficSplit(stable="v2"), deployed={"v1", "v2"})
    assert free_idle_models(ep, emit=lambda _: None) == ["v1"]
    assert ep.deployed_models() == ["v2"]


def test_a_canary_and_its_stable_are_never_freed() -> None:
    ep = FakeEndpoint(split=TrafficSplit("v1", "v2", 0.1), deployed={"v0", "v1", "v2"})
    assert free_idle_models(ep, emit=lambda _: None) == ["v0"]
    assert ep.deployed_models() == ["v1", "v2"]


def test_nothing_deployed_frees_nothing_and_never_asks_for_the_split() -> None:
    ep = FakeEndpoint()

    def no_split(settings: object = None) -> TrafficSplit | None:
        raise AssertionError("would start Serve on a cluster that only trains")

    ep.current_traffic = no_split  # type: ignore[method-assign]
    assert free_idle_models(ep, emit=lambda _: None) == []
