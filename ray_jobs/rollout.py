"""Rollout job: ``python -m ray_jobs.rollout --version V [--outcome PATH]``.

The same typed command as ``relay serve rollout``, submitted through the Ray Jobs API so the
canary loop (deploy, move traffic, judge live metrics) runs on the Ray cluster that serves.
"""

from __future__ import annotations

import typer

from relay.cli.serve import serve_restore, serve_rollout

app = typer.Typer(add_completion=False)
app.command("rollout")(serve_rollout)
app.command("restore")(serve_restore)

if __name__ == "__main__":
    app()
