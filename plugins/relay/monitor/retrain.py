"""One retrain at a time: whether a retrain verdict triggers an ``eta_training`` run, and its id.

Hourly monitoring keeps saying "retrain" for as long as the world stays drifted, and a gate
rejection changes nothing about that world. Triggering on every such verdict queued one training
run per hour for the same day, each refitting the same data with the same configuration. The
decision here is pure (:func:`should_trigger_retrain`); the caller gathers its inputs:

* **no** when the verdict is not a retrain;
* **no** while any ``eta_training`` run is queued or running (the daily run, or a retrain
  already on its way: its result is what the next window should be judged against);
* **no** when the gate rejected a retrain for the same reason and no day newer than the
  rejected run's data has landed since: the same data and the same configuration would give
  the same model and the same rejection;
* otherwise **yes**, under a deterministic run id (:func:`retrain_run_id`), so two monitoring
  runs asking for the same retrain ask Airflow for the same run, and Airflow refuses the second
  (the trigger treats that as "already triggered").

**The same reason** (:func:`reason_kind`) is a drift retrain of the same production version.
A drift retrain refits production's hyperparameters on the days before the window
(:func:`relay.flows.eta_monitoring.training_conf`): which features drifted this hour, or how
far, changes nothing in what it learns, while the production version fixes the configuration.
A new production version (a retrain that passed) is a new reason.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

#: The DAG a retrain triggers.
TRAINING_DAG = "eta_training"
#: Airflow run states of a training run that is still to finish.
OPEN_STATES = ("queued", "running")
#: The prefix of every retrain's run id (``drift__<day>__<hash>``).
RUN_ID_PREFIX = "drift"
#: The conf key that carries the reason kind to the training run (read back at rejection).
KIND_KEY = "retrain_kind"


class GateRejection(BaseModel):
    """A retrain whose model the evaluation gate rejected: what it was for and on which data.

    Attributes:
        run_id: the ``eta_training`` run.
        kind: its reason (:func:`reason_kind`).
        data_day: the last day of orders it trained on (its conf's ``end_date``).
        version: the rejected model version.
        rejected_at: when the gate rejected it.
    """

    model_config = ConfigDict(frozen=True)

    run_id: str = Field(min_length=1)
    kind: str = Field(min_length=1)
    data_day: dt.date
    version: str = ""
    rejected_at: dt.datetime


@dataclass(frozen=True)
class RetrainDecision:
    """Whether to trigger a retrain, why, and the run to trigger.

    Attributes:
        trigger: True: trigger ``run_id`` with ``conf``.
        reason: one line for the task log: why (not).
        run_id: the deterministic ``eta_training`` run id; None when the verdict asks for none.
        conf: the run's conf: the verdict's, plus :data:`KIND_KEY`.
    """

    trigger: bool
    reason: str
    run_id: str | None = None
    conf: dict[str, Any] = field(default_factory=dict)


def reason_kind(verdict: Mapping[str, Any]) -> str:
    """What makes two retrains the same: a drift retrain of the same production version.

    Args:
        verdict: :func:`relay.flows.eta_monitoring.run_monitoring`'s output.
    """
    return f"drift of {verdict.get('production_version') or 'no production version'}"


def data_day(verdict: Mapping[str, Any]) -> dt.date:
    """The last day of orders the verdict's retrain trains on (its conf's ``end_date``).

    Raises:
        ValueError: the verdict carries no retrain conf with an ``end_date``.
    """
    day = (verdict.get("conf") or {}).get("end_date")
    if not day:
        raise ValueError(f"a {verdict.get('action')} verdict without a retrain conf end_date")
    return dt.date.fromisoformat(str(day))


def retrain_run_id(kind: str, day: dt.date) -> str:
    """The retrain's ``eta_training`` run id: ``drift__<day>__<8 hex of the kind's sha256>``.

    The same reason on the same data gives the same id (Airflow keeps run ids unique per DAG);
    the kind is hashed because a version id is long and the run id stays readable.
    """
    digest = hashlib.sha256(kind.encode()).hexdigest()[:8]
    return f"{RUN_ID_PREFIX}__{day.isoformat()}__{digest}"


def should_trigger_retrain(
    verdict: Mapping[str, Any],
    open_runs: int,
    rejections: Sequence[GateRejection],
    landed_days: Iterable[dt.date],
) -> RetrainDecision:
    """Decide whether a monitoring verdict triggers an ``eta_training`` run (module docstring).

    Args:
        verdict: :func:`relay.flows.eta_monitoring.run_monitoring`'s output (``action``,
            ``production_version``, ``conf``).
        open_runs: ``eta_training`` runs now queued or running (:data:`OPEN_STATES`).
        rejections: gate rejections of earlier retrains (any order).
        landed_days: the days of orders landed in the lake (``raw/orders`` partitions).

    Returns:
        The decision; ``run_id`` and ``conf`` are set whenever the verdict is a retrain.
    """
    action = verdict.get("action")
    if action != "retrain":
        return RetrainDecision(False, f"the verdict is {action}: nothing to retrain")
    kind = reason_kind(verdict)
    day = data_day(verdict)
    run_id = retrain_run_id(kind, day)
    conf = {**verdict["conf"], KIND_KEY: kind}
    if open_runs > 0:
        return RetrainDecision(
            False,
            f"not triggering {run_id}: {open_runs} {TRAINING_DAG} run(s) queued or running; "
            "the next monitoring window judges against what they leave in production",
            run_id,
            conf,
        )
    newest = max(landed_days, default=None)
    for rejected in sorted(rejections, key=lambda r: r.rejected_at, reverse=True):
        if rejected.kind == kind and (newest is None or newest <= rejected.data_day):
            return RetrainDecision(
                False,
                f"not triggering {run_id}: the gate rejected {rejected.version or 'the model'} "
                f"of {rejected.run_id} ({kind}, data up to {rejected.data_day}) and no newer "
                f"day has landed (newest {newest}); the same data would be rejected again",
                run_id,
                conf,
            )
    return RetrainDecision(True, f"triggering {TRAINING_DAG} run {run_id}: {kind}", run_id, conf)


def rejection_of(
    run_id: str, conf: Mapping[str, Any], version: str, at: dt.datetime
) -> GateRejection | None:
    """The rejection to remember when the gate rejects ``run_id``'s model, or None when the
    run was no retrain (a scheduled or hand-triggered run: the next one is not ours to stop).

    Args:
        run_id: the ``eta_training`` run.
        conf: its conf (a retrain's carries :data:`KIND_KEY` and ``end_date``).
        version: the rejected version.
        at: now.
    """
    kind = conf.get(KIND_KEY)
    day = conf.get("end_date")
    if not kind or not day:
        return None
    return GateRejection(
        run_id=run_id,
        kind=str(kind),
        data_day=dt.date.fromisoformat(str(day)),
        version=version,
        rejected_at=at,
    )
