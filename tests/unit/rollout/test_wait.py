"""The training DAG's wait for a rollout's end: the operator and its trigger, on a real store."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from airflow.sdk.exceptions import TaskDeferred

from relay.airflow.operators import RolloutWaitOperator
from relay.airflow.triggers import RolloutTrigger
from relay.rollout.controller import abort_rollout
from relay.rollout.record import RolloutState
from relay.settings import reset_settings
from tests.unit.rollout.test_controller import World


@pytest.fixture
def home(world: World, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """The world's store is the one the operator and the trigger read (``RELAY_HOME``)."""
    monkeypatch.setenv("RELAY_HOME", str(world.s.home))
    reset_settings()
    yield world
    reset_settings()


def _operator(tmp_path: Path, begun: dict[str, object]) -> RolloutWaitOperator:
    path = tmp_path / "begun.json"
    path.write_text(json.dumps(begun))
    return RolloutWaitOperator(
        task_id="rollout_result", begun=str(path), outcome=str(tmp_path / "rollout.json")
    )


def _begun(w: World, rollout_id: str | None, outcome: str = "started") -> dict[str, object]:
    return {
        "version": w.candidate,
        "outcome": outcome,
        "stable": w.stable,
        "rollout_id": rollout_id,
        "steps": [],
    }


def test_a_first_deployment_has_nothing_to_wait_for(home: World, tmp_path: Path) -> None:
    op = _operator(tmp_path, _begun(home, None, "first_deploy"))
    assert op.execute({})["outcome"] == "first_deploy"
    assert json.loads((tmp_path / "rollout.json").read_text())["outcome"] == "first_deploy"


def test_a_live_rollout_is_waited_for_in_the_triggerer(home: World, tmp_path: Path) -> None:
    w = home
    w.start()
    live = w.record()
    with pytest.raises(TaskDeferred) as deferred:
        _operator(tmp_path, _begun(w, live.id)).execute({})
    trigger = deferred.value.trigger
    assert isinstance(trigger, RolloutTrigger) and trigger.rollout_id == live.id
    longest = sum(s.max_duration_s for s in live.plan.steps)
    assert deferred.value.timeout is not None
    assert deferred.value.timeout.total_seconds() >= longest  # the plan's whole life
    assert not (tmp_path / "rollout.json").exists()


def test_the_trigger_fires_once_the_rollout_ends_with_every_verdict(home: World) -> None:
    w = home
    w.start()
    live = w.record()
    trigger = RolloutTrigger(live.id, poll_interval_s=0.01)

    async def scenario() -> dict[str, object]:
        waiting = asyncio.ensure_future(trigger.run().__anext__())
        done, _ = await asyncio.wait({waiting}, timeout=0.3)
        assert not done, "fired while the rollout was live"
        assert w.run_out() is RolloutState.PROMOTED  # the controller's ticks meanwhile
        event = await asyncio.wait_for(waiting, timeout=30)
        return dict(event.payload)

    payload = asyncio.run(scenario())
    assert payload["outcome"] == "promoted" and payload["stable"] == w.candidate
    assert [s["action"] for s in payload["steps"]] == ["advance", "promote"]  # type: ignore[union-attr]
    assert any("PASS: error rate" in r for s in payload["steps"] for r in s["reasons"])  # type: ignore[union-attr]


def test_an_aborted_rollout_resumes_the_task_with_its_outcome(home: World, tmp_path: Path) -> None:
    w = home
    w.start()
    rollout_id = w.record().id
    abort_rollout(
        "cli:oncall",
        "market event",
        w.s,
        registry=w.reg,
        store=w.store,
        endpoint=w.ep,
        lease=w.lease,
        now=w.now,
    )
    outcome = _operator(tmp_path, _begun(w, rollout_id)).execute({})
    assert outcome["outcome"] == "aborted" and outcome["stable"] == w.stable
    assert outcome["steps"][-1]["reasons"] == ["market event"]
