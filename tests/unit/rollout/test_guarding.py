"""The production guard in the controller's tick, against the controller tests' world.

After a promotion every tick judges production (the fake Serve's counters) against its recent
baseline; a P99 breach sustained for ``guard_sustain_s`` (180 s) restores the previous version
under the traffic lease. Time moves only when a test says so (30 s a tick).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest
from typer.testing import CliRunner

from relay.cli import app
from relay.rollout import guarding
from relay.rollout.guard import GuardAction
from relay.rollout.guarding import GuardDoc, Guards
from relay.rollout.manual import restore
from relay.rollout.record import RolloutState
from relay.serve.traffic import TrafficSplit
from relay.serve.windows import LATENCY_BUCKETS_MS
from relay.settings import reset_settings
from tests.unit.rollout.fakes import validated
from tests.unit.rollout.test_controller import TICK, World

SLOW = LATENCY_BUCKETS_MS.index(300)  # every request takes 200-300 ms: P99 far over 100 ms
SUSTAIN = 180.0  # the default guard_sustain_s


def _promoted(w: World) -> World:
    """The world's candidate promoted, and the guard started by the tick after."""
    w.start()
    assert w.run_out() is RolloutState.PROMOTED
    for _ in range(3):  # healthy production: a few ticks of evidence and a baseline
        w.wait()
        w.tick()
    doc = _guard(w)
    assert doc.watching and doc.state.version == w.candidate and doc.state.previous == w.stable
    return w


def _guard(w: World) -> GuardDoc:
    doc, _ = Guards(w.store).read()
    assert doc is not None
    return doc


def _ticks(w: World, n: int) -> None:
    for _ in range(n):
        w.wait()
        w.tick()


def _slow_until_restored(w: World, ticks: int = 12) -> float:
    """Make production slow and tick until Serve answers with stable; the seconds it took."""
    w.ep.latency_buckets[w.candidate] = SLOW
    began = w.now
    for _ in range(ticks):
        w.wait()
        w.tick()
        if w.ep.split == TrafficSplit(stable=w.stable):
            return (w.now - began).total_seconds()
    raise AssertionError(f"never restored: {w.lines[-8:]}")


def test_a_p99_breach_sustained_for_three_minutes_restores_the_previous_version(world):
    w = _promoted(world)
    assert w.reg.stage_version("production").id == w.candidate
    assert _guard(w).state.baseline is not None  # the last full step's window at first
    took = _slow_until_restored(w)
    # The first slow tick starts the run; the restore comes at the first tick ≥ 180 s into it.
    assert SUSTAIN < took <= SUSTAIN + 2 * TICK.total_seconds()
    assert w.reg.stage_version("production").id == w.stable
    reasons = [h.reason for h in w.reg.get(w.stable).history]
    why = next(r for r in reversed(reasons) if r.startswith(f"guard:{w.candidate}: "))
    assert "P99 latency" in why and "p99_latency breaching since" in why
    doc = _guard(w)
    assert doc.state.ended is GuardAction.RESTORE and doc.restored_at == w.now
    assert doc.state.breaches.keys() == {"p99_latency"}
    assert w.lease.holder() is None  # the restore released the lease it took
    restoring = f"guard of {w.candidate} (previous {w.stable}): RESTORE"
    assert any(line.startswith(restoring) for line in w.lines)
    # Nothing undoes it: later ticks leave the restored version alone, the rollout as it was.
    splits = list(w.ep.splits)
    _ticks(w, 4)
    assert w.ep.splits == splits and w.record().state is RolloutState.PROMOTED


def test_a_breach_shorter_than_the_sustain_restores_nothing(world):
    w = _promoted(world)
    w.ep.latency_buckets[w.candidate] = SLOW
    _ticks(w, 4)  # 120 s slow
    assert _guard(w).state.breaches.keys() == {"p99_latency"}
    w.ep.latency_buckets[w.candidate] = LATENCY_BUCKETS_MS.index(20)  # fast again
    _ticks(w, 8)
    doc = _guard(w)
    assert doc.watching and doc.state.breaches == {}
    assert w.ep.split == TrafficSplit(stable=w.candidate)
    assert w.reg.stage_version("production").id == w.candidate


def test_once_baked_the_guard_is_done_and_a_later_breach_restores_nothing(world):
    w = world
    rollout = w.s.rollout.model_copy(update={"guard_bake_s": 300.0})
    w.s = w.s.model_copy(update={"rollout": rollout})
    w = _promoted(w)
    _ticks(w, 10)
    doc = _guard(w)
    assert doc.state.ended is GuardAction.DONE and not doc.restore_pending
    assert doc.state.reasons[-1].startswith("DONE: baked until")
    w.ep.latency_buckets[w.candidate] = SLOW
    _ticks(w, 10)
    assert _guard(w) == doc  # done: nothing measured, nothing written
    assert w.ep.split == TrafficSplit(stable=w.candidate)


class Killed(Exception):
    """The controller's process died here."""


