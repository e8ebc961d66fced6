"""Evaluation job: ``python -m ray_jobs.evaluate --version V --holdout PATH``.

Exit codes (what a submitter such as the Airflow operator branches on): 0 the gate passed (the
version is Validated), 1 the evaluation could not run, 3 the gate rejected it (Failed).

The same typed command as ``relay evaluate``: one definition, two front doors (the CLI, and an
entrypoint submitted through the Ray Jobs API).
"""

from __future__ import annotations

import typer

from relay.cli.model import evaluate

app = typer.Typer(add_completion=False)
app.command()(evaluate)

if __name__ == "__main__":
    app()
