"""The ``relay`` command line: one typed command per stage."""

from __future__ import annotations

import datetime as dt
import functools
import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from relay.errors import RelayError

app = typer.Typer(help="Relay: ETA data, validation and features.", no_args_is_help=True)
features_app = typer.Typer(help="Feast feature store operations.", no_args_is_help=True)
app.add_typer(features_app, name="features")
console = Console(stderr=True, soft_wrap=True)

T = TypeVar("T")

DateOpt = Annotated[dt.datetime, typer.Option(formats=["%Y-%m-%d"], help="Day (UTC), YYYY-MM-DD")]
DaysOpt = Annotated[int, typer.Option(min=1, help="Number of consecutive days from --date")]


def _days(date: dt.datetime, days: int) -> list[dt.date]:
    return [date.date() + dt.timedelta(days=i) for i in range(days)]


@contextmanager
def _progress() -> Iterator[Progress]:
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        yield progress


def _run(fn: Callable[[], T]) -> T:
    """Run a step; a RelayError becomes a readable message and exit code 1."""
    try:
        return fn()
    except RelayError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING)
    if not verbose:
        # Third-party deprecation notices (ibis, Feast) say nothing a Relay user can act on.
        # GX routes warnings into logging ("py.warnings"), so filter both ways.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        logging.getLogger("py.warnings").setLevel(logging.ERROR)


@app.command()
def generate(
    date: DateOpt,
    days: DaysOpt = 1,
    orders: Annotated[int | None, typer.Option(min=1, help="Orders per day")] = None,
    scenario: Annotated[str, typer.Option(help="normal, a drift or a corruption")] = "normal",
) -> None:
    """Generate synthetic orders and land them in the lake's raw layer."""
    from relay.data.scenarios import SCENARIOS
    from relay.ingest import land_generated_batch

    if scenario not in SCENARIOS:
        raise typer.BadParameter(f"choose one of {', '.join(SCENARIOS)}", param_hint="--scenario")
    with _progress() as p:
        task = p.add_task(f"generating ({scenario})", total=days)
        for day in _days(date, days):
            uri, rows = land_generated_batch(day, orders, scenario)
            p.console.print(f"{day}: {rows} orders -> {uri}")
            p.advance(task)


@app.command()
def validate(date: DateOpt, days: DaysOpt = 1) -> None:
    """Validate raw partitions with Great Expectations; valid ones move to the validated layer."""
    from relay.ingest import validate_partition

    with _progress() as p:
        task = p.add_task("validating", total=days)
        for day in _days(date, days):
            verdict = _run(functools.partial(validate_partition, day))
            p.console.print(verdict.summary())
            p.advance(task)


@features_app.command("apply")
def features_apply() -> None:
    """Register the definitions in feature_repo/ (entities, views, services)."""
    from relay.features.store import apply

    with console.status("feast apply"):
        names = _run(apply)
    console.print(f"applied: {', '.join(names)}")


@features_app.command("build")
def features_build(date: DateOpt, days: DaysOpt = 1) -> None:
    """Compute the feature tables for validated days and land them in the lake."""
    from relay.features.store import write_feature_tables

    with _progress() as p:
        task = p.add_task("feature tables", total=days)
        for day in _days(date, days):
            written = _run(functools.partial(write_feature_tables, day))
            for name, uri in written.items():
                p.console.print(f"{day}: {name} -> {uri}")
            p.advance(task)


@features_app.command("materialize")
def features_materialize(
    end: DateOpt,
    start: Annotated[
        dt.datetime | None,
        typer.Option(formats=["%Y-%m-%d"], help="Backfill from this day; default: incremental"),
    ] = None,
) -> None:
    """Load feature values up to the end of --end into the online store."""
    from relay.features.store import materialize

    stop = dt.datetime.combine(end.date() + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    begin = start.replace(tzinfo=dt.UTC) if start else None
    with console.status("materializing"):
        done = _run(lambda: materialize(stop, begin))
    for view, (a, b) in done.items():
        console.print(f"{view}: {a} -> {b}")


@features_app.command("training-set")
def features_training_set(start: DateOpt, end: DateOpt) -> None:
    """Build a point-in-time-correct training set for the orders of --start..--end."""
    from relay.features.store import build_training_set

    with console.status("building training set (DuckDB point-in-time join)"):
        uri, rows = _run(lambda: build_training_set(start.date(), end.date()))
    console.print(f"{rows} rows -> {uri}")
    typer.echo(uri)


@app.command()
def pipeline(
    date: DateOpt, days: DaysOpt = 2, orders: Annotated[int | None, typer.Option(min=1)] = None
) -> None:
    """Run what exists end to end: generate, validate, features, materialize, training set."""
    from relay.features.store import apply, build_training_set, materialize, write_feature_tables
    from relay.ingest import land_generated_batch, validate_partition
    from relay.settings import get_settings

    span = _days(date, days)
    with _progress() as p:
        task = p.add_task("pipeline", total=len(span) * 3 + 3)
        for day in span:
            uri, rows = land_generated_batch(day, orders)
            p.console.print(f"[green]generated[/] {day}: {rows} orders -> {uri}")
            p.advance(task)
            verdict = _run(functools.partial(validate_partition, day))
            p.console.print(f"[green]validated[/] {verdict.summary()}")
            p.advance(task)
            _run(functools.partial(write_feature_tables, day))
            p.console.print(f"[green]features[/] {day}")
            p.advance(task)
        _run(apply)
        p.advance(task)
        stop = dt.datetime.combine(span[-1] + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
        _run(lambda: materialize(stop))
        p.console.print(f"[green]materialized[/] online store up to {stop}")
        p.advance(task)
        uri, rows = _run(lambda: build_training_set(span[-1], span[-1]))
        p.console.print(f"[green]training set[/] {rows} rows -> {uri}")
        p.advance(task)
    s = get_settings()
    console.print(f"\nlake: {s.lake.uri}\nreports: {s.reports_dir}/validation/*/index.html")


if __name__ == "__main__":  # pragma: no cover, entry point
    app()
