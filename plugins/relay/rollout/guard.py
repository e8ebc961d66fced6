"""The production guard: after a promotion, production is watched for a bake period.

SageMaker's deployment guardrails keep a *baking period* after traffic has shifted, with alarms
that roll back: "promoted" is not the end of watching. For ``guard_bake_s`` after a promotion,
:func:`guard_tick` judges production's latest window with the canary's own checks against a
recent baseline, and a breach sustained for ``guard_sustain_s`` (the field's 3 minutes) restores
the previous version, the lines saying why kept in the :class:`GuardState`. Pure and idempotent,
like :func:`relay.rollout.reconcile.tick`: the same state, windows and time give the same result,
and the state is a JSON value the controller writes back by compare-and-set.

Checks (thresholds in :class:`~relay.settings.RolloutSettings`, the canary's own):

* **errors** (:func:`relay.rollout.rules.error_check`): beyond chance above
  ``max(max_error_rate, the baseline's rate)``;
* **P99** (:func:`relay.rollout.rules.p99_check`): over ``max_p99_ms`` with more slow requests
  than chance, or the baseline, gives;
* **throughput**: QPS down by more than ``max_qps_drop`` against the baseline's QPS, beyond
  Poisson noise (:func:`relay.rollout.rules.qps_drop_verdict`); not judged without a baseline or
  when the baseline's rate predicts fewer than ``min_requests`` requests for the window.

**Sustained.** Each check's run of breaching ticks starts at its first one
(:attr:`GuardState.breaches`); a judged tick on which the check passes ends its run. A tick on
which a check breaches and its run is ``guard_sustain_s`` old or older restores.

**Not judged is not a breach.** A window without a single request judges nothing and leaves the
runs as they were (it is evidence neither way). A check short of its own evidence (P99 under
``p99_min_requests`` requests, throughput under ``min_requests`` expected) passes, as in the
canary, and so ends its run.

**The baseline** is the caller's: production's window over a recent interval before the judged
one (the hour before, so the daily rhythm of orders is no QPS drop), or the previous version's
last window before the promotion. While a check is breaching, the baseline from before the breach
is kept (the state holds it), so a breach never becomes its own baseline. Without one the state's
last is used; with none at all, errors and P99 are judged against the bars alone.

**An outage of the whole service.** Production alone has no version beside it (the canary had
stable) to tell the version's fault from the platform's. A window with no requests at all (no
order reached the router) judges nothing: a dead model is counted as failed requests, so an
empty window is the platform or the feed. Errors, slowness or a QPS drop across the whole
service are breaches like any other and restore after the sustain: the restore is cheap, it is
the field's rule, and the next windows show whether it helped (its lines name the baseline).

**Ended.** ``RESTORE`` and ``DONE`` are final: ticking an ended state answers the same action
and the recorded lines, so a controller killed between writing the state and switching the
traffic switches it on its next tick. The bake's end is judged after the window: a breach
sustained at the last tick still restores; one not yet sustained ends with the bake.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from relay.clock import as_utc
from relay.rollout.rules import Check, error_check, p99_check, qps_drop_verdict
from relay.serve.windows import VersionWindow
from relay.settings import RolloutSettings
from relay.verdict import FAIL, SKIP, Verdict, reason_lines


class GuardAction(StrEnum):
    """What the controller does after a guard tick."""

    WATCH = "watch"  # production healthy: keep serving, keep watching
    BREACHING = "breaching"  # a check breaches, not yet for guard_sustain_s: keep watching
    RESTORE = "restore"  # sustained breach: the previous version serves all orders again
    DONE = "done"  # the bake is over: production stays, the guard stops watching


_FINAL = (GuardAction.RESTORE, GuardAction.DONE)


class GuardState(BaseModel):
    """The guard of one promotion, persisted between ticks (JSON round-trip).

    Attributes:
        version: the promoted version production serves, the one watched.
        previous: the version a sustained breach restores.
        started_at: when the watch began (the promotion).
        baked_until: when the bake ends (``started_at + guard_bake_s``).
        baseline: the baseline window the last tick judged against (kept while breaching);
            None until one was given.
        breaches: per breaching check (a :class:`relay.rollout.rules.Check` value), when its
            run of breaching ticks began.
        ended: RESTORE or DONE once the guard has ended; None while watching.
        ended_at: when it ended.
        checked_at: the time of the last tick.
        reasons: the last tick's lines (for an ended guard: the lines that ended it).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: str = Field(min_length=1)
    previous: str = Field(min_length=1)
    started_at: dt.datetime
    baked_until: dt.datetime
    baseline: VersionWindow | None = None
    breaches: dict[str, dt.datetime] = Field(default_factory=dict)
    ended: GuardAction | None = None
    ended_at: dt.datetime | None = None
    checked_at: dt.datetime | None = None
    reasons: list[str] = Field(default_factory=list)

    @field_validator("started_at", "baked_until", "ended_at", "checked_at")
    @classmethod
    def _utc(cls, value: dt.datetime | None) -> dt.datetime | None:
        # Compared with the tick's `now` (UTC): a naive stored time would not compare.
        return None if value is None else as_utc(value)

    @field_validator("breaches")
    @classmethod
    def _utc_breaches(cls, value: dict[str, dt.datetime]) -> dict[str, dt.datetime]:
        return {check: as_utc(since) for check, since in value.items()}

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.version == self.previous:
            raise ValueError(f"version and previous are the same version {self.version!r}")
        if self.ended is not None and self.ended not in _FINAL:
            raise ValueError(f"a guard ends with restore or done, not {self.ended.value}")
        if (self.ended is None) != (self.ended_at is None):
            raise ValueError("ended_at is set exactly when the guard has ended")
        return self


