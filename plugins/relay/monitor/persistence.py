"""Drift over consecutive windows: which earlier windows count, and a loss confirmed over them.

The retrain rules (:mod:`relay.monitor.retrain_rules`) ask drift to persist over
``persist_windows`` windows in a row. Drift is *seen* in a window when that window's own
measurements confirm it; it is *suspected* when the window's live MAE is past its registered MAE
and the margin (``max_mae_regression``) while inputs or predictions drifted, but the window's
labelled predictions alone cannot tell that loss from noise (``confirm_z``).

Asking every window to confirm a loss on its own asks for ``persist_windows`` independent
confirmations: a loss that is real but modest (a tenth past the registered MAE, where one day's
rows confirm about a twelfth) passes in one window and not the next, and never retrains. Yet the
windows together hold the evidence: :func:`pooled_loss_check` pools the labelled predictions of
the windows that saw or suspected drift (each past the margin: the loss persisted) and confirms
the loss when their pooled MAE is past the margin by ``confirm_z`` standard errors of the pooled
mean (one test at the same level as one window's, on more rows).

Each labelled prediction counts once: a window that overlaps one already pooled adds nothing
(the hourly DAG's 24-hour windows share 23 hours, and counting those rows twice would halve the
noise the test allows for). Overlapping windows are judged by the newest alone, as before.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from relay.clock import as_utc, asdict_iso
from relay.settings import MonitoringSettings
from relay.verdict import relative_change, within_noise


@dataclass(frozen=True)
class WindowLoss:
    """Production's live accuracy in one window, as its verdict records it for later windows.

    Attributes:
        n: labelled predictions.
        mae: their mean absolute error, minutes.
        mae_se: its standard error; None when unknown (no allowance for noise, as in
            :func:`relay.verdict.within_noise`).
        start: the window's first instant, None when unknown (it then pools with nothing).
        end: the window's end, exclusive.
    """

    n: int
    mae: float
    mae_se: float | None
    start: dt.datetime | None
    end: dt.datetime | None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict with ISO times, as stored in the verdict's ``live_quality``."""
        return asdict_iso(self, "start", "end")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> WindowLoss | None:
        """Inverse of :meth:`to_dict`; None for a verdict that recorded none (or an older one)."""
        if not data:
            return None
        try:
            se = data.get("mae_se")
            return cls(
                n=int(data["n"]),
                mae=float(data["mae"]),
                mae_se=None if se is None else float(se),
                start=_time(data.get("start")),
                end=_time(data.get("end")),
            )
        except (KeyError, TypeError, ValueError):
            return None

    def past_margin(self, registered: float, s: MonitoringSettings) -> bool:
        """The MAE is worse than ``registered`` by more than ``max_mae_regression``."""
        return relative_change(self.mae, registered) > s.max_mae_regression


def drift_span(
    recent: Sequence[Mapping[str, Any]], production: str | None, end: dt.datetime | None
) -> list[Mapping[str, Any]]:
    """The windows before ``end``, in a row, that saw or suspected drift, newest first.

    Args:
        recent: earlier verdicts, newest first (``MonitoringHistory.verdicts``); a verdict
            without ``drift_seen`` or ``drift_suspected`` (a quiet window, an older record) ends
            the span, and one of a window not before ``end`` (this window's earlier record, a
            re-run) is passed.
        production: the version judged now: drift against another version's reference says
            nothing about this one's.
        end: this window's end.
    """
    span: list[Mapping[str, Any]] = []
    for verdict in recent:
        ended = _time(verdict.get("window_end"))
        if end is not None and ended is not None and as_utc(ended) >= as_utc(end):
            continue
        if verdict.get("production_version") != production:
            break
        if not (verdict.get("drift_seen") or verdict.get("drift_suspected")):
            break
        span.append(verdict)
    return span


def pooled_loss_check(
    current: WindowLoss | None,
    earlier: Sequence[Mapping[str, Any]],
    registered: float | None,
    s: MonitoringSettings,
) -> tuple[bool, str]:
    """Whether the span's labelled predictions together confirm a quality loss: ``(lost, why)``.

    Args:
        current: production's accuracy in this window.
        earlier: the span's earlier verdicts, newest first (their ``live_quality``).
        registered: production's registered MAE.
        s: the margin (``max_mae_regression``) and ``confirm_z``.
    """
    if current is None or registered is None:
        return False, "no live MAE against a registered MAE in this window"
    windows = [current]
    for verdict in earlier:
        loss = WindowLoss.from_dict(verdict.get("live_quality"))
        if loss is None or not loss.past_margin(registered, s):
            ended = verdict.get("window_end")
            return False, f"the window ending {ended} lost no quality past the margin"
        first = windows[-1].start
        if loss.end is not None and first is not None and as_utc(loss.end) <= as_utc(first):
            windows.append(loss)  # disjoint from every window pooled so far (they go back)
    if not current.past_margin(registered, s):
        return False, "this window lost no quality past the margin"
    n = sum(w.n for w in windows)
    mae = sum(w.n * w.mae for w in windows) / n
    # Disjoint windows are independent samples: the pooled mean's variance is the n-weighted sum.
    se: float | None = None
    if all(w.mae_se is not None for w in windows):
        se = math.sqrt(sum((w.n * (w.mae_se or 0.0)) ** 2 for w in windows)) / n
    excess = mae - registered * (1 + s.max_mae_regression)
    lost = not within_noise(excess, se, s.confirm_z)
    noise = "no SE" if se is None else f"{s.confirm_z:g} × SE {se:.2f}"
    return lost, (
        f"live MAE {mae:.2f} over {len(windows)} window{'s' if len(windows) > 1 else ''} "
        f"({n} labelled) vs its registered MAE {registered:.2f} min "
        f"({relative_change(mae, registered):+.1%} > {s.max_mae_regression:.1%}, "
        f"{'beyond' if lost else 'within'} noise {noise})"
    )


def _time(value: Any) -> dt.datetime | None:
    if isinstance(value, dt.datetime):
        return value
    try:
        return dt.datetime.fromisoformat(str(value)) if value else None
    except ValueError:
        return None
