"""Experiments run by the controller's ticks against the controller tests' world.

The world (``tests/unit/rollout/test_controller.py``) has a registry whose production version
serves all orders through a fake Serve (the control) and a Validated version (the variant);
labelled quality is scripted per version, and time moves only when a test says so.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import pytest
from typer.testing import CliRunner

from relay.cli import app
from relay.registry import ModelState, Stage
from relay.rollout.experiment import ExperimentSpec
from relay.rollout.experiment_record import (
    Experiment,
    ExperimentActive,
    ExperimentError,
    ExperimentState,
    ExperimentStore,
    live_experiment,
)
from relay.rollout.experiment_run import experiment_once, start_experiment, stop_experiment
from relay.rollout.manual import restore
from relay.rollout.store import RolloutActive
from relay.serve.log_read import VersionQuality
from relay.serve.traffic import OrderTargeting, TrafficSplit
from relay.settings import Settings, reset_settings
from tests.unit.rollout.fakes import validated
from tests.unit.rollout.test_controller import T0, World

START = T0 + dt.timedelta(minutes=1)
END = T0 + dt.timedelta(minutes=10)


def _spec(w: World, **changes: object) -> ExperimentSpec:
    doc: dict[str, object] = {
        "id": "eta-mlp-vs-gbm",
        "start": START,
        "end": END,
        "control": {"version": w.stable},
        "variants": [{"name": "mlp", "version": w.candidate, "share": 0.5}],
        "primary": [{"metric": "mae", "max_regression": 0.02}],
        "secondary": [
            {"metric": "p99_ms", "max_value": 50},
            {"metric": "error_rate", "max_value": 0.01},
        ],
        "min_requests": 50,
        "min_labelled": 100,
    }
    return ExperimentSpec.model_validate({**doc, **changes})


@dataclass
class Lab:
    """The world plus an experiment store and labelled quality scripted per version."""

    w: World
    store: ExperimentStore
    mae: dict[str, float] = field(default_factory=dict)
    labelled: int = 2000

    def quality(self, settings: Settings, since: dt.datetime) -> dict[str, VersionQuality]:
        n = self.labelled
        return {v: VersionQuality(v, n, m, 0.0, (m / 1.4) / n**0.5) for v, m in self.mae.items()}

    def start(self, spec: ExperimentSpec | None = None) -> Experiment:
        w = self.w
        return start_experiment(
            spec or _spec(w),
            w.s,
            registry=w.reg,
            store=self.store,
            rollouts=w.store,
            endpoint=w.ep,
            lease=w.lease,
            by="cli:ana@laptop:1",
            now=w.now,
        )

    def tick(self) -> Experiment | None:
        w = self.w
        return experiment_once(
            w.s,
            registry=w.reg,
            store=self.store,
            endpoint=w.ep,
            lease=w.lease,
            now=w.now,
            quality=self.quality,
            emit=w.lines.append,
        )

    def until(self, when: dt.datetime) -> None:
        """Tick every 30 s of served traffic until ``when`` (that tick included)."""
        while True:
            self.tick()
            if self.w.now >= when:
                return
            self.w.wait()

    def record(self) -> Experiment:
        latest = self.store.latest()
        assert latest is not None
        return latest.experiment


@pytest.fixture
def lab(world: World) -> Lab:
    return Lab(world, ExperimentStore(world.s, store=world.store.store))


def _alone(version: str) -> TrafficSplit:
    return TrafficSplit(stable=version)


def _registry_untouched(w: World) -> None:
    assert w.reg.stage_version("production").id == w.stable
    variant = w.reg.get(w.candidate)
    assert variant.state is ModelState.VALIDATED and variant.stage is not Stage.CANARY


def test_a_failing_primary_criterion_ends_it_at_once_and_the_control_keeps_all_traffic(lab):
    w = lab.w
    lab.mae = {w.stable: 6.0, w.candidate: 7.2}  # the variant's MAE 20% worse, labels landed
    lab.start()
    lab.until(START)
    assert lab.record().state is ExperimentState.RUNNING
    assert w.ep.split == TrafficSplit(w.stable, w.candidate, 0.5)
    w.wait()
    lab.tick()
    ended = lab.record()
    assert ended.state is ExperimentState.ENDED and ended.winner == "control"
    assert ended.ended_at == w.now < END  # at once, not at the end
    assert w.ep.split == _alone(w.stable)
    failed = [line for line in ended.verdict if line.startswith("FAIL")]
    assert any("mae" in line and "7.20" in line and "6.00" in line for line in failed)
    assert failed[-1].endswith(f"{w.stable} keeps all traffic")
    assert "CONTROL WINS" in ended.headline
    assert w.lease.holder() is None
    _registry_untouched(w)
    # Later ticks leave it ended with the control alone.
    splits = list(w.ep.splits)
    w.wait()
    assert lab.tick() == ended
    assert w.ep.splits == splits


def test_a_passing_variant_wins_at_the_end_and_the_control_takes_all_traffic_back(lab):
    w = lab.w
    lab.mae = {w.stable: 6.0, w.candidate: 5.9}
    lab.start()
    lab.until(END - dt.timedelta(seconds=30))
    running = lab.record()
    assert running.state is ExperimentState.RUNNING and running.winner is None
    assert any("runs until" in line for line in running.verdict)
    assert w.ep.split == TrafficSplit(w.stable, w.candidate, 0.5)
    w.wait()
    lab.tick()
    ended = lab.record()
    assert (ended.state, ended.winner) == (ExperimentState.ENDED, "variant")
    assert ended.verdict[-1] == "PASS: every primary criterion met: variant mlp wins"
    assert w.ep.split == _alone(w.stable)  # it reports a winner, it never promotes
    _registry_untouched(w)
    assert live_experiment(w.s, store=w.store.store) is None
    assert lab.store.get(ended.id).experiment == ended  # archived as it ended


def test_targeting_is_compiled_into_the_split_serve_gets(lab):
    w = lab.w
    lab.mae = {w.stable: 6.0, w.candidate: 6.0}
    lab.start(_spec(w, targeting={"zones": ["Z001", "Z002"], "hours": [11, 12]}))
    lab.until(START)
    targeting = OrderTargeting(zones=("Z001", "Z002"), hours=(11, 12))
    assert w.ep.split == TrafficSplit(w.stable, w.candidate, 0.5, targeting)
    answered = {w.ep.split.version_for(f"o{i}", "Z001", 11) for i in range(200)}
    assert answered == {w.stable, w.candidate}
    assert {w.ep.split.version_for(f"o{i}", "Z003", 11) for i in range(200)} == {w.stable}
    assert {w.ep.split.version_for(f"o{i}", "Z001", 9) for i in range(200)} == {w.stable}
    assert w.candidate in w.ep.deployed


def test_a_stop_is_recorded_and_puts_all_traffic_back_on_the_control(lab):
    w = lab.w
    lab.mae = {w.stable: 6.0, w.candidate: 6.0}
    lab.start()
    lab.until(START + dt.timedelta(minutes=1))
    assert w.ep.split == TrafficSplit(w.stable, w.candidate, 0.5)
    stopped = stop_experiment(
        "cli:bo@laptop:2",
        "pager: late ETAs in Z001",
        w.s,
        store=lab.store,
        endpoint=w.ep,
        lease=w.lease,
        now=w.now,
    )
    assert stopped.state is ExperimentState.STOPPED
    assert (stopped.stopped_by, stopped.stop_reason) == (
        "cli:bo@laptop:2",
        "pager: late ETAs in Z001",
    )
    assert lab.record() == stopped
    assert w.ep.split == _alone(w.stable)
    assert w.lease.holder() is None
    for _ in range(3):  # no tick undoes it
        w.wait()
        lab.tick()
    assert w.ep.split == _alone(w.stable) and lab.record() == stopped
    _registry_untouched(w)


def test_a_tick_before_the_start_does_nothing(lab):
    w = lab.w
    lab.start()
    before = lab.store.latest()
    splits = list(w.ep.splits)
    assert lab.tick() == before.experiment
    assert lab.store.latest() == before  # not even rewritten
    assert w.ep.splits == splits and w.ep.split == _alone(w.stable)
    assert w.lease.holder() is None
    assert before.experiment.state is ExperimentState.SCHEDULED


def test_starting_is_refused_while_a_rollout_or_another_experiment_is_live(lab):
    w = lab.w
    w.start()  # a rollout of the variant
    with pytest.raises(RolloutActive, match=r"rollout .* owns the traffic"):
        lab.start()
    assert lab.store.latest() is None
    assert w.lease.holder() is None


def test_starting_is_refused_for_a_second_experiment_and_a_version_that_may_not_serve(lab):
    w = lab.w
    lab.start()
    assert live_experiment(w.s, store=w.store.store) == lab.record()
    with pytest.raises(ExperimentActive, match=r"eta-mlp-vs-gbm .* is scheduled"):
        lab.start(_spec(w, id="another"))
    archived = validated(w.reg)
    w.reg.transition(archived, "archived", "superseded")
    stop_experiment("cli:test", "make room", w.s, store=lab.store, endpoint=w.ep, lease=w.lease)
    variant = [{"name": "old", "version": archived, "share": 0.5}]
    with pytest.raises(ExperimentError, match="is archived, not deprecated, serving, validated"):
        lab.start(_spec(w, id="bad-variant", variants=variant))
    with pytest.raises(ExperimentError, match="eta-mlp-vs-gbm was started already"):
        lab.start()


def test_a_crash_between_the_record_and_the_traffic_is_healed_by_the_next_tick(lab):
    w = lab.w
    lab.mae = {w.stable: 6.0, w.candidate: 6.0}
    lab.start()
    lab.until(START - dt.timedelta(seconds=30))
    w.wait()
    w.ep.fail_next_set = True  # the split's set_traffic fails once
    with pytest.raises(TimeoutError):
        lab.tick()
    assert lab.record().state is ExperimentState.RUNNING  # the record went on…
    assert w.ep.split == _alone(w.stable)  # …Serve did not
    w.wait()
    lab.tick()
    assert w.ep.split == TrafficSplit(w.stable, w.candidate, 0.5)
    lab.until(END - dt.timedelta(seconds=30))
    w.wait()
    w.ep.fail_next_set = True  # and at the end: back to the control fails once
    with pytest.raises(TimeoutError):
        lab.tick()
    assert lab.record().state is ExperimentState.ENDED
    assert w.ep.split == TrafficSplit(w.stable, w.candidate, 0.5)
    w.wait()
    lab.tick()
    assert w.ep.split == _alone(w.stable)
    assert any(line.startswith(f"traffic: {w.stable} alone") for line in w.lines)


def test_a_restore_stops_it_recorded_and_no_tick_moves_traffic_back(lab):
    w = lab.w
    lab.mae = {w.stable: 6.0, w.candidate: 6.0}
    lab.start()
    lab.until(START)
    other = validated(w.reg)
    restore(
        other,
        w.s,
        by="airflow:eta_rollback:manual_1",
        registry=w.reg,
        endpoint=w.ep,
        store=w.store,
        lease=w.lease,
        now=w.now,
    )
    for _ in range(3):
        lab.tick()
    stopped = lab.record()
    assert stopped.state is ExperimentState.STOPPED and stopped.winner is None
    assert stopped.stopped_by == "airflow:eta_rollback:manual_1"
    assert f"restore of {other}" in str(stopped.stop_reason)
    assert w.ep.split == _alone(other)


def test_experiment_status_tells_the_verdict(lab, monkeypatch: pytest.MonkeyPatch):
    w = lab.w
    lab.mae = {w.stable: 6.0, w.candidate: 7.2}
    lab.start()
    lab.until(START + dt.timedelta(seconds=30))
    monkeypatch.setenv("RELAY_HOME", str(w.s.home))
    reset_settings()
    try:
        res = CliRunner().invoke(app, ["experiment", "status"])
    finally:
        reset_settings()
    assert res.exit_code == 0, res.output
    assert (
        f"eta-mlp-vs-gbm: variant mlp ({w.candidate}) against control {w.stable}, ended"
        in res.output
    )
    assert "CONTROL WINS" in res.output and f"traffic: {w.stable} alone" in res.output
    assert "primary mae ≤ +2.0% vs control" in res.output
