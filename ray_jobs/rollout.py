"""Rollout job: ``python -m ray_jobs.rollout rollout --version V [--outcome PATH]`` and
``python -m ray_jobs.rollout restore --version V`` and ``python -m ray_jobs.rollout controller``.

The same typed commands as ``relay serve rollout|restore``, submitted through the Ray Jobs API
so they run on the cluster that serves: ``rollout`` starts the cluster's rollout controller and
the rollout (returning at once), ``restore`` moves all traffic under the traffic lease.
"""

from __future__ import annotations

import typer

from relay.cli.rollout import rollout_controller
from relay.cli.serve import serve_restore, serve_rollout

app = typer.Typer(add_completion=False)
app.command("rollout")(serve_rollout)
app.command("restore")(serve_restore)
app.command("controller")(rollout_controller)

if __name__ == "__main__":
    app()
