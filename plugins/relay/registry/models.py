"""The registry's metadata: what is stored about a model version and about each stage.

Every model dumps to JSON (``model_dump(mode="json")``) and reads back unchanged.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from relay.registry.errors import ArtifactNotFound
from relay.registry.states import ModelState, Stage


class _Frozen(BaseModel):
    # Records are values: a change makes a new record, written with compare-and-set.
    model_config = ConfigDict(frozen=True)


class ArtifactRef(_Frozen):
    """One stored file of a model version."""

    name: str = Field(description="File name within the version, e.g. model.pt")
    key: str = Field(description="Object key relative to the registry root")
    sha256: str = Field(description="Hex sha256 of the bytes, checked at every load")
    size: int = Field(ge=0, description="Size in bytes")


class TrainingInfo(_Frozen):
    """How the version was trained and how it scored."""

    dataset_partitions: list[str] = Field(
        default_factory=list, description="Training set partitions, e.g. 2026-11-19"
    )
    sample_count: int = Field(0, ge=0, description="Rows the model was trained on")
    feature_count: int = Field(0, ge=0, description="Model inputs")
    hyperparameters: dict[str, JsonValue] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict, description="e.g. mae_minutes")
    feature_importance: dict[str, float] = Field(
        default_factory=dict,
        description="Permutation importance on the holdout, per model input: its share of "
        "the MAE increase when shuffled (shares sum to 1); empty for a version trained "
        "before importance was measured",
    )


class ServingRequirements(_Frozen):
    """What a replica needs and what it promises; what is left unset, the settings decide
    (:func:`relay.serve.sizing.model_replica_options` sizes the deployment from both)."""

    memory_mb: int | None = Field(None, gt=0, description="Memory per replica (Ray reserves it)")
    cpus: float | None = Field(None, gt=0, description="CPUs per replica")
    gpus: float | None = Field(
        None, ge=0, description="GPUs per replica (a fraction shares one); unset: the settings'"
    )
    replicas: int | None = Field(
        None, ge=1, description="Replicas the version needs; the settings' count is the floor"
    )
    latency_sla_ms: float = Field(50.0, gt=0, description="p99 latency target")
    qps_limit: int = Field(100, gt=0, description="Requests per second per replica")


class TrainingSetRef(_Frozen):
    """The training set a version learned from; the drift job's reference."""

    uri: str = Field(description="The training-set Parquet (file or folder, local or s3://)")
    start_date: dt.date | None = Field(None, description="First day of orders in it, if known")
    end_date: dt.date | None = Field(None, description="Last day of orders in it, if known")


class TrainingTrigger(_Frozen):
    """Why the version was trained: its run's reason and, for a retrain that monitoring asked
    for, the monitoring run and the drift report behind it (the DAG conf, kept for good)."""

    reason: str = Field("", description="The run's reason, e.g. scheduled, or the failed checks")
    triggered_by: str | None = Field(
        None, description="What asked for the run, e.g. eta_monitoring; None: a schedule, a person"
    )
    run_id: str | None = Field(None, description="The triggering DAG run (eta_monitoring's)")
    monitoring_run: str | None = Field(None, description="The monitoring run's report folder")
    drift_report: str | None = Field(None, description="The drift report behind a retrain")
    drifted_features: list[str] = Field(default_factory=list, description="What drifted")
    production_version: str | None = Field(None, description="The version judged drifted")


class LandedDrift(_Frozen):
    """Drift of the days a training run newly landed against the production version's training
    set, measured by the run before it trained (:mod:`relay.monitor.landed`).

    It is information for the gate and for people; it never stops a run: bad data is stopped
    by validation. ``status`` says whether it was measured: ``no_reference`` when nothing was
    in production, ``skipped`` (with ``reason``) when it could not be computed.
    """

    status: Literal["measured", "no_reference", "skipped"]
    reason: str = Field("", description="Why it was not measured; empty when measured")
    days: list[dt.date] = Field(default_factory=list, description="The landed days compared")
    reference_version_id: str | None = Field(
        None, description="The production version whose training set was the reference"
    )
    reference_uri: str | None = Field(None, description="That training set")
    report_uri: str | None = Field(None, description="The Evidently drift report (HTML)")
    summary_uri: str | None = Field(None, description="The measurements (summary.json)")
    rows: int = Field(0, ge=0, description="Landed rows compared (before sampling)")
    reference_rows: int = Field(0, ge=0, description="Rows of the reference")
    drifted_share: float | None = Field(
        None, ge=0, le=1, description="Share of the monitored features Evidently found drifted"
    )
    drifted_features: list[str] = Field(default_factory=list, description="Those features")
    psi: dict[str, float] = Field(
        default_factory=dict, description="PSI per feature against the reference"
    )

    def line(self, top: int = 3) -> str:
        """One line for a log or a terminal: the drifted share and the ``top`` PSI values."""
        days = f"{self.days[0]}..{self.days[-1]}" if self.days else "the landed days"
        if self.status == "no_reference":
            return f"landed drift of {days}: no reference ({self.reason or 'none in production'})"
        if self.status == "skipped":
            return f"landed drift of {days}: skipped ({self.reason})"
        share = self.drifted_share or 0.0
        drifted = ", ".join(self.drifted_features) or "none"
        # Highest first; the registry stores the mapping with its keys sorted.
        highest = sorted(self.psi.items(), key=lambda kv: -kv[1])[:top]
        psi = ", ".join(f"{name} {value:.2f}" for name, value in highest)
        return (
            f"landed drift of {days} vs {self.reference_version_id}: {share:.0%} of features "
            f"drifted ({drifted}); top PSI {psi or '-'}"
        )


