"""Canary rollout: advance, hold, promote or roll back a candidate model version.

:func:`decide` is pure: the candidate's and the stable version's live windows (see
:mod:`relay.serve.windows`; take both from the same pair of snapshots so they cover the same
interval), optional quality against actuals, and the rollout settings in, a
:class:`RolloutVerdict` out. Every check is listed in the verdict, passing or failing.

Rules, every threshold in :class:`~relay.settings.RolloutSettings`:

* **rollback** when any of these fails, whatever the amount of evidence, because a rollback is
  cheap and a bad canary is not:

  * error rate above ``max_error_rate`` (1%);
  * P99 latency above ``max_p99_ms`` (100 ms), over at least ``p99_min_requests`` requests,
    with more slow requests than chance gives at ``p99_alpha`` (1%);
  * quality, once ``min_labelled`` actuals have been joined back: candidate MAE worse than
    stable's by more than ``max_mae_regression`` (5%), by ``quality_z`` standard errors;
  * throughput: candidate QPS divided by its traffic share, against stable's QPS divided by
    its own, down by more than ``max_qps_drop`` (30%). Judged only while stable still serves
    traffic and the candidate was expected to see ``min_requests`` in the window: a drop in
    a handful of requests is chance, not evidence;
  * timeout: the step would hold but began more than ``step_timeout_s`` ago: a version
    nobody could judge does not take production traffic.

* **hold** when no rule failed but the candidate served fewer than ``min_requests`` requests in
  the window, or has been healthy for less than ``step_duration_s``;
* otherwise **advance** to the next step in ``steps`` or, at the last one (100%), **promote**.

The field's rules are "sustained for 3 minutes": the caller chooses the window it passes in,
and tracks ``healthy_for_s`` (the time since the candidate's last unhealthy verdict or since
the step began, whichever is later).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from relay.serve.windows import VersionWindow
from relay.settings import RolloutSettings
from relay.verdict import Verdict, binomial_tail, reason_lines, relative_change, within_noise

_EPS = 1e-9  # float slack when comparing traffic shares, not a threshold


class Action(StrEnum):
    """What the rollout controller should do next."""

    ROLLBACK = "rollback"
    ADVANCE = "advance"
    HOLD = "hold"
    PROMOTE = "promote"


class Check(StrEnum):
    """The names of :func:`decide`'s checks, as listed in ``RolloutVerdict.failed_checks``."""

    ERROR_RATE = "error_rate"
    P99_LATENCY = "p99_latency"
    QUALITY = "quality"
    THROUGHPUT = "throughput"
    EVIDENCE = "evidence"
    DURATION = "duration"
    TIMEOUT = "timeout"


#: Checks whose failure means a rollback; the others only hold the step.
ROLLBACK_CHECKS = frozenset(
    {Check.ERROR_RATE, Check.P99_LATENCY, Check.QUALITY, Check.THROUGHPUT, Check.TIMEOUT}
)


@dataclass(frozen=True)
class QualityWindow:
    """Accuracy against actual delivery times, joined back to what each version served.

    Attributes:
        candidate_mae: the candidate's mean absolute error (minutes) on the labelled orders.
        stable_mae: the stable version's MAE over the same period.
        n_labelled: how many of the candidate's predictions have an actual yet.
        diff_se: standard error of ``candidate_mae - stable_mae`` (the two versions answer
            different orders: ``sqrt(sd_c²/n_c + sd_s²/n_s)``); None when unknown, and then
            any regression past the margin fails.
    """

    candidate_mae: float
    stable_mae: float
    n_labelled: int
    diff_se: float | None = None


