"""What a person reads of a rollout: ``relay rollout status|history`` and ``relay models show``."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from relay.cli import app
from relay.rollout.record import RolloutState
from relay.settings import reset_settings
from tests.unit.rollout.test_controller import World


@pytest.fixture
def ended(world: World, monkeypatch: pytest.MonkeyPatch) -> World:
    """A rollout walked to promotion in the world's registry, which the CLI then reads."""
    world.start()
    assert world.run_out() is RolloutState.PROMOTED
    monkeypatch.setenv("RELAY_HOME", str(world.s.home))
    reset_settings()
    yield world
    reset_settings()


def test_rollout_status_tells_every_step_and_its_reasons(ended: World) -> None:
    res = CliRunner().invoke(app, ["rollout", "status"])
    assert res.exit_code == 0, res.output
    record = ended.record()
    assert f"{record.id}: {ended.candidate} against {ended.stable}, promoted" in res.output
    assert "step 0: 10% of orders" in res.output and "step 1: 100% of orders" in res.output
    assert "advance at" in res.output and "promote at" in res.output
    assert "PASS: error rate" in res.output


def test_models_show_lists_the_rollouts_a_version_took_part_in(ended: World) -> None:
    res = CliRunner().invoke(app, ["models", "show", ended.candidate])
    assert res.exit_code == 0, res.output
    shown = json.loads(res.output)
    (rollout,) = shown["rollouts"]
    assert rollout["role"] == "candidate" and rollout["against"] == ended.stable
    assert rollout["state"] == "promoted" and rollout["serving_after"] == ended.candidate
    assert [v["action"] for v in rollout["verdicts"] if v["action"] != "hold"] == [
        "advance",
        "promote",
    ]
    stable = json.loads(CliRunner().invoke(app, ["models", "show", ended.stable]).output)
    assert stable["rollouts"][0]["role"] == "stable"
