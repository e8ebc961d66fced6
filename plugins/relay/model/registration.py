"""From a training run's output folder to a registered model version.

``run_training`` leaves ``model.pt``, ``net_config.json``, ``preprocessor.json``,
``metrics.json`` and ``importance.json`` (:mod:`relay.model.importance`: its shares become the
version's ``training.feature_importance``) in its output folder, and the optimise stage
(:mod:`relay.model.optimise`) its ``optimised.json`` and, when it accepted the INT8 model,
``model.int8.pt``.
:func:`register_trained` checks that the three model files load together, then registers them
all (and an evaluation report, if given) as the next version in state Trained, with what the
registry needs to answer "where did this come from?": the feature service, the training set and
its data partitions, the code commit, a hash of the configuration and the production version it
is meant to replace, and the drift of the run's landed days against that version's training set
(:mod:`relay.monitor.landed`; its report stored beside the model). The history's "trained on"
line is a note for people; the drift job reads the lineage's ``training_set``.

Given the training run's id, registration is idempotent: the same run and the same ``model.pt``
(by sha256) always give the same version, so a retried or cleared gate task registers nothing
new (:func:`registration_key`; the registry makes it hold under concurrent registrations too).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from relay.model.bundle import (
    METRICS_FILE,
    MODEL_FILE,
    NET_CONFIG_FILE,
    OPTIMISE_FILES,
    OPTIMISED_FILE,
    PREPROCESSOR_FILE,
    ModelBundle,
    ModelBundleError,
    feature_count,
    read_outcome,
)
from relay.model.importance import read_importance
from relay.registry import (
    BumpKind,
    LandedDrift,
    Lineage,
    ModelState,
    ModelVersion,
    Registry,
    ServingRequirements,
    Stage,
    TrainingInfo,
    TrainingSetRef,
    TrainingTrigger,
)
from relay.settings import Settings, get_settings

REPORT_ARTIFACT = "evaluation.html"
#: The landed-drift report and measurements of the run (:mod:`relay.monitor.landed`).
LANDED_DRIFT_ARTIFACTS = {"report_uri": "landed_drift.html", "summary_uri": "landed_drift.json"}
UNKNOWN_COMMIT = "unknown"
DEFAULT_OWNER = "relay"


def register_trained(
    output_dir: Path | str,
    *,
    training_set_uri: str,
    data_partitions: Sequence[str] = (),
    settings: Settings | None = None,
    parent: str | None = None,
    bump: BumpKind = "minor",
    evaluation_report: Path | None = None,
    owner: str = DEFAULT_OWNER,
    code_commit: str | None = None,
    registry: Registry | None = None,
    serving: ServingRequirements | None = None,
    run_id: str | None = None,
    trigger: TrainingTrigger | None = None,
    landed_drift: LandedDrift | None = None,
) -> ModelVersion:
    """Register a finished training run as the model's next version, in state Trained.

    Args:
        output_dir: The run's output folder (``model.pt``, ``net_config.json``,
            ``preprocessor.json``, ``metrics.json``; ``importance.json`` when importance was
            measured, ``optimised.json`` and ``model.int8.pt`` when the optimise stage ran).
        training_set_uri: The training-set Parquet the run read; recorded in the lineage
            (:func:`training_set_ref`), the drift job's reference.
        data_partitions: Lake partitions behind the training set, e.g. ``["2026-11-19"]``.
        settings: Relay's settings; :func:`get_settings` when None.
        parent: The version this one descends from; None: the current production version of
            the model, if there is one.
        bump: Which part of the latest registered version to increase.
        evaluation_report: An HTML evaluation report to store with the version.
        owner: Who registers it (a person or a pipeline).
        code_commit: The training code's git commit; None: ``git rev-parse HEAD`` of this
            checkout, or ``"unknown"`` outside a git checkout (e.g. a Ray job's working dir).
        registry: The registry to use; one opened from ``settings`` when None.
        serving: What a replica of it needs (CPUs, memory, replicas); unset: the settings'.
        run_id: The training run (e.g. its run folder); given, the registration is idempotent:
            the version already registered for this run and this ``model.pt`` is returned as
            it is now, in whatever state. None: always a new version (e.g. a deliberate copy).
        trigger: Why the run trained (its reason; for a drift retrain, the monitoring run and
            drift report), recorded in the lineage; None: not known (a run by hand).
        landed_drift: The run's drift of its landed days against production's training set,
            recorded in the lineage; its report and summary, when on local disk, are stored
            as ``landed_drift.html`` and ``landed_drift.json``. None: not measured.

    Returns:
        The registered version (or, with ``run_id``, the one registered before).

    Raises:
        ModelBundleError: A file is missing, the weights do not fit the config, or
            ``optimised.json`` was made from another ``model.pt``.
        VersionNotFound: ``parent`` is not registered.
        VersionConflict: A concurrent registration took the same version; register again.
    """
    s = settings or get_settings()
    reg = registry or Registry(s)
    folder = Path(output_dir)
    bundle = ModelBundle.from_dir(folder)  # refuses files that do not load together
    run = _read_metrics(folder / METRICS_FILE)
    importance = read_importance(folder)  # None for runs from before it was measured
    hyperparameters = dict(run.get("hyperparameters") or {})
    partitions = list(data_partitions)
    if parent is None:
        production = reg.stage_version(Stage.PRODUCTION)
        parent = None if production is None else production.id
    artifacts: dict[str, Path | bytes] = {
        name: folder / name for name in (MODEL_FILE, PREPROCESSOR_FILE, NET_CONFIG_FILE)
    }
    artifacts[METRICS_FILE] = folder / METRICS_FILE
    artifacts.update(optimised_artifacts(folder))
    if evaluation_report is not None:
        artifacts[REPORT_ARTIFACT] = Path(evaluation_report)
    artifacts.update(landed_drift_artifacts(landed_drift))
    return reg.register(
        artifacts,
        lineage=Lineage(
            feature_service=s.feast.feature_service,
            data_partitions=partitions,
            training_set=training_set_ref(training_set_uri, partitions),
            code_commit=code_commit or git_commit(),
            config_hash=config_hash(hyperparameters, bundle.net_config),
            parent_version_id=parent,
            training_run=run_id,
            trigger=trigger,
            landed_drift=landed_drift,
        ),
        owner=owner,
        training=TrainingInfo(
            dataset_partitions=partitions,
            sample_count=int(run.get("train_rows") or 0),
            feature_count=feature_count(bundle.preprocessor),
            hyperparameters=hyperparameters,
            metrics=numeric_metrics(run.get("metrics") or {}),
            feature_importance={} if importance is None else importance.shares,
        ),
        bump=bump,
        state=ModelState.TRAINED,
        reason=f"trained on {training_set_uri}",
        serving=serving,
        key=None if run_id is None else registration_key(run_id, _sha256(folder / MODEL_FILE)),
    )


def registration_key(run_id: str, model_sha256: str) -> str:
    """The idempotency key of a training run's registration: sha256 of the run and the model's
    sha256. A retried run that wrote other weights (a new ``model.pt``) is a new version."""
    return hashlib.sha256(f"{run_id}\n{model_sha256}".encode()).hexdigest()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def optimised_artifacts(folder: Path) -> dict[str, Path | bytes]:
    """The optimise stage's files in a run folder, once checked to belong to its ``model.pt``.

    A run folder is re-used by a re-run; a verdict left by an earlier run would otherwise
    ship another model's INT8 weights with this one.

    Raises:
        ModelBundleError: ``optimised.json`` is unreadable or was made from another model.
    """
    verdict = folder / OPTIMISED_FILE
    if not verdict.is_file():
        return {}
    outcome = read_outcome(verdict.read_text(), str(verdict))
    actual = _sha256(folder / MODEL_FILE)
    if outcome.float_sha256 != actual:
        raise ModelBundleError(
            f"{verdict} was made from another model.pt (sha256 {outcome.float_sha256[:12]}…, "
            f"this one {actual[:12]}…); run the optimise stage again or delete it and "
            f"{folder / OPTIMISE_FILES[0]}"
        )
    return {name: folder / name for name in OPTIMISE_FILES if (folder / name).is_file()}


def landed_drift_artifacts(record: LandedDrift | None) -> dict[str, Path | bytes]:
    """The landed-drift report and summary to store with the version: those of ``record``
    that are files here (a report elsewhere stays linked by its URI in the lineage)."""
    if record is None:
        return {}
    found = {name: getattr(record, field) for field, name in LANDED_DRIFT_ARTIFACTS.items()}
    return {name: Path(uri) for name, uri in found.items() if uri and Path(uri).is_file()}


def training_set_ref(uri: str, partitions: Sequence[str] = ()) -> TrainingSetRef:
    """The lineage's record of a training set: its URI and, when the partitions are days
    (``2026-11-19``), the first and last of them."""
    days = sorted(d for d in map(_day, partitions) if d is not None)
    return TrainingSetRef(
        uri=uri, start_date=days[0] if days else None, end_date=days[-1] if days else None
    )


def _day(partition: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(partition)
    except ValueError:
        return None


def config_hash(hyperparameters: Mapping[str, Any], net_config: Mapping[str, Any]) -> str:
    """sha256 of the hyperparameters and the network config as JSON with sorted keys.

    Two runs with the same hash were configured identically (their data may differ).
    """
    doc = {"hyperparameters": hyperparameters, "net_config": net_config}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def git_commit(root: Path | None = None) -> str:
    """The checked-out commit of the project (``git rev-parse HEAD``), or ``"unknown"``."""
    folder = root or Path(__file__).resolve().parents[2]
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN_COMMIT
    return done.stdout.strip() or UNKNOWN_COMMIT


def numeric_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a run's metrics (flags become 0.0/1.0; text and NaN are dropped).

    The registry stores metrics as floats, and JSON has no infinity.
    """
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, bool | int | float) and math.isfinite(float(value)):
            out[str(key)] = float(value)
    return out


def _read_metrics(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelBundleError(
            f"{path} is missing; register the output folder of a finished training run"
        ) from None
    except json.JSONDecodeError as err:
        raise ModelBundleError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(doc, dict):
        raise ModelBundleError(f"{path} must hold a JSON object")
    return doc