@dataclass(frozen=True)
class RolloutVerdict(Verdict):
    """The rollout decision for one candidate at one step.

    Attributes:
        action: rollback, advance, hold or promote.
        reasons: every check, one line each, prefixed ``PASS:`` or ``FAIL:``.
        failed_checks: the names of the failing checks (:class:`Check` values).
        next_share: the candidate's traffic share once the action is taken: 0.0 for a
            rollback, the current share for a hold, the next step for an advance, 1.0 for a
            promotion.
        step_share: the candidate's traffic share while the window was measured.
        candidate: the candidate's version.
        stable: the stable version.
    """

    action: Action
    reasons: list[str]
    next_share: float
    step_share: float
    failed_checks: list[str] = field(default_factory=list)
    candidate: str = ""
    stable: str = ""

    def headline(self) -> str:
        """The step's decision and the share it leads to."""
        return (
            f"candidate {self.candidate} vs stable {self.stable} at {_pct(self.step_share)}: "
            f"{self.action.upper()} → {_pct(self.next_share)}"
        )


def next_step(current_share: float, steps: Sequence[float]) -> float | None:
    """The first canary step above ``current_share``, or None when already at the last.

    Args:
        current_share: the candidate's traffic share now, in [0, 1] (0 before the first step).
        steps: the increasing shares to walk through (``settings.rollout.steps``).
    """
    if not 0 <= current_share <= 1:
        raise ValueError(f"a traffic share lies in [0, 1], got {current_share}")
    return next((s for s in steps if s > current_share + _EPS), None)


def decide(
    candidate: VersionWindow,
    stable: VersionWindow,
    settings: RolloutSettings,
    *,
    step_share: float,
    healthy_for_s: float,
    step_elapsed_s: float | None = None,
    quality: QualityWindow | None = None,
    stable_reference: VersionWindow | None = None,
) -> RolloutVerdict:
    """Judge the candidate's window at its current step.

    Args:
        candidate: the candidate version's live window.
        stable: the stable version's window over the same interval.
        settings: the rollout thresholds and steps (``Settings.rollout``).
        step_share: the candidate's traffic share during the window, in (0, 1].
        healthy_for_s: how long the candidate has been healthy at this step, in seconds.
        step_elapsed_s: how long ago the step began, in seconds: a step that would hold past
            ``step_timeout_s`` is rolled back. None: the timeout is not judged.
        quality: MAE against actuals for both versions, when labels have arrived.
        stable_reference: stable's window from the step before, the latency baseline when
            stable serves nothing in this one (the 100% step).

    Returns:
        The verdict: rollback if any rollback rule fails, else hold, advance or promote.

    Raises:
        ValueError: a share outside (0, 1], a negative ``healthy_for_s``, or the same version
            as candidate and stable.
    """
    if not 0 < step_share <= 1:
        raise ValueError(f"step_share must lie in (0, 1], got {step_share}")
    if healthy_for_s < 0:
        raise ValueError(f"healthy_for_s must be ≥ 0, got {healthy_for_s}")
    if step_elapsed_s is not None and step_elapsed_s < 0:
        raise ValueError(f"step_elapsed_s must be ≥ 0, got {step_elapsed_s}")
    if candidate.version == stable.version:
        raise ValueError(f"candidate and stable are the same version {candidate.version!r}")
    s = settings
    checks: list[tuple[Check, bool, str]] = [
        _error_rate_check(candidate, s),
        p99_check(candidate, stable if stable.requests else stable_reference, s),
        quality_check(quality, s),
        throughput_check(candidate, stable, step_share, s),
        _evidence_check(candidate, s),
        _duration_check(healthy_for_s, s),
    ]
    holding = any(not ok for _, ok, _ in checks) and all(
        ok for name, ok, _ in checks if name in ROLLBACK_CHECKS
    )
    checks.append(_timeout_check(step_elapsed_s, holding, s))
    failed = [name for name, ok, _ in checks if not ok]
    upcoming = next_step(step_share, s.steps)
    if any(name in ROLLBACK_CHECKS for name in failed):
        action, share = Action.ROLLBACK, 0.0
    elif failed:
        action, share = Action.HOLD, step_share
    elif upcoming is None:
        action, share = Action.PROMOTE, 1.0
    else:
        action, share = Action.ADVANCE, upcoming
    return RolloutVerdict(
        action=action,
        reasons=reason_lines((ok, msg) for _, ok, msg in checks),
        next_share=share,
        step_share=step_share,
        failed_checks=[str(name) for name in failed],
        candidate=candidate.version,
        stable=stable.version,
    )


