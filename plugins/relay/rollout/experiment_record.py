"""An experiment as a persisted record, kept by compare-and-set beside the rollout records.

Layout under the registry root (see :mod:`relay.rollout.store` for the rollouts')::

    {model}/experiments/active.json         the live experiment, or the last one to have ended
    {model}/experiments/archive/{id}.json   every ended experiment, never changed again

Like a rollout, the record is the truth: the traffic an experiment asks for
(:func:`traffic_of`) is derived from it, so a restarted controller carries on from the record
alone; every change is one compare-and-set write of ``active.json``, so at most one experiment
is live and two writers cannot both win. The ticks that move it are in
:mod:`relay.rollout.experiment_run`; this module knows no Serve, so the rollout controller and
the restores can ask :func:`live_experiment` without an import circle.

States: ``scheduled`` (before ``spec.start``) and ``running`` are live; ``ended`` (a verdict
was reached, or the experiment could not run) and ``stopped`` (by a person) are final.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from relay.clock import as_utc
from relay.registry.store import ArtifactStore
from relay.rollout.experiment import ExperimentSpec, Winner, compile_plan
from relay.rollout.lease import TrafficLease
from relay.rollout.plan import TrafficRule
from relay.rollout.record import RolloutError, start_rollout
from relay.rollout.record import traffic_of as rollout_traffic
from relay.rollout.record_store import RecordStore, Stored
from relay.settings import Settings


class ExperimentError(RolloutError):
    """An experiment cannot start or move as asked; the message says what to do."""


class ExperimentActive(ExperimentError):
    """An experiment is live already; it must end (or be stopped) before another starts."""


class ExperimentNotFound(ExperimentError):
    """No experiment has this id, or none is live."""


class ExperimentState(StrEnum):
    """Where an experiment stands."""

    SCHEDULED = "scheduled"
    RUNNING = "running"
    ENDED = "ended"
    STOPPED = "stopped"

    @property
    def final(self) -> bool:
        """Whether the experiment is over."""
        return self in (ExperimentState.ENDED, ExperimentState.STOPPED)


class Experiment(BaseModel):
    """An experiment as run: its spec, where it stands, its latest verdict, who did what.

    Attributes:
        spec: the spec it runs (never changed after the start).
        state: scheduled, running, ended or stopped.
        created_at: when it was started (scheduled).
        updated_at: when the record last changed.
        started_by: who started it (an owner name).
        running_since: when its split first went out: its windows and labels count from here.
        start_metrics: the router's counters (live-metrics answer) at ``running_since``.
        verdict: the latest verdict's lines while running, the final one once ended.
        headline: the verdict's one-line outcome.
        winner: ``variant`` or ``control`` once decided; None otherwise.
        ended_at: when it ended or was stopped.
        stopped_by: who stopped it (``stopped`` only).
        stop_reason: why.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    spec: ExperimentSpec
    state: ExperimentState = ExperimentState.SCHEDULED
    created_at: dt.datetime
    updated_at: dt.datetime
    started_by: str = Field(min_length=1)
    running_since: dt.datetime | None = None
    start_metrics: dict[str, Any] | None = None
    verdict: list[str] = Field(default_factory=list)
    headline: str = ""
    winner: Winner | None = None
    ended_at: dt.datetime | None = None
    stopped_by: str | None = None
    stop_reason: str | None = None

    @property
    def id(self) -> str:
        """The spec's id."""
        return self.spec.id

    def change(self, now: dt.datetime, **fields: Any) -> Experiment:
        """A copy with ``fields`` changed (validated) and ``updated_at`` set to ``now``."""
        return Experiment.model_validate({**dict(self), **fields, "updated_at": as_utc(now)})


def experiment_owner(experiment_id: str) -> str:
    """The traffic-lease owner name of an experiment's ticks."""
    return f"experiment:{experiment_id}"


def experiment_rule(spec: ExperimentSpec) -> TrafficRule:
    """The split while the experiment runs: its compiled plan's one step, as a rollout record
    of that plan asks for it (:func:`relay.rollout.record.traffic_of`), the variant as the
    candidate. An experiment and a rollout at the same step put the same rule on the router."""
    record = start_rollout(
        spec.variant.version,
        spec.control.version,
        compile_plan(spec),
        by=experiment_owner(spec.id),
        now=spec.start,
        rollout_id=spec.id,
    )
    return rollout_traffic(record)


def traffic_of(experiment: Experiment) -> TrafficRule:
    """What Serve must answer with: the experiment's split while running, else the control."""
    if experiment.state is ExperimentState.RUNNING:
        return experiment_rule(experiment.spec)
    return TrafficRule(stable=experiment.spec.control.version)


@dataclass(frozen=True)
class StoredExperiment(Stored[Experiment]):
    """An experiment as read, with the tag its next compare-and-set write must name."""

    @property
    def experiment(self) -> Experiment:
        return self.record


class ExperimentStore(RecordStore[Experiment, StoredExperiment]):
    """Reads and writes one model's experiment records, beside its rollouts."""

    folder = "experiments"
    kind = "experiment"
    record_type = Experiment
    stored_type = StoredExperiment
    not_found = ExperimentNotFound
    list_hint = "`relay experiment status` shows the latest"
    active_error = ExperimentActive

    def live_message(self, live: Experiment) -> str:
        return (
            f"experiment {live.id} ({live.spec.variant.version} against "
            f"{live.spec.control.version}) is {live.state.value}; stop it "
            f"(`relay experiment stop --reason ...`) or let it end first"
        )


def live_experiment(
    settings: Settings | None = None, *, store: ArtifactStore | None = None
) -> Experiment | None:
    """The live experiment (scheduled or running) of ``settings``' model, or None.

    A rollout must not start while one is live: both would move the same traffic.

    Args:
        settings: defaults to :func:`get_settings`.
        store: the registry's artifact store (a ``RolloutStore``'s ``.store``); by default
            the one ``settings.registry.uri`` names.
    """
    live = ExperimentStore(settings, store=store).current()
    return None if live is None else live.experiment


def stop_live(
    store: ExperimentStore,
    lease: TrafficLease,
    by: str,
    reason: str,
    now: dt.datetime,
    experiment_id: str | None = None,
) -> Experiment | None:
    """Stop the live experiment's record (who and why) and free the lease its ticks hold.

    Only the record and the lease: the caller then takes the lease and sets traffic (back to
    the control, or, for a restore, the restored version). No tick moves traffic for a
    stopped experiment except back to its control. None when no experiment is live.

    Raises:
        ExperimentNotFound: ``experiment_id`` is given and is not the live one.
    """
    live = store.current()
    if live is None or (experiment_id is not None and live.experiment.id != experiment_id):
        if experiment_id is not None:
            raise ExperimentNotFound(f"no live experiment {experiment_id} to stop")
        return None
    at = as_utc(now)

    def stop(e: Experiment) -> Experiment | None:
        if e.state.final:
            return None  # it ended meanwhile: nothing left to stop
        lines = [*e.verdict, f"stopped by {by}: {reason}"]
        return e.change(
            at,
            state=ExperimentState.STOPPED,
            stopped_by=by,
            stop_reason=reason,
            ended_at=at,
            verdict=lines,
            headline=f"experiment {e.id}: STOPPED by {by}, no verdict",
            winner=None,
        )

    stopped = store.update(live.experiment.id, stop)
    lease.release(experiment_owner(stopped.id))
    return stopped
