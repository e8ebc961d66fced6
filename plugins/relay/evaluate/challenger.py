"""Champion/challenger evaluation: score a new model and the serving one on the same holdout.

:func:`evaluate_challenger` is the computation: both models predict the same rows, each gets an
:class:`~relay.evaluate.metrics.Evaluation` (overall and per zone, hour band and weather), the gate
(:func:`relay.evaluate.gate.decide`, pure) judges the pair, and an HTML report is written.
:func:`evaluate_version` is the registry step around it: it loads the challenger and the
production champion from the registry (artifacts verified), moves the challenger
Trained → Evaluating → Validated or Failed, and records the gate's reasons in its history.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from relay.errors import RelayError
from relay.evaluate.gate import GateVerdict, decide, margin
from relay.evaluate.metrics import Evaluation, evaluate, paired_slice_se
from relay.evaluate.report import write_report
from relay.features.catalog import LABEL, WEATHER, model_inputs
from relay.model.bundle import OPTIMISED_FILE, ModelBundle, read_outcome
from relay.model.quantise import OptimiseOutcome
from relay.registry import ModelState, ModelVersion, Registry, Stage, check_transition
from relay.settings import Settings, get_settings

SLICE_COLUMNS = ("zone_id", "hour", WEATHER)
"""Columns the default slices read: zone, hour (banded) and the zone's weather."""
FORCED_REASON = "gate REJECTED but deployment forced"
"""How a forced verdict's history reason starts (read back by a retried gate task)."""

REQUIRED_COLUMNS = tuple(dict.fromkeys((LABEL, *SLICE_COLUMNS, *model_inputs())))


class HoldoutError(RelayError):
    """The holdout set is missing, empty or lacks columns the evaluation needs."""


class InvalidPredictions(RelayError):
    """A model predicted NaN or infinite minutes: it is broken, not merely inaccurate."""

    def __init__(self, label: str, role: str, count: int) -> None:
        self.label = label
        self.role = role
        self.count = count
        super().__init__(
            f"the {role} {label} predicted NaN or infinite minutes for {count} holdout "
            f"rows; its weights are broken: retrain it"
        )


class ChallengerEvaluation(NamedTuple):
    """What :func:`evaluate_challenger` returns (unpacks as a 4-tuple)."""

    challenger: Evaluation
    champion: Evaluation | None
    verdict: GateVerdict
    report: Path


@dataclass(frozen=True)
class VersionEvaluation:
    """What :func:`evaluate_version` returns.

    Attributes:
        version: the challenger's registry record after its transition.
        champion_id: the production version it was compared with, or None.
        result: the evaluations, the verdict and the report path.
    """

    version: ModelVersion
    champion_id: str | None
    result: ChallengerEvaluation

    @property
    def verdict(self) -> GateVerdict:
        return self.result.verdict

    @property
    def passed(self) -> bool:
        return self.result.verdict.passed