def _error_rate_check(c: VersionWindow, s: RolloutSettings) -> tuple[Check, bool, str]:
    rate = c.error_rate
    ok = rate <= s.max_error_rate
    return (
        Check.ERROR_RATE,
        ok,
        f"error rate {rate:.2%} ({c.errors}/{c.requests}) {'≤' if ok else '>'} "
        f"max {s.max_error_rate:.2%}",
    )


def p99_check(
    c: VersionWindow, stable: VersionWindow | None, s: RolloutSettings
) -> tuple[Check, bool, str]:
    """P99 over ``max_p99_ms`` with more slow requests than chance, or than ``stable``, gives."""
    p99 = c.p99_ms
    if p99 is None:
        return Check.P99_LATENCY, True, "P99 latency: no requests in the window, not judged"
    if p99 <= s.max_p99_ms:
        return Check.P99_LATENCY, True, f"P99 latency {p99:.1f} ms ≤ max {s.max_p99_ms:.1f} ms"
    enough = max(s.min_requests, s.p99_min_requests)
    if c.requests < enough:
        # A share that just grew queues for a moment: a few slow requests of the step's first
        # second are not the version's P99.
        return (
            Check.P99_LATENCY,
            True,
            f"P99 latency {p99:.1f} ms over {c.requests} requests < {enough}, not judged yet",
        )
    # Over the bar: is it the version, or chance, or the platform? Were the candidate as fast
    # as the bar (1% slower than it) or as the stable version beside it on the same machines,
    # its slow requests would be Binomial(n, that share): rolling back a version that is no
    # slower than stable fixes nothing, and the P99 of ten requests is their slowest one.
    slow = c.requests_slower_than(s.max_p99_ms)
    stable_share = 0.0
    if stable is not None and stable.requests:
        stable_share = stable.requests_slower_than(s.max_p99_ms) / stable.requests
    baseline = max(0.01, stable_share)
    chance = binomial_tail(slow, c.requests, baseline)
    ok = chance >= s.p99_alpha
    return (
        Check.P99_LATENCY,
        ok,
        f"P99 latency {p99:.1f} ms > max {s.max_p99_ms:.1f} ms: {slow} of {c.requests} requests "
        f"slower (stable {stable_share:.1%}), {'within' if ok else 'beyond'} chance "
        f"(p={chance:.3g}, {'≥' if ok else '<'} {s.p99_alpha:g})",
    )


def quality_check(q: QualityWindow | None, s: RolloutSettings) -> tuple[Check, bool, str]:
    """MAE worse than stable's by over ``max_mae_regression``, beyond ``quality_z`` noise."""
    if q is None:
        return Check.QUALITY, True, "quality: no actuals joined back yet, not judged"
    if q.n_labelled < s.min_labelled:
        return (
            Check.QUALITY,
            True,
            f"quality: {q.n_labelled} labelled < min {s.min_labelled}, not judged",
        )
    change = relative_change(q.candidate_mae, q.stable_mae)
    within = change <= s.max_mae_regression
    excess = q.candidate_mae - q.stable_mae * (1 + s.max_mae_regression)
    # Ten labelled orders carry a standard error of a minute or more: a regression past the
    # margin rolls back only when it is also past chance (one-sided, z = quality_z).
    ok = within or within_noise(excess, q.diff_se, s.quality_z)
    noise = ""
    if not within and q.diff_se is not None:
        noise = f", {'within' if ok else 'beyond'} noise {s.quality_z:g} × SE {q.diff_se:.2f}"
    return (
        Check.QUALITY,
        ok,
        f"quality: MAE {q.candidate_mae:.2f} vs stable {q.stable_mae:.2f} min "
        f"({change:+.1%} {'≤' if within else '>'} {s.max_mae_regression:.1%}{noise}, "
        f"{q.n_labelled} labelled)",
    )


