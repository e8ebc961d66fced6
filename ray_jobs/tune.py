"""Ray Tune job: ``python -m ray_jobs.tune --training-set PATH --output DIR --trials N``.

The same typed command as ``relay tune``: one definition, two front doors (the CLI, and an
entrypoint submitted through the Ray Jobs API).
"""

from __future__ import annotations

import typer

from relay.cli.model import tune

app = typer.Typer(add_completion=False)
app.command()(tune)

if __name__ == "__main__":
    app()
