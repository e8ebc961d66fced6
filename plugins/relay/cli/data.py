"""``relay generate``, ``relay validate`` and ``relay pipeline``: orders into the lake."""

from __future__ import annotations

import functools
from typing import Annotated

import typer

from relay.cli.common import (
    DateOpt,
    DaysOpt,
    check_scenario,
    console,
    days_from,
    end_of,
    progress,
    run,
)


def generate(
    date: DateOpt,
    days: DaysOpt = 1,
    orders: Annotated[int | None, typer.Option(min=1, help="Orders per day")] = None,
    scenario: Annotated[str, typer.Option(help="normal, a drift or a corruption")] = "normal",
) -> None:
    """Generate synthetic orders and land them in the lake's raw layer."""
    from relay.ingest.landing import land_generated_batch

    check_scenario(scenario)
    with progress() as p:
        task = p.add_task(f"generating ({scenario})", total=days)
        for day in days_from(date, days):
            uri, rows = land_generated_batch(day, orders, scenario)
            p.console.print(f"{day}: {rows} orders -> {uri}")
            p.advance(task)


def validate(date: DateOpt, days: DaysOpt = 1) -> None:
    """Validate raw partitions with Great Expectations; valid ones move to the validated layer."""
    from relay.ingest.landing import validate_partition

    with progress() as p:
        task = p.add_task("validating", total=days)
        for day in days_from(date, days):
            verdict = run(functools.partial(validate_partition, day))
            p.console.print(verdict.summary())
            p.advance(task)


def pipeline(
    date: DateOpt, days: DaysOpt = 2, orders: Annotated[int | None, typer.Option(min=1)] = None
) -> None:
    """Run what exists end to end: generate, validate, features, materialize, training set."""
    from relay.features.store import apply, build_training_set, materialize, write_feature_tables
    from relay.ingest.landing import land_generated_batch, validate_partition
    from relay.settings import get_settings

    span = days_from(date, days)
    with progress() as p:
        task = p.add_task("pipeline", total=len(span) * 3 + 3)
        for day in span:
            uri, rows = land_generated_batch(day, orders)
            p.console.print(f"[green]generated[/] {day}: {rows} orders -> {uri}")
            p.advance(task)
            verdict = run(functools.partial(validate_partition, day))
            p.console.print(f"[green]validated[/] {verdict.summary()}")
            p.advance(task)
            run(functools.partial(write_feature_tables, day))
            p.console.print(f"[green]features[/] {day}")
            p.advance(task)
        run(apply)
        p.advance(task)
        stop = end_of(span[-1])
        run(lambda: materialize(stop))
        p.console.print(f"[green]materialized[/] online store up to {stop}")
        p.advance(task)
        uri, rows = run(lambda: build_training_set(span[-1], span[-1]))
        p.console.print(f"[green]training set[/] {rows} rows -> {uri}")
        p.advance(task)
    s = get_settings()
    console.print(f"\nlake: {s.lake.uri}\nreports: {s.reports_dir}/validation/*/index.html")