def throughput_check(
    c: VersionWindow, st: VersionWindow, share: float, s: RolloutSettings
) -> tuple[Check, bool, str]:
    """Share-normalised QPS down against stable's by over ``max_qps_drop``, beyond noise."""
    stable_share = 1.0 - share
    if stable_share <= _EPS:
        return Check.THROUGHPUT, True, "throughput: candidate takes all traffic, not compared"
    stable_norm = st.qps / stable_share
    if stable_norm <= 0:
        return Check.THROUGHPUT, True, "throughput: stable served nothing, not compared"
    # The requests the candidate would have seen at stable's rate: too few, and a drop is chance.
    expected = stable_norm * share * c.duration_s
    if expected < s.min_requests:
        return (
            Check.THROUGHPUT,
            True,
            f"throughput: {expected:.0f} candidate requests expected < min {s.min_requests}, "
            "not judged",
        )
    cand_norm = c.qps / share
    drop = 1.0 - cand_norm / stable_norm
    ok, amount = qps_drop_verdict(drop, c.requests, expected, s)
    return (
        Check.THROUGHPUT,
        ok,
        f"throughput: candidate {cand_norm:.2f} vs stable {stable_norm:.2f} QPS per full share "
        f"{amount}",
    )


def qps_drop_verdict(
    drop: float, requests: int, expected: float, s: RolloutSettings
) -> tuple[bool, str]:
    """Whether a QPS ``drop`` (relative) is acceptable, and ``(drop …% ≤ max …%)`` saying so.

    Args:
        drop: ``1 - observed rate / reference rate``.
        requests: the requests observed in the window.
        expected: the requests the reference rate predicts for the window (> 0).
        s: the rollout settings (``max_qps_drop``, ``qps_noise_z``).
    """
    # Requests hashed to a share arrive like a Poisson count: a drop counts only when the
    # shortfall below the allowed floor is more than qps_noise_z standard deviations (√expected).
    shortfall = expected * (1.0 - s.max_qps_drop) - requests
    ok = drop <= s.max_qps_drop or within_noise(shortfall, math.sqrt(expected), s.qps_noise_z)
    noise = "" if drop <= s.max_qps_drop else (", within noise" if ok else ", beyond noise")
    return ok, (
        f"(drop {drop:.1%} {'≤' if drop <= s.max_qps_drop else '>'} max {s.max_qps_drop:.1%}"
        f"{noise})"
    )


def _evidence_check(c: VersionWindow, s: RolloutSettings) -> tuple[Check, bool, str]:
    ok = c.requests >= s.min_requests
    return (
        Check.EVIDENCE,
        ok,
        f"evidence: {c.requests} candidate requests {'≥' if ok else '<'} min {s.min_requests}",
    )


def _duration_check(healthy_for_s: float, s: RolloutSettings) -> tuple[Check, bool, str]:
    ok = healthy_for_s >= s.step_duration_s
    return (
        Check.DURATION,
        ok,
        f"healthy for {healthy_for_s:g} s {'≥' if ok else '<'} step duration "
        f"{s.step_duration_s:g} s",
    )


def _timeout_check(
    elapsed_s: float | None, holding: bool, s: RolloutSettings
) -> tuple[Check, bool, str]:
    if elapsed_s is None:
        return Check.TIMEOUT, True, "timeout: step start not given, not judged"
    over = elapsed_s > s.step_timeout_s
    if not (over and holding):
        return (
            Check.TIMEOUT,
            True,
            f"timeout: step began {elapsed_s:.0f} s ago {'>' if over else '≤'} "
            f"step_timeout_s {s.step_timeout_s:.0f} s{', judged' if over else ''}",
        )
    return (
        Check.TIMEOUT,
        False,
        f"step held for {elapsed_s:.0f} s > step_timeout_s {s.step_timeout_s:.0f} s "
        "without enough evidence to advance",
    )


def _pct(share: float) -> str:
    return f"{share * 100:g}%"
