"""What every ``relay`` command shares: the consoles, the step runner, progress, common options."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from relay.errors import RelayError

console = Console(stderr=True, soft_wrap=True)
# Tables and JSON go to stdout, so they can be piped; progress and errors go to stderr.
out = Console(soft_wrap=True)

T = TypeVar("T")

DateOpt = Annotated[dt.datetime, typer.Option(formats=["%Y-%m-%d"], help="Day (UTC), YYYY-MM-DD")]
DaysOpt = Annotated[int, typer.Option(min=1, help="Number of consecutive days from --date")]
VersionArg = Annotated[str, typer.Argument(help="Version id, e.g. eta_mlp_1.3.0_20261121_1402")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")]


def days_from(date: dt.datetime, days: int) -> list[dt.date]:
    """``days`` consecutive days starting at ``date``'s day."""
    return [date.date() + dt.timedelta(days=i) for i in range(days)]


def end_of(day: dt.date) -> dt.datetime:
    """The end of ``day`` (UTC): midnight of the next day, what materialization runs up to."""
    return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)


def check_scenario(scenario: str | None) -> None:
    """Refuse a scenario the generator does not know, naming the option (exit code 2)."""
    from relay.data.scenarios import SCENARIOS

    if scenario is not None and scenario not in SCENARIOS:
        raise typer.BadParameter(f"choose one of {', '.join(SCENARIOS)}", param_hint="--scenario")


@contextmanager
def progress() -> Iterator[Progress]:
    """A progress bar on stderr that stays on screen when done."""
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bar:
        yield bar


def run(fn: Callable[[], T]) -> T:
    """Run a step; a RelayError becomes a readable message and exit code 1."""
    try:
        return fn()
    except RelayError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc


def fail(message: str) -> typer.Exit:
    """Print ``message`` as an error; the exit (code 1) for the caller to raise."""
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(1)
