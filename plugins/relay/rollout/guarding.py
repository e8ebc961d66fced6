"""The production guard in the controller's tick: measure production, persist, restore.

:mod:`relay.rollout.guard` decides (pure); this module carries its decisions out. Called by
:func:`relay.rollout.controller.reconcile_once` once the latest rollout has ended (so no
rollout owns the traffic, and with the very registry, store, lease and Serve that tick got:
tests and ``relay rollout tick`` included), :func:`guard_once` starts the guard of a new
promotion (previous: the rollout's stable; bake: ``guard_bake_s`` from the promotion), judges
production, and on RESTORE restores the previous version with
:func:`relay.rollout.manual.restore` (under the traffic lease, ``by="guard:<version>"``, the
failing lines as the registry's reason). When production is no longer the watched version
alone (a restore or a manual move meanwhile), the guard ends without acting, recorded: a
person's or a DAG's move is never undone. A later rollout that does not promote leaves the
guard watching; one that promotes starts its own.

**Persisted, small, compare-and-set.** The document, at ``{model}/rollouts/guard.json`` in the
registry's store, holds the :class:`GuardState` and a short ring of production's cumulative
counters (:class:`Sample`: at most one every ``tick_s``, kept ``2 × guard_sustain_s``, only what
the checks read), so a restarted controller measures as if it had never stopped. Every change
is one compare-and-set write: two controllers never both act on one decision.

**Windows.** The judged window is the shortest trailing one (from a kept sample to now) with
requests enough to judge P99, at most ``guard_sustain_s`` long: short so a breach is not
diluted, long enough for evidence. The baseline is production's window from the oldest sample
to the judged one's start (minutes: recent, so the day's rhythm is no QPS drop; the pure guard
keeps the one from before a breach while it runs); at the first tick, the promoted version's
window over the rollout's last, full step. After a gap longer than the ring (no controller
ran), a breach run starts over: nobody saw it sustained.

**Idempotent.** The decision is written before the restore, ``restored_at`` after it: a
controller killed in between restores on its next tick (unless production moved meanwhile),
or, if the restore had gone through, only records it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from relay.clock import as_utc
from relay.registry import Registry
from relay.registry.errors import ConcurrentUpdate
from relay.rollout.guard import GuardAction, GuardResult, GuardState, guard_tick, start_guard
from relay.rollout.lease import LeaseHeld, TrafficLease
from relay.rollout.manual import Endpoint, restore
from relay.rollout.observe import StepStarts
from relay.rollout.record import Rollout, RolloutState
from relay.rollout.step_windows import step_window, windows
from relay.rollout.store import RolloutStore
from relay.serve.traffic import TrafficSplit
from relay.serve.windows import VersionWindow, window_from_dict
from relay.settings import RolloutSettings, Settings
from relay.verdict import FAIL

Emit = Callable[[str], None]

#: What a sample leaves out of a window: no check of the guard reads these.
_UNJUDGED = ("version", "prediction_bounds", "prediction_counts")


class Sample(BaseModel):
    """Production's cumulative counters as one tick read them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    at: dt.datetime  # the tick's time, UTC
    counters: dict[str, Any]

    @classmethod
    def of(cls, at: dt.datetime, window: VersionWindow) -> Sample:
        """The sample of ``window`` (cumulative) read at ``at``."""
        counters = dataclasses.asdict(window).items()
        return cls(at=at, counters={k: v for k, v in counters if k not in _UNJUDGED})

    def window(self, version: str) -> VersionWindow:
        """The counters as ``version``'s cumulative window."""
        return window_from_dict({**self.counters, "version": version})


