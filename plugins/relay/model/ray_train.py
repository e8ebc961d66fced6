"""Data-parallel training with Ray Train: the driver side and the per-worker loop.

The driver splits the training set by time, fits the preprocessor, and hands Ray Data
datasets to a ``TorchTrainer``. Each worker trains its shard, all-reduces the validation
sums, stops early when validation loss stalls, and reports a checkpoint every epoch (model,
optimizer, scheduler, epoch, RNG state, early-stopping state). After a worker dies the
trainer restarts the group from the latest checkpoint (``FailureConfig``).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from relay.model.importance import Importance, measure_run
from relay.model.optimise import optimise_run
from relay.model.preprocess import Preprocessor
from relay.model.quantise import OptimiseOutcome
from relay.model.storage import ray_storage
from relay.model.training import model_inputs, save_run, split_by_time
from relay.settings import Settings, get_settings

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
HYPERPARAMETERS = (
    "learning_rate",
    "batch_size",
    "hidden_layers",
    "hidden_units",
    "dropout",
    "activation",
)


@dataclass
class TrainRequest:
    """Everything one training run needs; defaults come from ``settings.train``."""

    training_set: str
    output_dir: Path
    name: str = "eta_train"
    storage_path: str | None = None
    num_workers: int | None = None
    use_gpu: bool | None = None
    cpus_per_worker: float | None = None
    max_epochs: int | None = None
    patience: int | None = None
    max_failures: int | None = None
    holdout_share: float | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    # Test hook: the last worker kills itself once at this epoch (simulates a lost node).
    fail_at_epoch: int | None = None


@dataclass
class TrainResult:
    output_dir: Path
    metrics: dict[str, Any]
    hyperparameters: dict[str, Any]
    train_rows: int
    holdout_path: str
    samples_per_second: float
    checkpoint_path: str | None
    optimised: OptimiseOutcome | None = None
    importance: Importance | None = None


def resolve_hyperparameters(req: TrainRequest, settings: Settings) -> dict[str, Any]:
    t = settings.train
    hp: dict[str, Any] = {
        "learning_rate": t.learning_rate,
        "batch_size": t.batch_size,
        "hidden_layers": t.hidden_layers,
        "hidden_units": t.hidden_units,
        "dropout": t.dropout,
        "activation": t.activation,
    }
    hp.update({k: v for k, v in req.hyperparameters.items() if k in HYPERPARAMETERS})
    return hp


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import ray.train
    import ray.train.torch
    import torch

    from relay.model.training import build_model, evaluate_sums, train_epoch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    prep = Preprocessor.from_json(config["preprocessor"])
    hp = config["hp"]
    torch.manual_seed(config["seed"] + rank)
    model = ray.train.torch.prepare_model(build_model(prep, hp))
    device = ray.train.torch.get_device()
    use_amp = device.type == "cuda"
    optimizer = torch.optim.AdamW(model.parameters(), lr=hp["learning_rate"], weight_decay=1e-5)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=2)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    net = getattr(model, "module", model)

    start_epoch, best, stale, restarts, best_state = 0, math.inf, 0, 0, None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / STATE_FILE, weights_only=True)
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"])
        start_epoch = int(state["epoch"]) + 1
        best, stale = float(state["best"]), int(state["stale"])
        restarts = int(state["restarts"]) + 1
        best_state = state["best_model"]

    train_shard = ray.train.get_dataset_shard("train")
    valid_shard = ray.train.get_dataset_shard("valid")
    dtypes = {
        "numeric": torch.float32,
        "categorical": torch.int64,
        "distance": torch.float32,
        "weather": torch.int64,
        "y": torch.float32,
    }
    label_std = prep.label_std
    last_report = time.monotonic()
    for epoch in range(start_epoch, config["max_epochs"]):
        fail_at = config.get("fail_at_epoch")
        marker = config.get("fail_marker")
        if fail_at == epoch and rank == world - 1 and marker and not os.path.exists(marker):
            _crash_once(marker, last_report)
        t0 = time.perf_counter()
        batches = train_shard.iter_torch_batches(
            batch_size=hp["batch_size"],
            dtypes=dtypes,
            device=device,
            local_shuffle_buffer_size=4 * hp["batch_size"],
        )
        train_loss, seen = train_epoch(model, batches, optimizer, label_std, scaler, device.type)
        elapsed = time.perf_counter() - t0
        sums = evaluate_sums(
            model,
            valid_shard.iter_torch_batches(batch_size=2048, dtypes=dtypes, device=device),
            label_std,
        )
        counts = torch.tensor([seen, elapsed], dtype=torch.float64)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(sums)
            torch.distributed.all_reduce(counts)
        val_loss = float(sums[0] / sums[1].new_tensor(max(float(sums[2]), 1.0)))
        val_mae = float(sums[1] / max(float(sums[2]), 1.0))
        scheduler.step(val_loss)
        if val_loss < best - 1e-5:
            best, stale = val_loss, 0
            best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        else:
            stale += 1
        stop = stale >= config["patience"]
        metrics = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_mae": val_mae,
            "best_val_loss": best,
            "restarts": restarts,
            "early_stopped": stop,
            # Summed over workers: samples per worker-second times workers.
            "samples_per_second": float(counts[0] / (counts[1] / world)),
            "lr": optimizer.param_groups[0]["lr"],
        }
        if rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                torch.save(
                    {
                        "model": net.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict(),
                        "rng": torch.get_rng_state(),
                        "epoch": epoch,
                        "best": best,
                        "stale": stale,
                        "restarts": restarts,
                        "best_model": best_state,
                    },
                    Path(tmp) / STATE_FILE,
                )
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)
        last_report = time.monotonic()
        if stop:
            break


def _crash_once(marker: str, last_report: float) -> None:
    """Fault injection for tests: kill this worker process the way a lost node would.

    Real crashes come minutes after the last checkpoint; the controller collects reports on its
    health-check tick (2 s by default), so the crash waits out one tick after the last report,
    or it would model a crash that beat its own checkpoint.
    """
    interval = float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2.0"))
    time.sleep(max(0.0, 2.5 * interval - (time.monotonic() - last_report)))
    Path(marker).touch()
    os.kill(os.getpid(), signal.SIGKILL)


def _to_inputs(prep_json: str):  # type: ignore[no-untyped-def]
    prep = Preprocessor.from_json(prep_json)

    def transform(batch: pd.DataFrame) -> dict[str, Any]:
        return model_inputs(prep, batch)

    return transform


def run_training(req: TrainRequest, settings: Settings | None = None) -> TrainResult:
    """Train on a training-set Parquet with Ray Train and save the model to ``output_dir``.

    Saves ``model.pt`` (best weights), ``net_config.json``, ``preprocessor.json``,
    ``metrics.json`` and the holdout Parquet the evaluation uses; then, unless
    ``RELAY_IMPORTANCE__ENABLED`` is false, the model's permutation importance on that holdout
    (``importance.json``, :mod:`relay.model.importance`), and unless
    ``RELAY_OPTIMISE__ENABLED`` is false, the optimise stage's ``optimised.json`` (and
    ``model.int8.pt`` when it accepted the INT8 model), judged on the same holdout.
    """
    import ray
    import ray.data
    import torch
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from relay.model.training import build_model

    s = settings or get_settings()
    t = s.train
    hp = resolve_hyperparameters(req, s)
    frame = pd.read_parquet(req.training_set)
    split = split_by_time(frame, req.holdout_share or t.holdout_share)
    prep = Preprocessor.fit(split.train)
    out = req.output_dir
    (out / "data").mkdir(parents=True, exist_ok=True)
    paths = {}
    for part in ("train", "valid", "holdout"):
        paths[part] = str(out / "data" / f"{part}.parquet")
        getattr(split, part).to_parquet(paths[part], index=False)

    use_gpu = req.use_gpu
    if use_gpu is None:
        use_gpu = t.use_gpu if t.use_gpu is not None else bool(ray.cluster_resources().get("GPU"))
    transform = _to_inputs(prep.to_json())
    # Materialized once: re-reading and re-transforming the Parquet every epoch cost more than
    # the training itself on small sets. From the frames already in memory: read_parquet's
    # footer-reader actors competed with its own listing task for 2 CPUs and stalled for minutes.
    datasets: dict[str, Any] = {
        part: ray.data.from_pandas(getattr(split, part))
        .map_batches(transform, batch_format="pandas")
        .materialize()
        for part in ("train", "valid")
    }
    # RELAY_TRAIN__STORAGE_URI: S3 in prod, where every node's workers can write and resume.
    storage, storage_fs = ray_storage(req.storage_path or s.train.storage_uri or "", s.s3)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "preprocessor": prep.to_json(),
            "hp": hp,
            "seed": t.seed,
            "max_epochs": req.max_epochs or t.max_epochs,
            "patience": req.patience or t.early_stopping_patience,
            "fail_at_epoch": req.fail_at_epoch,
            "fail_marker": str(out / ".fail-once") if req.fail_at_epoch is not None else None,
        },
        scaling_config=ScalingConfig(
            num_workers=req.num_workers or t.num_workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": req.cpus_per_worker or t.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=req.name,
            storage_path=storage,
            storage_filesystem=storage_fs,
            failure_config=FailureConfig(
                max_failures=(t.max_failures if req.max_failures is None else req.max_failures)
            ),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
        datasets=datasets,
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    with result.checkpoint.as_directory() as d:
        state = torch.load(Path(d) / STATE_FILE, weights_only=True)
    model = build_model(prep, hp)
    model.load_state_dict(state["best_model"] or state["model"])
    metrics = dict(result.metrics or {})
    save_run(out, model, prep, hp, metrics, len(split.train))
    # Here, where the holdout is still in memory: every run, and so every version, gets them.
    importance = (
        measure_run(out, model, prep, split.holdout, s.importance) if s.importance.enabled else None
    )
    optimised = optimise_run(out, split.holdout, s) if s.optimise.enabled else None
    return TrainResult(
        output_dir=out,
        metrics=metrics,
        hyperparameters=hp,
        train_rows=len(split.train),
        holdout_path=paths["holdout"],
        samples_per_second=float(metrics.get("samples_per_second", 0.0)),
        checkpoint_path=(
            f"s3://{result.checkpoint.path}" if storage_fs is not None else result.checkpoint.path
        ),
        optimised=optimised,
        importance=importance,
    )
