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
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from relay.clock import as_utc
from relay.registry.errors import ConcurrentUpdate
from relay.registry.records import UPDATE_ATTEMPTS
from relay.registry.store import ArtifactStore, Tagged, encode_json
from relay.registry.versions import check_name
from relay.rollout.experiment import ExperimentSpec, Winner, compile_plan
from relay.rollout.lease import TrafficLease, registry_store
from relay.rollout.plan import TrafficRule
from relay.rollout.record import RolloutError, start_rollout
from relay.rollout.record import traffic_of as rollout_traffic
from relay.settings import Settings, get_settings


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
class StoredExperiment:
    """An experiment as read, with the tag its next compare-and-set write must name."""

    experiment: Experiment
    etag: str


class ExperimentStore:
    """Reads and writes one model's experiment records in the registry's store."""

    def __init__(
        self, settings: Settings | None = None, *, store: ArtifactStore | None = None
    ) -> None:
        """The experiments of ``settings.registry.model_name``, beside its rollouts.

        Args:
            settings: defaults to :func:`get_settings`.
            store: overrides the registry store named by ``settings.registry.uri``.
        """
        self.settings = settings or get_settings()
        self.store = registry_store(self.settings, store)
        self.model_name = check_name(self.settings.registry.model_name)
        self.active_key = f"{self.model_name}/experiments/active.json"
        self.archive_prefix = f"{self.model_name}/experiments/archive/"

    def latest(self) -> StoredExperiment | None:
        """The live experiment, or else the last one to have ended; None before the first."""
        return _stored(self.store.read_json(self.active_key))

    def current(self) -> StoredExperiment | None:
        """The live experiment (scheduled or running), or None."""
        active = self.latest()
        return None if active is None or active.experiment.state.final else active

    def get(self, experiment_id: str) -> StoredExperiment:
        """An experiment by id, live or ended.

        Raises:
            ExperimentNotFound: no experiment has that id.
        """
        active = self.latest()
        if active is not None and active.experiment.id == experiment_id:
            return active
        archived = _stored(self.store.read_json(f"{self.archive_prefix}{experiment_id}.json"))
        if archived is None:
            raise ExperimentNotFound(
                f"no experiment {experiment_id} for {self.model_name} in {self.store.uri}; "
                "`relay experiment status` shows the latest"
            )
        return archived

    def create(self, experiment: Experiment) -> StoredExperiment:
        """Store a new live experiment, which becomes the current one.

        Raises:
            ExperimentActive: another experiment is live.
            ConcurrentUpdate: another writer changed the active experiment meanwhile.
        """
        active = self.latest()
        if active is not None and not active.experiment.state.final:
            live = active.experiment
            raise ExperimentActive(
                f"experiment {live.id} ({live.spec.variant.version} against "
                f"{live.spec.control.version}) is {live.state.value}; stop it "
                f"(`relay experiment stop --reason ...`) or let it end first"
            )
        if active is not None:
            self._archive(active.experiment)  # again: a crash after its end lost nothing
        etag = self.store.cas_json(self.active_key, _doc(experiment), _tag(active))
        return StoredExperiment(experiment, etag)

    def put(self, experiment: Experiment, expected_tag: str) -> str:
        """Write a changed experiment only if the stored one still has ``expected_tag``.

        Raises:
            ConcurrentUpdate: it changed (or another took its place) since it was read.
        """
        etag = self.store.cas_json(self.active_key, _doc(experiment), expected_tag)
        if experiment.state.final:
            self._archive(experiment)
        return etag

    def update(self, experiment_id: str, change: Callable[[Experiment], Experiment]) -> Experiment:
        """Apply ``change`` to the live experiment ``experiment_id``, retrying races.

        Raises:
            ExperimentNotFound: ``experiment_id`` is not live.
            ConcurrentUpdate: it kept changing for ``UPDATE_ATTEMPTS`` attempts.
        """
        for _ in range(UPDATE_ATTEMPTS):
            live = self.current()
            if live is None or live.experiment.id != experiment_id:
                raise ExperimentNotFound(f"experiment {experiment_id} is not live")
            changed = change(live.experiment)
            try:
                self.put(changed, live.etag)
            except ConcurrentUpdate:
                continue
            return changed
        raise ConcurrentUpdate(
            f"experiment {experiment_id} changed {UPDATE_ATTEMPTS} times while we updated it; "
            "try again"
        )

    def _archive(self, experiment: Experiment) -> None:
        # An ended record never changes, so rewriting the same bytes is harmless.
        key = f"{self.archive_prefix}{experiment.id}.json"
        self.store.put_bytes(key, encode_json(_doc(experiment)))


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

    def stop(e: Experiment) -> Experiment:
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


def _doc(experiment: Experiment) -> dict[str, Any]:
    return experiment.model_dump(mode="json")


def _stored(tagged: Tagged | None) -> StoredExperiment | None:
    if tagged is None:
        return None
    return StoredExperiment(Experiment.model_validate(tagged.doc), tagged.etag)


def _tag(stored: StoredExperiment | None) -> str | None:
    return None if stored is None else stored.etag
