"""What the controller measures of a rollout's current step: live windows and labelled quality.

The router's counters are cumulative, so a step is measured against a snapshot of them taken
when it began. That snapshot is kept beside the record, under
``{model}/rollouts/steps/{id}.json`` in the registry's store, with stable's window over the
step before (the baseline of a step where stable serves nothing) and when the controller last
had to heal the split within the step; a controller that dies loses none of it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from relay.clock import as_utc
from relay.errors import RelayError
from relay.registry.store import ArtifactStore, encode_json
from relay.rollout.record import Rollout
from relay.rollout.step_windows import step_window, windows
from relay.serve.log_read import VersionQuality, quality_by_version, read_served
from relay.serve.windows import VersionWindow, window_from_dict
from relay.settings import Settings

QualityReader = Callable[[Settings, dt.datetime], Mapping[str, VersionQuality]]
"""Labelled quality per version of the predictions made since a time."""


@dataclass(frozen=True)
class StepStart:
    """The router's counters when a step began, and what else its judgement needs.

    Attributes:
        step: the step index.
        started_at: the record's ``step_started_at`` for it.
        metrics: the live-metrics answer (version → window dict) when it began.
        reference: stable's window over the step before, as a dict; None when unknown.
        split_since: when the controller last re-applied the split within the step.
    """

    step: int
    started_at: dt.datetime
    metrics: dict[str, Any]
    reference: dict[str, Any] | None = None
    split_since: dt.datetime | None = None

    def of(self, rollout: Rollout) -> bool:
        """Whether this is the start of ``rollout``'s current step."""
        return (self.step, as_utc(self.started_at)) == (rollout.step, rollout.step_started_at)


class StepStarts:
    """The step-start snapshots of one model's rollouts in the registry's store."""

    def __init__(self, store: ArtifactStore, model_name: str) -> None:
        """Snapshots under ``{model_name}/rollouts/steps/`` of ``store``."""
        self.store = store
        self.prefix = f"{model_name}/rollouts/steps/"

    def read(self, rollout_id: str) -> StepStart | None:
        """The rollout's latest snapshot, or None."""
        tagged = self.store.read_json(f"{self.prefix}{rollout_id}.json")
        if tagged is None:
            return None
        doc = dict(tagged.doc)
        for key in ("started_at", "split_since"):
            if doc.get(key) is not None:
                doc[key] = dt.datetime.fromisoformat(doc[key])
        return StepStart(**doc)

    def write(self, rollout_id: str, start: StepStart) -> None:
        """Replace the rollout's snapshot (only the lease holder writes it)."""
        doc = dataclasses.asdict(start)
        for key in ("started_at", "split_since"):
            if doc[key] is not None:
                doc[key] = as_utc(doc[key]).isoformat()
        self.store.put_bytes(f"{self.prefix}{rollout_id}.json", encode_json(doc))


@dataclass(frozen=True)
class Measured:
    """The current step's windows, and the snapshot they were measured against.

    Attributes:
        start: the step's start snapshot.
        fresh: the snapshot was taken now (none was stored for this step): write it.
        candidate: the candidate's window since the step began.
        stable: the stable version's window over the same interval.
    """

    start: StepStart
    fresh: bool
    candidate: VersionWindow
    stable: VersionWindow


def measure(
    rollout: Rollout, metrics: Mapping[str, Any], start: StepStart | None, now: dt.datetime
) -> Measured:
    """Both versions' windows since the current step began, from a live-metrics answer.

    Without a snapshot of this step (a controller that died between advancing the record and
    storing it), one is taken now and the windows are empty: the step is measured from here.
    """
    versions = [rollout.stable, rollout.candidate]
    current = windows(metrics, versions, now.timestamp())
    fresh = start is None or not start.of(rollout)
    if start is None or fresh:
        reference = start.reference if start is not None and start.step == rollout.step else None
        start = StepStart(rollout.step, rollout.step_started_at, dict(metrics), reference)
    first = windows(start.metrics, versions, now.timestamp())
    cand, stab = (step_window(current[v], first[v]) for v in (rollout.candidate, rollout.stable))
    return Measured(start, fresh, cand, stab)


def next_start(rollout: Rollout, was: Measured, metrics: Mapping[str, Any]) -> StepStart:
    """The snapshot of the step ``rollout`` just advanced to: the counters at the advance,
    and stable's window over the step that ended (its predecessor's when it served none)."""
    reference = dataclasses.asdict(was.stable) if was.stable.requests else was.start.reference
    return StepStart(rollout.step, rollout.step_started_at, dict(metrics), reference)


def reference_window(start: StepStart) -> VersionWindow | None:
    """Stable's window over the step before, or None."""
    return None if start.reference is None else window_from_dict(start.reference)


def labelled_quality(settings: Settings, since: dt.datetime) -> dict[str, VersionQuality]:
    """Each version's MAE on the predictions served since ``since`` whose actuals landed."""
    from relay.data.lake import Lake

    try:
        served = read_served(Lake(settings), since)
    except (RelayError, FileNotFoundError):
        return {}  # nothing logged yet
    live, _ = quality_by_version(served)
    return live


def step_quality(
    rollout: Rollout, settings: Settings, read: QualityReader
) -> dict[str, VersionQuality]:
    """Labelled quality per version since the step began; at a full step, where stable
    serves nothing, stable's entry is of the whole rollout so far."""
    quality = dict(read(settings, rollout.step_started_at))
    if rollout.current_step.full and rollout.stable not in quality:
        earlier = read(settings, rollout.created_at).get(rollout.stable)
        if earlier is not None:
            quality[rollout.stable] = earlier
    return quality