@pytest.mark.parametrize("where", ["before the restore", "within the restore"])
def test_a_controller_killed_after_deciding_restores_on_its_next_tick(world, monkeypatch, where):
    w = _promoted(world)
    if where == "before the restore":

        def killed(*args: object, **kwargs: object) -> None:
            raise Killed

        monkeypatch.setattr(guarding, "restore", killed)
    else:
        # The registry is told first, then Serve, whose set_traffic fails.
        monkeypatch.setattr(w.ep, "set_traffic", _fails_once(w.ep.set_traffic))
    w.ep.latency_buckets[w.candidate] = SLOW
    with pytest.raises((Killed, TimeoutError)):
        for _ in range(12):
            w.wait()
            w.tick()
    doc = _guard(w)
    assert doc.restore_pending  # the decision was recorded before acting on it
    assert w.ep.split == TrafficSplit(stable=w.candidate)  # Serve not switched yet
    monkeypatch.undo()
    w.wait()
    result = w.tick()
    assert result is not None and result.action is None  # the rollout's tick: nothing to do
    assert w.ep.split == TrafficSplit(stable=w.stable)
    assert w.reg.stage_version("production").id == w.stable
    assert _guard(w).restored_at == w.now and not _guard(w).restore_pending
    assert w.lease.holder() is None


def test_a_controller_killed_after_restoring_only_records_it(world, monkeypatch):
    w = _promoted(world)
    put = Guards.put

    def killed_when_recording(self: Guards, doc: GuardDoc, expected_tag: str | None) -> str:
        if doc.restored_at is not None:
            raise Killed
        return put(self, doc, expected_tag)

    monkeypatch.setattr(Guards, "put", killed_when_recording)
    with pytest.raises(Killed):
        _slow_until_restored(w)
    assert w.ep.split == TrafficSplit(stable=w.stable) and _guard(w).restore_pending
    monkeypatch.undo()
    splits, history = list(w.ep.splits), w.reg.get(w.stable).history

    def no_second_restore(*args: object, **kwargs: object) -> None:
        raise AssertionError("restored twice")

    monkeypatch.setattr(guarding, "restore", no_second_restore)
    w.wait()
    w.tick()
    assert _guard(w).restored_at == w.now
    assert w.ep.splits == splits and w.reg.get(w.stable).history == history


def _fails_once(set_traffic: Callable[..., TrafficSplit]) -> Callable[..., TrafficSplit]:
    failed: list[TrafficSplit] = []

    def flaky(split: TrafficSplit, settings: object = None) -> TrafficSplit:
        if not failed:
            failed.append(split)
            raise TimeoutError("router did not apply traffic generation 9 in 30 s")
        return set_traffic(split, settings)

    return flaky


def test_a_manual_restore_meanwhile_ends_the_guard_and_is_not_undone(world):
    w = _promoted(world)
    w.ep.latency_buckets[w.candidate] = SLOW
    _ticks(w, 2)  # breaching
    other = validated(w.reg)
    restore(
        other,
        w.s,
        by="cli:oncall",
        reason="on-call: known good build",
        registry=w.reg,
        store=w.store,
        endpoint=w.ep,
        lease=w.lease,
        now=w.now,
    )
    _ticks(w, 10)  # well past the sustain
    assert w.ep.split == TrafficSplit(stable=other)
    assert w.reg.stage_version("production").id == other
    doc = _guard(w)
    assert doc.stopped is not None and doc.state.ended is None and doc.restored_at is None
    assert f"production is {other}" in doc.stopped and "ends without acting" in doc.stopped
    assert not any(r.startswith("guard:") for r in (h.reason for h in w.reg.get(w.stable).history))


def test_the_guard_keeps_watching_after_a_later_rollout_that_did_not_promote(world):
    w = _promoted(world)
    doc = _guard(w)
    w.candidate, w.stable = validated(w.reg), w.candidate
    w.ep.error_rates[w.candidate] = 0.2
    w.start()
    assert w.run_out() is RolloutState.ROLLED_BACK
    _ticks(w, 2)
    later = _guard(w)
    assert later.rollout_id == doc.rollout_id and later.watching
    assert later.state.checked_at == w.now


def test_the_guard_document_stays_small(world):
    w = _promoted(world)
    _ticks(w, 40)  # 20 minutes of ticks
    doc = _guard(w)
    assert len(doc.samples) <= 2 * SUSTAIN / TICK.total_seconds() + 2
    assert len(json.dumps(doc.model_dump(mode="json"))) < 20_000


@pytest.fixture
def cli_home(world: World, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.setenv("RELAY_HOME", str(world.s.home))
    reset_settings()
    yield world
    reset_settings()


def test_rollout_status_tells_the_guard_watching_then_why_it_restored(cli_home):
    w = _promoted(cli_home)
    shown = CliRunner().invoke(app, ["rollout", "status"])
    assert shown.exit_code == 0, shown.output
    assert f"guard of {w.candidate} (previous {w.stable}): watching until" in shown.output
    _slow_until_restored(w)
    shown = CliRunner().invoke(app, ["rollout", "status"])
    assert f"guard of {w.candidate} (previous {w.stable}): restored {w.stable} at" in shown.output
    assert "because:" in shown.output and "FAIL: P99 latency" in shown.output
