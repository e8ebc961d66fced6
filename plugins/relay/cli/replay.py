"""``relay replay``: a day's orders against the ETA endpoint, then their labels."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from relay.cli.common import DateOpt, JsonOpt, check_scenario, out, progress, run

if TYPE_CHECKING:  # pragma: no cover, typing only
    from relay.sim.config import ReplayProgress


def replay(
    date: DateOpt,
    rate: Annotated[float, typer.Option(min=0.01, help="Requests per second")],
    scenario: Annotated[
        str | None,
        typer.Option(
            help="Generate the day under this scenario (normal, a drift or a corruption); "
            "default: the day's raw orders in the lake, else a normal day"
        ),
    ] = None,
    max_orders: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many orders (default 2000)")
    ] = None,
    max_seconds: Annotated[
        float | None,
        typer.Option(min=0.01, help="Stop sending after this many seconds (default 60)"),
    ] = None,
    batch: Annotated[int, typer.Option(min=1, max=256, help="Orders per request")] = 1,
    url: Annotated[
        str | None,
        typer.Option(help="Endpoint, loopback only; default http://{serving host:port}/v1/eta"),
    ] = None,
    label_delay: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            help="Send labels (picked_up, delivered events) during the run, each this many "
            "seconds after its answer; default: all after the run",
        ),
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="Requests in flight at most (default rate/10, 4..64)")
    ] = None,
    skip: Annotated[int, typer.Option(min=0, help="Start after the day's first SKIP orders")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Replay a day's orders at --rate requests/s as an order service would: each order's
    created event, then its ETA request; then its pickup and delivery events (the labels)."""
    from relay.sim.config import ReplayConfig
    from relay.sim.replay import replay as run_replay

    check_scenario(scenario)
    # Unset bounds keep ReplayConfig's defaults (the numbers the help text names).
    given = {"max_orders": max_orders, "max_seconds": max_seconds, "concurrency": concurrency}
    bounds: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    config = run(
        lambda: ReplayConfig(
            date=date.date(),
            rate=rate,
            scenario=scenario,
            batch=batch,
            url=url,
            label_delay_s=label_delay,
            skip=skip,
            **bounds,
        )
    )
    with progress() as p:
        task = p.add_task("replaying", total=None)

        def show(s: ReplayProgress) -> None:
            p.update(
                task,
                total=s.planned_orders,
                completed=s.orders_sent,
                description=f"replay: {s.ok} ok, {s.client_errors} 4xx, {s.server_errors} 5xx, "
                f"{s.failed} failed, {s.labels_sent} labels",
            )

        result = run(lambda: run_replay(config, on_progress=show))
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    else:
        out.print(result.summary(), markup=False, highlight=False)
