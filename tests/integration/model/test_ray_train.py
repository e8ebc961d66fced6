"""Ray Train on a real local Ray cluster: learning on two workers, resuming after a lost worker,
Tune. The model's behavioural tests run without Ray: tests/unit/model/test_behaviour.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from relay.model.preprocess import Preprocessor
from relay.model.ray_train import TrainRequest, run_training
from relay.model.training import load_model, predict

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=True, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def training_set(lake_days, tmp_path_factory) -> str:
    """A real training set from the Feast pipeline (point-in-time join on the test lake)."""
    from relay.data.lake import VALIDATED_ORDERS, Lake
    from relay.features.store import apply, training_frame

    apply()
    orders = Lake().read_range(VALIDATED_ORDERS, lake_days[0], lake_days[-1])
    path = tmp_path_factory.mktemp("ts") / "training.parquet"
    training_frame(orders).to_parquet(path, index=False)
    return str(path)


def _load(out: Path):
    prep = Preprocessor.from_json((out / "preprocessor.json").read_text())
    cfg = json.loads((out / "net_config.json").read_text())
    state = torch.load(out / "model.pt", weights_only=True)
    return prep, load_model(state, cfg)


def _naive_baseline(train: pd.DataFrame, holdout: pd.DataFrame) -> np.ndarray:
    """Mean delivery time per (zone, hour) from the training rows; global mean when unseen."""
    means = train.groupby(["zone_id", "hour"])["delivery_minutes"].mean().to_dict()
    keys = zip(holdout["zone_id"], holdout["hour"], strict=True)
    fallback = train["delivery_minutes"].mean()
    return np.array([means.get(k, fallback) for k in keys])


@pytest.fixture(scope="module")
def trained(ray_cluster, training_set, tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    res = run_training(
        TrainRequest(
            training_set=training_set,
            output_dir=out,
            name="t_learn",
            storage_path=str(out / "ray"),
            num_workers=2,
            max_epochs=6,
            patience=3,
            hyperparameters={"batch_size": 128},
        )
    )
    return res


def test_two_workers_beat_the_naive_baseline_on_holdout(trained):
    out = trained.output_dir
    prep, model = _load(out)
    holdout = pd.read_parquet(trained.holdout_path)
    train = pd.read_parquet(out / "data" / "train.parquet")
    y = holdout["delivery_minutes"].to_numpy()
    mae_model = np.abs(predict(model, prep, holdout) - y).mean()
    mae_naive = np.abs(_naive_baseline(train, holdout) - y).mean()
    assert mae_model < 0.8 * mae_naive, (mae_model, mae_naive)
    assert trained.metrics["epoch"] >= 1 and trained.metrics["restarts"] == 0


def test_the_run_measures_feature_importance_and_the_version_carries_it(trained, tmp_path):
    from relay.model.importance import IMPORTANCE_FILE
    from relay.model.registration import register_trained
    from relay.registry import Registry
    from relay.settings import Settings

    importance = trained.importance
    assert importance is not None and (trained.output_dir / IMPORTANCE_FILE).is_file()
    prep, _ = _load(trained.output_dir)
    assert set(importance.shares) == set(prep.inputs)
    assert sum(importance.shares.values()) == pytest.approx(1.0)
    assert min(importance.shares.values()) >= 0.0
    # The synthetic world's time grows with distance above all.
    assert "order_distance_km" in dict(importance.top(3)), importance.shares
    s = Settings(home=tmp_path / "home")
    version = register_trained(
        trained.output_dir, training_set_uri="t.parquet", settings=s, registry=Registry(s)
    )
    assert version.training.feature_importance == importance.shares


def test_a_killed_worker_resumes_from_its_checkpoint(ray_cluster, training_set, tmp_path):
    res = run_training(
        TrainRequest(
            training_set=training_set,
            output_dir=tmp_path,
            name="t_resume",
            storage_path=str(tmp_path / "ray"),
            num_workers=2,
            max_epochs=2,
            patience=10,
            max_failures=2,
            fail_at_epoch=1,
        )
    )
    assert (tmp_path / ".fail-once").exists()  # the worker really died once
    assert res.metrics["restarts"] == 1  # the group came back from a checkpoint…
    assert res.metrics["epoch"] == 1  # …and finished the remaining epoch
    assert (tmp_path / "model.pt").exists()


def test_tune_runs_its_trials_and_asha_stops_the_hopeless_one(ray_cluster, training_set, tmp_path):
    """Started from a known-good config and a hopeless one (learning rate 1e-5): after the
    good one's first epoch sets rung 1, ASHA must stop the hopeless one there. (Left to the
    sampler alone, trials sometimes each beat the rung before them: none stopped.) Trials run
    one at a time, each a Ray Train run of ~40 s here: two keep this quick."""
    from relay.model.ray_tune import run_tune

    good = {"learning_rate": 3e-3, "batch_size": 128, "dropout": 0.1, "hidden_layers": 2}
    good["activation"] = "relu"
    hopeless = {**good, "learning_rate": 1e-5}
    res = run_tune(training_set, tmp_path, 2, max_epochs=2, start_from=[good, hopeless])
    assert len(res.trials) == 2
    assert all(t.val_loss is not None for t in res.trials)
    stopped = [t for t in res.trials if t.epochs < 2]
    assert stopped, [(t.epochs, t.val_loss) for t in res.trials]
    by_rate = {t.config["learning_rate"]: t for t in res.trials}
    assert by_rate[1e-5].epochs == 1, [(t.config, t.epochs) for t in res.trials]
    best = json.loads(Path(res.best_config_path).read_text())
    assert best["batch_size"] in (32, 64, 128, 256)
    assert 1e-5 <= best["learning_rate"] <= 1e-1 and 2 <= best["hidden_layers"] <= 5
    assert res.best_val_loss == min(t.val_loss for t in res.trials if t.val_loss is not None)