class Lineage(_Frozen):
    """Where the version came from: features, data, code, config and parent model."""

    feature_service: str = Field(description="Feast feature service name and version, e.g. eta_v1")
    data_partitions: list[str] = Field(default_factory=list, description="Lake partitions read")
    training_set: TrainingSetRef | None = Field(
        None, description="What it was trained on; None for versions registered before this field"
    )
    code_commit: str | None = Field(None, description="git commit of the training code")
    config_hash: str | None = Field(None, description="Hash of the training configuration")
    parent_version_id: str | None = Field(None, description="Version this one was trained from")
    training_run: str | None = Field(
        None, description="The training run it came from (its output folder or run id), if known"
    )
    trigger: TrainingTrigger | None = Field(
        None, description="Why it was trained; None for versions registered before this field"
    )
    landed_drift: LandedDrift | None = Field(
        None,
        description="Drift of its newly landed days against production's training set; None "
        "for versions registered before this field, or by hand",
    )


class HistoryEntry(_Frozen):
    """One change of a version's state or stage."""

    at: dt.datetime
    reason: str
    from_state: ModelState | None = Field(description="None for the registration itself")
    to_state: ModelState
    from_stage: Stage | None = None
    to_stage: Stage | None = None


class RollbackMark(_Frozen):
    """When and why a version was rolled back; and when a person brought it back, if one did."""

    at: dt.datetime
    reason: str
    cleared_at: dt.datetime | None = Field(
        None, description="When a person promoted or restored it anyway (force): barred no more"
    )


class ModelVersion(_Frozen):
    """A registered model version: its identity, life, artifacts and provenance."""

    id: str = Field(description="e.g. eta_mlp_1.3.0_20261121_1402")
    name: str = Field(description="Model name, e.g. eta_mlp")
    version: str = Field(description="Semantic version, e.g. 1.3.0")
    owner: str
    created_at: dt.datetime
    state: ModelState
    stage: Stage | None = Field(None, description="Last stage the version was put in")
    training: TrainingInfo = Field(default_factory=TrainingInfo)
    artifacts: list[ArtifactRef] = Field(default_factory=list)
    serving: ServingRequirements = Field(default_factory=ServingRequirements)
    lineage: Lineage
    history: list[HistoryEntry] = Field(default_factory=list)
    registration_key: str | None = Field(
        None,
        description="Idempotency key of its registration (run and model sha256): registering "
        "with the same key returns this version instead of a new one",
    )
    rolled_back: RollbackMark | None = Field(
        None,
        description="Set when traffic was moved away from it by a rollback (a restore, the "
        "guard, a rollout's rollback); no automatic move puts it on traffic again",
    )

    @property
    def barred(self) -> bool:
        """Whether a rollback keeps it off traffic for every automatic move (a mark no person
        has cleared by promoting or restoring it with force)."""
        return self.rolled_back is not None and self.rolled_back.cleared_at is None

    def artifact(self, name: str) -> ArtifactRef:
        """The artifact called ``name``.

        Raises:
            ArtifactNotFound: The version has no such artifact; the message lists those it has.
        """
        for ref in self.artifacts:
            if ref.name == name:
                return ref
        have = ", ".join(ref.name for ref in self.artifacts) or "none"
        raise ArtifactNotFound(f"{self.id} has no artifact {name!r} (it has: {have})")


class StagePointer(_Frozen):
    """Which version of a model a stage points to, and which one it pointed to before."""

    name: str
    stage: Stage
    version_id: str | None
    previous_version_id: str | None = Field(None, description="What rollback restores")
    generation: int = Field(0, ge=0, description="Bumped at every write")
    updated_at: dt.datetime
    reason: str = ""


class LineageRecord(_Frozen):
    """One link of a lineage chain: a version and where it came from."""

    version_id: str
    version: str
    created_at: dt.datetime
    state: ModelState
    lineage: Lineage
