"""``relay stack …`` and ``relay demo``: the local stack and the life cycle played on it."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from relay.cli.common import console, out, run

app = typer.Typer(
    help="The local stack: Airflow, a Ray head, the Serve endpoint.", no_args_is_help=True
)

#: The order in ``make up``'s curl line: a courier and a merchant of that zone in the
#: generated world, so every online feature is found.
EXAMPLE_ORDER = {
    "order_id": "o-1",
    "courier_id": "C00012",
    "merchant_id": "M00012",
    "zone_id": "Z001",
    "distance_km": 3.2,
}


@app.command("up")
def stack_up(
    first_run: Annotated[
        bool, typer.Option("--first-run/--no-first-run", help="Train and serve a first model")
    ] = True,
) -> None:
    """Start Ray (dashboard, Jobs API, Serve), Airflow (api-server, scheduler, dag-processor,
    triggerer), then trigger a first eta_training run and wait for it."""
    from relay.infra import airflow_services, stack
    from relay.settings import get_settings

    s = get_settings()
    info = run(
        lambda: stack.up(s, emit=lambda m: console.print(m, markup=False), first_run=first_run)
    )
    state = info.get("first_run_state")
    if state and state != "success":
        console.print(f"[bold red]first eta_training run {state}[/]: see the Airflow UI")
    endpoint = s.serving.url
    body = json.dumps(EXAMPLE_ORDER, separators=(",", ":"))
    out.print(
        f"\nAirflow      {s.airflow.api_url}  (login admin / {airflow_services.admin_password(s)})"
        f"\nRay          {s.ray.dashboard_url}"
        f"\nEndpoint     {endpoint}/v1/eta   (docs: {endpoint}/docs)"
        f"\n\ncurl -s -X POST {endpoint}/v1/eta -H 'Content-Type: application/json' "
        f"-d '{body}'"
        f"\n\nwhat listens where: relay stack ports"
        f"\nstop everything: make down   (logs: {s.home}/logs)",
        markup=False,
        highlight=False,
    )
    if state and state != "success":
        raise typer.Exit(1)


@app.command("down")
def stack_down() -> None:
    """Stop every process `relay stack up` started (by PID)."""
    from relay.infra import processes

    stopped = processes.stop_all()
    console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@app.command("ports")
def stack_ports() -> None:
    """What the stack's processes listen on, and what guards each port reachable from the
    network."""
    from relay.infra.exposure import listeners

    found = listeners()
    if not found:
        console.print("nothing is listening: is the stack up? (make up)")
        return
    for item in found:
        where = "loopback" if item.loopback else "NETWORK "
        out.print(
            f"{where}  {item.host:>22}:{item.port:<5}  {item.process:<20}  {item.guard}",
            markup=False,
            highlight=False,
        )


def demo() -> None:
    """Play the life cycle on the running stack: drift → retrain → canary → promoted; a bad
    model stopped by the gate, then rolled back by live metrics when forced into canary."""
    from relay.sim.demo import play

    summary = run(lambda: play(emit=lambda m: out.print(m, markup=False, highlight=False)))
    ok = (
        summary.get("v2_outcome") == "promoted"
        and summary.get("gate_rejected")
        and summary.get("forced_outcome") == "rolled_back"
    )
    if not ok:
        console.print(f"[bold red]demo did not end as expected:[/] {summary}")
        raise typer.Exit(1)
