"""When drift asks for a retrain: drift that matters, persisting, confirmed, outside a cooldown.

The retrain half of :func:`relay.monitor.rules.decide`, pure like it. A retrain refits the
model on fresh days: worth it when the world moved in what the model relies on and the model
shows it, not whenever some input's histogram wobbles. Three witnesses are measured in every
window:

* **feature drift that matters**: the share of the model's permutation importance
  (``ModelVersion.training.feature_importance``) carried by the drifted features is at least
  ``importance_drift_threshold``. A feature is drifted when Evidently's test says so or its PSI
  is over ``psi_threshold``; a feature the catalog gives a threshold of its own
  (``Feature.psi_threshold``, :mod:`relay.features.catalog`) is judged by that PSI alone.
  Without importance (a version trained before it was measured) every monitored feature
  weighs the same, and the verdict says so. No separate rule for one feature's PSI: a feature
  that carries ``importance_drift_threshold`` of the importance meets the share on its own,
  one that carries less is, by the model's own account, not enough to act on.
* **prediction drift**: the served predictions' PSI is over ``prediction_drift_threshold``.
* **quality loss**: production's live MAE is worse than its own registered MAE by more than
  ``max_mae_regression``, beyond ``confirm_z`` standard errors (the rollback rule's test,
  :func:`relay.verdict.within_noise`; the registered MAE, on a large holdout, counts as exact).

**Drift is seen** in a window when

* feature drift that matters is confirmed by prediction drift or by a quality loss; or
* quality is lost while inputs drifted, whatever their weight (or the predictions did). The
  measured loss is the proof that the drift matters, where the importance cannot be:
  permutation importance is measured in the training world, and an input that hardly varied
  there gets little of it. The generator's storm, courier shortage and menu change cost
  production 15-75% of its accuracy through features the model gave 0-2% of its importance
  (``bench/monitoring.py``), while their predictions moved little (PSI 0.01-0.2).

Predictions that drift alone are the model following its inputs (a rainy day lengthens every
ETA, as it should); feature drift that matters alone, with the model's output and accuracy
unmoved, is a world the model already handles; a quality loss with no input or prediction
drift at all is for the rollback rule and the daily training run.

**A retrain** is decided when drift persisted over ``persist_windows`` windows in a row, of the
same production version, and no retrain happened within ``retrain_cooldown_s`` before the
window's end. Persisting, a window counts when it saw drift, or *suspected* it: its live MAE is
past the margin while inputs or predictions drifted, but its own labelled predictions cannot
tell that loss from noise (the verdicts record ``drift_seen`` and ``drift_suspected``). The
drift is confirmed when every one of the windows saw it, or else when their labelled
predictions together show the loss beyond noise, the loss past the margin in each
(:func:`relay.monitor.persistence.pooled_loss_check`: a real but modest loss, confirmed by
one window's rows and not by the next's, is confirmed by both together). The last retrain is
the newest version trained at monitoring's request (its lineage's trigger), whatever became of
it: promoted, rejected by the gate or rolled back. One asked for and not yet registered is
:mod:`relay.monitor.retrain`'s to hold (one training run at a time).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from relay.clock import as_utc
from relay.monitor.drift import DriftResult, FeatureDrift
from relay.monitor.persistence import WindowLoss, drift_span, pooled_loss_check
from relay.settings import MonitoringSettings
from relay.verdict import FAIL, PASS, SKIP, relative_change, within_noise

#: Drifted features a reason line names by weight; the rest are counted.
NAMED = 5


@dataclass(frozen=True)
class FeatureDriftCheck:
    """The importance-weighted feature drift of one window.

    Attributes:
        ok: below ``importance_drift_threshold``.
        message: the reason line (without its ``PASS``/``FAIL`` mark).
        drifted: the drifted features, heaviest first.
        share: the weighted share of the drifted features, 0 to 1.
    """

    ok: bool
    message: str
    drifted: list[str]
    share: float


def feature_weights(
    names: Sequence[str], importance: Mapping[str, float] | None
) -> tuple[dict[str, float], str]:
    """Each monitored feature's weight (summing to 1) and a phrase saying where they came from.

    Args:
        names: the monitored features of the window.
        importance: production's permutation importance by feature; None or empty (or none of
            it on a monitored feature): equal weights.
    """
    given = {n: float(importance.get(n, 0.0)) for n in names} if importance else {}
    given = {n: w if math.isfinite(w) and w > 0 else 0.0 for n, w in given.items()}
    total = sum(given.values())
    if total > 0:
        unweighed = [n for n in names if given[n] == 0]
        aside = f"; {len(unweighed)} with none" if unweighed else ""
        return {n: w / total for n, w in given.items()}, f"production's importance{aside}"
    if importance:
        why = "its importance covers no monitored feature"
    else:
        why = "production records no feature importance"
    equal = 1 / len(names) if names else 0.0
    return dict.fromkeys(names, equal), f"equal over {len(names)} features: {why}"


def is_drifted(f: FeatureDrift, s: MonitoringSettings) -> bool:
    """Whether one feature drifted: its own catalog PSI threshold, else Evidently or PSI."""
    own = s.psi_thresholds.get(f.name)
    if own is not None:
        return f.psi is not None and f.psi > own
    return f.drifted or (f.psi is not None and f.psi > s.psi_threshold)


def feature_drift_check(
    result: DriftResult, s: MonitoringSettings, importance: Mapping[str, float] | None
) -> FeatureDriftCheck:
    """The importance-weighted share of drifted features against its threshold."""
    weights, source = feature_weights([f.name for f in result.features], importance)
    drifted = sorted(
        (f.name for f in result.features if is_drifted(f, s)), key=lambda n: -weights[n]
    )
    share = sum(weights[n] for n in drifted)
    # A float sum of equal weights (3 × 1/10) must meet a threshold it equals (0.3).
    ok = share < s.importance_drift_threshold - 1e-9
    named = ", ".join(f"{n} {weights[n]:.2f}" for n in drifted[:NAMED])
    more = f" and {len(drifted) - NAMED} more" if len(drifted) > NAMED else ""
    which = f"{named}{more} drifted" if drifted else "none drifted"
    return FeatureDriftCheck(
        ok,
        f"feature drift: importance-weighted share {share:.2f} "
        f"{'<' if ok else '≥'} {s.importance_drift_threshold:g} ({which}; weights: {source})",
        drifted,
        share,
    )


def quality_loss_check(
    result: DriftResult, s: MonitoringSettings, production: str | None, registered: float | None
) -> tuple[bool, str]:
    """Production's live MAE against its own registered MAE: ``(ok, message)``."""
    if production is None:
        return True, "quality loss: no production version given, not judged"
    mine = result.live_mae.get(production)
    n = 0 if mine is None else mine.n
    if mine is None or n < s.min_labelled:
        return True, (
            f"quality loss: {production} has {n} labelled predictions < min {s.min_labelled}, "
            "not judged"
        )
    if registered is None:
        return True, f"quality loss: {production} has no registered MAE, not judged"
    change = relative_change(mine.mae, registered)
    within = change <= s.max_mae_regression
    excess = mine.mae - registered * (1 + s.max_mae_regression)
    ok = within or within_noise(excess, mine.mae_se, s.confirm_z)
    noise = ""
    if not within and mine.mae_se is not None:
        noise = f", {'within' if ok else 'beyond'} noise {s.confirm_z:g} × SE {mine.mae_se:.2f}"
    return ok, (
        f"quality loss: {production} live MAE {mine.mae:.2f} vs its registered MAE "
        f"{registered:.2f} min ({change:+.1%} {'≤' if within else '>'} "
        f"{s.max_mae_regression:.1%}{noise}, {n} labelled)"
    )


