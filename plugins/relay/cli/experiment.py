"""``relay experiment …``: start, inspect and stop champion/challenger experiments.

``start`` and ``stop`` move (or will move) traffic, so they join the running Ray cluster like
``relay rollout`` and make sure the cluster's controller runs: it ticks the experiment from its
start to its verdict. ``status`` only reads the registry's store. An experiment names a winner
and never promotes it: ``relay rollout start VERSION`` does that.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from relay.cli.common import fail, out, run
from relay.cli.serve import serving_control

if TYPE_CHECKING:
    from relay.rollout.experiment_record import Experiment

app = typer.Typer(
    help="Experiments: a variant against the control on a share of orders, judged by a spec.",
    no_args_is_help=True,
)

IdOpt = Annotated[
    str | None, typer.Argument(help="Experiment id; the live (or latest) experiment by default")
]


def _print_record(e: Experiment) -> None:
    from relay.rollout.experiment_record import traffic_of
    from relay.rollout.reconcile import describe

    spec = e.spec
    out.print(
        f"{e.id}: variant {spec.variant.name} ({spec.variant.version}) against control "
        f"{spec.control.version}, {e.state.value}",
        markup=False,
    )
    out.print(
        f"  {spec.start:%Y-%m-%d %H:%M} to {spec.end:%Y-%m-%d %H:%M} UTC; "
        f"traffic: {describe(traffic_of(e))}",
        markup=False,
    )
    criteria = [f"primary {c.describe()}" for c in spec.primary]
    criteria += [f"secondary {c.describe()}" for c in spec.secondary]
    out.print(f"  criteria: {'; '.join(criteria)}", markup=False)
    out.print(f"  started by {e.started_by} at {e.created_at:%Y-%m-%d %H:%M:%S}", markup=False)
    if e.headline:
        out.print(f"  {e.headline}", markup=False)
    for line in e.verdict:
        out.print(f"    {line}", markup=False)


@app.command("start")
def experiment_start(
    spec_path: Annotated[Path, typer.Argument(help="The experiment spec (YAML)")],
) -> None:
    """Schedule the experiment SPEC_PATH declares; the cluster's controller (started if none
    runs) splits traffic from its start and records the verdict at its end."""
    from relay.rollout.experiment import load_spec
    from relay.rollout.experiment_run import start_experiment
    from relay.rollout.runner import ensure_controller

    spec = run(lambda: load_spec(spec_path))
    serving_control()
    ensure_controller()
    record = run(lambda: start_experiment(spec))
    out.print(
        f"scheduled {record.id}: {spec.variant.version} against {spec.control.version} "
        f"from {spec.start.isoformat()} to {spec.end.isoformat()}"
    )
    out.print("the controller runs it; `relay experiment status` shows the verdict so far")


@app.command("status")
def experiment_status(experiment_id: IdOpt = None) -> None:
    """The experiment's state, traffic, criteria and latest verdict lines."""
    from relay.rollout.experiment_record import ExperimentStore

    store = ExperimentStore()
    stored = run(lambda: store.get(experiment_id) if experiment_id else store.latest())
    if stored is None:
        raise fail("no experiment yet: `relay experiment start SPEC.yaml`")
    _print_record(stored.experiment)


@app.command("stop")
def experiment_stop(
    reason: Annotated[str, typer.Option(help="Why; recorded with who stopped it")],
    experiment_id: IdOpt = None,
) -> None:
    """Stop the live experiment: recorded, all traffic back on the control, no verdict."""
    from relay.rollout.experiment_run import stop_experiment
    from relay.rollout.lease import process_owner
    from relay.rollout.runner import ensure_controller

    serving_control()
    ensure_controller()
    stopped = run(
        lambda: stop_experiment(process_owner("cli"), reason, experiment_id=experiment_id)
    )
    out.print(f"{stopped.id} stopped: {stopped.spec.control.version} serves all orders")
