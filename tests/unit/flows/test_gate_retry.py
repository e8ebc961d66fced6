"""A retried or cleared gate task (``register_and_gate`` again for the same run) registers one
version and judges it once; a registry on local disk under this test's RELAY_HOME."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from relay.flows.eta_training import register_and_gate
from relay.model.preprocess import Preprocessor
from relay.model.registration import register_trained
from relay.model.training import build_model, save_run
from relay.registry import ModelState, Registry
from relay.settings import Settings, get_settings, reset_settings
from tests.unit.model.test_behaviour import small_world


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """``register_and_gate`` reads the process's settings: point them at this test's folder,
    with a gate no model passes (an MAE bar of 0.01 min), so each verdict is known."""
    monkeypatch.setenv("RELAY_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RELAY_GATE__MAX_MAE_MINUTES", "0.01")
    reset_settings()
    yield get_settings()
    reset_settings()


def untrained_run(folder: Path, seed: int = 0) -> Path:
    """A run folder as the train job leaves it: a model (untrained: the gate rejects any) and
    its holdout."""
    torch.manual_seed(seed)
    train = small_world(500, seed=1)
    prep = Preprocessor.fit(train)
    model = build_model(prep, {"hidden_layers": 1, "hidden_units": 8})
    save_run(folder, model, prep, {"hidden_layers": 1}, {"val_mae": 9.0}, len(train))
    holdout = small_world(300, seed=2)
    holdout["hour"] = holdout["order_hour"]
    (folder / "data").mkdir()
    holdout.to_parquet(folder / "data" / "holdout.parquet")
    return folder


def test_a_retried_gate_registers_one_version_and_returns_its_recorded_verdict(home, tmp_path):
    run = untrained_run(tmp_path / "runs" / "manual__1" / "model")
    first = register_and_gate(str(run), "train.parquet", [], force=True)
    again = register_and_gate(str(run), "train.parquet", [], force=True)
    registry = Registry(home)
    (version,) = registry.list_versions()
    assert first["version"] == again["version"] == version.id
    # Rejected by the gate's MAE bar; forced, it still deploys.
    assert (first["passed"], first["deploy"], first["forced"]) == (False, True, True)
    assert again == {**first, "summary": again["summary"]}
    assert again["summary"].startswith("gate REJECTED but deployment forced")
    evaluating = [h for h in version.history if h.to_state is ModelState.EVALUATING]
    assert len(evaluating) == 1  # judged once, not on the retry
    assert version.lineage.training_run == str(run.resolve())


def test_a_retry_after_a_crash_mid_gate_evaluates_the_same_version(home, tmp_path):
    run = untrained_run(tmp_path / "runs" / "manual__2" / "model")
    registry = Registry(home)
    left = register_trained(
        run, training_set_uri="train.parquet", run_id=str(run.resolve()), registry=registry
    )
    registry.transition(left.id, ModelState.EVALUATING, "the gate task died here")
    outcome = register_and_gate(str(run), "train.parquet", [])
    assert outcome["version"] == left.id
    assert (outcome["passed"], outcome["deploy"]) == (False, False)
    assert registry.get(left.id).state is ModelState.FAILED
    assert len(registry.list_versions()) == 1


def test_new_weights_in_the_same_run_folder_are_a_new_version(home, tmp_path):
    run = untrained_run(tmp_path / "runs" / "manual__3" / "model")
    first = register_and_gate(str(run), "train.parquet", [])
    state = torch.load(run / "model.pt", weights_only=True)
    changed = {k: v + 0.5 if v.is_floating_point() else v for k, v in state.items()}
    torch.save(changed, run / "model.pt")  # the run trained again
    second = register_and_gate(str(run), "train.parquet", [])
    assert first["version"] != second["version"]
    assert len(Registry(home).list_versions()) == 2