@dataclass(frozen=True)
class GuardResult(Verdict):
    """What one guard tick decided.

    Attributes:
        action: watch, breaching, restore or done.
        state: the state to write back (the input itself when the guard had ended).
        reasons: the baseline, every check (``PASS:``/``FAIL:``, ``SKIP:`` when nothing was
            judged), each breaching run, and for an ending the action's line.
    """

    action: GuardAction
    state: GuardState
    reasons: list[str]

    def headline(self) -> str:
        """E.g. ``guard of v2 (previous v1): RESTORE``."""
        return (
            f"guard of {self.state.version} (previous {self.state.previous}): {self.action.upper()}"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, ready for ``json.dumps`` (the state as its JSON)."""
        return {
            "action": self.action.value,
            "reasons": list(self.reasons),
            "state": self.state.model_dump(mode="json"),
        }


def start_guard(
    version: str,
    previous: str,
    now: dt.datetime,
    settings: RolloutSettings,
    baseline: VersionWindow | None = None,
) -> GuardState:
    """The guard of a promotion of ``version`` over ``previous`` at ``now``.

    Args:
        version: the promoted version.
        previous: the version to restore on a sustained breach.
        now: the promotion's time; the bake lasts ``guard_bake_s`` from it.
        settings: the rollout settings.
        baseline: a first baseline, e.g. the previous version's last window before promotion.
    """
    now = as_utc(now)
    return GuardState(
        version=version,
        previous=previous,
        started_at=now,
        baked_until=now + dt.timedelta(seconds=settings.guard_bake_s),
        baseline=baseline,
    )


def guard_tick(
    state: GuardState,
    window: VersionWindow,
    baseline: VersionWindow | None,
    now: dt.datetime,
    settings: RolloutSettings,
) -> GuardResult:
    """Judge production's latest window and say whether to keep watching, restore or stop.

    Args:
        state: the guard as read.
        window: production's (``state.version``'s) counters over the latest interval, e.g.
            since the previous tick or the last minute: long enough to hold
            ``p99_min_requests`` requests, short enough that a breach is not diluted.
        baseline: production's window over an interval before ``window`` (see the module's
            notes); None: the state's last baseline.
        now: the tick's time; the state's times come from it, never from a clock.
        settings: the rollout settings (the canary's thresholds, ``guard_*``).

    Returns:
        The action, the state to write back and the lines saying why.

    Raises:
        ValueError: ``window`` is not of the watched version.
    """
    now = as_utc(now)
    if state.ended is not None:
        return GuardResult(state.ended, state, list(state.reasons))
    if window.version != state.version:
        raise ValueError(
            f"the guard watches {state.version!r}, the window is of {window.version!r}"
        )
    # A breach must not become its own baseline: while one runs, the one from before it stays.
    reference = state.baseline if state.breaches or baseline is None else baseline
    lines = [_describe_baseline(reference)]
    if not window.requests:
        lines.append(
            f"{SKIP}: no requests in production's window of {window.duration_s:.0f} s, "
            "nothing judged (the breach runs stay as they were)"
        )
        failing: set[str] = set()
        breaches = dict(state.breaches)
    else:
        checks = [
            (Check.ERROR_RATE, *error_check(window, reference, settings)),
            p99_check(window, reference, settings),
            _throughput(window, reference, settings),
        ]
        lines.extend(reason_lines((ok, msg) for _, ok, msg in checks))
        failing = {str(name) for name, ok, _ in checks if not ok}
        breaches = {name: state.breaches.get(name, now) for name in sorted(failing)}
    sustained = []
    for name, since in breaches.items():
        lasted = max((now - since).total_seconds(), 0.0)
        done = name in failing and lasted >= settings.guard_sustain_s
        sustained += [name] if done else []
        lines.append(
            f"{FAIL}: {name} breaching since {since.isoformat()}, for {lasted:.0f} s "
            f"{'≥' if done else '<'} guard_sustain_s {settings.guard_sustain_s:g} s"
        )
    if sustained:
        action = GuardAction.RESTORE
        lines.append(
            f"RESTORE: {', '.join(sustained)} breached for guard_sustain_s "
            f"{settings.guard_sustain_s:g} s; {state.previous} serves all orders again in place "
            f"of {state.version}"
        )
    elif now >= state.baked_until:
        action = GuardAction.DONE
        lines.append(
            f"DONE: baked until {state.baked_until.isoformat()} without a sustained breach; "
            f"{state.version} stays in production"
        )
    else:
        action = GuardAction.BREACHING if breaches else GuardAction.WATCH
    final = action in _FINAL
    new = state.model_copy(
        update={
            "baseline": reference,
            "breaches": breaches,
            "ended": action if final else None,
            "ended_at": now if final else None,
            "checked_at": now,
            "reasons": lines,
        }
    )
    return GuardResult(action, new, lines)


def _throughput(
    window: VersionWindow, baseline: VersionWindow | None, s: RolloutSettings
) -> tuple[Check, bool, str]:
    """Production's QPS against the baseline's, judged by the canary's drop rule."""
    if baseline is None or baseline.qps <= 0:
        return Check.THROUGHPUT, True, "throughput: no baseline QPS to compare with, not judged"
    expected = baseline.qps * window.duration_s
    if expected < s.min_requests:
        return (
            Check.THROUGHPUT,
            True,
            f"throughput: {expected:.0f} requests expected at the baseline's "
            f"{baseline.qps:.2f} QPS < min {s.min_requests}, not judged",
        )
    drop = 1.0 - window.qps / baseline.qps
    ok, amount = qps_drop_verdict(drop, window.requests, expected, s)
    return (
        Check.THROUGHPUT,
        ok,
        f"throughput: production {window.qps:.2f} vs baseline {baseline.qps:.2f} QPS {amount}",
    )


def _describe_baseline(baseline: VersionWindow | None) -> str:
    if baseline is None:
        return "baseline: none yet (errors and P99 against the bars alone, throughput not judged)"
    p99 = "n/a" if baseline.p99_ms is None else f"{baseline.p99_ms:.1f} ms"
    return (
        f"baseline: {baseline.version} over {baseline.duration_s:.0f} s ({baseline.requests} "
        f"requests, {baseline.qps:.2f} QPS, errors {baseline.error_rate:.2%}, P99 {p99}); "
        "'stable' in the checks below is this baseline"
    )
