"""``relay serve …``: the Ray Serve ETA endpoint.

Every command that moves traffic takes the one traffic lease and records the move in the
registry (:mod:`relay.rollout.manual`). ``rollout`` and ``restore`` are also the commands of
``ray_jobs/rollout.py``, so the DAGs run them as Ray jobs on the cluster that serves.
"""

from __future__ import annotations

import datetime as dt
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
    """By hand: a version beside the stable one with --canary percent of orders (not judged:
    `relay rollout start` judges). Refused while a rollout owns the traffic."""
    from relay.rollout.manual import canary as manual_canary

    serving_control()
    _print_split(run(lambda: manual_canary(version, canary / 100.0)))


@app.command("promote")
def serve_promote() -> None:
    """By hand: the candidate takes all traffic and becomes production (the old stable keeps
    running for a quick rollback). Refused while a rollout owns the traffic."""
    from relay.rollout.manual import promote_candidate

    serving_control()
    _print_split(run(promote_candidate))


@app.command("rollback")
def serve_rollback(
    reason: Annotated[str, typer.Option(help="Recorded in the registry and the rollout")] = "",
) -> None:
    """All traffic back to the stable version at once; a live rollout is aborted (recorded)."""
    from relay.rollout.manual import restore

    control = serving_control()
    split = control.current_traffic()
    if split is None:
        raise fail("nothing is deployed: `relay serve restore --version V` first")
    done = run(lambda: restore(split.stable, reason=reason or "rolled back by hand"))
    if done.aborted is not None:
        out.print(f"aborted rollout {done.aborted.id} of {done.aborted.candidate}")
    _print_split(done.split)


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
        str | None,
        typer.Option(help="Write what was begun as JSON here, a path or s3:// (the DAG reads it)"),
    ] = None,
) -> None:
    """Put a version on its way: the first one serves at once; a later one starts a rollout
    that the cluster's controller walks through its steps (returns at once).

    `relay rollout status` follows it; the training DAG waits for its end in the triggerer.
    """
    import json

    from relay.flows import run_store
    from relay.rollout.runner import begin, ensure_controller

    serving_control()
    ensure_controller()
    res = run(lambda: begin(version))
    if outcome:
        run_store.write_text(outcome, json.dumps(res.to_dict(), indent=2))
    if res.rollout_id:
        out.print(f"{res.outcome} rollout {res.rollout_id}: {version} against {res.stable}")
    else:
        out.print(f"{res.outcome}: stable is {res.stable}")


@app.command("restore")
def serve_restore(
    version: Annotated[str, typer.Option(help="Registry version id to serve with all traffic")],
    reason: Annotated[
        str, typer.Option(envvar="RELAY_RESTORE_REASON", help="Recorded in the registry history")
    ] = "",
    by: Annotated[
        str, typer.Option(envvar="RELAY_RESTORE_BY", help="Who restores (recorded); this process")
    ] = "",
    force: Annotated[
        bool, typer.Option(help="Serve it even if it was rolled back before (a person's choice)")
    ] = False,
) -> None:
    """Serve an earlier version with all traffic and point production at it (a rollback).

    A live rollout is aborted first, recording who and why; nothing undoes the restore. The
    version replaced is marked rolled back: no automatic move serves it again.
    """
    from relay.rollout.manual import restore
    from relay.rollout.runner import ensure_controller

    serving_control()
    done = run(
        lambda: restore(version, by=by or None, reason=reason or f"restored {version}", force=force)
    )
    ensure_controller()  # it finishes what an ended rollout lacks, and watches production
    if done.aborted is not None:
        out.print(f"aborted rollout {done.aborted.id} of {done.aborted.candidate}")
    _print_split(done.split)


@app.command("fault")
def serve_fault(
    version: Annotated[
        str | None, typer.Option(help="The version whose calls the fault hits")
    ] = None,
    delay_ms: Annotated[float, typer.Option(min=0.0, help="Added to each of its calls")] = 0.0,
    error_rate: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of its calls that fail")
    ] = 0.0,
    duration_s: Annotated[
        float, typer.Option("--for", min=1.0, help="Seconds until it ends")
    ] = 300,
    clear: Annotated[bool, typer.Option(help="End every injected fault now")] = False,
) -> None:
    """A drill: delay or fail one version's calls on every router (service-mesh style fault
    injection), to see the rollout controller and the production guard react."""
    control = serving_control()
    if clear:
        control.clear_faults()
        out.print("faults cleared")
        return
    if version is None:
        raise fail("--version is required (or --clear)")
    fault = control.inject_fault(version, delay_ms, error_rate, duration_s)
    out.print(
        f"{version}: +{fault.delay_ms:g} ms, {fault.error_rate:.0%} failing, for {duration_s:g} s"
    )


@app.command("compact")
def serve_compact(
    hours: Annotated[
        int | None,
        typer.Option(
            min=1, help="Whole hours back from --until (default RELAY_SERVING__LOG_COMPACT_*)"
        ),
    ] = None,
    until: Annotated[
        dt.datetime | None,
        typer.Option(
            formats=["%Y-%m-%dT%H", "%Y-%m-%dT%H:%M", "%Y-%m-%d"],
            help="UTC; the hours that ended by then (default: now)",
        ),
    ] = None,
) -> None:
    """Compact the serving log: merge each whole hour's small files into one file sorted by
    time (the hourly monitoring DAG does this for its last hours; this is for a backlog)."""
    from relay.data.lake import Lake
    from relay.serve.log_compact import compact_before

    end = (until or dt.datetime.now(dt.UTC)).replace(tzinfo=dt.UTC)
    for c in run(lambda: compact_before(Lake(), end, hours)):
        what = f"{c.inputs} files -> {c.rows} rows" if c.uri else "nothing to merge"
        out.print(f"{c.date} {c.hour:02d}h  {what}  ({c.removed} files removed)")
