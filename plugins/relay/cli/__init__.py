"""The ``relay`` command line: one typed command per stage."""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from relay.errors import RelayError

if TYPE_CHECKING:  # pragma: no cover, typing only
    from relay.registry import ModelVersion, Registry

app = typer.Typer(help="Relay: ETA data, features and models.", no_args_is_help=True)
features_app = typer.Typer(help="Feast feature store operations.", no_args_is_help=True)
app.add_typer(features_app, name="features")
models_app = typer.Typer(
    help="The model registry: versions, stages, lineage.", no_args_is_help=True
)
app.add_typer(models_app, name="models")
serve_app = typer.Typer(
    help="The Ray Serve ETA endpoint: deploy, canary, promote, roll back.", no_args_is_help=True
)
app.add_typer(serve_app, name="serve")
stack_app = typer.Typer(
    help="The local stack: Airflow, a Ray head, the Serve endpoint.", no_args_is_help=True
)
app.add_typer(stack_app, name="stack")
console = Console(stderr=True, soft_wrap=True)
# Tables and JSON go to stdout, so they can be piped; progress and errors go to stderr.
out = Console(soft_wrap=True)

REJECTED_EXIT_CODE = 3
"""Exit code of ``relay evaluate`` when the gate rejects the version (errors exit 1)."""
#: The order in ``make up``'s curl line: a courier and a merchant of that zone in the
#: generated world, so every online feature is found.
EXAMPLE_ORDER = {
    "order_id": "o-1",
    "courier_id": "C00012",
    "merchant_id": "M00012",
    "zone_id": "Z001",
    "distance_km": 3.2,
}

T = TypeVar("T")

DateOpt = Annotated[dt.datetime, typer.Option(formats=["%Y-%m-%d"], help="Day (UTC), YYYY-MM-DD")]
DaysOpt = Annotated[int, typer.Option(min=1, help="Number of consecutive days from --date")]


class PointerStage(StrEnum):
    """Stages with a pointer (the registry's ``POINTER_STAGES``)."""

    STAGING = "staging"
    CANARY = "canary"
    PRODUCTION = "production"


class Bump(StrEnum):
    MAJOR = "major"
    MINOR = "minor"
    PATCH = "patch"


