"""What to do about the production model after a monitoring window: nothing, retrain, roll back.

:func:`decide` is pure: a :class:`relay.monitor.drift.DriftResult`, the versions to compare, the
model's feature importance, the earlier windows' verdicts and the monitoring settings in, a
:class:`MonitoringVerdict` out. Every check is listed in the verdict.

Rules, every threshold in :class:`~relay.settings.MonitoringSettings`:

1. **ok, nothing judged** when the window served fewer than ``min_rows`` predictions: drift
   measured on a handful of orders is noise.
2. **rollback** when production's live MAE, on at least ``min_labelled`` labelled predictions,
   is worse than the previous production version's by more than ``max_mae_regression`` (5%),
   and beyond chance: by ``quality_z`` standard errors of the difference, as the canary's
   quality check judges it (:func:`relay.verdict.within_noise`).
   The previous version's MAE is its live MAE in the same window when it served at least
   ``min_labelled`` labelled predictions there (a canary, or a split), else its registered
   MAE (the caller reads it from the registry, :func:`registered_mae`). A registered MAE was
   measured on training-time data, so a drifted world can make production look worse than it
   is: the verdict names which baseline it used, and when features that matter drifted too,
   a regression against a registered MAE is left to the retrain rules instead of rolling back
   (predictions that drifted on inputs that did not are the model's own fault: it rolls back).
   A rollback takes precedence over a retrain: retraining takes hours and restoring seconds.

   Rollbacks must not flap: a previous version that was rolled back itself is no baseline and
   no target (quality not judged), and within ``rollback_cooldown_s`` of the last rollback a
   regression holds (a ``SKIP: rollback held`` line): the other checks decide.
3. **retrain** when drift that matters (importance-weighted feature drift at least
   ``importance_drift_threshold``) is confirmed by prediction drift or a quality loss against
   production's own registered MAE, or quality is lost while inputs drifted, in this window
   and the ``persist_windows - 1`` before it (a loss that no window confirms alone may be
   confirmed by their labelled rows together), and no retrain happened within
   ``retrain_cooldown_s``: :mod:`relay.monitor.retrain_rules`. The verdict records whether
   this window saw or suspected drift and its live MAE, which the next window counts.

4. otherwise **ok**.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from relay.monitor.drift import DriftResult
from relay.monitor.persistence import drift_span
from relay.monitor.retrain_rules import (
    feature_drift_check,
    quality_loss_check,
    retrain_call,
    window_loss,
)
from relay.settings import MonitoringSettings
from relay.verdict import FAIL, SKIP, Verdict, reason_lines, relative_change, within_noise

#: Registered metrics that hold a version's MAE in minutes, most trusted first.
MAE_METRICS = ("mae_minutes", "holdout_mae", "val_mae")
#: The name a retrain's conf records as its trigger.
TRIGGERED_BY = "eta_monitoring"


class Action(StrEnum):
    """What the monitoring DAG should do next."""

    OK = "ok"
    RETRAIN = "retrain"
    ROLLBACK = "rollback"


class Check(StrEnum):
    """The names of :func:`decide`'s checks, as listed in ``MonitoringVerdict.failed_checks``."""

    TRAFFIC = "traffic"
    QUALITY = "quality"
    FEATURE_DRIFT = "feature_drift"
    PREDICTION_DRIFT = "prediction_drift"
    QUALITY_LOSS = "quality_loss"
    POOLED_QUALITY_LOSS = "pooled_quality_loss"


Baseline = Literal["live", "registered"]


