"""Training throughput: the Ray Train job against a plain single-process PyTorch loop.

Same training set (built through Feast), same model, same batch size, same epochs; one run
prints both and the ratio. Run: ``python -m bench.training --orders 100000``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import tempfile
import time
from pathlib import Path

DAY = dt.date(2026, 11, 20)


def _training_set(orders_per_day: int, home: Path) -> str:
    from relay.data.lake import VALIDATED_ORDERS, Lake
    from relay.features import store
    from relay.ingest.landing import land_generated_batch, validate_partition

    for day in (DAY - dt.timedelta(days=1), DAY):
        land_generated_batch(day, orders_per_day)
        validate_partition(day)
        store.write_feature_tables(day)
    store.apply()
    frame = store.training_frame(Lake().read(VALIDATED_ORDERS, DAY))
    path = home / "training.parquet"
    frame.to_parquet(path, index=False)
    return str(path)


def plain_loop(training_set: str, epochs: int, batch_size: int) -> float:
    """Samples per second of a single-process loop over in-memory tensors."""
    import pandas as pd
    import torch

    from relay.model.preprocess import Preprocessor
    from relay.model.training import (
        build_model,
        model_inputs,
        split_by_time,
        tensor_batches,
        train_epoch,
    )

    split = split_by_time(pd.read_parquet(training_set), 0.2)
    prep = Preprocessor.fit(split.train)
    arrays = model_inputs(prep, split.train)
    model = build_model(prep, {})
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    seen, elapsed = 0, 0.0
    for epoch in range(epochs):
        t = time.perf_counter()
        _, n = train_epoch(
            model, tensor_batches(arrays, batch_size, True, epoch), opt, prep.label_std
        )
        elapsed += time.perf_counter() - t
        seen += n
    return seen / elapsed


def ray_train(
    training_set: str, out: Path, epochs: int, batch_size: int, workers: int
) -> tuple[float, float]:
    """(samples/s inside the training loop, wall seconds including cluster start-up)."""
    import ray

    from relay.model.ray_train import TrainRequest, run_training

    t = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=True, log_to_driver=False)
    try:
        res = run_training(
            TrainRequest(
                training_set=training_set,
                output_dir=out,
                name="bench",
                num_workers=workers,
                storage_path=str(out / "ray"),
                max_epochs=epochs,
                patience=epochs + 1,
                hyperparameters={"batch_size": batch_size},
            )
        )
    finally:
        ray.shutdown()
    return res.samples_per_second, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--orders", type=int, default=100_000, help="orders per day (2 days)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="relay-bench-train-"))
    os.environ["RELAY_HOME"] = str(home)
    try:
        ts = _training_set(args.orders, home)
        plain = plain_loop(ts, args.epochs, args.batch_size)
        ray_sps, wall = ray_train(ts, home / "model", args.epochs, args.batch_size, args.workers)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    print(
        f"\n{args.orders:,} orders, {args.epochs} epochs, batch {args.batch_size}, "
        f"{os.cpu_count()} cores\n"
    )
    print("| training | samples/s |\n|---|---|")
    print(f"| plain PyTorch, 1 process | {plain:,.0f} |")
    print(
        f"| Ray Train, {args.workers} workers (data-parallel, Ray Data) | {ray_sps:,.0f} "
        f"(wall {wall:.0f} s incl. start-up) |"
    )
    print(f"| ratio Ray / plain | {ray_sps / plain:.2f} |")


if __name__ == "__main__":
    main()
