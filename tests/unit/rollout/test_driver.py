"""Deployment drivers against a local registry and a fake endpoint, on a fake clock.

The endpoint serves ``rate`` requests a second, split by its current traffic split, and its
live metrics are cumulative windows as ``VersionWindow.to_dict()`` gives them; time moves only
when the driver waits.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import pytest

import relay.rollout.driver
from relay.registry import Lineage, ModelState, Registry, Stage
from relay.rollout.driver import RolloutOutcome, deploy_stable, free_idle_models, run_rollout
from relay.rollout.rules import QualityWindow
from relay.serve.traffic import TrafficSplit
from relay.serve.windows import LATENCY_BUCKETS_MS, VersionWindow
from relay.settings import Settings

NOW = dt.datetime(2026, 11, 21, 14, 2, tzinfo=dt.UTC)
STEPS = (0.01, 0.10, 0.50, 1.0)
LATENCY_BUCKET = LATENCY_BUCKETS_MS.index(20)  # every request takes 10-20 ms


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def wait(self, seconds: float) -> None:
        self.t += seconds


class FakeEndpoint:
    """The Serve endpoint: traffic split, deployed models and live counters per version."""

    def __init__(
        self,
        clock: FakeClock,
        serving: str | None = None,
        *,
        rate: float = 1000.0,
        error_rates: dict[str, float] | None = None,
    ) -> None:
        self.clock = clock
        self.split = None if serving is None else TrafficSplit(stable=serving)
        self.rate = rate
        self.error_rates = error_rates or {}
        self.deployed: list[str] = []
        self.removed: list[str] = []
        self.splits: list[TrafficSplit] = []
        self.counts: dict[str, list[float]] = {}  # version → [requests, errors]
        self.hide_unobserved = False  # like the router: a version shows once it served
        self._last = clock()

    def _advance(self) -> None:
        now = self.clock()
        if self.split is not None:
            for version, share in self.split.shares().items():
                n = self.rate * share * (now - self._last)
                c = self.counts.setdefault(version, [0.0, 0.0])
                c[0] += n
                c[1] += n * self.error_rates.get(version, 0.0)
        self._last = now

    def current_traffic(self, settings: Settings | None = None) -> TrafficSplit | None:
        return self.split

    def deploy_model(self, version: str, settings: Settings | None = None) -> str:
        self.deployed.append(version)
        self.counts.setdefault(version, [0.0, 0.0])
        return version

    def remove_model(self, version: str) -> None:
        self.removed.append(version)

    def deployed_models(self) -> list[str]:
        live = [*([self.split.stable] if self.split else []), *self.deployed]
        return [v for v in dict.fromkeys(live) if v not in self.removed]

    def set_traffic(self, split: TrafficSplit, settings: Settings | None = None) -> TrafficSplit:
        self._advance()
        self.split = split
        self.splits.append(split)
        return split

    def live_metrics(self, settings: Settings | None = None) -> dict[str, Any]:
        self._advance()
        out = {}
        for version, (requests, errors) in self.counts.items():
            n = int(requests)
            if n == 0 and self.hide_unobserved:
                continue
            counts = [0] * (len(LATENCY_BUCKETS_MS) + 1)
            counts[LATENCY_BUCKET] = n
            window = VersionWindow(
                version=version,
                since=0.0,
                until=self.clock(),
                requests=n,
                errors=min(int(errors), n),
                predictions=n,
                latency_counts=tuple(counts),
                latency_sum_ms=15.0 * n,
            )
            out[version] = window.to_dict()
        return out


def _settings(tmp_path, **rollout: Any) -> Settings:
    rollout = {
        "steps": STEPS,
        "step_duration_s": 5.0,
        "step_timeout_s": 30.0,
        "min_requests": 10,
        "quality_every_s": 1e9,  # never read the lake
        **rollout,
    }
    return Settings(home=tmp_path, rollout=rollout)


def _validated(reg: Registry) -> str:
    """Register a version and walk it to Validated; returns its id."""
    v = reg.register(
        {"model.pt": b"weights", "preprocessor.json": b"{}"},
        lineage=Lineage(feature_service="eta_v1", data_partitions=["2026-11-20"]),
        owner="ci",
    )
    for state in ("training", "trained", "evaluating", "validated"):
        reg.transition(v.id, state, f"pipeline reached {state}")
    return v.id


@pytest.fixture
def no_lake(monkeypatch):
    """live_quality reads the lake; these tests have none."""
    monkeypatch.setattr(relay.rollout.driver, "live_quality", lambda *a, **k: None)


@dataclass
class World:
    """Settings, a registry with ``stable`` in production, a ``candidate``, clock, endpoint."""

    s: Settings
    reg: Registry
    stable: str
    candidate: str
    clock: FakeClock
    ep: FakeEndpoint

    def rollout(self, version: str) -> tuple[RolloutOutcome, list[str]]:
        emitted: list[str] = []
        out = run_rollout(
            version,
            self.s,
            registry=self.reg,
            endpoint=self.ep,
            emit=emitted.append,
            clock=self.clock,
            wait=self.clock.wait,
            poll_s=1.0,
        )
        return out, emitted


@pytest.fixture
def world(tmp_path, no_lake) -> World:
    s = _settings(tmp_path)
    reg = Registry(s, clock=lambda: NOW)
    stable = _validated(reg)
    candidate = _validated(reg)
    clock = FakeClock()
    ep = FakeEndpoint(clock)
    deploy_stable(stable, s, registry=reg, endpoint=ep)
    return World(s, reg, stable, candidate, clock, ep)


# First deployment and restore ------------------------------------------------------------


def test_first_deploy_when_nothing_serves(tmp_path, no_lake):
    s = _settings(tmp_path)
    reg = Registry(s, clock=lambda: NOW)
    version = _validated(reg)
    clock = FakeClock()
    ep = FakeEndpoint(clock)
    emitted: list[str] = []
    out = run_rollout(
        version, s, registry=reg, endpoint=ep, emit=emitted.append, clock=clock, wait=clock.wait
    )
    assert (out.version, out.outcome, out.stable, out.steps) == (
        version,
        "first_deploy",
        version,
        [],
    )
    assert ep.deployed == [version]
    assert ep.splits == [TrafficSplit(stable=version)]
    assert reg.stage_version("production").id == version
    v = reg.get(version)
    assert (v.state, v.stage) == (ModelState.SERVING, Stage.PRODUCTION)
    assert [h.to_state for h in v.history][-2:] == [ModelState.DEPLOYING, ModelState.SERVING]
    assert "nothing is serving" in emitted[0]
    assert clock.t == 0.0  # no waiting for a first deployment


def test_outcome_written_as_json(tmp_path, no_lake):
    s = _settings(tmp_path)
    reg = Registry(s, clock=lambda: NOW)
    version = _validated(reg)
    clock = FakeClock()
    out = run_rollout(
        version, s, registry=reg, endpoint=FakeEndpoint(clock), emit=lambda _: None, clock=clock
    )
    path = out.write(tmp_path / "out" / "rollout.json")
    assert path.read_text().count(version) == 2  # version and stable
    assert '"outcome": "first_deploy"' in path.read_text()


def test_already_serving_does_nothing(world):
    w = world
    splits_before = list(w.ep.splits)
    out, emitted = w.rollout(w.stable)
    assert (out.outcome, out.stable, out.steps) == ("already_serving", w.stable, [])
    assert emitted == [f"{w.stable} already serves all traffic"]
    assert w.ep.splits == splits_before
    assert w.clock.t == 0.0


def test_deploy_stable_restores_a_deprecated_version(world):
    w = world
    out, _ = w.rollout(w.candidate)
    assert out.outcome == "promoted"
    assert w.reg.get(w.stable).state is ModelState.DEPRECATED
    split = deploy_stable(w.stable, w.s, registry=w.reg, endpoint=w.ep, reason="restore")
    assert split == TrafficSplit(stable=w.stable)
    assert w.reg.stage_version("production").id == w.stable
    assert w.reg.stage_pointer("production").previous_version_id == w.candidate
    assert w.reg.get(w.stable).state is ModelState.SERVING
    assert w.reg.get(w.candidate).state is ModelState.DEPRECATED


# Canary rollout ------------------------------------------------------------------------------


def test_healthy_candidate_walks_every_step_and_is_promoted(world):
    w = world
    out, emitted = w.rollout(w.candidate)

    assert (out.version, out.outcome, out.stable) == (w.candidate, "promoted", w.candidate)
    assert [st["step_share"] for st in out.steps] == list(STEPS)
    assert [st["action"] for st in out.steps] == ["advance", "advance", "advance", "promote"]
    assert [st["next_share"] for st in out.steps] == [0.10, 0.50, 1.0, 1.0]
    assert all(st["failed_checks"] == [] for st in out.steps)
    # The endpoint saw each step's split, then all traffic on the candidate.
    assert w.ep.deployed == [w.stable, w.candidate]
    assert w.ep.splits[1:] == [
        *(TrafficSplit(w.stable, w.candidate, share) for share in STEPS),
        TrafficSplit(stable=w.candidate),
    ]
    assert w.ep.split == TrafficSplit(stable=w.candidate)
    # The registry: production moved, the old stable deprecated.
    pointer = w.reg.stage_pointer("production")
    assert (pointer.version_id, pointer.previous_version_id) == (w.candidate, w.stable)
    cand = w.reg.get(w.candidate)
    assert (cand.state, cand.stage) == (ModelState.SERVING, Stage.PRODUCTION)
    assert w.reg.get(w.stable).state is ModelState.DEPRECATED
    assert any(line.startswith("PROMOTED") for line in emitted)
    # Each step lasted about step_duration_s on the fake clock; nothing waited for real.
    assert len(STEPS) * w.s.rollout.step_duration_s <= w.clock.t <= len(STEPS) * 7


def test_a_candidate_unseen_when_its_step_began_is_judged_over_the_step(world):
    # The router has served the stable version for a long time and lists a version only once
    # it answered a request: the candidate's rates must be over the step, not the router's life.
    w = world
    w.ep.hide_unobserved = True
    w.clock.t += 3600
    out, _ = w.rollout(w.candidate)
    assert out.outcome == "promoted", out.steps
    assert all(st["failed_checks"] == [] for st in out.steps)


def test_candidate_with_errors_is_rolled_back_at_the_first_step(world):
    w = world
    w.ep.error_rates[w.candidate] = 0.05  # 5% > max 1%
    out, emitted = w.rollout(w.candidate)

    assert (out.outcome, out.stable) == ("rolled_back", w.stable)
    assert len(out.steps) == 1
    step = out.steps[0]
    assert (step["action"], step["step_share"], step["next_share"]) == ("rollback", 0.01, 0.0)
    assert "error_rate" in step["failed_checks"]
    assert w.ep.split == TrafficSplit(stable=w.stable)
    assert w.ep.splits[-2:] == [
        TrafficSplit(w.stable, w.candidate, 0.01),
        TrafficSplit(stable=w.stable),
    ]
    assert w.ep.removed == [w.candidate]  # its replicas freed
    cand = w.reg.get(w.candidate)
    assert cand.state is ModelState.DEGRADED
    assert "error_rate" in cand.history[-1].reason
    assert w.reg.stage_version("production").id == w.stable
    assert w.reg.get(w.stable).state is ModelState.SERVING
    assert any(line.startswith("ROLLED BACK") for line in emitted)
    assert w.clock.t < w.s.rollout.step_duration_s  # no waiting for a step duration first


def test_step_without_enough_requests_times_out_and_rolls_back(tmp_path, no_lake):
    s = _settings(tmp_path, step_timeout_s=20.0, min_requests=50)
    reg = Registry(s, clock=lambda: NOW)
    stable, candidate = _validated(reg), _validated(reg)
    clock = FakeClock()
    ep = FakeEndpoint(clock, rate=10.0)  # 1% of 10 req/s: 0.1 req/s, never 50 in 20 s
    deploy_stable(stable, s, registry=reg, endpoint=ep)
    emitted: list[str] = []
    out = run_rollout(
        candidate,
        s,
        registry=reg,
        endpoint=ep,
        emit=emitted.append,
        clock=clock,
        wait=clock.wait,
        poll_s=1.0,
    )

    assert (out.outcome, out.stable) == ("rolled_back", stable)
    assert len(out.steps) == 1
    step = out.steps[0]
    assert step["action"] == "rollback"
    assert step["failed_checks"][-1] == "timeout"
    assert "evidence" in step["failed_checks"]
    assert any("step_timeout_s" in r and r.startswith("FAIL") for r in step["reasons"])
    assert 20.0 < clock.t <= 22.0  # rolled back at the first poll past the timeout
    assert ep.split == TrafficSplit(stable=stable)
    assert reg.get(candidate).state is ModelState.DEGRADED
    assert "timeout" in reg.get(candidate).history[-1].reason
    assert reg.stage_version("production").id == stable


def test_later_step_timeout_keeps_earlier_verdicts(tmp_path, no_lake):
    # Enough traffic to pass 1%, then orders dry up once the candidate takes 10%.
    s = _settings(tmp_path, step_timeout_s=15.0)
    reg = Registry(s, clock=lambda: NOW)
    stable, candidate = _validated(reg), _validated(reg)
    clock = FakeClock()
    ep = FakeEndpoint(clock)
    deploy_stable(stable, s, registry=reg, endpoint=ep)
    original = ep.set_traffic

    def set_traffic(split, settings=None):
        if split.candidate_share >= 0.10:
            ep.rate = 0.0
        return original(split, settings)

    ep.set_traffic = set_traffic  # type: ignore[method-assign]
    out = run_rollout(
        candidate, s, registry=reg, endpoint=ep, emit=lambda _: None, clock=clock, wait=clock.wait
    )
    assert out.outcome == "rolled_back"
    assert [st["action"] for st in out.steps] == ["advance", "rollback"]
    assert out.steps[1]["step_share"] == 0.10
    assert out.steps[1]["failed_checks"][-1] == "timeout"
    assert ep.split == TrafficSplit(stable=stable)


def test_quality_regression_from_live_quality_rolls_back(world, monkeypatch):
    w = world
    seen = []

    def bad_quality(st, cand, since, settings=None):
        seen.append((st, cand))
        return QualityWindow(candidate_mae=9.0, stable_mae=6.0, n_labelled=500)

    monkeypatch.setattr(relay.rollout.driver, "live_quality", bad_quality)
    w.s.rollout.quality_every_s = 1.0
    out, _ = w.rollout(w.candidate)
    assert out.outcome == "rolled_back"
    assert len(out.steps) == 1
    assert "quality" in out.steps[0]["failed_checks"]
    assert "error_rate" not in out.steps[0]["failed_checks"]
    assert seen[0] == (w.stable, w.candidate)
    assert w.reg.get(w.candidate).state is ModelState.DEGRADED


# free_idle_models ------------------------------------------------------------------------------


def test_training_frees_versions_that_take_no_traffic():
    # v1 stayed deployed after v2's promotion (a quick rollback that day); training frees it.
    ep = FakeEndpoint(FakeClock(), "v2")
    ep.deployed = ["v1", "v2"]
    assert free_idle_models(ep, emit=lambda _: None) == ["v1"]
    assert ep.removed == ["v1"]
    assert ep.deployed_models() == ["v2"]


def test_a_canary_and_its_stable_are_never_freed():
    ep = FakeEndpoint(FakeClock(), "v1")
    ep.deployed = ["v0", "v2"]
    ep.split = TrafficSplit("v1", "v2", 0.1)
    assert free_idle_models(ep, emit=lambda _: None) == ["v0"]
    assert set(ep.deployed_models()) == {"v1", "v2"}


def test_nothing_deployed_frees_nothing_and_never_asks_for_the_split():
    ep = FakeEndpoint(FakeClock())

    def no_split(settings: Settings | None = None) -> TrafficSplit | None:
        raise AssertionError("would start Serve on a cluster that only trains")

    ep.current_traffic = no_split  # type: ignore[method-assign]
    assert free_idle_models(ep, emit=lambda _: None) == []
