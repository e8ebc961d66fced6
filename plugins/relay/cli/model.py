"""``relay tune``, ``relay train``, ``relay register`` and ``relay evaluate``: a model version.

``tune``, ``train`` and ``evaluate`` are also the Ray job entrypoints of ``ray_jobs/``: one
typed command, two front doors.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from relay.cli.common import console, out, run

REJECTED_EXIT_CODE = 3
"""Exit code of ``relay evaluate`` when the gate rejects the version (errors exit 1)."""


class Bump(StrEnum):
    """The part of a semantic version ``relay register`` increases."""

    MAJOR = "major"
    MINOR = "minor"
    PATCH = "patch"


def _free_idle_serving() -> None:
    # Serve replicas of a version that takes no traffic hold CPUs the workers wait for.
    from relay.rollout.manual import free_idle_models

    free_idle_models(emit=console.print)


def tune(
    training_set: Annotated[str, typer.Option(help="Training-set Parquet")],
    output: Annotated[str, typer.Option(help="Folder for best_config.json: a path or s3://")],
    trials: Annotated[
        int | None, typer.Option(min=1, help="Default: RELAY_TRAIN__TUNE_TRIALS")
    ] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Epochs per trial (ASHA's max_t)")] = 6,
    storage_path: Annotated[
        str | None,
        typer.Option(help="Tune's results: a path or s3://; default RELAY_TRAIN__STORAGE_URI/tune"),
    ] = None,
) -> None:
    """Search hyperparameters with Ray Tune (Optuna TPE + ASHA); Ray shows trial progress."""
    from relay.flows import run_store
    from relay.infra.cluster import connect
    from relay.model.ray_tune import run_tune

    connect()
    _free_idle_serving()
    # An s3:// output (a prod run folder): written in this node's scratch, pushed at the end.
    with run_store.workspace(output, fetch=False) as folder:
        res = run_tune(training_set, folder, trials, epochs, storage_path=storage_path)
    for t in res.trials:
        note = "stopped early by ASHA" if t.stopped_early else "ran to the end"
        console.print(f"trial: {t.epochs} epochs, val_loss {t.val_loss}, {note}: {t.config}")
    best = f"{output.rstrip('/')}/{Path(res.best_config_path).name}"
    console.print(f"best config -> {best}")
    typer.echo(best)


def train(
    training_set: Annotated[str, typer.Option(help="Training-set Parquet")],
    output: Annotated[
        str, typer.Option(help="Folder for model.pt, preprocessor.json, metrics: a path or s3://")
    ],
    config: Annotated[
        str | None, typer.Option(help="Hyperparameters JSON (from tune): a path or s3://")
    ] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Ray Train workers")] = None,
    epochs: Annotated[int | None, typer.Option(min=1)] = None,
    gpu: Annotated[bool | None, typer.Option("--gpu/--cpu", help="Default: GPU if present")] = None,
    name: Annotated[str, typer.Option(help="Run name; the same name resumes")] = "eta_train",
    patience: Annotated[int | None, typer.Option(min=1, help="Early-stopping patience")] = None,
    storage_path: Annotated[
        str | None,
        typer.Option(help="Checkpoints: a path or s3://; default RELAY_TRAIN__STORAGE_URI"),
    ] = None,
) -> None:
    """Train the ETA model with Ray Train (data-parallel, checkpoint per epoch)."""
    from relay.flows import run_store
    from relay.infra.cluster import connect
    from relay.model.ray_train import TrainRequest, run_training

    connect()
    _free_idle_serving()
    request = TrainRequest(
        training_set=training_set,
        output_dir=Path(),  # this node's folder, below
        name=name,
        num_workers=workers,
        use_gpu=gpu,
        max_epochs=epochs,
        patience=patience,
        storage_path=storage_path,
        hyperparameters=json.loads(run_store.read_text(config)) if config else {},
    )
    # An s3:// output (a prod run folder): written in this node's scratch, pushed at the end.
    with run_store.workspace(output, fetch=False) as folder:
        request.output_dir = folder
        res = run_training(request)
    m = res.metrics
    console.print(
        f"trained: epoch {m.get('epoch')}, val MAE {m.get('val_mae', float('nan')):.2f} min, "
        f"{res.samples_per_second:,.0f} samples/s -> {output}\n"
        f"holdout: {res.holdout_path}\nnext: relay register --output {output} "
        f"--training-set {training_set}"
    )
    if res.optimised is not None:
        console.print(f"optimise: {res.optimised.reason}")
    typer.echo(str(output))


def register(
    output: Annotated[Path, typer.Option(help="Training run's output folder (model.pt, …)")],
    training_set: Annotated[str, typer.Option(help="Training-set Parquet the run read")],
    partitions: Annotated[
        list[str] | None,
        typer.Option(help="Lake partitions behind the training set; repeat or comma-separate"),
    ] = None,
    bump: Annotated[Bump, typer.Option(help="Part of the version to increase")] = Bump.MINOR,
    report: Annotated[Path | None, typer.Option(help="Evaluation report to store with it")] = None,
    owner: Annotated[str, typer.Option(help="Who registers it")] = "relay",
    parent: Annotated[
        str | None, typer.Option(help="Parent version; default: the production version")
    ] = None,
) -> None:
    """Register a finished training run as the model's next version (state trained)."""
    from relay.model.registration import register_trained

    parts = [p.strip() for item in partitions or [] for p in item.split(",") if p.strip()]
    version = run(
        lambda: register_trained(
            output,
            training_set_uri=training_set,
            data_partitions=parts,
            parent=parent,
            bump=bump.value,
            evaluation_report=report,
            owner=owner,
        )
    )
    console.print(f"registered {version.id} ({version.state.value})")
    typer.echo(version.id)


def evaluate(
    version: Annotated[str, typer.Option(help="Version id to evaluate (state trained)")],
    holdout: Annotated[str, typer.Option(help="Holdout Parquet: a path or s3:// URI")],
    report: Annotated[
        Path | None, typer.Option(help="HTML report; default {reports}/evaluation/{version}.html")
    ] = None,
) -> None:
    """Gate a version against the production champion; exit 3 when the gate rejects it."""
    from relay.evaluate.challenger import evaluate_version

    with console.status(f"evaluating {version}"):
        outcome = run(lambda: evaluate_version(version, holdout, report_path=report))
    verdict = outcome.verdict
    style = "green" if verdict.passed else "bold red"
    out.print(f"[{style}]{escape(verdict.summary())}[/]", highlight=False)
    out.print(f"state: {outcome.version.state.value}\nreport: {outcome.result.report}")
    if not verdict.passed:
        raise typer.Exit(REJECTED_EXIT_CODE)
