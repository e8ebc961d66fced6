"""``relay features …``: the Feast feature store."""

from __future__ import annotations

import datetime as dt
import functools
from typing import Annotated

import typer

from relay.cli.common import DateOpt, DaysOpt, console, days_from, end_of, progress, run

app = typer.Typer(help="Feast feature store operations.", no_args_is_help=True)


@app.command("apply")
def features_apply() -> None:
    """Register the definitions in feature_repo/ (entities, views, services)."""
    from relay.features.store import apply

    with console.status("feast apply"):
        names = run(apply)
    console.print(f"applied: {', '.join(names)}")


@app.command("build")
def features_build(date: DateOpt, days: DaysOpt = 1) -> None:
    """Compute the feature tables for validated days and land them in the lake."""
    from relay.features.store import write_feature_tables

    with progress() as p:
        task = p.add_task("feature tables", total=days)
        for day in days_from(date, days):
            written = run(functools.partial(write_feature_tables, day))
            for name, uri in written.items():
                p.console.print(f"{day}: {name} -> {uri}")
            p.advance(task)


@app.command("materialize")
def features_materialize(
    end: DateOpt,
    start: Annotated[
        dt.datetime | None,
        typer.Option(formats=["%Y-%m-%d"], help="Backfill from this day; default: incremental"),
    ] = None,
) -> None:
    """Load feature values up to the end of --end into the online store."""
    from relay.clock import as_utc
    from relay.features.store import materialize

    stop = end_of(end.date())
    begin = as_utc(start) if start else None
    with console.status("materializing"):
        done = run(lambda: materialize(stop, begin))
    for view, (a, b) in done.items():
        console.print(f"{view}: {a} -> {b}")


@app.command("training-set")
def features_training_set(start: DateOpt, end: DateOpt) -> None:
    """Build a point-in-time-correct training set for the orders of --start..--end."""
    from relay.features.store import build_training_set

    with console.status("building training set (DuckDB point-in-time join)"):
        uri, rows = run(lambda: build_training_set(start.date(), end.date()))
    console.print(f"{rows} rows -> {uri}")
    typer.echo(uri)


@app.command("skew")
def features_skew(
    date: DateOpt,
    orders_date: Annotated[
        dt.datetime | None,
        typer.Option(
            formats=["%Y-%m-%d"],
            help="Day the served orders were created (a replay's); default: --date",
        ),
    ] = None,
    out: Annotated[
        str | None,
        typer.Option(help="HTML report; default {reports}/skew/{date}.html"),
    ] = None,
) -> None:
    """Compare what each order served on --date was given with its point-in-time training row:
    per feature, the share of served values that differ (HTML report)."""
    from pathlib import Path

    from relay.features.skew import skew_for_day, write_skew_report
    from relay.settings import get_settings

    day = date.date()
    with console.status(f"rebuilding the training rows of the orders served on {day}"):
        skew = run(lambda: skew_for_day(day, orders_date.date() if orders_date else None))
    page = write_skew_report(Path(out or get_settings().reports_dir / "skew" / f"{day}.html"), skew)
    for row in skew.table():
        gap = "" if row["max_abs_diff"] is None else f"  (largest {row['max_abs_diff']:.4g})"
        console.print(
            f"{row['feature']:<28} {row['rate']:>7.1%} of {row['compared']:,} differ{gap}",
            markup=False,
            highlight=False,
        )
    console.print(f"{'no skew' if skew.clean else 'SKEW'}: {skew.orders:,} orders; report {page}")
    if not skew.clean:
        raise typer.Exit(1)
