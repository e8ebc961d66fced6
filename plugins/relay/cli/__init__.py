"""The ``relay`` command line: one typed command per stage, one module per command group."""

from __future__ import annotations

import logging
import warnings
from typing import Annotated

import typer

from relay.cli import (
    data,
    events,
    experiment,
    features,
    model,
    monitor,
    registry,
    replay,
    rollout,
    serve,
    stack,
)

app = typer.Typer(help="Relay: ETA data, features and models.", no_args_is_help=True)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING)
    if not verbose:
        # Third-party deprecation notices (ibis, Feast) say nothing a Relay user can act on.
        # GX routes warnings into logging ("py.warnings"), so filter both ways.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        logging.getLogger("py.warnings").setLevel(logging.ERROR)


# In the order data flows: the order `relay --help` lists them in.
for command in (
    data.generate,
    data.validate,
    data.pipeline,
    model.tune,
    model.train,
    model.register,
    model.evaluate,
    replay.replay,
    stack.demo,
):
    app.command()(command)
app.add_typer(features.app, name="features")
app.add_typer(events.app, name="events")
app.add_typer(registry.app, name="models")
app.add_typer(serve.app, name="serve")
app.add_typer(rollout.app, name="rollout")
app.add_typer(experiment.app, name="experiment")
app.add_typer(monitor.app, name="monitor")
app.add_typer(stack.app, name="stack")
