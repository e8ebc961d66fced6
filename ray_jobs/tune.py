"""Ray Tune job: ``python -m ray_jobs.tune --training-set PATH --output DIR --trials N``.

Writes ``DIR/best_config.json``; hand it to ``ray_jobs.train --config``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False)


@app.command()
def main(
    training_set: Annotated[str, typer.Option(help="Training-set Parquet")],
    output: Annotated[Path, typer.Option(help="Folder for best_config.json and trial data")],
    trials: Annotated[int | None, typer.Option(min=1, help="Number of trials")] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Epochs per trial (ASHA's max_t)")] = 6,
    num_workers: Annotated[int, typer.Option(min=1, help="Ray Train workers per trial")] = 1,
    use_gpu: Annotated[bool, typer.Option("--gpu/--cpu")] = False,
) -> None:
    """Search the ETA model's hyperparameters (Optuna TPE + ASHA)."""
    from relay.model.ray_tune import run_tune
    from relay.raycluster import connect

    connect()
    res = run_tune(training_set, output, trials, epochs, num_workers, use_gpu)
    typer.echo(res.to_json())


if __name__ == "__main__":
    app()