@dataclass(frozen=True)
class MonitoringVerdict(Verdict):
    """The decision on one monitoring window.

    Attributes:
        action: ok, retrain or rollback.
        reasons: every check, one line each, prefixed ``PASS:``, ``FAIL:`` or ``SKIP:``.
        failed_checks: the names of the failing checks (:class:`Check` values).
        drifted_features: when the features that matter drifted or the window saw drift, the
            drifted features, heaviest (by production's importance) first.
        production_version: the version judged.
        previous_version: the version it was compared with, if any.
        baseline: where the previous version's MAE came from (``live`` in this window or
            ``registered``), or None when quality was not judged.
        run_key: the monitoring run (the report folder's name).
        report_path: the drift report (HTML).
        window_end: the window's end (ISO 8601), if known.
        window_start: the window's first instant (ISO 8601), if known.
        drift_seen: this window saw drift that retrains once it persists (confirmed drift,
            :mod:`relay.monitor.retrain_rules`); the next window counts it.
        drift_suspected: this window showed drift with a loss past the margin that it could
            not confirm alone; the next window counts it, and pools its ``live_quality``.
        drift_streak: windows in a row, this one included, that saw or suspected drift.
        live_quality: production's live accuracy in the window
            (:class:`relay.monitor.persistence.WindowLoss` as a dict), when judged.
    """

    action: Action
    reasons: list[str]
    failed_checks: list[str] = field(default_factory=list)
    drifted_features: list[str] = field(default_factory=list)
    production_version: str | None = None
    previous_version: str | None = None
    baseline: Baseline | None = None
    run_key: str = ""
    report_path: str = ""
    window_end: str | None = None
    window_start: str | None = None
    drift_seen: bool = False
    drift_suspected: bool = False
    drift_streak: int = 0
    live_quality: dict[str, Any] | None = None

    def headline(self) -> str:
        """The run, the version judged and the decision."""
        return (
            f"monitoring {self.run_key or '(ad hoc)'} of {self.production_version or 'production'}"
            f": {self.action.upper()}"
        )

    def to_conf(self) -> dict[str, Any]:
        """The ``conf`` of the ``eta_training`` run a retrain verdict triggers.

        ``reason`` is one line naming the failed checks (the training DAG logs it); the other
        keys tell the run where the decision came from.
        """
        failing = [r.removeprefix(f"{FAIL}: ") for r in self.reasons if r.startswith(f"{FAIL}: ")]
        why = "; ".join(failing) or "no check failed"
        return {
            "reason": f"{TRIGGERED_BY} {self.run_key} {self.action.value}: {why}",
            "triggered_by": TRIGGERED_BY,
            "monitoring_run": self.run_key,
            "production_version": self.production_version,
            "drifted_features": list(self.drifted_features),
            "drift_report": self.report_path,
        }


def registered_mae(metrics: Mapping[str, float]) -> float | None:
    """A registered version's MAE in minutes from its training metrics, or None.

    Args:
        metrics: ``ModelVersion.training.metrics``; the first of :data:`MAE_METRICS` found
            (and finite) is used.
    """
    for key in MAE_METRICS:
        value = metrics.get(key)
        if value is not None and math.isfinite(float(value)):
            return float(value)
    return None


