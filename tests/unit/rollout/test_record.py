"""The rollout record: lease, legal and illegal moves, JSON round-trip, default plan, traffic."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from pydantic import ValidationError

from relay.rollout.lease import Lease, LeaseHeld, drop_lease, take_lease
from relay.rollout.plan import Plan, Step, Targeting, TrafficRule, default_plan
from relay.rollout.record import (
    NoNextStep,
    Rollout,
    RolloutFinished,
    RolloutState,
    VerdictAction,
    abort,
    acquire_lease,
    advance,
    hold,
    promote,
    release_lease,
    roll_back,
    start_rollout,
    traffic_of,
)
from relay.serve.traffic import TrafficSplit
from relay.settings import RolloutSettings, Settings

T0 = dt.datetime(2026, 11, 21, 14, 0, tzinfo=dt.UTC)
SETTINGS = RolloutSettings()
STABLE, CANDIDATE = "eta_mlp_1.2.0_20261120_0300", "eta_mlp_1.3.0_20261121_0300"
RECONCILER, OPERATOR = "rollout:ro-1", "cli:ana@laptop:4242"


def _at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def _rollout(plan: Plan | None = None) -> Rollout:
    return start_rollout(
        CANDIDATE, STABLE, plan or default_plan(SETTINGS), by=OPERATOR, now=T0, rollout_id="ro-1"
    )


def _ended(state: RolloutState) -> Rollout:
    r = _rollout()
    if state is RolloutState.PROMOTED:
        return promote(r, ["all steps passed"], by=RECONCILER, now=_at(1))
    if state is RolloutState.ROLLED_BACK:
        return roll_back(r, ["FAIL: error rate 3%"], by=RECONCILER, now=_at(1))
    return abort(r, OPERATOR, "restored by hand", _at(1))


# Lease ---------------------------------------------------------------------------------------


def test_a_free_lease_is_taken_until_now_plus_ttl():
    lease = take_lease(None, RECONCILER, T0, 60)
    assert lease == Lease(owner=RECONCILER, acquired_at=T0, expires_at=_at(60))
    assert lease.live(_at(59.9)) and not lease.live(_at(60))


def test_a_live_lease_of_another_owner_is_refused_naming_holder_and_expiry():
    held = take_lease(None, RECONCILER, T0, 60)
    with pytest.raises(LeaseHeld) as caught:
        take_lease(held, OPERATOR, _at(30), 60)
    assert (caught.value.holder, caught.value.expires_at) == (RECONCILER, _at(60))
    assert RECONCILER in str(caught.value) and _at(60).isoformat() in str(caught.value)


def test_an_expired_lease_goes_to_whoever_asks():
    held = take_lease(None, RECONCILER, T0, 60)
    taken = take_lease(held, OPERATOR, _at(60), 60)
    assert (taken.owner, taken.acquired_at, taken.expires_at) == (OPERATOR, _at(60), _at(120))


def test_the_holder_renews_keeping_when_it_took_the_lease():
    held = take_lease(None, RECONCILER, T0, 60)
    renewed = take_lease(held, RECONCILER, _at(45), 60)
    assert (renewed.acquired_at, renewed.expires_at) == (T0, _at(105))
    # Taken again after lapsing is a new tenure, not a renewal.
    assert take_lease(held, RECONCILER, _at(61), 60).acquired_at == _at(61)


def test_only_the_holder_releases_a_lease():
    held = take_lease(None, RECONCILER, T0, 60)
    assert drop_lease(held, OPERATOR) is held
    assert drop_lease(held, RECONCILER) is None
    with pytest.raises(ValueError, match="positive"):
        take_lease(None, RECONCILER, T0, 0)


def test_rollout_lease_is_recorded_once_per_owner_and_released_by_its_holder():
    r = acquire_lease(_rollout(), RECONCILER, _at(1), 60)
    r = acquire_lease(r, RECONCILER, _at(30), 60)  # a renewal
    assert r.lease is not None and r.lease.expires_at == _at(90)
    assert [e.action for e in r.history] == ["start", "lease"]
    assert r.history[-1].by == RECONCILER
    with pytest.raises(LeaseHeld, match=RECONCILER):
        acquire_lease(r, OPERATOR, _at(31), 60)
    assert release_lease(r, OPERATOR, _at(32)) is r
    released = release_lease(r, RECONCILER, _at(32))
    assert released.lease is None and released.updated_at == _at(32)
    taken = acquire_lease(r, OPERATOR, _at(90), 60)  # lapsed: the operator may take it
    assert taken.lease is not None and taken.lease.owner == OPERATOR


# Moves ---------------------------------------------------------------------------------------


def test_advance_starts_the_next_step_and_records_the_verdict():
    r = advance(_rollout(), ["PASS: error rate 0.1%"], by=RECONCILER, now=_at(86_400))
    assert (r.step, r.step_started_at, r.state) == (1, _at(86_400), RolloutState.RUNNING)
    [verdict] = r.verdicts
    assert (verdict.step, verdict.action, verdict.reasons) == (
        0,
        VerdictAction.ADVANCE,
        ["PASS: error rate 0.1%"],
    )
    assert r.history[-1].by == RECONCILER and r.history[-1].from_state is RolloutState.RUNNING


def test_advance_at_the_last_step_is_refused():
    r = _rollout()
    for i in range(3):
        r = advance(r, ["ok"], by=RECONCILER, now=_at(i + 1))
    with pytest.raises(NoNextStep, match="promote it instead"):
        advance(r, ["ok"], by=RECONCILER, now=_at(10))
    assert promote(r, ["ok"], by=RECONCILER, now=_at(10)).state is RolloutState.PROMOTED


def test_holds_keep_one_verdict_per_step_and_an_identical_hold_changes_nothing():
    r = hold(_rollout(), ["HOLD: 3 labelled < 50"], by=RECONCILER, now=_at(10))
    assert r.state is RolloutState.HOLDING
    assert hold(r, ["HOLD: 3 labelled < 50"], by=RECONCILER, now=_at(20)) is r
    r = hold(r, ["HOLD: 7 labelled < 50"], by=RECONCILER, now=_at(30))
    assert [(v.action, v.reasons, v.decided_at) for v in r.verdicts] == [
        (VerdictAction.HOLD, ["HOLD: 7 labelled < 50"], _at(30))
    ]
    assert [e.action for e in r.history] == ["start", "hold"]
    r = advance(r, ["PASS: quality"], by=RECONCILER, now=_at(40))
    r = hold(r, ["HOLD: 0 requests"], by=RECONCILER, now=_at(50))
    assert [(v.step, v.action) for v in r.verdicts] == [
        (0, VerdictAction.HOLD),
        (0, VerdictAction.ADVANCE),
        (1, VerdictAction.HOLD),
    ]


@pytest.mark.parametrize(
    ("state", "serving"),
    [
        (RolloutState.PROMOTED, CANDIDATE),
        (RolloutState.ROLLED_BACK, STABLE),
        (RolloutState.ABORTED, STABLE),
    ],
)
def test_an_ended_rollout_serves_one_version_holds_no_lease_and_refuses_every_move(state, serving):
    r = _ended(state)
    assert (r.state, r.serving_after, r.lease) == (state, serving, None)
    assert traffic_of(r) == TrafficRule(stable=serving)
    moves = [
        lambda: advance(r, ["ok"], by=RECONCILER, now=_at(2)),
        lambda: hold(r, ["wait"], by=RECONCILER, now=_at(2)),
        lambda: promote(r, ["ok"], by=RECONCILER, now=_at(2)),
        lambda: roll_back(r, ["bad"], by=RECONCILER, now=_at(2)),
        lambda: abort(r, OPERATOR, "again", _at(2)),
        lambda: acquire_lease(r, RECONCILER, _at(2), 60),
    ]
    for move in moves:
        with pytest.raises(RolloutFinished, match=f"ended {state.value}"):
            move()


def test_abort_by_a_restore_records_who_and_serves_the_restored_version():
    r = acquire_lease(_rollout(), RECONCILER, _at(1), 60)
    aborted = abort(r, OPERATOR, "restored 1.1.0 by hand", _at(5), serving="eta_mlp_1.1.0")
    assert aborted.traffic == TrafficRule(stable="eta_mlp_1.1.0")
    assert aborted.lease is None
    last = aborted.history[-1]
    assert (last.by, last.action, last.reason) == (OPERATOR, "abort", "restored 1.1.0 by hand")
    assert aborted.verdicts[-1].action is VerdictAction.ABORT


# Invariants and JSON -------------------------------------------------------------------------


def test_records_refuse_inconsistent_values():
    plan = default_plan(SETTINGS)
    with pytest.raises(ValidationError, match="same version"):
        start_rollout(STABLE, STABLE, plan, by=OPERATOR, now=T0)
    with pytest.raises(ValidationError, match="past the plan"):
        Rollout.model_validate({**_rollout().model_dump(), "step": 4})
    with pytest.raises(ValidationError):
        start_rollout(CANDIDATE, STABLE, plan, by=OPERATOR, now=T0, rollout_id="../escape")
    with pytest.raises(ValidationError, match="not both"):
        Targeting(zones=["Z001"], zone_share=0.1)
    with pytest.raises(ValidationError, match=r"0\.\.23"):
        Targeting(hours=[24])
    with pytest.raises(ValidationError, match="below its min_duration_s"):
        Step(share=0.1, min_duration_s=60, max_duration_s=30)


def test_a_rollout_survives_a_json_round_trip_with_its_traffic_alongside():
    r = acquire_lease(_rollout(), RECONCILER, _at(1), 60)
    r = advance(advance(r, ["ok"], by=RECONCILER, now=_at(2)), ["ok"], by=RECONCILER, now=_at(3))
    r = hold(r, ["HOLD: 10 labelled < 50"], by=RECONCILER, now=_at(4))
    raw = json.loads(r.model_dump_json())
    assert raw["traffic"] == {
        **TrafficSplit(STABLE, CANDIDATE, 1.0).to_config(),
        "targeting": {"zones": None, "zone_share": 0.1, "hours": None},
    }
    again = Rollout.model_validate_json(json.dumps(raw))
    assert again == r and again.traffic == r.traffic
    # The stored traffic is derived, never trusted: a hand-edited copy is ignored.
    raw["traffic"] = TrafficSplit(STABLE).to_config()
    assert Rollout.model_validate(raw).traffic == r.traffic


# Default plan and traffic --------------------------------------------------------------------


def test_the_default_plan_follows_the_seed():
    plan = default_plan(SETTINGS)
    assert [s.share for s in plan.steps] == [0.001, 0.01, 1.0, 1.0]
    assert [s.targeting for s in plan.steps] == [None, None, Targeting(zone_share=0.1), None]
    assert [s.min_duration_s for s in plan.steps] == [86_400, 259_200, 604_800, 3_600]
    assert [s.max_duration_s for s in plan.steps] == [4 * s.min_duration_s for s in plan.steps]
    assert {(s.min_requests, s.min_labelled) for s in plan.steps} == {(50, 50)}
    assert [s.describe() for s in plan.steps] == [
        "0.1% of orders",
        "1% of orders",
        "100% of orders in 10% of zones",
        "100% of orders",
    ]


def test_demo_settings_shorten_the_plan(monkeypatch):
    monkeypatch.setenv("RELAY_ROLLOUT__PLAN_DURATIONS_S", "[15, 15, 20, 10]")
    monkeypatch.setenv("RELAY_ROLLOUT__PLAN_MAX_FACTOR", "2")
    monkeypatch.setenv("RELAY_ROLLOUT__LEASE_TTL_S", "5")
    s = Settings().rollout
    plan = default_plan(s)
    assert [(st.min_duration_s, st.max_duration_s) for st in plan.steps] == [
        (15, 30),
        (15, 30),
        (20, 40),
        (10, 20),
    ]
    assert s.lease_ttl_s == 5


@pytest.mark.parametrize(
    "fields",
    [
        {"plan_shares": (0.01, 0.001)},
        {"plan_shares": (0.1, 1.0)},
        {"plan_durations_s": (1, 1, 0, 1)},
    ],
)
def test_plan_settings_are_validated(fields):
    with pytest.raises(ValidationError):
        RolloutSettings(**fields)


def test_traffic_follows_the_step():
    r = _rollout()
    assert traffic_of(r) == TrafficRule(stable=STABLE, candidate=CANDIDATE, candidate_share=0.001)
    assert traffic_of(r).order_split() == TrafficSplit(STABLE, CANDIDATE, 0.001)
    r = advance(advance(r, ["ok"], by=RECONCILER, now=_at(1)), ["ok"], by=RECONCILER, now=_at(2))
    zones = [f"Z{i:03d}" for i in range(1, 201)]
    targeted = {z for z in zones if r.traffic.targeting and r.traffic.targeting.matches(z, 12)}
    assert 0 < len(targeted) < len(zones)  # about 10% of 200 zones
    for zone in zones:
        answers = {r.traffic.version_for(f"{zone}-o{i}", zone, 12) for i in range(20)}
        assert answers == ({CANDIDATE} if zone in targeted else {STABLE}), zone
    r = advance(r, ["ok"], by=RECONCILER, now=_at(3))
    assert traffic_of(r) == TrafficRule(stable=STABLE, candidate=CANDIDATE, candidate_share=1.0)


def test_hours_and_named_zones_narrow_a_step():
    rule = TrafficRule(
        stable=STABLE,
        candidate=CANDIDATE,
        candidate_share=1.0,
        targeting=Targeting(zones=["Z003"], hours=[18, 19]),
    )
    assert rule.version_for("o1", "Z003", 18) == CANDIDATE
    assert rule.version_for("o1", "Z003", 20) == STABLE
    assert rule.version_for("o1", "Z004", 18) == STABLE
    assert rule.targeting is not None and rule.targeting.describe() == "zones Z003 at hours 18, 19"
