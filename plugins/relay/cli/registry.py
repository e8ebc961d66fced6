"""``relay models …``: the model registry's versions, stages and lineage."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from relay.cli.common import JsonOpt, VersionArg, console, out, run

if TYPE_CHECKING:  # pragma: no cover, typing only
    from relay.registry import ModelVersion, Registry

app = typer.Typer(help="The model registry: versions, stages, lineage.", no_args_is_help=True)


class PointerStage(StrEnum):
    """Stages with a pointer (the registry's ``POINTER_STAGES``)."""

    STAGING = "staging"
    CANARY = "canary"
    PRODUCTION = "production"


def _registry() -> Registry:
    from relay.registry import Registry

    return run(Registry)


def _mae(version: ModelVersion) -> str:
    metrics = version.training.metrics
    value = metrics.get("mae_minutes", metrics.get("val_mae"))
    return "" if value is None else f"{value:.2f}"


@app.command("list")
def models_list(
    name: Annotated[str | None, typer.Option(help="Only this model")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Registered versions: id, version, state, stage and validation MAE."""
    from rich.table import Table

    registry = _registry()
    versions = run(lambda: registry.list_versions(name))
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


@app.command("show")
def models_show(version: VersionArg) -> None:
    """A version's metadata as JSON (artifacts, training, lineage, history), and under
    ``rollouts`` every rollout it took part in: state, step, and each step's verdict lines."""
    import json

    from relay.rollout.store import RolloutStore

    registry = _registry()
    record = run(lambda: registry.get(version))
    shown = record.model_dump(mode="json")
    shown["rollouts"] = [
        {
            "id": r.id,
            "role": "candidate" if r.candidate == version else "stable",
            "against": r.stable if r.candidate == version else r.candidate,
            "state": r.state.value,
            "step": r.step,
            "serving_after": r.serving_after,
            "verdicts": [
                {"step": v.step, "action": v.action.value, "reasons": list(v.reasons)}
                for v in r.verdicts
            ],
        }
        for r in run(lambda: RolloutStore().history())
        if version in (r.candidate, r.stable)
    ]
    typer.echo(json.dumps(shown, indent=2))


@app.command("promote")
def models_promote(
    version: VersionArg,
    stage: Annotated[PointerStage, typer.Option(help="Stage to point at the version")],
    expect: Annotated[
        str | None,
        typer.Option(help="Version the stage must point to now (refused otherwise)"),
    ] = None,
    reason: Annotated[str, typer.Option(help="Recorded in the history")] = "",
    force: Annotated[
        bool, typer.Option(help="Promote it even if it was rolled back before")
    ] = False,
) -> None:
    """Point a stage at a version (compare-and-set: refused if the stage moved meanwhile)."""
    registry = _registry()
    pointer = run(
        lambda: registry.promote(version, stage.value, expect, reason, allow_rolled_back=force)
    )
    previous = pointer.previous_version_id or "no version"
    console.print(f"{pointer.stage.value}: {previous} -> {pointer.version_id}")


@app.command("rollback")
def models_rollback(
    stage: Annotated[
        PointerStage, typer.Option(help="Stage to roll back")
    ] = PointerStage.PRODUCTION,
    name: Annotated[str | None, typer.Option(help="Model name; default the configured one")] = None,
    reason: Annotated[str, typer.Option(help="Recorded in the history")] = "",
) -> None:
    """Point a stage back at the version it pointed to before the last promotion."""
    registry = _registry()
    pointer = run(lambda: registry.rollback(stage.value, name, reason))
    console.print(f"{pointer.stage.value}: rolled back to {pointer.version_id}")


@app.command("lineage")
def models_lineage(version: VersionArg, as_json: JsonOpt = False) -> None:
    """The version's lineage, then its parent's, and so on."""
    registry = _registry()
    chain = run(lambda: registry.lineage(version))
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
            ("drift", lin.landed_drift.line() if lin.landed_drift else "-"),
        ):
            out.print(f"    {key:<11}{value}", markup=False, highlight=False)
