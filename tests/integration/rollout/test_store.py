"""Rollout records and the traffic lease in the registry's store: local disk and S3 over HTTP."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Callable

import boto3
import pytest

from relay.registry import ConcurrentUpdate
from relay.rollout.lease import LeaseHeld, LeaseLost, TrafficLease
from relay.rollout.plan import default_plan
from relay.rollout.record import (
    Rollout,
    RolloutFinished,
    RolloutState,
    abort,
    advance,
    hold,
    promote,
    start_rollout,
)
from relay.rollout.store import RolloutActive, RolloutNotFound, RolloutStore, StoredRollout
from relay.settings import Settings

pytestmark = pytest.mark.integration

T0 = dt.datetime(2026, 11, 21, 14, 0, tzinfo=dt.UTC)
STABLE, CANDIDATE = "eta_mlp_1.2.0_20261120_0300", "eta_mlp_1.3.0_20261121_0300"
RECONCILER, OPERATOR = "rollout:ro-1", "cli:ana@laptop:4242"


@pytest.fixture(params=["local", "s3"])
def settings(request, tmp_path, monkeypatch) -> Settings:
    if request.param == "local":
        return Settings(home=tmp_path)
    endpoint = request.getfixturevalue("s3_endpoint")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    request.getfixturevalue("atomic_moto_puts")
    bucket = f"relay-rollouts-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    return Settings(
        home=tmp_path, registry={"uri": f"s3://{bucket}/registry"}, s3={"endpoint_url": endpoint}
    )


def _store(settings: Settings) -> RolloutStore:
    # Each writer opens its own store and client, as two processes would.
    return RolloutStore(settings)


def _new(rollout_id: str = "ro-1", now: dt.datetime = T0) -> Rollout:
    plan = default_plan(Settings().rollout)
    return start_rollout(CANDIDATE, STABLE, plan, by=OPERATOR, now=now, rollout_id=rollout_id)


def _at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def _race(*jobs: Callable[[], object]) -> list[object]:
    """Run the jobs in threads; each outcome is its result or the exception it raised."""
    outcomes: list[object] = [None] * len(jobs)

    def run(i: int) -> None:
        try:
            outcomes[i] = jobs[i]()
        except BaseException as err:  # recorded and checked by the caller
            outcomes[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    return outcomes


def _wait_after_first_read(holder: RolloutStore | TrafficLease, barrier: threading.Barrier) -> None:
    """Make ``holder``'s first store read wait for the other racer's: both read before either
    writes, the worst interleaving."""
    read_json = holder.store.read_json
    waited = threading.Event()

    def read_then_wait(key: str):
        tagged = read_json(key)
        if not waited.is_set():
            waited.set()
            barrier.wait(timeout=30)
        return tagged

    holder.store.read_json = read_then_wait  # type: ignore[method-assign]


# Records -------------------------------------------------------------------------------------


def test_a_rollout_is_created_read_changed_and_archived_when_it_ends(settings):
    store = _store(settings)
    assert store.current() is None and store.history() == []
    created = store.create(_new())
    assert store.current() == created
    assert store.get("ro-1") == created

    moved = advance(created.rollout, ["PASS: all"], by=RECONCILER, now=_at(60))
    tag = store.put(moved, created.etag)
    again = _store(settings).get("ro-1")
    assert again == StoredRollout(moved, tag)
    raw = store.store.read_json(store.active_key)
    assert raw is not None and raw.doc["traffic"] == moved.traffic.to_config()
    assert raw.doc["traffic"]["candidate_share"] == 0.01

    ended = promote(moved, ["PASS: all"], by=RECONCILER, now=_at(120))
    store.put(ended, tag)
    assert store.current() is None
    assert store.get("ro-1").rollout.state is RolloutState.PROMOTED
    assert store.store.exists(f"{store.archive_prefix}ro-1.json")

    second = store.create(_new("ro-2", _at(300)))
    assert store.current() == second
    assert store.get("ro-1").rollout == ended  # from the archive now
    assert [r.id for r in store.history()] == ["ro-2", "ro-1"]
    with pytest.raises(RolloutNotFound, match="ro-9"):
        store.get("ro-9")


def test_a_second_live_rollout_is_refused(settings):
    store = _store(settings)
    store.create(_new())
    with pytest.raises(RolloutActive, match="ro-1"):
        store.create(_new("ro-2"))
    assert [r.id for r in store.history()] == ["ro-1"]


def test_a_write_from_a_stale_read_is_refused(settings):
    store = _store(settings)
    created = store.create(_new())
    store.put(hold(created.rollout, ["HOLD: 3 labelled"], by=RECONCILER, now=_at(1)), created.etag)
    with pytest.raises(ConcurrentUpdate, match="changed since it was read"):
        store.put(abort(created.rollout, OPERATOR, "stop", _at(2)), created.etag)
    assert store.get("ro-1").rollout.state is RolloutState.HOLDING


def test_two_writers_racing_exactly_one_wins(settings):
    _store(settings).create(_new())
    barrier = threading.Barrier(2)

    def write(change: Callable[[Rollout], Rollout]) -> Callable[[], str]:
        def job() -> str:
            read = _store(settings).get("ro-1")
            barrier.wait(timeout=30)  # both have read before either writes
            return _store(settings).put(change(read.rollout), read.etag)

        return job

    outcomes = _race(
        write(lambda r: advance(r, ["PASS"], by=RECONCILER, now=_at(1))),
        write(lambda r: abort(r, OPERATOR, "restored by hand", _at(1))),
    )
    winners = [i for i, out in enumerate(outcomes) if isinstance(out, str)]
    losers = [i for i, out in enumerate(outcomes) if isinstance(out, ConcurrentUpdate)]
    assert len(winners) == 1 and len(losers) == 1, outcomes
    stored = _store(settings).get("ro-1").rollout
    expected = RolloutState.RUNNING if winners == [0] else RolloutState.ABORTED
    assert (stored.state, stored.step) == (expected, 1 if winners == [0] else 0)


def test_two_rollouts_starting_at_once_exactly_one_starts(settings):
    barrier = threading.Barrier(2)
    racers = [_store(settings), _store(settings)]
    for racer in racers:
        _wait_after_first_read(racer, barrier)
    outcomes = _race(lambda: racers[0].create(_new("ro-a")), lambda: racers[1].create(_new("ro-b")))
    winners = [out for out in outcomes if isinstance(out, StoredRollout)]
    assert len(winners) == 1, outcomes
    assert sum(isinstance(out, ConcurrentUpdate) for out in outcomes) == 1, outcomes
    current = _store(settings).current()
    assert current is not None and current.rollout.id == winners[0].rollout.id


def test_an_abort_racing_the_reconciler_always_sticks(settings):
    _store(settings).create(_new())
    barrier = threading.Barrier(2)
    racers = [_store(settings), _store(settings)]
    for racer in racers:
        _wait_after_first_read(racer, barrier)
    outcomes = _race(
        lambda: racers[0].update("ro-1", lambda r: advance(r, ["PASS"], by=RECONCILER, now=_at(1))),
        lambda: racers[1].update("ro-1", lambda r: abort(r, OPERATOR, "restored", _at(1))),
    )
    # Either the advance lands first and the abort is re-applied on top of it, or the abort
    # lands first and the re-applied advance is refused: the rollout ends aborted either way.
    assert isinstance(outcomes[1], Rollout) and outcomes[1].state is RolloutState.ABORTED
    assert isinstance(outcomes[0], Rollout | RolloutFinished), outcomes
    stored = _store(settings).get("ro-1").rollout
    assert stored.state is RolloutState.ABORTED and stored.history[-1].by == OPERATOR


# The traffic lease ---------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now


def _lease(settings: Settings, clock: Clock) -> TrafficLease:
    # Each holder opens its own store and client, as two processes would.
    return TrafficLease.open(settings, clock=clock)


def test_the_traffic_lease_is_taken_renewed_refused_and_released(settings):
    clock = Clock()
    lease = _lease(settings, clock)
    other = _lease(settings, clock)
    ttl = settings.rollout.lease_ttl_s
    assert lease.holder() is None
    taken = lease.acquire(RECONCILER)
    assert (taken.owner, taken.expires_at) == (RECONCILER, _at(ttl))
    with pytest.raises(LeaseHeld, match=RECONCILER):
        other.acquire(OPERATOR)
    with pytest.raises(LeaseLost, match=f"{RECONCILER} holds it"):
        other.renew(OPERATOR)
    clock.now = _at(ttl / 2)
    assert lease.renew(RECONCILER).expires_at == _at(ttl * 1.5)
    assert other.release(OPERATOR) is False
    held = other.holder()
    assert held is not None and held.owner == RECONCILER

    clock.now = _at(ttl * 1.5)  # lapsed: the reconciler died without releasing it
    assert other.holder() is None
    assert other.acquire(OPERATOR).owner == OPERATOR
    with pytest.raises(LeaseLost):
        lease.renew(RECONCILER)
    assert other.release(OPERATOR) is True
    assert lease.holder() is None


def test_the_lease_is_released_when_the_block_fails(settings):
    lease = _lease(settings, Clock())
    with pytest.raises(RuntimeError, match="traffic actor gone"), lease.held(OPERATOR):
        assert lease.holder() is not None
        raise RuntimeError("traffic actor gone")
    assert lease.holder() is None


def test_two_acquirers_racing_exactly_one_holds_the_lease(settings):
    clock = Clock()
    barrier = threading.Barrier(2)
    racers = [_lease(settings, clock), _lease(settings, clock)]
    for racer in racers:
        _wait_after_first_read(racer, barrier)
    outcomes = _race(lambda: racers[0].acquire("rollout:ro-a"), lambda: racers[1].acquire(OPERATOR))
    winners = [out for out in outcomes if not isinstance(out, BaseException)]
    losers = [out for out in outcomes if isinstance(out, LeaseHeld)]
    assert len(winners) == 1 and len(losers) == 1, outcomes
    # The loser re-read after losing the write and was refused naming the winner.
    assert losers[0].holder == winners[0].owner
    holder = _lease(settings, clock).holder()
    assert holder is not None and holder.owner == winners[0].owner
