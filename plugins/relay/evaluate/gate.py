"""The evaluation gate: may a challenger replace the champion?

:func:`decide` is pure: two evaluations and the gate settings in, a :class:`GateVerdict` out,
nothing read or written. Every check is listed in the verdict, passing or failing, so the
reasons for a promotion are as visible as the reasons for a rejection.

Rules:

* absolute bars, always: MAE, P90 absolute error and the share within ±5 minutes;
* with a champion: the challenger's overall MAE must beat the champion's by more than
  ``min_improvement``, and on every slice value that both evaluated on at least
  ``min_slice_rows`` orders, the challenger's MAE may be at most the slice margin worse
  (``slice_margin``, or the margin a run passes to :func:`decide`, e.g. a drift retrain's
  ``drift_slice_margin``). A model that wins on average by getting one zone badly wrong is
  rejected.
* with the paired standard errors of the slices (both models on the same orders,
  :func:`relay.evaluate.metrics.paired_slice_se`), a slice fails only when its excess over the
  margin is more than ``slice_significance_z`` standard errors: forty slices of a few hundred orders
  each always hold a few that look 5% worse by chance, and rejecting on those would reject
  every retrain.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from relay.evaluate.metrics import Evaluation
from relay.settings import GateSettings
from relay.verdict import Verdict, reason_lines, relative_change, within_noise


@dataclass(frozen=True)
class GateVerdict(Verdict):
    """The gate's decision on one challenger.

    Attributes:
        passed: True when every check passed.
        reasons: every check, one line each, prefixed ``PASS:`` or ``FAIL:``.
        failures: the failing checks' lines, without the prefix.
        slices_at_fault: ``name=value`` of each slice where the challenger lost by more than
            the margin, e.g. ``zone_id=Z007``.
        challenger: the challenger's label (``model@version``).
        champion: the champion's label, or None when there was none.
    """

    passed: bool
    reasons: list[str]
    failures: list[str] = field(default_factory=list)
    slices_at_fault: list[str] = field(default_factory=list)
    challenger: str = ""
    champion: str | None = None

    def headline(self) -> str:
        """The challenger, its champion and the outcome."""
        against = f" against {self.champion}" if self.champion else " (no champion)"
        return f"{self.challenger}{against}: {'PASSED' if self.passed else 'REJECTED'}"


def margin(settings: GateSettings, slice_margin: float | None = None) -> float:
    """The slice margin a gate uses: a run's ``slice_margin`` when given, else the configured one.

    Raises:
        ValueError: a negative ``slice_margin``.
    """
    if slice_margin is None:
        return settings.slice_margin
    if slice_margin < 0:
        raise ValueError(f"slice_margin must be ≥ 0, got {slice_margin}")
    return slice_margin


def decide(
    challenger: Evaluation,
    champion: Evaluation | None,
    settings: GateSettings,
    paired_se: Mapping[str, Mapping[str, float]] | None = None,
    *,
    slice_margin: float | None = None,
) -> GateVerdict:
    """Judge a challenger against the absolute bars and, if there is one, the champion.

    Args:
        challenger: the new model's evaluation.
        champion: the serving model's evaluation on the same data, or None for a first model.
        settings: the gate's thresholds (``Settings.gate``).
        paired_se: slice name -> value -> standard error of the MAE difference on the same
            rows; without it (or with ``slice_significance_z`` 0) any excess over the margin
            fails.
        slice_margin: this run's slice margin (a drift retrain's), over
            ``settings.slice_margin``; the slice lines show the margin used.

    Returns:
        The verdict; it passes only if every check passes.

    Raises:
        ValueError: a negative ``slice_margin``.
    """
    used = margin(settings, slice_margin)
    checks = _absolute_checks(challenger, settings)
    at_fault: list[str] = []
    if champion is None:
        checks.append((True, "no champion: first model, judged by the absolute bars only"))
    else:
        checks.append(_improvement_check(challenger, champion, settings))
        slice_checks, at_fault = _slice_checks(
            challenger, champion, settings, used, paired_se or {}
        )
        checks += slice_checks
    return GateVerdict(
        passed=all(ok for ok, _ in checks),
        reasons=reason_lines(checks),
        failures=[msg for ok, msg in checks if not ok],
        slices_at_fault=at_fault,
        challenger=challenger.label,
        champion=None if champion is None else champion.label,
    )


def _absolute_checks(ev: Evaluation, s: GateSettings) -> list[tuple[bool, str]]:
    m = ev.overall
    mae_ok = m.mae <= s.max_mae_minutes
    p90_ok = m.p90_abs_error <= s.max_p90_abs_error_minutes
    within_ok = m.within_5_min >= s.min_within_5_min
    return [
        (mae_ok, f"MAE {m.mae:.2f} {'≤' if mae_ok else '>'} max {s.max_mae_minutes:.2f} min"),
        (
            p90_ok,
            f"P90 abs error {m.p90_abs_error:.2f} {'≤' if p90_ok else '>'} "
            f"max {s.max_p90_abs_error_minutes:.2f} min",
        ),
        (
            within_ok,
            f"within ±5 min {m.within_5_min:.1%} {'≥' if within_ok else '<'} "
            f"min {s.min_within_5_min:.1%}",
        ),
    ]


def _improvement_check(
    challenger: Evaluation, champion: Evaluation, s: GateSettings
) -> tuple[bool, str]:
    mine, theirs = challenger.overall.mae, champion.overall.mae
    bar = theirs - s.min_improvement
    ok = mine < bar
    return (
        ok,
        f"overall MAE {mine:.2f} {'<' if ok else '≥'} champion {theirs:.2f} − "
        f"{s.min_improvement:.2f} (change {mine - theirs:+.2f})",
    )


def _slice_checks(
    challenger: Evaluation,
    champion: Evaluation,
    s: GateSettings,
    slice_margin: float,
    paired_se: Mapping[str, Mapping[str, float]],
) -> tuple[list[tuple[bool, str]], list[str]]:
    checks: list[tuple[bool, str]] = []
    at_fault: list[str] = []
    skipped = 0
    z = s.slice_significance_z
    for name, values in challenger.slices.items():
        theirs = champion.slices.get(name, {})
        for value, mine in values.items():
            other = theirs.get(value)
            # A slice seen by one model only, or too thin in either, is noise, not evidence.
            if other is None or min(mine.n, other.n) < s.min_slice_rows:
                skipped += 1
                continue
            change = relative_change(mine.mae, other.mae)
            excess = mine.mae - other.mae * (1 + slice_margin)
            se = paired_se.get(name, {}).get(value)
            where = f"{name}={value}"
            msg = (
                f"{where}: MAE {mine.mae:.2f} vs champion {other.mae:.2f} "
                f"({change:+.1%} {'≤' if excess <= 0 else '>'} {slice_margin:.1%}"
            )
            ok = within_noise(excess, se, z)
            if excess <= 0 or se is None or z <= 0:
                msg += ")"
            else:
                verdict = "within noise" if ok else "beyond noise"
                msg += f"; excess {excess:.2f} min {verdict}: {z:g} × SE {se:.2f})"
            checks.append((ok, msg))
            if not ok:
                at_fault.append(where)
    if skipped:
        checks.append(
            (
                True,
                f"{skipped} slice value(s) not compared: in one evaluation only or "
                f"under {s.min_slice_rows} orders",
            )
        )
    return checks, at_fault