def drift_streak(
    recent: Sequence[Mapping[str, Any]], production: str | None, end: dt.datetime | None
) -> int:
    """How many windows before ``end`` in a row saw or suspected drift, of the same production
    version (:func:`relay.monitor.persistence.drift_span`)."""
    return len(drift_span(recent, production, end))


def window_loss(
    result: DriftResult, s: MonitoringSettings, production: str | None
) -> WindowLoss | None:
    """Production's live accuracy in the window, when it served ``min_labelled`` labelled rows."""
    mine = None if production is None else result.live_mae.get(production)
    if mine is None or mine.n < s.min_labelled:
        return None
    return WindowLoss(mine.n, mine.mae, mine.mae_se, result.window_start, result.window_end)


@dataclass(frozen=True)
class RetrainCall:
    """What the retrain rules make of one window (module docstring).

    Attributes:
        seen: drift confirmed in this window, on its own or over the span's windows together.
        suspected: signs of drift with a loss past the margin that this window alone does not
            confirm; persistence counts it (:mod:`relay.monitor.persistence`).
        retrain: a retrain is decided.
        lines: the reason lines (none when no witness failed).
        streak: windows in a row, this one included, that saw or suspected drift (0: neither).
        pooled: the loss was confirmed over the span's windows together (a ``FAIL`` line).
    """

    seen: bool
    suspected: bool
    retrain: bool
    lines: list[str]
    streak: int = 0
    pooled: bool = False