def evaluate_challenger(
    challenger: ModelBundle,
    holdout: pd.DataFrame,
    champion: ModelBundle | None,
    settings: Settings | None,
    report_path: Path | str,
    *,
    challenger_version: str | None = None,
    champion_version: str | None = None,
    model_name: str | None = None,
    slice_margin: float | None = None,
    optimised: OptimiseOutcome | None = None,
    importance: Mapping[str, float] | None = None,
    champion_importance: Mapping[str, float] | None = None,
) -> ChallengerEvaluation:
    """Score a challenger (and the champion, if any) on one holdout, gate it, write a report.

    Args:
        challenger: the new model.
        holdout: labelled rows neither model trained on; both models predict all of them.
        champion: the serving model, or None for a first model.
        settings: gate thresholds and model name; :func:`get_settings` when None.
        report_path: the HTML report to write.
        challenger_version: the challenger's version id; default ``challenger.source``.
        champion_version: the champion's version id; default ``champion.source``.
        model_name: the model's name in the evaluations; default the registry's model name.
        slice_margin: this run's slice margin over ``settings.gate.slice_margin``
            (:func:`relay.evaluate.gate.decide`).
        optimised: the optimise stage's verdict on the challenger, shown in the report.
        importance: the challenger's feature importance, drawn in the report (and
            ``champion_importance``, the champion's, beside it).

    Returns:
        Both evaluations, the gate's verdict and the report's path.

    Raises:
        HoldoutError: the holdout is empty or lacks columns.
        InvalidPredictions: a model predicted NaN or infinite minutes.
        ValueError: a negative ``slice_margin``.
    """
    s = settings or get_settings()
    check_holdout(holdout)
    frame = holdout.reset_index(drop=True)
    model = model_name or s.registry.model_name
    min_rows = s.gate.min_slice_rows
    ours_id = challenger_version or challenger.source or None
    ours = _predict(challenger, frame, ours_id or "challenger", "challenger")
    ev_challenger = evaluate(model, ours_id, frame, ours, min_rows=min_rows)
    ev_champion: Evaluation | None = None
    theirs: np.ndarray | None = None
    paired = None
    if champion is not None:
        theirs_id = champion_version or champion.source or None
        theirs = _predict(champion, frame, theirs_id or "champion", "champion")
        ev_champion = evaluate(model, theirs_id, frame, theirs, min_rows=min_rows)
        paired = paired_slice_se(frame, frame[LABEL].to_numpy(dtype=float), ours, theirs)
    verdict = decide(ev_challenger, ev_champion, s.gate, paired, slice_margin=slice_margin)
    report = write_report(
        report_path,
        ev_challenger,
        ev_champion,
        frame[LABEL].to_numpy(dtype=float),
        ours,
        theirs,
        verdict,
        optimised=optimised,
        variant=challenger.variant,
        importance=importance,
        champion_importance=champion_importance,
    )
    return ChallengerEvaluation(ev_challenger, ev_champion, verdict, report)


def evaluate_version(
    version_id: str,
    holdout_path: str | Path,
    settings: Settings | None = None,
    *,
    report_path: Path | str | None = None,
    registry: Registry | None = None,
    force: bool = False,
    slice_margin: float | None = None,
) -> VersionEvaluation:
    """Evaluate a registered version against the production version and record the verdict.

    The challenger goes Trained → Evaluating → Validated (gate passed) or Failed (rejected);
    the transition's reason holds the gate's checks, failing ones first. A version left in
    Evaluating by an interrupted run is evaluated again. The holdout and both models are loaded
    before the first transition, so a missing file or a corrupt artifact changes no state.
    Each model is judged with the weights serving loads for it: INT8 where the optimise stage
    accepted them and measured them faster (:meth:`ModelBundle.from_registry`), else float.

    Args:
        version_id: the challenger, in state Trained (or Evaluating).
        holdout_path: the holdout Parquet (a path or ``s3://`` URI), e.g. the
            ``data/holdout.parquet`` the training run wrote.
        settings: Relay's settings; :func:`get_settings` when None.
        report_path: where to write the HTML report; default
            ``{reports_dir}/evaluation/{version_id}.html``.
        registry: the registry to use; one opened from ``settings`` when None.
        force: a rejected version is still marked Validated (so it may be deployed as a
            canary, where live metrics judge it); the reason records the failed gate and the
            override.
        slice_margin: this run's slice margin over ``settings.gate.slice_margin`` (a drift
            retrain's); refused, before any transition, when negative.

    Returns:
        The challenger's updated record, the champion's id and the evaluation result.

    Raises:
        ValueError: a negative ``slice_margin``.
        IllegalTransition: the version is not Trained or Evaluating.
        HoldoutError: the holdout is missing, empty or lacks columns.
        InvalidPredictions: a model predicted NaN; a broken challenger is marked Failed first.
        VersionNotFound, ArtifactIntegrityError: from the registry.
    """
    s = settings or get_settings()
    margin(s.gate, slice_margin)  # a bad margin must fail before the first transition
    reg = registry or Registry(s)
    version = reg.get(version_id)
    if version.state is not ModelState.EVALUATING:
        check_transition(version.state, ModelState.EVALUATING)
    holdout = read_holdout(holdout_path, s)
    challenger = ModelBundle.from_registry(reg, version_id)
    production = reg.stage_version(Stage.PRODUCTION, version.name)
    champion_id = None if production is None or production.id == version_id else production.id
    champion = None if champion_id is None else ModelBundle.from_registry(reg, champion_id)
    champion_importance = (
        production.training.feature_importance
        if production is not None and champion_id is not None
        else None
    )
    optimised = _optimised(reg, version)
    report = Path(report_path or s.reports_dir / "evaluation" / f"{version_id}.html")

    if version.state is ModelState.TRAINED:
        against = f"against {champion_id}" if champion_id else "without a champion"
        reg.transition(
            version_id,
            ModelState.EVALUATING,
            f"evaluating on {holdout_path} ({len(holdout)} rows) {against}",
        )
    try:
        result = evaluate_challenger(
            challenger,
            holdout,
            champion,
            s,
            report,
            challenger_version=version_id,
            champion_version=champion_id,
            model_name=version.name,
            slice_margin=slice_margin,
            optimised=optimised,
            importance=version.training.feature_importance,
            champion_importance=champion_importance,
        )
    except InvalidPredictions as err:
        if err.role == "challenger":
            reg.transition(version_id, ModelState.FAILED, str(err))
        raise
    verdict = result.verdict
    target = ModelState.VALIDATED if verdict.passed or force else ModelState.FAILED
    reason = transition_reason(verdict, result.report)
    if force and not verdict.passed:
        reason = f"{FORCED_REASON}: {reason}"
    updated = reg.transition(version_id, target, reason)
    return VersionEvaluation(updated, champion_id, result)


