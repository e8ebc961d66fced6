"""The rollout controller against a local registry and rollout store and a fake Serve endpoint.

Time moves only when a test says so: the endpoint counts ``rate`` requests a second split by
its current traffic, and each tick is called with the test's clock.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import pytest

from relay.registry import ModelState, Registry, Stage
from relay.rollout.controller import abort_rollout, reconcile_once, start_rollout_record
from relay.rollout.lease import TrafficLease
from relay.rollout.manual import restore
from relay.rollout.plan import Plan, Step
from relay.rollout.reconcile import TickResult
from relay.rollout.record import Rollout, RolloutState
from relay.rollout.store import RolloutStore
from relay.serve.log_read import VersionQuality
from relay.serve.traffic import TrafficSplit
from relay.serve.windows import LATENCY_BUCKETS_MS, VersionWindow
from relay.settings import Settings
from tests.unit.rollout.fakes import validated

T0 = dt.datetime(2026, 11, 21, 14, 0, tzinfo=dt.UTC)
TICK = dt.timedelta(seconds=30)
PLAN = Plan(
    steps=[
        Step(share=0.1, min_duration_s=60, max_duration_s=600, min_requests=10),
        Step(share=1.0, min_duration_s=60, max_duration_s=600, min_requests=10),
    ]
)
FAST = LATENCY_BUCKETS_MS.index(20)  # every request takes 10-20 ms
# A request in a latency bucket takes its midpoint (the +Inf bucket: its lower bound).
_MIDPOINTS = [
    (lo + hi) / 2 for lo, hi in zip((0, *LATENCY_BUCKETS_MS[:-1]), LATENCY_BUCKETS_MS, strict=True)
] + [LATENCY_BUCKETS_MS[-1]]


@dataclass
class FakeEndpoint:
    """Serve: a split, the deployed versions, and cumulative counters per version."""

    rate: float = 100.0
    error_rates: dict[str, float] = field(default_factory=dict)
    split: TrafficSplit | None = None
    deployed: set[str] = field(default_factory=set)
    counts: dict[str, list[float]] = field(default_factory=dict)
    splits: list[TrafficSplit] = field(default_factory=list)
    t: float = 0.0
    fail_next_set: bool = False
    # The latency bucket each version's requests fall in from now on (FAST when unnamed), and
    # each version's requests per bucket so far.
    latency_buckets: dict[str, int] = field(default_factory=dict)
    latency: dict[str, list[float]] = field(default_factory=dict)

    def run(self, seconds: float) -> None:
        """Serve ``seconds`` of traffic under the current split."""
        if self.split is not None:
            for version, share in self.split.shares().items():
                c = self.counts.setdefault(version, [0.0, 0.0])
                c[0] += self.rate * share * seconds
                c[1] += self.rate * share * seconds * self.error_rates.get(version, 0.0)
                b = self.latency.setdefault(version, [0.0] * (len(LATENCY_BUCKETS_MS) + 1))
                b[self.latency_buckets.get(version, FAST)] += self.rate * share * seconds
        self.t += seconds

    def current_traffic(self, settings: Settings | None = None) -> TrafficSplit | None:
        return self.split

    def deploy_model(self, version: str, settings: Settings | None = None) -> str:
        self.deployed.add(version)
        return version

    def remove_model(self, version: str) -> None:
        self.deployed.discard(version)

    def deployed_models(self, settings: Settings | None = None) -> list[str]:
        return sorted(self.deployed)

    def set_traffic(self, split: TrafficSplit, settings: Settings | None = None) -> TrafficSplit:
        if self.fail_next_set:
            self.fail_next_set = False
            raise TimeoutError("router did not apply traffic generation 7 in 30 s")
        self.split = split
        self.splits.append(split)
        return split

    def live_metrics(self, settings: Settings | None = None) -> dict[str, Any]:
        out = {}
        for version, (requests, errors) in self.counts.items():
            n = int(requests)
            buckets = [int(b) for b in self.latency.get(version, [0.0] * len(_MIDPOINTS))]
            buckets[self.latency_buckets.get(version, FAST)] += n - sum(buckets)  # rounding
            out[version] = VersionWindow(
                version,
                0.0,
                self.t,
                requests=n,
                errors=min(int(errors), n),
                predictions=n,
                latency_counts=tuple(buckets),
                latency_sum_ms=sum(k * ms for k, ms in zip(buckets, _MIDPOINTS, strict=True)),
            ).to_dict()
        return out


@dataclass
class World:
    s: Settings
    reg: Registry
    store: RolloutStore
    lease: TrafficLease
    ep: FakeEndpoint
    stable: str
    candidate: str
    now: dt.datetime = T0
    lines: list[str] = field(default_factory=list)

    def quality(self, settings: Settings, since: dt.datetime) -> dict[str, VersionQuality]:
        # Labels landed for both versions, equally good.
        return {v: VersionQuality(v, 200, 6.0, 0.0, 0.2) for v in (self.stable, self.candidate)}

    def start(self) -> None:
        start_rollout_record(
            self.candidate,
            self.s,
            registry=self.reg,
            store=self.store,
            endpoint=self.ep,
            plan=PLAN,
            lease=self.lease,
            by="cli:test",
            now=self.now,
        )

    def tick(self) -> TickResult | None:
        return reconcile_once(
            self.s,
            registry=self.reg,
            store=self.store,
            lease=self.lease,
            endpoint=self.ep,
            now=self.now,
            quality=self.quality,
            emit=self.lines.append,
        )

    def wait(self) -> None:
        self.ep.run(TICK.total_seconds())
        self.now += TICK

    def run_out(self, ticks: int = 40) -> RolloutState:
        for _ in range(ticks):
            self.tick()
            state = self.record().state
            if state.final:
                return state
            self.wait()
        return self.record().state

    def record(self) -> Rollout:
        latest = self.store.latest()
        assert latest is not None
        return latest.rollout


@pytest.fixture
def world(tmp_path) -> World:
    s = Settings(home=tmp_path)
    reg = Registry(s, clock=lambda: T0)
    store = RolloutStore(s)
    w = World(s, reg, store, None, FakeEndpoint(), validated(reg), validated(reg))  # type: ignore[arg-type]
    w.lease = TrafficLease(store.store, s.registry.model_name, 60.0, clock=lambda: w.now)
    restore(w.stable, s, registry=reg, endpoint=w.ep, store=store, lease=w.lease, now=T0)
    return w


def test_a_good_candidate_is_ticked_through_every_step_and_promoted(world):
    w = world
    w.start()
    assert w.ep.split == TrafficSplit(stable=w.stable)  # starting moves no traffic
    assert w.reg.get(w.candidate).stage is Stage.CANARY
    assert w.run_out() is RolloutState.PROMOTED
    rollout = w.record()
    assert [v.action.value for v in rollout.verdicts if v.action.value != "hold"] == [
        "advance",
        "promote",
    ]
    assert TrafficSplit(w.stable, w.candidate, 0.1) in w.ep.splits
    assert TrafficSplit(w.stable, w.candidate, 1.0) in w.ep.splits
    assert w.ep.split == TrafficSplit(stable=w.candidate)
    assert w.reg.stage_version("production").id == w.candidate
    assert w.reg.get(w.candidate).state is ModelState.SERVING
    assert w.reg.get(w.stable).state is ModelState.DEPRECATED
    assert any(line.startswith("PROMOTED") for line in w.lines)
    assert w.lease.holder() is None  # an ended rollout holds no lease
    # Ticking an ended rollout changes nothing.
    splits = list(w.ep.splits)
    result = w.tick()
    assert result is not None and result.action is None
    assert w.ep.splits == splits


def test_a_crash_between_the_record_and_the_traffic_is_healed_by_the_next_tick(world):
    w = world
    w.start()
    crashed = False
    for _ in range(10):  # up to the tick that advances to the full step
        if crashed:
            break
        w.wait()
        if w.ep.split == TrafficSplit(w.stable, w.candidate, 0.1):
            w.ep.fail_next_set = True  # the next set_traffic (the advance's) fails once
        try:
            w.tick()
        except TimeoutError:
            crashed = True
    assert crashed
    rollout = w.record()
    assert rollout.step == 1  # the record advanced…
    assert w.ep.split == TrafficSplit(w.stable, w.candidate, 0.1)  # …Serve did not
    w.wait()
    result = w.tick()
    assert result is not None and result.action is None
    assert any("traffic healed" in r for r in result.reasons)
    assert w.ep.split == TrafficSplit(w.stable, w.candidate, 1.0)
    w.wait()
    assert w.run_out() is RolloutState.PROMOTED
    assert w.ep.split == TrafficSplit(stable=w.candidate)


def test_a_lease_held_by_another_owner_changes_nothing(world):
    w = world
    w.start()
    w.lease.acquire("cli:ana@laptop:4242")
    before = w.store.latest()
    assert w.tick() is None
    assert w.store.latest() == before
    assert w.ep.split == TrafficSplit(stable=w.stable)
    assert any("cli:ana@laptop:4242" in line for line in w.lines)


def test_an_abort_ends_the_rollout_on_stable_and_no_tick_undoes_it(world):
    w = world
    w.start()
    w.tick()
    w.wait()
    w.tick()
    assert w.ep.split == TrafficSplit(w.stable, w.candidate, 0.1)
    ended = abort_rollout(
        "cli:ana@laptop:4242",
        "pager: p99 alarm",
        w.s,
        registry=w.reg,
        store=w.store,
        lease=w.lease,
        endpoint=w.ep,
        now=w.now,
    )
    assert ended.state is RolloutState.ABORTED
    assert (ended.history[-1].by, ended.history[-1].reason) == (
        "cli:ana@laptop:4242",
        "pager: p99 alarm",
    )
    assert w.ep.split == TrafficSplit(stable=w.stable)
    for _ in range(3):
        w.wait()
        result = w.tick()
        assert result is not None and result.action is None
    assert w.ep.split == TrafficSplit(stable=w.stable)
    assert w.record() == ended
    cand = w.reg.get(w.candidate)
    assert cand.state is not ModelState.DEGRADED  # aborted: still promotable
    assert w.reg.stage_version("production").id == w.stable


def test_a_candidate_with_errors_is_rolled_back_degraded_and_freed(world):
    w = world
    w.ep.error_rates[w.candidate] = 0.2
    w.start()
    assert w.run_out() is RolloutState.ROLLED_BACK
    assert w.ep.split == TrafficSplit(stable=w.stable)
    assert w.candidate not in w.ep.deployed
    cand = w.reg.get(w.candidate)
    assert cand.state is ModelState.DEGRADED
    assert "error rate" in cand.history[-1].reason
    assert w.reg.stage_version("production").id == w.stable