def decide(
    result: DriftResult,
    settings: MonitoringSettings,
    *,
    production_version: str | None,
    previous_version: str | None = None,
    previous_registered_mae: float | None = None,
    previous_rolled_back: bool = False,
    last_rollback_at: dt.datetime | None = None,
    importance: Mapping[str, float] | None = None,
    recent: Sequence[Mapping[str, Any]] = (),
    production_registered_mae: float | None = None,
    last_retrain_at: dt.datetime | None = None,
    previous_importance: Mapping[str, float] | None = None,
) -> MonitoringVerdict:
    """Judge one monitoring window.

    Args:
        result: what the drift job measured (:func:`relay.monitor.window.monitor_window`).
        settings: the thresholds (``Settings.monitoring``).
        production_version: the version the production stage points to (as it appears in the
            serving log's ``model_version``); None: quality is not judged.
        previous_version: the version production replaced (``StagePointer.previous_version_id``),
            whose live MAE in the window is the preferred baseline.
        previous_registered_mae: the previous version's registered MAE
            (:func:`registered_mae`), the baseline when it did not serve enough labelled
            predictions in the window.
        previous_rolled_back: the previous version was rolled back once
            (``ModelVersion.rolled_back``): it is no baseline and no rollback target.
        last_rollback_at: the model's latest rollback (any version's mark); within
            ``rollback_cooldown_s`` of it, before the window's end, no rollback is decided.
        importance: production's permutation importance by monitored feature
            (``ModelVersion.training.feature_importance``); None or empty: equal weights.
        recent: the verdicts of earlier windows, newest first
            (``MonitoringHistory.verdicts``): their ``drift_seen``, ``drift_suspected`` and
            ``live_quality`` make the persistence.
        production_registered_mae: production's own registered MAE (:func:`registered_mae`),
            against which a quality loss confirms drift.
        last_retrain_at: when the newest version trained at monitoring's request was
            registered; within ``retrain_cooldown_s`` of it no retrain is decided.
        previous_importance: the previous version's importance; whether the world drifted
            under a registered baseline is judged by what *that* version relies on (its
            registered MAE is the one a drift would make stale). None or empty: production's.

    Returns:
        The verdict: rollback before retrain before ok; ok without judging anything when the
        window had too little traffic.
    """
    s = settings
    common: dict[str, Any] = {
        "production_version": production_version,
        "previous_version": previous_version,
        "run_key": result.run_key,
        "report_path": result.report_path,
        "window_end": None if result.window_end is None else result.window_end.isoformat(),
        "window_start": None if result.window_start is None else result.window_start.isoformat(),
    }
    if result.rows < s.min_rows:
        return MonitoringVerdict(
            action=Action.OK,
            reasons=[
                f"{SKIP}: not enough traffic: {result.rows} predictions < min {s.min_rows} in the "
                "window; drift and quality not judged"
            ],
            **common,
        )
    baseline: Baseline | None = None
    if previous_rolled_back:
        quality_ok = True
        quality_msg = (
            f"quality: the previous version {previous_version} was rolled back; no version to "
            "roll back to, not judged"
        )
    else:
        quality_ok, quality_msg, baseline = _quality_check(
            result, s, production_version, previous_version, previous_registered_mae
        )
    feature = feature_drift_check(result, s, importance)
    prediction = _prediction_check(result, s)
    loss = quality_loss_check(result, s, production_version, production_registered_mae)
    checks: list[tuple[Check, bool, str]] = [
        (Check.TRAFFIC, True, f"traffic: {result.rows} predictions ≥ min {s.min_rows}"),
        (Check.QUALITY, quality_ok, quality_msg),
        (Check.FEATURE_DRIFT, feature.ok, feature.message),
        (Check.PREDICTION_DRIFT, prediction[0], prediction[1]),
        (Check.QUALITY_LOSS, loss[0], loss[1]),
    ]
    failed = [name for name, ok, _ in checks if not ok]
    held = None
    if Check.QUALITY in failed:
        # The world's drift, not the predictions': a model whose outputs moved on inputs that
        # did not is broken itself, and restoring the previous one is the cure.
        world = Check.FEATURE_DRIFT in failed
        if previous_importance:
            world = not feature_drift_check(result, s, previous_importance).ok
        held = _rollback_held(result, s, baseline, world, last_rollback_at)
    mine = window_loss(result, s, production_version)
    call = retrain_call(
        feature=Check.FEATURE_DRIFT in failed,
        prediction=Check.PREDICTION_DRIFT in failed,
        quality=Check.QUALITY_LOSS in failed,
        inputs=bool(feature.drifted),
        loss=mine,
        registered=production_registered_mae,
        span=drift_span(recent, production_version, result.window_end),
        s=s,
        end=result.window_end,
        last_retrain_at=last_retrain_at,
    )
    failed += [Check.POOLED_QUALITY_LOSS] if call.pooled else []
    lines = reason_lines((ok, msg) for _, ok, msg in checks)
    if held is not None:
        lines.append(f"{SKIP}: rollback held: {held}")
    lines += call.lines
    if Check.QUALITY in failed and held is None:
        action = Action.ROLLBACK
    elif call.retrain:
        action = Action.RETRAIN
    else:
        action = Action.OK
    return MonitoringVerdict(
        action=action,
        reasons=lines,
        failed_checks=[str(name) for name in failed],
        drifted_features=feature.drifted if call.streak or not feature.ok else [],
        baseline=baseline,
        drift_seen=call.seen,
        drift_suspected=call.suspected,
        drift_streak=call.streak,
        live_quality=None if mine is None else mine.to_dict(),
        **common,
    )


