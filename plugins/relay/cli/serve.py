"""``relay serve …``: the Ray Serve ETA endpoint.

``rollout`` and ``restore`` are also the commands of ``ray_jobs/rollout.py``, so the canary loop
runs as a Ray job on the cluster that serves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from relay.cli.common import console, fail, out, run

app = typer.Typer(
    help="The Ray Serve ETA endpoint: deploy, canary, promote, roll back.", no_args_is_help=True
)


def serving_control() -> Any:
    """Join the running Ray cluster (serving must outlive the CLI); return relay.serve.control."""
    from relay.infra.cluster import connect
    from relay.serve import control

    try:
        connect(require_running=True)
    except ConnectionError as exc:
        raise fail(
            "no running Ray cluster: start one with `make up` or "
            "`ray start --head`, or set RELAY_RAY__ADDRESS"
        ) from exc
    control.start_serve()
    return control


def _print_split(split: Any) -> None:
    if split is None:
        out.print("nothing deployed")
        return
    for version, share in split.shares().items():
        role = "stable" if version == split.stable else "candidate"
        out.print(f"{role:9} {version}  {share:.0%}")


@app.command("up")
def serve_up() -> None:
    """Deploy the production version from the registry as the stable model."""
    from relay.registry import Registry
    from relay.serve.traffic import TrafficSplit

    control = serving_control()
    version = run(lambda: Registry().stage_version("production"))
    if version is None:
        raise fail("no production version: `relay models promote V --stage production` first")
    control.deploy_model(version.id)
    _print_split(control.set_traffic(TrafficSplit(stable=version.id)))
    console.print(f"endpoint: {control.endpoint()}/v1/eta  (docs: {control.endpoint()}/docs)")


@app.command("deploy")
def serve_deploy(
    version: Annotated[str, typer.Option(help="Registry version id to deploy")],
    canary: Annotated[
        float, typer.Option(min=0.0, max=100.0, help="Percent of orders for it (0: deploy only)")
    ] = 1.0,
) -> None:
    """Deploy a version beside the stable one and send it --canary percent of orders."""
    control = serving_control()
    _print_split(control.canary(version, canary / 100.0))


@app.command("promote")
def serve_promote() -> None:
    """Move all traffic to the candidate (it becomes stable; the old one keeps running)."""
    control = serving_control()
    _print_split(control.promote())


@app.command("rollback")
def serve_rollback() -> None:
    """Move all traffic back to the stable version, at once."""
    control = serving_control()
    _print_split(control.rollback())


@app.command("status")
def serve_status() -> None:
    """Versions serving, their traffic shares and live metrics."""
    control = serving_control()
    _print_split(control.current_traffic())
    for version, w in control.live_metrics().items():
        out.print(
            f"{version}: {w['requests']} requests, {w['errors']} errors, "
            f"p50 {w.get('p50_ms') or 0:.1f} ms, p99 {w.get('p99_ms') or 0:.1f} ms"
        )


@app.command("rollout")
def serve_rollout(
    version: Annotated[str, typer.Option(help="Registry version id (validated by the gate)")],
    outcome: Annotated[
        Path | None, typer.Option(help="Write the outcome JSON here (what the DAG reads)")
    ] = None,
) -> None:
    """Canary steps judged on live metrics, then promote or roll back (first version: stable).

    Exits 0 whether the candidate was promoted or rolled back; the outcome says which.
    """
    from relay.rollout.driver import run_rollout

    serving_control()
    res = run(lambda: run_rollout(version, emit=lambda m: console.print(m, markup=False)))
    if outcome:
        res.write(outcome)
    out.print(f"{res.outcome}: stable is {res.stable}")


@app.command("restore")
def serve_restore(
    version: Annotated[str, typer.Option(help="Registry version id to serve with all traffic")],
    reason: Annotated[
        str, typer.Option(envvar="RELAY_RESTORE_REASON", help="Recorded in the registry history")
    ] = "",
) -> None:
    """Serve an earlier version with all traffic and point production at it (a rollback)."""
    from relay.rollout.driver import deploy_stable

    serving_control()
    split = run(lambda: deploy_stable(version, reason=reason or f"restored {version}"))
    _print_split(split)