VersionArg = Annotated[str, typer.Argument(help="Version id, e.g. eta_mlp_1.3.0_20261121_1402")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")]


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
    from relay.ingest.landing import land_generated_batch

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
    from relay.ingest.landing import validate_partition

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
    from relay.ingest.landing import land_generated_batch, validate_partition
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


@app.command()
def tune(
    training_set: Annotated[str, typer.Option(help="Training-set Parquet")],
    output: Annotated[Path, typer.Option(help="Folder for best_config.json")],
    trials: Annotated[
        int | None, typer.Option(min=1, help="Default: RELAY_TRAIN__TUNE_TRIALS")
    ] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Epochs per trial (ASHA's max_t)")] = 6,
) -> None:
    """Search hyperparameters with Ray Tune (Optuna TPE + ASHA); Ray shows trial progress."""
    from relay.infra.cluster import connect
    from relay.model.ray_tune import run_tune

    connect()
    _free_idle_serving()
    res = run_tune(training_set, output, trials, epochs)
    for t in res.trials:
        note = "stopped early by ASHA" if t.stopped_early else "ran to the end"
        console.print(f"trial: {t.epochs} epochs, val_loss {t.val_loss}, {note}: {t.config}")
    console.print(f"best config -> {res.best_config_path}")
    typer.echo(res.best_config_path)


def _free_idle_serving() -> None:
    # Serve replicas of a version that takes no traffic hold CPUs the workers wait for.
    from relay.rollout.driver import free_idle_models

    free_idle_models(emit=console.print)


@app.command()
def train(
    training_set: Annotated[str, typer.Option(help="Training-set Parquet")],
    output: Annotated[Path, typer.Option(help="Folder for model.pt, preprocessor.json, metrics")],
    config: Annotated[Path | None, typer.Option(help="Hyperparameters JSON (from tune)")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Ray Train workers")] = None,
    epochs: Annotated[int | None, typer.Option(min=1)] = None,
    gpu: Annotated[bool | None, typer.Option("--gpu/--cpu", help="Default: GPU if present")] = None,
    name: Annotated[str, typer.Option(help="Run name; the same name resumes")] = "eta_train",
    patience: Annotated[int | None, typer.Option(min=1, help="Early-stopping patience")] = None,
    storage_path: Annotated[
        str | None, typer.Option(help="Checkpoints: a path or s3://; default {home}/ray_results")
    ] = None,
) -> None:
    """Train the ETA model with Ray Train (data-parallel, checkpoint per epoch)."""
    from relay.infra.cluster import connect
    from relay.model.ray_train import TrainRequest, run_training

    connect()
    _free_idle_serving()
    hp = json.loads(config.read_text()) if config else {}
    res = run_training(
        TrainRequest(
            training_set=training_set,
            output_dir=output,
            name=name,
            num_workers=workers,
            use_gpu=gpu,
            max_epochs=epochs,
            patience=patience,
            storage_path=storage_path,
            hyperparameters=hp,
        )
    )
    m = res.metrics
    console.print(
        f"trained: epoch {m.get('epoch')}, val MAE {m.get('val_mae', float('nan')):.2f} min, "
        f"{res.samples_per_second:,.0f} samples/s -> {output}\n"
        f"holdout: {res.holdout_path}\nnext: relay register --output {output} "
        f"--training-set {training_set}"
    )
    typer.echo(str(output))


@app.command()
def register(
    output: Annotated[Path, typer.Option(help="Training run's output folder (model.pt, …)")],
    training_set: Annotated[str, typer.Option(help="Training-set Parquet the run read")],
    partitions: Annotated[
        list[str] | None,
        typer.Option(help="Lake partitions behind the training set; repeat or comma-separate"),
    ] = None,
    bump: Annotated[Bump, typer.Option(help="Part of the version to increase")] = Bump.MINOR,
    report: Annotated[Path | None, typer.Option(help="Evaluation report to store with it")] = None,
    owner: Annotated[str, typer.Option(help="Who registers it")] = "relay",
    parent: Annotated[
        str | None, typer.Option(help="Parent version; default: the production version")
    ] = None,
) -> None:
    """Register a finished training run as the model's next version (state trained)."""
    from relay.model.registration import register_trained

    parts = [p.strip() for item in partitions or [] for p in item.split(",") if p.strip()]
    version = _run(
        lambda: register_trained(
            output,
            training_set_uri=training_set,
            data_partitions=parts,
            parent=parent,
            bump=bump.value,
            evaluation_report=report,
            owner=owner,
        )
    )
    console.print(f"registered {version.id} ({version.state.value})")
    typer.echo(version.id)


@app.command()
def evaluate(
    version: Annotated[str, typer.Option(help="Version id to evaluate (state trained)")],
    holdout: Annotated[str, typer.Option(help="Holdout Parquet: a path or s3:// URI")],
    report: Annotated[
        Path | None, typer.Option(help="HTML report; default {reports}/evaluation/{version}.html")
    ] = None,
) -> None:
    """Gate a version against the production champion; exit 3 when the gate rejects it."""
    from relay.evaluate.challenger import evaluate_version

    with console.status(f"evaluating {version}"):
        outcome = _run(lambda: evaluate_version(version, holdout, report_path=report))
    verdict = outcome.verdict
    style = "green" if verdict.passed else "bold red"
    out.print(f"[{style}]{escape(verdict.summary())}[/]", highlight=False)
    out.print(f"state: {outcome.version.state.value}\nreport: {outcome.result.report}")
    if not verdict.passed:
        raise typer.Exit(REJECTED_EXIT_CODE)


def _registry() -> Registry:
    from relay.registry import Registry

    return _run(Registry)


def _mae(version: ModelVersion) -> str:
    metrics = version.training.metrics
    value = metrics.get("mae_minutes", metrics.get("val_mae"))
    return "" if value is None else f"{value:.2f}"


@models_app.command("list")
def models_list(
    name: Annotated[str | None, typer.Option(help="Only this model")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Registered versions: id, version, state, stage and validation MAE."""
    from rich.table import Table

    registry = _registry()
    versions = _run(lambda: registry.list_versions(name))
    if as_json:
        typer.echo(json.dumps([v.model_dump(mode="json") for v in versions], indent=2))
        return
    if not versions:
        console.print(f"no model versions in {registry.store.uri}")
        return
    table = Table("id", "version", "state", "stage", "MAE (val)", title=registry.store.uri)
    for v in versions:
        stage = v.stage.value if v.stage else ""
        table.add_row(v.id, v.version, v.state.value, stage, _mae(v))
    table.columns[0].no_wrap = True
    out.print(table)


@models_app.command("show")
def models_show(version: VersionArg) -> None:
    """A version's metadata as JSON (artifacts, training, lineage, history)."""
    registry = _registry()
    record = _run(lambda: registry.get(version))
    typer.echo(record.model_dump_json(indent=2))


@models_app.command("promote")
def models_promote(
    version: VersionArg,
    stage: Annotated[PointerStage, typer.Option(help="Stage to point at the version")],
    expect: Annotated[
        str | None,
        typer.Option(help="Version the stage must point to now (refused otherwise)"),
    ] = None,
    reason: Annotated[str, typer.Option(help="Recorded in the history")] = "",
) -> None:
    """Point a stage at a version (compare-and-set: refused if the stage moved meanwhile)."""
    registry = _registry()
    pointer = _run(lambda: registry.promote(version, stage.value, expect, reason))
    previous = pointer.previous_version_id or "no version"
    console.print(f"{pointer.stage.value}: {previous} -> {pointer.version_id}")


@models_app.command("rollback")
def models_rollback(
    stage: Annotated[
        PointerStage, typer.Option(help="Stage to roll back")
    ] = PointerStage.PRODUCTION,
    name: Annotated[str | None, typer.Option(help="Model name; default the configured one")] = None,
    reason: Annotated[str, typer.Option(help="Recorded in the history")] = "",
) -> None:
    """Point a stage back at the version it pointed to before the last promotion."""
    registry = _registry()
    pointer = _run(lambda: registry.rollback(stage.value, name, reason))
    console.print(f"{pointer.stage.value}: rolled back to {pointer.version_id}")


@models_app.command("lineage")
def models_lineage(version: VersionArg, as_json: JsonOpt = False) -> None:
    """The version's lineage, then its parent's, and so on."""
    registry = _registry()
    chain = _run(lambda: registry.lineage(version))
    if as_json:
        typer.echo(json.dumps([r.model_dump(mode="json") for r in chain], indent=2))
        return
    for i, r in enumerate(chain):
        lin = r.lineage
        if i:
            out.print("  ↓ parent")
        created = f"{r.created_at:%Y-%m-%d %H:%M}"
        out.print(f"[bold]{escape(r.version_id)}[/]  {r.state.value}  created {created}")
        for key, value in (
            ("features", lin.feature_service),
            ("partitions", ", ".join(lin.data_partitions) or "-"),
            ("code", lin.code_commit or "-"),
            ("config", lin.config_hash or "-"),
            ("parent", lin.parent_version_id or "-"),
        ):
            out.print(f"    {key:<11}{value}", markup=False, highlight=False)


def _serving() -> Any:
    """Join the running Ray cluster (serving must outlive the CLI); return relay.serve.control."""
    from relay.infra.cluster import connect
    from relay.serve import control

    try:
        connect(require_running=True)
    except ConnectionError as exc:
        console.print(
            "[bold red]error:[/] no running Ray cluster: start one with `make up` or "
            "`ray start --head`, or set RELAY_RAY__ADDRESS"
        )
        raise typer.Exit(1) from exc
    control.start_serve()
    return control


def _print_split(split: Any) -> None:
    if split is None:
        out.print("nothing deployed")
        return
    for version, share in split.shares().items():
        role = "stable" if version == split.stable else "candidate"
        out.print(f"{role:9} {version}  {share:.0%}")


@serve_app.command("up")
def serve_up() -> None:
    """Deploy the production version from the registry as the stable model."""
    from relay.registry import Registry
    from relay.serve.traffic import TrafficSplit

    control = _serving()
    version = _run(lambda: Registry().stage_version("production"))
    if version is None:
        console.print(
            "[bold red]error:[/] no production version: `relay models promote V "
            "--stage production` first"
        )
        raise typer.Exit(1)
    control.deploy_model(version.id)
    _print_split(control.set_traffic(TrafficSplit(stable=version.id)))
    console.print(f"endpoint: {control.endpoint()}/v1/eta  (docs: {control.endpoint()}/docs)")


@serve_app.command("deploy")
def serve_deploy(
    version: Annotated[str, typer.Option(help="Registry version id to deploy")],
    canary: Annotated[
        float, typer.Option(min=0.0, max=100.0, help="Percent of orders for it (0: deploy only)")
    ] = 1.0,
) -> None:
    """Deploy a version beside the stable one and send it --canary percent of orders."""
    control = _serving()
    _print_split(control.canary(version, canary / 100.0))


@serve_app.command("promote")
def serve_promote() -> None:
    """Move all traffic to the candidate (it becomes stable; the old one keeps running)."""
    control = _serving()
    _print_split(control.promote())


@serve_app.command("rollback")
def serve_rollback() -> None:
    """Move all traffic back to the stable version, at once."""
    control = _serving()
    _print_split(control.rollback())


@serve_app.command("status")
def serve_status() -> None:
    """Versions serving, their traffic shares and live metrics."""
    control = _serving()
    _print_split(control.current_traffic())
    for version, w in control.live_metrics().items():
        out.print(
            f"{version}: {w['requests']} requests, {w['errors']} errors, "
            f"p50 {w.get('p50_ms') or 0:.1f} ms, p99 {w.get('p99_ms') or 0:.1f} ms"
        )


@serve_app.command("rollout")
def serve_rollout(
    version: Annotated[str, typer.Option(help="Registry version id (validated by the gate)")],
    outcome: Annotated[
        Path | None, typer.Option(help="Write the outcome JSON here (what the DAG reads)")
    ] = None,
) -> None:
    """Canary steps judged on live metrics, then promote or roll back (first version: stable).

    Exits 0 whether the candidate was promoted or rolled back; the outcome says which.
    """
    from relay.rollout.driver import run_rollout

    _serving()
    res = _run(lambda: run_rollout(version, emit=lambda m: console.print(m, markup=False)))
    if outcome:
        res.write(outcome)
    out.print(f"{res.outcome}: stable is {res.stable}")


@serve_app.command("restore")
def serve_restore(
    version: Annotated[str, typer.Option(help="Registry version id to serve with all traffic")],
    reason: Annotated[
        str, typer.Option(envvar="RELAY_RESTORE_REASON", help="Recorded in the registry history")
    ] = "",
) -> None:
    """Serve an earlier version with all traffic and point production at it (a rollback)."""
    from relay.rollout.driver import deploy_stable

    _serving()
    split = _run(lambda: deploy_stable(version, reason=reason or f"restored {version}"))
    _print_split(split)


@app.command()
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
            help="Land labels during the run, each this many seconds after its answer; "
            "default: all after the run",
        ),
    ] = None,
    actuals_date: Annotated[
        dt.datetime | None,
        typer.Option(
            formats=["%Y-%m-%d"],
            help="serving/actuals partition for every label; default: the UTC day each "
            "answer came back (the serving log's partition)",
        ),
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="Requests in flight at most (default rate/10, 4..64)")
    ] = None,
    skip: Annotated[int, typer.Option(min=0, help="Start after the day's first SKIP orders")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Replay a day's orders against the ETA endpoint at --rate requests/s, then land their
    actual delivery times in serving/actuals."""
    from relay.data.scenarios import SCENARIOS
    from relay.sim.replay import ReplayConfig, ReplayProgress
    from relay.sim.replay import replay as run_replay

    if scenario is not None and scenario not in SCENARIOS:
        raise typer.BadParameter(f"choose one of {', '.join(SCENARIOS)}", param_hint="--scenario")
    given = {"max_orders": max_orders, "max_seconds": max_seconds, "concurrency": concurrency}
    bounds: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    config = _run(
        lambda: ReplayConfig(
            date=date.date(),
            rate=rate,
            scenario=scenario,
            batch=batch,
            url=url,
            label_delay_s=label_delay,
            actuals_date=actuals_date.date() if actuals_date else None,
            skip=skip,
            **bounds,
        )
    )
    with _progress() as p:
        task = p.add_task("replaying", total=None)

        def show(s: ReplayProgress) -> None:
            p.update(
                task,
                total=s.planned_orders,
                completed=s.orders_sent,
                description=f"replay: {s.ok} ok, {s.client_errors} 4xx, {s.server_errors} 5xx, "
                f"{s.failed} failed, {s.labels_landed} labels",
            )

        result = _run(lambda: run_replay(config, on_progress=show))
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    else:
        out.print(result.summary(), markup=False, highlight=False)


@stack_app.command("up")
def stack_up(
    first_run: Annotated[
        bool, typer.Option("--first-run/--no-first-run", help="Train and serve a first model")
    ] = True,
) -> None:
    """Start Ray (dashboard, Jobs API, Serve), Airflow (api-server, scheduler, dag-processor,
    triggerer), then trigger a first eta_training run and wait for it."""
    from relay.infra import stack
    from relay.settings import get_settings

    s = get_settings()
    info = _run(
        lambda: stack.up(s, emit=lambda m: console.print(m, markup=False), first_run=first_run)
    )
    state = info.get("first_run_state")
    if state and state != "success":
        console.print(f"[bold red]first eta_training run {state}[/]: see the Airflow UI")
    host, port = s.serving.host, s.serving.port
    body = json.dumps(EXAMPLE_ORDER, separators=(",", ":"))
    out.print(
        f"\nAirflow      {s.airflow.api_url}  (login admin / {stack.admin_password(s)})"
        f"\nRay          {s.ray.dashboard_url}"
        f"\nEndpoint     http://{host}:{port}/v1/eta   (docs: http://{host}:{port}/docs)"
        f"\n\ncurl -s -X POST http://{host}:{port}/v1/eta -H 'Content-Type: application/json' "
        f"-d '{body}'"
        f"\n\nstop everything: make down   (logs: {s.home}/logs)",
        markup=False,
        highlight=False,
    )
    if state and state != "success":
        raise typer.Exit(1)


@stack_app.command("down")
def stack_down() -> None:
    """Stop every process `relay stack up` started (by PID)."""
    from relay.infra import stack

    stopped = stack.stop_all()
    console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@app.command()
def demo() -> None:
    """Play the life cycle on the running stack: drift → retrain → canary → promoted; a bad
    model stopped by the gate, then rolled back by live metrics when forced into canary."""
    from relay.sim.demo import play

    summary = _run(lambda: play(emit=lambda m: out.print(m, markup=False, highlight=False)))
    ok = (
        summary.get("v2_outcome") == "promoted"
        and summary.get("gate_rejected")
        and summary.get("forced_outcome") == "rolled_back"
    )
    if not ok:
        console.print(f"[bold red]demo did not end as expected:[/] {summary}")
        raise typer.Exit(1)
