"""The canary's rollback checks: is a candidate worse than the stable version beside it?

Each check is pure and judges one thing from live windows (see :mod:`relay.serve.windows`; take
both versions' from the same pair of snapshots so they cover the same interval) and the rollout
settings, returning ``(Check, ok, line)``: the line says what was measured and why it passes or
fails, also when there was too little to judge. The rollout reconciler
(:mod:`relay.rollout.reconcile`) runs them on a step's windows and decides what a failure does
(a rollback once it persists); the production guard (:mod:`relay.rollout.guard`) and
experiments (:mod:`relay.rollout.experiment`) reuse them.

Rules, every threshold in :class:`~relay.settings.RolloutSettings`. Small samples are not
evidence, so each rule fails only beyond chance:

* P99 latency (:func:`p99_check`) above ``max_p99_ms`` (100 ms), over at least
  ``p99_min_requests`` requests, with more slow requests than chance gives at ``p99_alpha``
  (1%) for a version as slow as the bar or as stable, whichever is slower;
* quality (:func:`quality_check`), once ``min_labelled`` actuals have been joined back:
  candidate MAE worse than stable's by more than ``max_mae_regression`` (5%), by ``quality_z``
  standard errors;
* throughput (:func:`throughput_check`): candidate QPS divided by its traffic share, against
  stable's QPS divided by its own, down by more than ``max_qps_drop`` (30%) beyond Poisson
  noise (:func:`qps_drop_verdict`). Judged only while stable still serves traffic and the
  candidate was expected to see ``min_requests`` in the window.

* errors (:func:`error_check`): beyond chance above ``max_error_rate`` and stable's rate over
  the same window, so an outage both versions share is not the candidate's fault.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from relay.serve.windows import VersionWindow
from relay.settings import RolloutSettings
from relay.verdict import binomial_tail, excess_chance, relative_change, within_noise

_EPS = 1e-9  # float slack when comparing traffic shares, not a threshold


class Check(StrEnum):
    """The names of the rollback checks, as recorded in a failure streak or a guard's breaches."""

    ERROR_RATE = "error_rate"
    P99_LATENCY = "p99_latency"
    QUALITY = "quality"
    THROUGHPUT = "throughput"


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


def p99_check(
    c: VersionWindow, stable: VersionWindow | None, s: RolloutSettings
) -> tuple[Check, bool, str]:
    """P99 over ``max_p99_ms`` with more slow requests than chance, or than ``stable``, gives.

    Args:
        c: the judged version's window.
        stable: the window of the version beside it on the same machines (at a full step,
            stable's window from before the step); None or empty: only the bar's 1% counts.
        s: the rollout settings.
    """
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
    """MAE worse than stable's by over ``max_mae_regression``, beyond ``quality_z`` noise.

    Args:
        q: both versions' MAE against actuals; None: no actuals yet, not judged.
        s: the rollout settings.
    """
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
    """Share-normalised QPS down against stable's by over ``max_qps_drop``, beyond noise.

    Args:
        c: the candidate's window.
        st: stable's window over the same interval.
        share: the candidate's traffic share during the window (stable had the rest).
        s: the rollout settings.
    """
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


def error_check(
    candidate: VersionWindow, baseline: VersionWindow | None, settings: RolloutSettings
) -> tuple[bool, str]:
    """Are the candidate's errors beyond chance above ``max_error_rate`` and stable's rate?

    Were the candidate failing at the bar, its errors would be Binomial(requests, bar); were
    it failing as stable did over the same window, both versions' errors would be one rate's
    draws (:func:`relay.verdict.excess_chance`, a sequential test: stable's rate is a sample
    too, and the window is judged again every tick). Beyond chance at ``error_alpha`` above
    both is the candidate's; less is chance or an outage both share.
    """
    c = candidate
    stable_rate = baseline.error_rate if baseline is not None and baseline.requests else 0.0
    rate = max(settings.max_error_rate, stable_rate)
    if c.error_rate <= rate:
        return True, (
            f"error rate {c.error_rate:.2%} ({c.errors}/{c.requests}) ≤ max(bar "
            f"{settings.max_error_rate:.2%}, stable {stable_rate:.2%})"
        )
    chance = binomial_tail(c.errors, c.requests, settings.max_error_rate)
    if baseline is not None and stable_rate > settings.max_error_rate:
        # Stable's rate is a sample of the same window, re-read at every tick: a shared
        # outage's noise is no one's (see excess_chance).
        chance = max(
            chance,
            excess_chance(
                c.errors, c.requests, baseline.errors, baseline.requests, settings.error_spread
            ),
        )
    ok = chance >= settings.error_alpha
    return ok, (
        f"error rate {c.error_rate:.2%} ({c.errors}/{c.requests}) > max(bar "
        f"{settings.max_error_rate:.2%}, stable {stable_rate:.2%}), {'within' if ok else 'beyond'}"
        f" chance (p={chance:.3g}, {'≥' if ok else '<'} {settings.error_alpha:g})"
    )