def _optimised(registry: Registry, version: ModelVersion) -> OptimiseOutcome | None:
    if OPTIMISED_FILE not in {ref.name for ref in version.artifacts}:
        return None
    text = registry.load_artifact(version.id, OPTIMISED_FILE).decode()
    return read_outcome(text, f"{OPTIMISED_FILE} of {version.id}")


def transition_reason(verdict: GateVerdict, report: Path | None = None) -> str:
    """One line for the registry history: the outcome, then every check, failing ones first."""
    against = f"against {verdict.champion}" if verdict.champion else "without a champion"
    head = f"gate {'passed' if verdict.passed else 'rejected'} {against}"
    if report is not None:
        head += f" (report {report})"
    failing = [r for r in verdict.reasons if r.startswith("FAIL")]
    passing = [r for r in verdict.reasons if not r.startswith("FAIL")]
    return f"{head}: " + "; ".join(failing + passing)


def read_holdout(uri: str | Path, settings: Settings | None = None) -> pd.DataFrame:
    """Read a holdout Parquet from a path or ``s3://`` URI and check its columns.

    Raises:
        HoldoutError: the file is missing, empty or lacks columns.
    """
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    from relay.data.lake import filesystem

    fs, path = filesystem(str(uri), settings)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        raise HoldoutError(
            f"no holdout at {uri}; pass the data/holdout.parquet of the training run"
        )
    frame = pq.read_table(path, filesystem=fs).to_pandas()
    check_holdout(frame, str(uri))
    return frame


def check_holdout(frame: pd.DataFrame, what: str = "the holdout") -> None:
    """Refuse a holdout the evaluation cannot use.

    Raises:
        HoldoutError: empty, missing columns, or rows without a label.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise HoldoutError(
            f"{what} lacks columns {missing}; evaluate on a training-set split "
            f"(relay features training-set, then the training run's data/holdout.parquet)"
        )
    if frame.empty:
        raise HoldoutError(f"{what} has no rows")
    unlabelled = int(frame[LABEL].isna().sum())
    if unlabelled:
        raise HoldoutError(f"{what} has {unlabelled} rows without {LABEL}; drop them first")


def _predict(bundle: ModelBundle, frame: pd.DataFrame, label: str, role: str) -> np.ndarray:
    pred = bundle.predict(frame)
    bad = int((~np.isfinite(pred)).sum())
    if bad:
        raise InvalidPredictions(label, role, bad)
    return pred
