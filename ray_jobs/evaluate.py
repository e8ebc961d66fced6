"""Evaluation job: ``python -m ray_jobs.evaluate --version V --holdout PATH [--report PATH]``.

Scores a registered (Trained) version and the production champion on the same holdout, runs
the gate, writes the HTML report and moves the version to Validated or Failed.

Exit codes (what a submitter, e.g. Airflow's Ray operator, branches on):

* 0: the gate passed; the version is Validated.
* 1: the evaluation could not run (unknown version, missing holdout, corrupt artifact, a
  version not in state Trained); the message says what to do.
* 3: the gate rejected the version; it is Failed and the reasons are printed.

The evaluation is single-process (one pass over the holdout per model): it needs no Ray
cluster, so this job does not connect to one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

REJECTED_EXIT_CODE = 3

app = typer.Typer(add_completion=False)


@app.command()
def main(
    version: Annotated[str, typer.Option(help="Version id to evaluate (state Trained)")],
    holdout: Annotated[str, typer.Option(help="Holdout Parquet: a path or s3:// URI")],
    report: Annotated[
        Path | None, typer.Option(help="HTML report; default {reports}/evaluation/{version}.html")
    ] = None,
) -> None:
    """Evaluate a challenger against the production champion and record the gate's verdict."""
    from relay.challenger import evaluate_version
    from relay.errors import RelayError

    try:
        outcome = evaluate_version(version, holdout, report_path=report)
    except RelayError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err
    typer.echo(outcome.verdict.summary())
    typer.echo(f"state: {outcome.version.state.value}\nreport: {outcome.result.report}")
    if not outcome.passed:
        raise typer.Exit(REJECTED_EXIT_CODE)


if __name__ == "__main__":
    app()