class GuardDoc(BaseModel):
    """The guard of one promotion as stored.

    Attributes:
        rollout_id: the rollout whose promotion is guarded.
        state: the pure guard's state (:class:`relay.rollout.guard.GuardState`).
        samples: production's recent cumulative counters, oldest first.
        restored_at: when the restore a RESTORE decided was carried out.
        stopped: why the guard ended without its own decision (production moved), if it did.
        stopped_at: when.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    rollout_id: str = Field(min_length=1)
    state: GuardState
    samples: list[Sample] = Field(default_factory=list)
    restored_at: dt.datetime | None = None
    stopped: str | None = None
    stopped_at: dt.datetime | None = None

    @property
    def watching(self) -> bool:
        """Neither decided nor stopped: the next tick judges production."""
        return self.state.ended is None and self.stopped is None

    @property
    def restore_pending(self) -> bool:
        """RESTORE decided, not yet carried out (nor overtaken by another move)."""
        decided = self.state.ended is GuardAction.RESTORE
        return decided and self.restored_at is None and self.stopped is None


class Guards:
    """The guard document of one model, ``{model}/rollouts/guard.json`` in the registry's store."""

    def __init__(self, rollouts: RolloutStore) -> None:
        """The guard beside ``rollouts``' records."""
        self.store = rollouts.store
        self.key = f"{rollouts.model_name}/rollouts/guard.json"

    def read(self) -> tuple[GuardDoc | None, str | None]:
        """The document and the tag its next write names; (None, None) before the first."""
        tagged = self.store.read_json(self.key)
        if tagged is None:
            return None, None
        return GuardDoc.model_validate(tagged.doc), tagged.etag

    def put(self, doc: GuardDoc, expected_tag: str | None) -> str:
        """Write ``doc`` if the stored one still has ``expected_tag`` (None: there is none).

        Raises:
            ConcurrentUpdate: another controller wrote it since it was read.
        """
        return self.store.cas_json(self.key, doc.model_dump(mode="json"), expected_tag)


def guard_once(
    settings: Settings,
    *,
    registry: Registry,
    store: RolloutStore,
    endpoint: Endpoint,
    lease: TrafficLease,
    now: dt.datetime,
    emit: Emit,
) -> GuardResult | None:
    """One guard tick: start, judge, restore or stop the guard of the latest promotion.

    Args:
        settings: the rollout settings' ``guard_*`` and the canary thresholds are used.
        registry: where production's pointer is read, and the restore recorded.
        store: the rollout records; the guard document lives beside them.
        endpoint: Serve: the split, the live counters, the restore.
        lease: the traffic lease the restore takes.
        now: the tick's time.
        emit: receives the guard's lines.

    Returns:
        What the guard decided this tick (a pending restore carried out: its decision), or
        None when no guard watches, a rollout is live, or nothing was judged.
    """
    at = as_utc(now)
    latest = store.latest()
    if latest is None or not latest.rollout.state.final:
        return None  # a live rollout owns production's traffic; its own checks judge it
    guards = Guards(store)
    doc, etag = guards.read()
    rollout = latest.rollout
    if rollout.state is RolloutState.PROMOTED and (doc is None or doc.rollout_id != rollout.id):
        state = start_guard(rollout.candidate, rollout.stable, rollout.updated_at, settings.rollout)
        doc = GuardDoc(rollout_id=rollout.id, state=state)
        until = state.baked_until.isoformat()
        emit(f"guard of {state.version} (previous {state.previous}) starts: watching until {until}")
    if doc is None or not (doc.watching or doc.restore_pending):
        return None
    version = doc.state.version
    live = registry.stage_version("production")
    production = live.id if live is not None else None
    split = endpoint.current_traffic(settings)
    act = _Act(settings, registry, store, endpoint, lease, at, emit, guards)
    if doc.restore_pending:
        if not act.restore(doc, etag, production, split):
            return None
        return GuardResult(GuardAction.RESTORE, doc.state, list(doc.state.reasons))
    if split is None:
        emit(f"guard of {version}: Serve reports no traffic split; nothing judged")
        return None
    if production != version or not _alone(split, version):
        act.stop(doc, etag, _moved(version, production, split))
        return None
    metrics = endpoint.live_metrics(settings)
    current = windows(metrics, [version], at.timestamp())[version]
    samples = _kept(doc.samples, current, at, settings.rollout)
    state = doc.state
    if doc.samples and not samples:
        state = state.model_copy(update={"breaches": {}})  # a gap nobody watched
    judged, baseline = _windows(samples, current, at, settings.rollout)
    if state.checked_at is None and baseline is None and doc.rollout_id == rollout.id:
        baseline = _last_step(rollout, store, metrics, at)
    result = guard_tick(state, judged, baseline, at, settings.rollout)
    ring = _appended(samples, Sample.of(at, current), settings.rollout.tick_s)
    new = doc.model_copy(update={"state": result.state, "samples": ring})
    try:
        etag = guards.put(new, etag)
    except ConcurrentUpdate:
        emit(f"guard of {version} changed while this tick judged it; the next tick goes on")
        return None
    for line in _lines(result):
        emit(line)
    if result.action is GuardAction.RESTORE:
        act.restore(new, etag, production, split)
    return result


