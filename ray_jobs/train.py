"""Ray Train job: ``python -m ray_jobs.train --training-set PATH --output DIR``.

The same typed command as ``relay train``: one definition, two front doors (the CLI, and an
entrypoint submitted through the Ray Jobs API).
"""

from __future__ import annotations

import typer

from relay.cli.model import train

app = typer.Typer(add_completion=False)
app.command()(train)

if __name__ == "__main__":
    app()