def _rollback_held(
    result: DriftResult,
    s: MonitoringSettings,
    baseline: Baseline | None,
    drifted: bool,
    last: dt.datetime | None,
) -> str | None:
    """Why a failed quality check does not roll back, or None when it does."""
    if baseline == "registered" and drifted:
        # Measured offline on training-time data, the registered MAE flatters the previous
        # version in a drifted world: production's regression is the world's, a retrain's job.
        return (
            "the baseline is a registered MAE and features that matter drifted: the retrain "
            "rules decide"
        )
    if last is None:
        return None
    now = result.window_end
    since = None if now is None else (now - last).total_seconds()
    if since is None or since < s.rollback_cooldown_s:
        ago = "at an unknown time before" if since is None else f"{since:.0f} s before"
        return (
            f"the last rollback was {ago} the window's end, within the cooldown of "
            f"{s.rollback_cooldown_s:g} s"
        )
    return None


def _quality_check(
    result: DriftResult,
    s: MonitoringSettings,
    production: str | None,
    previous: str | None,
    registered: float | None,
) -> tuple[bool, str, Baseline | None]:
    if production is None:
        return True, "quality: no production version given, not judged", None
    mine = result.live_mae.get(production)
    n = 0 if mine is None else mine.n
    if mine is None or n < s.min_labelled:
        return (
            True,
            f"quality: {production} has {n} labelled predictions < min {s.min_labelled}, "
            "not judged",
            None,
        )
    theirs = None if previous is None else result.live_mae.get(previous)
    baseline: Baseline
    if theirs is not None and theirs.n >= s.min_labelled:
        base, baseline, what = theirs.mae, "live", f"{previous}'s live MAE {theirs.mae:.2f}"
    elif registered is not None:
        base, baseline = registered, "registered"
        what = f"{previous or 'the previous version'}'s registered MAE {registered:.2f}"
    else:
        return (
            True,
            f"quality: {production} MAE {mine.mae:.2f} min ({n} labelled); no previous "
            "production version to compare with, not judged",
            None,
        )
    change = relative_change(mine.mae, base)
    within = change <= s.max_mae_regression
    # The canary's test: the excess past the margin must be beyond quality_z standard errors
    # of the difference. A registered MAE (a large holdout) counts as exact; two live MAEs
    # come from different orders, so their errors add (sqrt(se_p² + se_q²)).
    se = mine.mae_se
    if baseline == "live" and se is not None:
        other = theirs.mae_se if theirs is not None else None
        se = None if other is None else math.hypot(se, other)
    excess = mine.mae - base * (1 + s.max_mae_regression)
    ok = within or within_noise(excess, se, s.quality_z)
    noise = ""
    if not within and se is not None:
        noise = f", {'within' if ok else 'beyond'} noise {s.quality_z:g} × SE {se:.2f}"
    return (
        ok,
        f"quality: {production} live MAE {mine.mae:.2f} vs {what} min "
        f"({change:+.1%} {'≤' if within else '>'} {s.max_mae_regression:.1%}{noise}, "
        f"{n} labelled)",
        baseline,
    )


def _prediction_check(result: DriftResult, s: MonitoringSettings) -> tuple[bool, str]:
    p = result.prediction
    if p is None:
        return True, "prediction drift: no reference for the predictions, not judged"
    ok = p.psi <= s.prediction_drift_threshold
    return (
        ok,
        f"prediction drift: PSI {p.psi:.3f} {'≤' if ok else '>'} "
        f"{s.prediction_drift_threshold:g} against the reference's {p.reference} "
        f"(mean {p.current_mean:.1f} vs {p.reference_mean:.1f} min)",
    )
