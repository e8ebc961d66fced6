"""Champion/challenger evaluation on a real registry, and the model commands as a user runs them.

Three tiny models are trained in-process with plain PyTorch (no Ray) on a synthetic training set
built the way the feature store builds one (hourly feature snapshots joined as of each order's
creation), and saved in the layout ``run_training`` writes:

* a weak first model (one epoch, small net): passes the absolute bars, becomes production;
* a broken challenger (never trained): rejected overall and on slices, ends Failed;
* a well-trained challenger: beats the champion everywhere, ends Validated.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from relay.data.generate import generate_orders
from relay.evaluate.challenger import VersionEvaluation, evaluate_version
from relay.features.frames import feature_tables, point_in_time
from relay.features.store import entity_frame
from relay.model.bundle import ModelBundle
from relay.model.preprocess import Preprocessor
from relay.model.registration import UNKNOWN_COMMIT, config_hash, register_trained
from relay.model.training import (
    build_model,
    model_inputs,
    predict,
    split_by_time,
    tensor_batches,
)
from relay.model.training import train_epoch as run_epoch
from relay.registry import IllegalTransition, ModelState, Registry, Stage
from relay.settings import GateSettings, Settings

PROJECT_ROOT = Path(__file__).resolve().parents[3]
DAYS = [dt.date(2026, 11, 18) + dt.timedelta(days=i) for i in range(3)]
ORDERS_PER_DAY = 4000
# Looser absolute bars than production's: the first model is trained for one epoch on a few
# thousand rows. The champion comparisons (overall and per slice) keep their defaults.
GATE = GateSettings(max_mae_minutes=10.0, max_p90_abs_error_minutes=20.0, min_within_5_min=0.3)
GATE_ENV = {
    "RELAY_GATE__MAX_MAE_MINUTES": "10",
    "RELAY_GATE__MAX_P90_ABS_ERROR_MINUTES": "20",
    "RELAY_GATE__MIN_WITHIN_5_MIN": "0.3",
}
PARTITIONS = ["2026-11-19", "2026-11-20"]
TRAINING_SET = "file:///lake/training/eta_20261119_20261120/date=2026-11-20/part-0.parquet"


def _training_frame() -> pd.DataFrame:
    """Orders of the last two days with point-in-time features (the first day warms up the
    24-hour windows), in the columns of a Feast training set."""
    orders = pd.concat([generate_orders(d, ORDERS_PER_DAY) for d in DAYS], ignore_index=True)
    start = dt.datetime.combine(DAYS[0], dt.time(), tzinfo=dt.UTC)
    end = dt.datetime.combine(DAYS[-1] + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    tables = feature_tables(orders, start, end)
    first = pd.Timestamp(DAYS[1], tz="UTC")
    frame = point_in_time(entity_frame(orders[orders["created_at"] >= first]), tables)
    # The on-demand view's outputs.
    frame["order_distance_km"] = frame["distance_km"]
    frame["order_hour"] = frame["hour"]
    frame["order_weekday"] = frame["weekday"]
    return frame


def _train(
    out: Path,
    split,
    prep: Preprocessor,
    *,
    epochs: int,
    learning_rate: float,
    hidden_units: int,
) -> Path:
    """Train on ``split.train`` and save the folder ``run_training`` would write."""
    hp = {
        "learning_rate": learning_rate,
        "batch_size": 256,
        "hidden_layers": 2,
        "hidden_units": hidden_units,
        "dropout": 0.0,
        "activation": "relu",
    }
    torch.manual_seed(0)
    model = build_model(prep, hp)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    arrays = model_inputs(prep, split.train)
    loss = float("nan")
    for epoch in range(epochs):
        batches = tensor_batches(arrays, hp["batch_size"], shuffle=True, seed=epoch)
        loss, _ = run_epoch(model, batches, optimizer, prep.label_std)
    (out / "data").mkdir(parents=True)
    torch.save(model.state_dict(), out / "model.pt")
    (out / "net_config.json").write_text(json.dumps(model.cfg.to_dict(), indent=2))
    (out / "preprocessor.json").write_text(prep.to_json())
    val_mae = np.abs(predict(model, prep, split.valid) - split.valid["delivery_minutes"]).mean()
    metrics = {
        "epoch": epochs - 1,
        "train_loss": loss,  # NaN for the untrained model: must not reach the registry
        "val_mae": float(val_mae),
        "best_val_loss": float("inf"),
        "early_stopped": False,
    }
    (out / "metrics.json").write_text(
        json.dumps({"metrics": metrics, "hyperparameters": hp, "train_rows": len(split.train)})
    )
    for part in ("train", "valid", "holdout"):
        getattr(split, part).to_parquet(out / "data" / f"{part}.parquet", index=False)
    return out


@dataclass
class Runs:
    champion: Path
    broken: Path
    better: Path

    @property
    def holdout(self) -> Path:
        # Every run saved the same split: both models of a comparison see the same rows.
        return self.champion / "data" / "holdout.parquet"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Iterator[Runs]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: more threads only add contention
    try:
        root = tmp_path_factory.mktemp("runs")
        split = split_by_time(_training_frame(), holdout_share=0.25)
        prep = Preprocessor.fit(split.train)
        yield Runs(
            champion=_train(
                root / "champion", split, prep, epochs=1, learning_rate=1e-3, hidden_units=32
            ),
            broken=_train(root / "broken", split, prep, epochs=0, learning_rate=0, hidden_units=64),
            better=_train(
                root / "better", split, prep, epochs=10, learning_rate=3e-3, hidden_units=64
            ),
        )
    finally:
        torch.set_num_threads(threads)


@dataclass
class Lifecycle:
    home: Path
    settings: Settings
    registry: Registry
    runs: Runs
    first: VersionEvaluation
    broken: VersionEvaluation
    better: VersionEvaluation


@pytest.fixture(scope="module")
def lifecycle(runs, tmp_path_factory) -> Lifecycle:
    """First model → production; then a broken and a better challenger, both evaluated."""
    home = tmp_path_factory.mktemp("home")
    settings = Settings(home=home, gate=GATE)
    registry = Registry(settings)

    def register(run: Path) -> str:
        return register_trained(
            run,
            training_set_uri=TRAINING_SET,
            data_partitions=PARTITIONS,
            settings=settings,
            registry=registry,
        ).id

    first_id = register(runs.champion)
    first = evaluate_version(first_id, runs.holdout, settings, registry=registry)
    registry.promote(first_id, Stage.PRODUCTION, expected_current=None, reason="first model")
    broken = evaluate_version(register(runs.broken), runs.holdout, settings, registry=registry)
    better = evaluate_version(register(runs.better), runs.holdout, settings, registry=registry)
    return Lifecycle(home, settings, registry, runs, first, broken, better)


def test_registration_records_training_and_lineage(lifecycle):
    version = lifecycle.registry.get(lifecycle.first.version.id)
    assert version.history[0].to_state is ModelState.TRAINED
    assert TRAINING_SET in version.history[0].reason
    assert {a.name for a in version.artifacts} == {
        "model.pt",
        "preprocessor.json",
        "net_config.json",
        "metrics.json",
    }
    training = version.training
    assert training.dataset_partitions == PARTITIONS
    assert training.sample_count > 1000
    assert (
        training.feature_count == 8 + 3 + 2 + 2
    )  # numeric, vocabularies, hashed, distance+weather
    assert training.hyperparameters["hidden_units"] == 32
    # Finite numbers only: NaN and inf cannot be stored in JSON.
    assert set(training.metrics) >= {"val_mae", "early_stopped"}
    assert "best_val_loss" not in training.metrics
    lineage = version.lineage
    assert lineage.feature_service == "eta_v1"
    assert lineage.data_partitions == PARTITIONS
    assert lineage.parent_version_id is None  # nothing was in production yet
    commit = lineage.code_commit or ""
    assert commit == UNKNOWN_COMMIT or re.fullmatch(r"[0-9a-f]{40}", commit), commit
    config = json.loads((lifecycle.runs.champion / "net_config.json").read_text())
    assert lineage.config_hash == config_hash(training.hyperparameters, config)

    later = lifecycle.registry.get(lifecycle.better.version.id)
    assert later.lineage.parent_version_id == version.id  # the production model of the time
    assert later.lineage.config_hash != lineage.config_hash


def test_bundle_from_registry_predicts_like_the_run_folder(lifecycle):
    holdout = pd.read_parquet(lifecycle.runs.holdout)
    registered = ModelBundle.from_registry(lifecycle.registry, lifecycle.better.version.id)
    local = ModelBundle.from_dir(lifecycle.runs.better)
    np.testing.assert_allclose(registered.predict(holdout), local.predict(holdout))
    assert registered.source == lifecycle.better.version.id


def test_first_model_passes_the_absolute_bars_alone(lifecycle):
    first = lifecycle.first
    assert first.passed, first.verdict.summary()
    assert first.champion_id is None and first.result.champion is None
    assert first.version.state is ModelState.VALIDATED
    assert "no champion" in first.version.history[-1].reason
    assert first.result.report.is_file()


def test_broken_challenger_is_failed_with_overall_and_slice_reasons(lifecycle):
    broken = lifecycle.broken
    assert not broken.passed
    assert broken.champion_id == lifecycle.first.version.id
    record = lifecycle.registry.get(broken.version.id)
    assert record.state is ModelState.FAILED
    states = [h.to_state for h in record.history]
    assert states == [ModelState.TRAINED, ModelState.EVALUATING, ModelState.FAILED]
    reason = record.history[-1].reason
    assert reason.startswith(f"gate rejected against {broken.verdict.champion}")
    assert "FAIL: overall MAE" in reason and "FAIL: zone_id=" in reason
    assert broken.verdict.slices_at_fault
    # A failed version is final: it cannot be evaluated again or promoted.
    with pytest.raises(IllegalTransition):
        evaluate_version(
            broken.version.id,
            lifecycle.runs.holdout,
            lifecycle.settings,
            registry=lifecycle.registry,
        )


def test_better_challenger_is_validated_with_a_report(lifecycle):
    better = lifecycle.better
    assert better.passed, better.verdict.summary()
    assert better.version.state is ModelState.VALIDATED
    assert better.champion_id == lifecycle.first.version.id
    assert better.result.challenger.overall.mae < better.result.champion.overall.mae  # type: ignore[union-attr]
    assert better.version.history[-1].reason.startswith("gate passed against")
    report = better.result.report
    assert report == lifecycle.settings.reports_dir / "evaluation" / f"{better.version.id}.html"
    html = report.read_text()
    assert "PASSED" in html and lifecycle.first.version.id in html


def _cli(*args: str, home: Path, module: str = "relay.cli") -> subprocess.CompletedProcess:
    env = {**os.environ, "RELAY_HOME": str(home), "COLUMNS": "200", **GATE_ENV}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_models_commands(lifecycle):
    home = lifecycle.home
    first, broken, better = (
        lifecycle.first.version.id,
        lifecycle.broken.version.id,
        lifecycle.better.version.id,
    )

    listed = _cli("models", "list", home=home)
    assert listed.returncode == 0, listed.stderr
    rows = {line.split("│")[1].strip(): line for line in listed.stdout.splitlines() if "│" in line}
    assert "production" in rows[first] and "failed" in rows[broken] and "validated" in rows[better]
    val_mae = lifecycle.registry.get(first).training.metrics["val_mae"]
    assert f"{val_mae:.2f}" in rows[first]
    as_json = json.loads(_cli("models", "list", "--json", home=home).stdout)
    assert [v["id"] for v in as_json] == [first, broken, better]

    shown = _cli("models", "show", better, home=home)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["lineage"]["parent_version_id"] == first

    unknown = "eta_mlp_9.9.0_20260101_0000"
    res = _cli("models", "promote", unknown, "--stage", "production", home=home)
    assert res.returncode == 1
    assert f"no model version {unknown}" in res.stderr and "Traceback" not in res.stderr
    res = _cli("models", "promote", broken, "--stage", "production", home=home)
    assert res.returncode == 1 and "failed" in res.stderr
    res = _cli("models", "promote", better, "--stage", "production", "--expect", better, home=home)
    assert res.returncode == 1 and f"points to {first}" in res.stderr
    res = _cli("models", "promote", better, "--stage", "moon", home=home)
    assert res.returncode == 2 and "--stage" in res.stderr

    res = _cli("models", "promote", better, "--stage", "production", "--expect", first, home=home)
    assert res.returncode == 0, res.stderr
    registry = Registry(lifecycle.settings)
    assert registry.stage_version(Stage.PRODUCTION).id == better  # type: ignore[union-attr]

    chain = json.loads(_cli("models", "lineage", better, "--json", home=home).stdout)
    assert [r["version_id"] for r in chain] == [better, first]
    table = _cli("models", "lineage", better, home=home)
    assert table.returncode == 0 and "eta_v1" in table.stdout

    res = _cli("models", "rollback", home=home)
    assert res.returncode == 0, res.stderr
    assert registry.stage_version(Stage.PRODUCTION).id == first  # type: ignore[union-attr]
    res = _cli("models", "rollback", "--stage", "production", home=home)
    assert res.returncode == 1 and "no previous version" in res.stderr


def test_register_and_evaluate_commands(runs, tmp_path):
    """`relay register`, then the Ray job entrypoint and `relay evaluate` with their exit codes."""
    res = _cli(
        "register",
        "--output",
        str(runs.broken),
        "--training-set",
        TRAINING_SET,
        "--partitions",
        ",".join(PARTITIONS),
        "--bump",
        "major",
        home=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    version_id = res.stdout.strip()
    assert "_1.0.0_" in version_id

    report = tmp_path / "broken.html"
    args = ["--version", version_id, "--holdout", str(runs.holdout), "--report", str(report)]
    res = _cli(*args, home=tmp_path, module="ray_jobs.evaluate")
    assert res.returncode == 3, res.stderr
    assert "REJECTED" in res.stdout and "state: failed" in res.stdout and report.is_file()

    res = _cli("evaluate", *args, home=tmp_path)  # already failed: a clear error, exit 1
    assert res.returncode == 1 and "from 'failed' to 'evaluating'" in res.stderr

    missing = _cli("register", "--output", str(tmp_path), "--training-set", "x", home=tmp_path)
    assert missing.returncode == 1 and "model.pt" in missing.stderr
