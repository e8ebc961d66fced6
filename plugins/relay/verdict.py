"""What Relay's three judges share: the evaluation gate, the canary rules and monitoring.

Each judge (:mod:`relay.evaluate.gate`, :mod:`relay.rollout.rules`, :mod:`relay.monitor.rules`)
lists every check it made, one line each, marked :data:`PASS`, :data:`FAIL` or :data:`SKIP`, and
asks the same two questions of the numbers: how much worse is one MAE than another
(:func:`relative_change`), and is a difference beyond chance (:func:`binomial_tail`,
:func:`excess_chance`, :func:`within_noise`). They live here once so the three speak alike.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any, ClassVar

PASS = "PASS"  # noqa: S105 (a status word, not a password)
FAIL = "FAIL"
#: A check that was not made (e.g. too little traffic to judge anything).
SKIP = "SKIP"


def mark(ok: bool) -> str:
    """The status word of a check: :data:`PASS` or :data:`FAIL`."""
    return PASS if ok else FAIL


def reason_lines(checks: Iterable[tuple[bool, str]]) -> list[str]:
    """One line per check, ``PASS: …`` or ``FAIL: …``, in the order given."""
    return [f"{mark(ok)}: {message}" for ok, message in checks]


class Verdict:
    """What every judge's verdict dataclass shares: its lines for people and a plain dict.

    A subclass is a dataclass with a ``reasons`` field (one line per check, see
    :func:`reason_lines`) and says in :meth:`headline` what was decided.
    """

    __dataclass_fields__: ClassVar[dict[str, Any]]
    reasons: list[str]

    def headline(self) -> str:
        """The decision in one line, e.g. ``candidate v2 vs stable v1 at 10%: ADVANCE → 50%``."""
        raise NotImplementedError

    def summary(self) -> str:
        """A few lines for logs, alerts and the CLI: the headline, then every check."""
        return "\n".join([self.headline(), *(f"  {r}" for r in self.reasons)])

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, ready for ``json.dumps``."""
        return dataclasses.asdict(self)


def relative_change(mine: float, theirs: float) -> float:
    """``(mine - theirs) / theirs``: how much worse ``mine`` is than ``theirs`` (an MAE).

    A perfect ``theirs`` (0) makes any error at all an unbounded regression (``inf``), and
    none at all no change.
    """
    if theirs > 0:
        return (mine - theirs) / theirs
    return 0.0 if mine <= 0 else math.inf


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X ≥ k) for X ~ Binomial(n, p): how often chance alone gives ``k`` or more of ``n``."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    # Here, not at the top: scipy.stats takes over a second to import, and every judge (the CLI,
    # the DAG steps) imports this module while only the canary's P99 check needs it.
    from scipy import stats

    return max(0.0, float(stats.binom.sf(k - 1, n, p)))


def excess_chance(k: int, n: int, k_ref: int, n_ref: int, spread: float) -> float:
    """An always-valid p-value that ``k`` of ``n`` is a higher rate than ``k_ref`` of ``n_ref``.

    A rollout re-tests its growing windows at every tick. A fixed-sample test read that often
    finds, sooner or later, an excess that is only chance: two versions failing alike in a
    shared outage would see the candidate rolled back in a few percent of 30-second steps
    (simulated: 3% with a one-sided Fisher test, 15% taking stable's rate for a truth). The
    mixture sequential probability ratio test (mSPRT, Johari et al., "Always valid
    inference", 2017; the sequential tests of Optimizely and Eppo) bounds the chance that
    *any* look falls below ``alpha`` by ``alpha``, however many there are. Normal
    approximation of the difference of the two rates, pooled under one rate.

    Args:
        k, n: the sample's events and trials (the candidate's errors and requests).
        k_ref, n_ref: the reference sample's (stable's over the same window).
        spread: the standard deviation of the excess the test is tuned to find (its normal
            mixture): larger finds large excesses sooner and small ones later.
    """
    if n <= 0 or n_ref <= 0:
        return 1.0
    excess = k / n - k_ref / n_ref
    pooled = (k + k_ref) / (n + n_ref)
    var = pooled * (1 - pooled) * (1 / n + 1 / n_ref)
    if excess <= 0 or var <= 0:
        return 1.0
    tau2 = spread * spread
    log_ratio = 0.5 * math.log(var / (var + tau2)) + tau2 * excess * excess / (
        2 * var * (var + tau2)
    )
    return 1.0 if log_ratio <= 0 else math.exp(-log_ratio)


def within_noise(excess: float, se: float | None, z: float) -> bool:
    """Whether an ``excess`` over a margin is at most ``z`` standard errors ``se`` (one-sided).

    Without a standard error, or with ``z`` 0, there is no allowance for noise: only an excess
    of at most 0 is within it.
    """
    if excess <= 0:
        return True
    return se is not None and z > 0 and excess <= z * se