def retrain_call(
    *,
    feature: bool,
    prediction: bool,
    quality: bool,
    inputs: bool,
    loss: WindowLoss | None,
    registered: float | None,
    span: Sequence[Mapping[str, Any]],
    s: MonitoringSettings,
    end: dt.datetime | None,
    last_retrain_at: dt.datetime | None,
) -> RetrainCall:
    """Whether drift is seen or suspected, whether to retrain, and why (module docstring).

    Args:
        feature, prediction, quality: whether each witness failed its check in this window.
        inputs: whether any monitored feature drifted, whatever its weight.
        loss: production's live accuracy in this window (:func:`window_loss`).
        registered: production's registered MAE.
        span: the earlier windows in a row that saw or suspected drift, newest first
            (:func:`relay.monitor.persistence.drift_span`).
        s: the thresholds.
        end: the window's end.
        last_retrain_at: when the newest version trained at monitoring's request was made.
    """
    seen = (feature and prediction) or (quality and (inputs or prediction))
    past = loss is not None and registered is not None and loss.past_margin(registered, s)
    suspected = not seen and past and (inputs or prediction)
    if not (seen or suspected):
        return RetrainCall(False, False, False, _unconfirmed(feature, prediction, quality))
    windows = len(span) + 1
    if windows < s.persist_windows:
        what = "seen" if seen else "suspected (a loss past the margin, within this window's noise)"
        return RetrainCall(seen, suspected, False, [
            f"{SKIP}: persistence: drift {what} in {windows} of {s.persist_windows} "
            "consecutive windows; waiting"
        ], windows)  # fmt: skip
    plural = "" if windows == 1 else "s"
    persisted = f"drift seen in {windows} consecutive window{plural} (≥ {s.persist_windows})"
    earlier = span[: s.persist_windows - 1]
    lines: list[str] = []
    if not (seen and all(v.get("drift_seen") for v in earlier)):
        # Not every window confirmed it alone: their labelled rows together may.
        lost, why = pooled_loss_check(loss, earlier, registered, s)
        if not lost:
            return RetrainCall(seen, suspected, False, [
                f"{SKIP}: retrain: drift in {windows} consecutive window{plural}, not confirmed "
                f"in each, nor by their quality loss together ({why}); not retrained"
            ], windows)  # fmt: skip
        lines.append(f"{FAIL}: quality loss over the windows: {why}")
        persisted = (
            f"drift in {windows} consecutive window{plural} (≥ {s.persist_windows}), "
            "confirmed by their quality loss together"
        )
    call = RetrainCall(True, False, True, lines, windows, pooled=bool(lines))
    if last_retrain_at is None:
        return replace(call, lines=[*lines, f"{PASS}: persistence: {persisted}; no retrain before"])
    since = None if end is None else (as_utc(end) - as_utc(last_retrain_at)).total_seconds()
    cooldown = f"the cooldown of {s.retrain_cooldown_s:g} s"
    if since is None or since < s.retrain_cooldown_s:
        ago = "at an unknown time before" if since is None else f"{since:.0f} s before"
        held = f"the last retrain was {ago} the window's end, within {cooldown}"
        return replace(
            call, retrain=False, lines=[*lines, f"{SKIP}: retrain held: {persisted}, but {held}"]
        )
    past_cooldown = f"the last retrain {since:.0f} s before the window's end, past {cooldown}"
    return replace(call, lines=[*lines, f"{PASS}: persistence: {persisted}; {past_cooldown}"])


def _unconfirmed(feature: bool, prediction: bool, quality: bool) -> list[str]:
    """Why one witness alone does not retrain (no line when none failed)."""
    if feature:
        why = "feature drift that matters, not confirmed by prediction drift or a quality loss"
    elif prediction:
        why = (
            "predictions drifted without feature drift that matters or a quality loss (the "
            "model following its inputs)"
        )
    elif quality:
        why = (
            "a quality loss without drift in the inputs or the predictions (a rollback judges "
            "production against the previous version)"
        )
    else:
        return []
    return [f"{SKIP}: retrain: {why}; not retrained"]