def describe_guard(doc: GuardDoc) -> list[str]:
    """The guard in a few lines for people: watching until, breaching since, restored because."""
    s = doc.state
    head = f"guard of {s.version} (previous {s.previous})"
    if doc.stopped is not None:
        return [f"{head}: stopped at {_t(doc.stopped_at)}: {doc.stopped}"]
    if s.ended is GuardAction.DONE:
        baked = f"baked until {_t(s.baked_until)} without a sustained breach"
        return [f"{head}: done at {_t(s.ended_at)}, {baked}; {s.version} stays"]
    failing = [f"  {r}" for r in _why(s)]
    if s.ended is GuardAction.RESTORE:
        what = f"restored {s.previous} at {_t(doc.restored_at)}"
        if doc.restored_at is None:
            what = f"restoring {s.previous} (decided at {_t(s.ended_at)}; next tick carries it out)"
        return [f"{head}: {what} because:", *failing]
    checked = f", last checked {_t(s.checked_at)}" if s.checked_at else ", not checked yet"
    if s.breaches:
        since = min(s.breaches.values())
        runs = ", ".join(s.breaches)
        line = f"{head}: breaching since {_t(since)} ({runs}), watching until {_t(s.baked_until)}"
        return [f"{line}{checked}", *failing]
    return [f"{head}: watching until {_t(s.baked_until)}{checked}"]


@dataclass(frozen=True)
class _Act:
    """What a guard tick does to the world: restore, stop, and record each in the document."""

    s: Settings
    reg: Registry
    rs: RolloutStore
    ep: Endpoint
    tl: TrafficLease
    at: dt.datetime
    emit: Emit
    guards: Guards

    def restore(
        self, doc: GuardDoc, etag: str | None, production: str | None, split: TrafficSplit | None
    ) -> bool:
        """Serve the previous version alone, unless another move overtook the decision (then
        the guard stops: False)."""
        version, previous = doc.state.version, doc.state.previous
        if production == previous and split is not None and _alone(split, previous):
            self._record(doc, etag, f"guard of {version}: {previous} serves alone: restored")
            return True
        ours = split is None or set(split.versions()) <= {version, previous}
        if production not in (version, previous) or not ours:
            self.stop(doc, etag, _moved(version, production, split))
            return False
        by = f"guard:{version}"
        why = f"{by}: " + "; ".join(_why(doc.state))
        try:
            restore(
                previous,
                self.s,
                by=by,
                reason=why,
                registry=self.reg,
                store=self.rs,
                endpoint=self.ep,
                lease=self.tl,
                now=self.at,
            )
        except LeaseHeld as held:
            self.emit(f"guard of {version}: the restore of {previous} waits: {held}")
            return True
        self._record(doc, etag, f"guard of {version}: restored {previous} to all traffic")
        return True

    def stop(self, doc: GuardDoc, etag: str | None, why: str) -> None:
        """End the guard without acting, recording why."""
        self._write(doc.model_copy(update={"stopped": why, "stopped_at": self.at}), etag, why)

    def _record(self, doc: GuardDoc, etag: str | None, line: str) -> None:
        self._write(doc.model_copy(update={"restored_at": self.at}), etag, line)

    def _write(self, doc: GuardDoc, etag: str | None, line: str) -> None:
        try:
            self.guards.put(doc, etag)
        except ConcurrentUpdate:
            line += " (the guard changed meanwhile; the next tick records it)"
        self.emit(line)


