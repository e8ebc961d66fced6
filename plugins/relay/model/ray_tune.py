"""Hyperparameter search with Ray Tune: Optuna's TPE sampler and ASHA early stopping.

Each trial is a Tune function that fits a ``TorchTrainer`` (the pattern that works with Ray
Train V2: passing a trainer to ``Tuner`` does not) and forwards every epoch's report to Tune,
so ASHA can stop a poor trial after its first epochs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from relay.model.preprocess import Preprocessor
from relay.model.storage import ray_storage
from relay.model.training import split_by_time
from relay.settings import Settings, get_settings


def search_space() -> dict[str, Any]:
    """The field's usual space: learning rate, batch size, dropout, depth, activation."""
    from ray import tune

    return {
        "learning_rate": tune.loguniform(1e-5, 1e-1),
        "batch_size": tune.choice([32, 64, 128, 256]),
        "dropout": tune.uniform(0.1, 0.5),
        "hidden_layers": tune.randint(2, 6),  # 2..5
        "activation": tune.choice(["relu", "tanh"]),
    }


@dataclass
class TrialSummary:
    config: dict[str, Any]
    epochs: int
    val_loss: float | None
    stopped_early: bool


@dataclass
class TuneResult:
    best_config: dict[str, Any]
    best_val_loss: float
    trials: list[TrialSummary]
    best_config_path: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)


def _trial(config: dict[str, Any], frames: dict[str, pd.DataFrame]) -> None:
    """One Tune trial: a full Ray Train run with the trial's hyperparameters.

    ``frames`` (train and valid) come through Ray's object store (``tune.with_parameters``):
    a trial may run on a node that does not have the driver's files.
    """
    import ray.data
    from ray import tune
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from relay.model.ray_train import _to_inputs, train_loop_per_worker
    from relay.settings import get_settings

    fixed = config["fixed"]
    hp = {k: v for k, v in config.items() if k != "fixed"}
    hp.setdefault("hidden_units", fixed["hidden_units"])
    transform = _to_inputs(fixed["preprocessor"])
    datasets: dict[str, Any] = {
        # From pandas: read_parquet's footer-reader actors can starve its listing task of CPU.
        part: ray.data.from_pandas(frames[part])
        .map_batches(transform, batch_format="pandas")
        .materialize()
        for part in ("train", "valid")
    }
    trial_id = tune.get_context().get_trial_id()
    # The filesystem is built on the trial's node, from its settings and AWS_* variables.
    storage, storage_fs = ray_storage(fixed["storage_path"], get_settings().s3)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "preprocessor": fixed["preprocessor"],
            "hp": hp,
            "seed": fixed["seed"],
            "max_epochs": fixed["max_epochs"],
            "patience": fixed["patience"],
        },
        scaling_config=ScalingConfig(
            num_workers=fixed["num_workers"],
            use_gpu=fixed["use_gpu"],
            resources_per_worker={"CPU": fixed["cpus_per_worker"]},
        ),
        run_config=RunConfig(
            name=f"trial_{trial_id}",
            storage_path=storage,
            storage_filesystem=storage_fs,
            callbacks=[TuneReportCallback()],  # type: ignore[list-item]
        ),
        datasets=datasets,
    )
    trainer.fit()


def run_tune(
    training_set: str,
    output_dir: Path,
    num_samples: int | None = None,
    max_epochs: int = 6,
    num_workers: int = 1,
    use_gpu: bool = False,
    settings: Settings | None = None,
    start_from: Sequence[Mapping[str, Any]] = (),
    storage_path: str | None = None,
) -> TuneResult:
    """Search hyperparameters; write the best config to ``output_dir/best_config.json``.

    ``storage_path``: Tune's results and the trials' checkpoints, a path or ``s3://``; default
    ``{RELAY_TRAIN__STORAGE_URI}/tune`` when that is S3 (trials run on any node), else
    ``output_dir/ray``.

    ``start_from``: configs (every key of :func:`search_space`) tried first, in order, before
    the sampler's own: the champion's, or ones known to be good, so the search and ASHA's
    rungs start from a known level.
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    s = settings or get_settings()
    t = s.train
    frame = pd.read_parquet(training_set)
    split = split_by_time(frame, t.holdout_share)  # the holdout is never seen while searching
    prep = Preprocessor.fit(split.train)
    output_dir.mkdir(parents=True, exist_ok=True)
    if storage_path is None:
        remote = (t.storage_uri or "").startswith("s3://")
        storage_path = f"{t.storage_uri}/tune" if remote else str((output_dir / "ray").resolve())
    fixed = {
        "preprocessor": prep.to_json(),
        "seed": t.seed,
        "max_epochs": max_epochs,
        "patience": max_epochs,
        "num_workers": num_workers,
        "use_gpu": use_gpu,
        "cpus_per_worker": t.cpus_per_worker,
        "hidden_units": t.hidden_units,
        "storage_path": storage_path,
    }
    storage, storage_fs = ray_storage(storage_path, s.s3)
    import optuna

    searcher = OptunaSearch(
        sampler=optuna.samplers.TPESampler(n_startup_trials=5, seed=t.seed),
        metric="val_loss",
        mode="min",
        points_to_evaluate=[dict(c) for c in start_from] or None,
    )
    scheduler = ASHAScheduler(
        metric="val_loss",
        mode="min",
        time_attr="training_iteration",
        max_t=max_epochs,
        grace_period=1,
        reduction_factor=2,
    )
    tuner = tune.Tuner(
        # The trial function only coordinates; its workers hold the CPUs.
        tune.with_resources(
            tune.with_parameters(_trial, frames={"train": split.train, "valid": split.valid}),
            {"CPU": 0.01},
        ),
        param_space={**search_space(), "fixed": fixed},
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=num_samples or t.tune_trials,
            max_concurrent_trials=1,
        ),
        run_config=tune.RunConfig(
            name="eta_tune", storage_path=storage, storage_filesystem=storage_fs
        ),
    )
    grid = tuner.fit()
    trials = []
    for i in range(len(grid)):
        r = grid[i]
        m = r.metrics or {}
        epochs = int(m.get("training_iteration", 0))
        cfg = {k: v for k, v in (r.config or {}).items() if k != "fixed"}
        trials.append(
            TrialSummary(
                cfg,
                epochs,
                m.get("val_loss"),
                epochs < max_epochs and not m.get("early_stopped", False),
            )
        )
    best = grid.get_best_result(metric="val_loss", mode="min")
    best_cfg = {k: v for k, v in (best.config or {}).items() if k != "fixed"}
    best_cfg["hidden_units"] = t.hidden_units
    path = output_dir / "best_config.json"
    path.write_text(json.dumps(best_cfg, indent=2))
    return TuneResult(best_cfg, float((best.metrics or {})["val_loss"]), trials, str(path))
