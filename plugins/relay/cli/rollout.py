"""``relay rollout …``: start, tick, inspect and abort rollouts driven by the reconciler.

``start``, ``tick`` and ``abort`` move traffic, so they join the running Ray cluster like
``relay serve``; ``status`` and ``history`` only read the registry's store. The cluster's
rollout controller (:mod:`relay.rollout.runner`) ticks on its own; ``tick`` runs one by hand.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from relay.cli.common import console, fail, out, run
from relay.cli.serve import serving_control

if TYPE_CHECKING:
    from relay.rollout.record import Rollout

app = typer.Typer(
    help="Rollouts: a candidate's persisted way into production, one reconciler tick at a time.",
    no_args_is_help=True,
)

IdOpt = Annotated[str | None, typer.Argument(help="Rollout id; the active rollout by default")]


def _emit(line: str) -> None:
    console.print(line, markup=False)


def _print_record(r: Rollout) -> None:
    from relay.rollout.guarding import Guards, describe_guard
    from relay.rollout.reconcile import describe
    from relay.rollout.store import RolloutStore

    out.print(f"{r.id}: {r.candidate} against {r.stable}, {r.state.value}", markup=False)
    lease = f"{r.lease.owner} until {r.lease.expires_at:%Y-%m-%d %H:%M:%S}" if r.lease else "none"
    out.print(f"  traffic: {describe(r.traffic)}; lease: {lease}", markup=False)
    for i, step in enumerate(r.plan.steps):
        here = " <- current" if i == r.step and not r.state.final else ""
        out.print(
            f"  step {i}: {step.describe()}, {step.min_duration_s:g}-{step.max_duration_s:g} s"
            f"{here}",
            markup=False,
        )
        for verdict in (v for v in r.verdicts if v.step == i):
            out.print(f"    {verdict.action.value} at {verdict.decided_at:%H:%M:%S}", markup=False)
            for reason in verdict.reasons:
                out.print(f"      {reason}", markup=False)
    for event in r.history:
        if event.action in ("start", "abort"):
            out.print(f"  {event.action} by {event.by}: {event.reason}", markup=False)
    guard, _ = Guards(RolloutStore()).read()
    if guard is not None and guard.rollout_id == r.id:  # the production guard of its promotion
        for line in describe_guard(guard):
            out.print(f"  {line}", markup=False)


@app.command("start")
def rollout_start(
    version: Annotated[str, typer.Argument(help="The candidate version (Validated)")],
    forced: Annotated[
        bool, typer.Option(help="It was forced past a rejecting gate: capped until judged")
    ] = False,
) -> None:
    """Start a rollout of VERSION against the serving version; the cluster's rollout
    controller (started if none runs) walks it through its steps."""
    from relay.rollout.controller import start_rollout_record
    from relay.rollout.runner import ensure_controller

    serving_control()
    ensure_controller()
    record = run(lambda: start_rollout_record(version, forced=forced))
    out.print(f"started {record.id}: {record.candidate} against {record.stable}")
    out.print("the rollout controller walks it; `relay rollout status` shows where it is")


@app.command("tick")
def rollout_tick() -> None:
    """Run one reconciler tick: heal traffic, judge the step, advance, hold or end it."""
    from relay.rollout.controller import reconcile_once

    serving_control()
    result = run(lambda: reconcile_once(emit=_emit))
    if result is not None:
        action = result.action.value if result.action else "nothing judged"
        out.print(f"{result.rollout.id}: {action}; now {result.rollout.state.value}")


@app.command("status")
def rollout_status(rollout_id: IdOpt = None) -> None:
    """The rollout's state, plan, traffic and every step's verdict lines."""
    from relay.rollout.store import RolloutStore

    store = RolloutStore()
    stored = run(lambda: store.get(rollout_id) if rollout_id else store.latest())
    if stored is None:
        raise fail("no rollout yet: `relay rollout start VERSION`")
    _print_record(stored.rollout)


@app.command("history")
def rollout_history() -> None:
    """Every rollout, newest first, with its steps and verdicts."""
    from relay.rollout.store import RolloutStore

    rollouts = run(lambda: RolloutStore().history())
    if not rollouts:
        out.print("no rollouts")
    for rollout in rollouts:
        _print_record(rollout)


@app.command("abort")
def rollout_abort(
    reason: Annotated[str, typer.Option(help="Why; recorded with who aborted it")],
    rollout_id: IdOpt = None,
) -> None:
    """Abort the live rollout: recorded, stable restored through the lease, not undone."""
    from relay.rollout.controller import abort_rollout
    from relay.rollout.lease import process_owner

    serving_control()
    ended = run(lambda: abort_rollout(process_owner("cli"), reason, rollout_id=rollout_id))
    out.print(f"{ended.id} aborted: {ended.serving_after} serves all orders")


@app.command("controller")
def rollout_controller(
    stop: Annotated[
        bool, typer.Option(help="Stop it (a live rollout waits until one runs)")
    ] = False,
) -> None:
    """Start the cluster's rollout controller if none runs (or --stop it); show its state."""
    from relay.rollout.runner import ensure_controller, stop_controller

    serving_control()
    if stop:
        out.print("stopped" if stop_controller() else "no controller was running")
        return
    import ray

    state = ray.get(ensure_controller().status.remote())
    out.print(
        f"rollout controller (pid {state['pid']}): {state['ticks']} ticks, {state['errors']} failed"
    )
    for line in state["last"]:
        out.print(f"  {line}", markup=False)