def _alone(split: TrafficSplit, version: str) -> bool:
    return split.stable == version and (split.candidate is None or split.candidate_share == 0)


def _moved(version: str, production: str | None, split: TrafficSplit | None) -> str:
    serves = "no split" if split is None else " + ".join(split.versions())
    return (
        f"production is {production or 'none'} and Serve answers with {serves}, no longer "
        f"{version} alone: someone moved it, the guard of {version} ends without acting"
    )


def _kept(
    samples: list[Sample], current: VersionWindow, at: dt.datetime, s: RolloutSettings
) -> list[Sample]:
    """The samples still of use: recent, and of the counters running now (not reset since)."""
    oldest = at - dt.timedelta(seconds=2 * s.guard_sustain_s)
    return [x for x in samples if oldest <= x.at <= at and x.counters["since"] == current.since]


def _appended(samples: list[Sample], new: Sample, tick_s: float) -> list[Sample]:
    """The ring with ``new`` last; the newest sample gives way when it adds nothing (the one
    before it is less than ``tick_s`` older than ``new``), so ticks by hand grow nothing."""
    if len(samples) >= 2 and (new.at - samples[-2].at).total_seconds() < tick_s:
        return [*samples[:-1], new]
    return [*samples, new]


def _windows(
    samples: list[Sample], current: VersionWindow, at: dt.datetime, s: RolloutSettings
) -> tuple[VersionWindow, VersionWindow | None]:
    """The judged window (see the module's notes) and the baseline before it, or None."""
    version = current.version
    if not samples:
        empty = VersionWindow(version=version, since=current.until, until=current.until)
        return empty, None
    enough = max(s.min_requests, s.p99_min_requests)
    horizon = at - dt.timedelta(seconds=s.guard_sustain_s)
    first = len(samples) - 1
    judged = step_window(current, samples[first].window(version))
    while first > 0 and judged.requests < enough and samples[first - 1].at >= horizon:
        first -= 1
        judged = step_window(current, samples[first].window(version))
    if first == 0:
        return judged, None
    return judged, step_window(samples[first].window(version), samples[0].window(version))


def _last_step(
    rollout: Rollout, store: RolloutStore, metrics: dict[str, Any], at: dt.datetime
) -> VersionWindow | None:
    """The promoted version's window since its last, full step began (the first baseline)."""
    start = StepStarts(store.store, store.model_name).read(rollout.id)
    if start is None or not start.of(rollout) or not rollout.current_step.full:
        return None
    version = rollout.candidate
    now, then = (windows(m, [version], at.timestamp())[version] for m in (metrics, start.metrics))
    window = step_window(now, then)
    return window if window.requests else None


def _why(state: GuardState) -> list[str]:
    """The lines that make the case: every failing check and run, and the decision."""
    return [r for r in state.reasons if r.startswith((f"{FAIL}: ", "RESTORE: "))]


def _lines(result: GuardResult) -> list[str]:
    """What a tick says: while watching, one line that repeats (the runner logs it once)."""
    if result.action is GuardAction.WATCH:
        return [f"{result.headline()} until {result.state.baked_until.isoformat()}"]
    if result.action is GuardAction.BREACHING:
        return [result.headline(), *(f"  {r}" for r in _why(result.state))]
    return [result.headline(), *(f"  {r}" for r in result.reasons)]


def _t(at: dt.datetime | None) -> str:
    return "-" if at is None else f"{as_utc(at):%Y-%m-%d %H:%M:%S} UTC"
