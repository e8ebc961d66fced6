"""Ray Train job: ``python -m ray_jobs.train --training-set PATH --output DIR``.

Submit it through the Ray Jobs API (Airflow's operator does) or run it directly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False)


@app.command()
def main(
    training_set: Annotated[
        str, typer.Option(help="Training-set Parquet (relay features training-set)")
    ],
    output: Annotated[Path, typer.Option(help="Folder for model.pt, preprocessor.json, metrics")],
    name: Annotated[str, typer.Option(help="Run name; the same name resumes")] = "eta_train",
    num_workers: Annotated[int | None, typer.Option(min=1)] = None,
    use_gpu: Annotated[
        bool | None, typer.Option("--gpu/--cpu", help="Default: GPU if present")
    ] = None,
    epochs: Annotated[int | None, typer.Option(min=1)] = None,
    patience: Annotated[int | None, typer.Option(min=1, help="Early-stopping patience")] = None,
    config: Annotated[Path | None, typer.Option(help="JSON of hyperparameters (from tune)")] = None,
    storage_path: Annotated[str | None, typer.Option(help="Checkpoints: a path or s3://")] = None,
) -> None:
    """Train the ETA model data-parallel with Ray Train."""
    from relay.model.ray_train import TrainRequest, result_summary, run_training
    from relay.raycluster import connect

    connect()
    hp = json.loads(config.read_text()) if config else {}
    res = run_training(
        TrainRequest(
            training_set=training_set,
            output_dir=output,
            name=name,
            num_workers=num_workers,
            use_gpu=use_gpu,
            max_epochs=epochs,
            patience=patience,
            hyperparameters=hp,
            storage_path=storage_path,
        )
    )
    typer.echo(result_summary(res))


if __name__ == "__main__":
    app()
