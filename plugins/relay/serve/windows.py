"""Windows of one model version's live serving counters, and the maths the rollout judges on.

A :class:`VersionWindow` is a frozen view of one version's counters between ``since`` and
``until`` (wall-clock seconds, ``time.time``, so that windows of different processes can be
added), as :meth:`relay.serve.metrics.LiveMetrics.snapshot` takes them; :func:`diff` of two
snapshots is the window between them, and :func:`total` adds the windows of several router
replicas (:mod:`relay.serve.metrics_hub`). Percentiles are estimated
from the histogram by linear interpolation within the bucket, as Prometheus's
``histogram_quantile`` does; a quantile that falls in the ``+Inf`` bucket is reported as the
highest finite bound.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Upper bounds (ms) of the latency buckets; a ``+Inf`` bucket follows.
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000,
)  # fmt: skip
#: Upper bounds (minutes) of the predicted-delivery-time buckets; a ``+Inf`` bucket follows.
PREDICTION_BUCKETS_MIN: tuple[float, ...] = (
    5, 10, 15, 20, 25, 30, 40, 50, 60, 75, 90, 120,
)  # fmt: skip
#: Upper bounds (orders) of the batch-size buckets; a ``+Inf`` bucket follows.
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class VersionWindow:
    """One model version's counters over a window of time.

    Attributes:
        version: the model version the counters belong to.
        since: start of the window (clock seconds): when the counters were last zeroed
            (creation or :meth:`~relay.serve.metrics.LiveMetrics.reset`), or the earlier
            snapshot's ``until`` for a :func:`diff`.
        until: end of the window: when the snapshot was taken.
        requests: requests observed, failed ones included.
        errors: requests that failed.
        predictions: predictions returned (``n_predictions`` summed).
        degraded: answers served ``degraded`` (the features' defaults, or a fallback ETA).
        latency_bounds: finite upper bounds (ms) of the latency buckets.
        latency_counts: requests per latency bucket, not cumulative; one more entry than
            ``latency_bounds``, the last being the ``+Inf`` bucket.
        latency_sum_ms: total latency of the requests.
        prediction_bounds: finite upper bounds (minutes) of the prediction buckets.
        prediction_counts: prediction values per bucket, not cumulative, ``+Inf`` last. Only
            values passed to ``observe`` (and finite) are here, so their total may be below
            ``predictions``.
        prediction_sum: total of those prediction values (minutes).
        batch_bounds: finite upper bounds (orders) of the batch-size buckets.
        batch_counts: model calls per bucket of the size (orders) of the forward pass each
            was answered in, not cumulative, ``+Inf`` last: a pass of 32 single-order calls
            counts 32 times here, once in ``batches``.
        batch_orders_sum: those sizes added (the histogram's sum).
        batches: forward passes the calls were answered in: each call adds its share of its
            pass (its orders over the pass's), so a pass whose calls were all counted adds 1.
        batched_orders: orders of the calls that reported their pass.
        first_observed: clock time of the window's first request; None when there was none,
            or for a :func:`diff` whose earlier side had requests already (it is not known).
        last_observed: clock time of the window's last request; None when there was none.
    """

    version: str
    since: float
    until: float
    requests: int = 0
    errors: int = 0
    predictions: int = 0
    degraded: int = 0
    latency_bounds: tuple[float, ...] = LATENCY_BUCKETS_MS
    latency_counts: tuple[int, ...] = (0,) * (len(LATENCY_BUCKETS_MS) + 1)
    latency_sum_ms: float = 0.0
    prediction_bounds: tuple[float, ...] = PREDICTION_BUCKETS_MIN
    prediction_counts: tuple[int, ...] = (0,) * (len(PREDICTION_BUCKETS_MIN) + 1)
    prediction_sum: float = 0.0
    batch_bounds: tuple[float, ...] = BATCH_BUCKETS
    batch_counts: tuple[int, ...] = (0,) * (len(BATCH_BUCKETS) + 1)
    batch_orders_sum: float = 0.0
    batches: float = 0.0
    batched_orders: int = 0
    first_observed: float | None = None
    last_observed: float | None = None

    @property
    def duration_s(self) -> float:
        """Length of the window in seconds."""
        return max(self.until - self.since, 0.0)

    @property
    def qps(self) -> float:
        """Requests per second over the window (0.0 for an empty or zero-length window)."""
        d = self.duration_s
        return self.requests / d if d > 0 else 0.0

    @property
    def error_rate(self) -> float:
        """Errors per request (0.0 without requests)."""
        return self.errors / self.requests if self.requests else 0.0

    @property
    def mean_latency_ms(self) -> float | None:
        """Mean request latency, or None without requests."""
        return self.latency_sum_ms / self.requests if self.requests else None

    @property
    def p50_ms(self) -> float | None:
        """Median latency estimated from the histogram, or None without requests."""
        return self.latency_quantile(0.5)

    @property
    def p99_ms(self) -> float | None:
        """99th-percentile latency estimated from the histogram, or None without requests."""
        return self.latency_quantile(0.99)

    @property
    def observed_prediction_values(self) -> int:
        """How many prediction values the histogram holds."""
        return sum(self.prediction_counts)

    @property
    def mean_prediction(self) -> float | None:
        """Mean predicted delivery time (minutes), or None when no values were observed."""
        n = self.observed_prediction_values
        return self.prediction_sum / n if n else None

    @property
    def mean_batch_orders(self) -> float | None:
        """Orders per forward pass, or None when no call reported its pass."""
        return self.batched_orders / self.batches if self.batches > 0 else None

    def requests_slower_than(self, ms: float) -> int:
        """Requests slower than ``ms``, from the histogram (a bucket that straddles ``ms``
        counts in proportion to its part above it)."""
        slower = 0.0
        lower = 0.0
        for i, n in enumerate(self.latency_counts):
            upper = self.latency_bounds[i] if i < len(self.latency_bounds) else math.inf
            if lower >= ms:
                slower += n
            elif upper > ms and n:
                slower += n if math.isinf(upper) else n * (upper - ms) / (upper - lower)
            lower = upper
        return round(slower)

    def latency_quantile(self, q: float) -> float | None:
        """Latency quantile ``q`` in [0, 1] (ms), interpolated within its bucket."""
        return _quantile(q, self.latency_bounds, self.latency_counts)

    def prediction_quantile(self, q: float) -> float | None:
        """Predicted-minutes quantile ``q`` in [0, 1], interpolated within its bucket."""
        return _quantile(q, self.prediction_bounds, self.prediction_counts)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the counters and the derived figures, ready for ``json.dumps``."""
        return {
            "version": self.version,
            "since": self.since,
            "until": self.until,
            "duration_s": self.duration_s,
            "requests": self.requests,
            "errors": self.errors,
            "predictions": self.predictions,
            "degraded": self.degraded,
            "qps": self.qps,
            "error_rate": self.error_rate,
            "mean_latency_ms": self.mean_latency_ms,
            "latency_sum_ms": self.latency_sum_ms,
            "prediction_sum": self.prediction_sum,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "mean_prediction": self.mean_prediction,
            "latency_bounds": list(self.latency_bounds),
            "latency_counts": list(self.latency_counts),
            "prediction_bounds": list(self.prediction_bounds),
            "prediction_counts": list(self.prediction_counts),
            "batch_bounds": list(self.batch_bounds),
            "batch_counts": list(self.batch_counts),
            "batch_orders_sum": self.batch_orders_sum,
            "batches": self.batches,
            "batched_orders": self.batched_orders,
            "mean_batch_orders": self.mean_batch_orders,
            "first_observed": self.first_observed,
            "last_observed": self.last_observed,
        }


_HISTOGRAM_FIELDS = (
    "latency_bounds",
    "latency_counts",
    "prediction_bounds",
    "prediction_counts",
    "batch_bounds",
    "batch_counts",
)


def _bounds(w: VersionWindow) -> tuple[tuple[float, ...], ...]:
    return (w.latency_bounds, w.prediction_bounds, w.batch_bounds)


def window_from_dict(data: Mapping[str, Any]) -> VersionWindow:
    """The inverse of :meth:`VersionWindow.to_dict` (derived figures are recomputed)."""
    names = {f.name for f in dataclasses.fields(VersionWindow)}
    kwargs = {k: v for k, v in data.items() if k in names}
    for key in _HISTOGRAM_FIELDS:
        if key in kwargs:
            kwargs[key] = tuple(kwargs[key])
    return VersionWindow(**kwargs)


def diff(later: VersionWindow, earlier: VersionWindow) -> VersionWindow:
    """The window between two snapshots of the same version: ``later`` minus ``earlier``.

    Args:
        later: the version's window from the later snapshot.
        earlier: the same version's window from an earlier snapshot of the same metrics.

    Returns:
        A window from ``earlier.until`` to ``later.until`` holding only what happened between.

    Raises:
        ValueError: the windows are of different versions or buckets, out of order, or the
            counters were reset between the snapshots (their ``since`` differ).
    """
    if later.version != earlier.version:
        raise ValueError(f"cannot diff version {later.version!r} against {earlier.version!r}")
    if _bounds(later) != _bounds(earlier):
        raise ValueError("cannot diff windows with different histogram buckets")
    if later.since != earlier.since:
        raise ValueError(
            f"counters of version {later.version!r} were reset between the snapshots; "
            "take a new earlier snapshot after the reset"
        )
    if later.until < earlier.until:
        raise ValueError("diff(later, earlier): the first argument is the earlier snapshot")
    requests = later.requests - earlier.requests
    if requests == 0:
        first, last = None, None
    else:
        first = later.first_observed if earlier.requests == 0 else None
        last = later.last_observed
    return VersionWindow(
        version=later.version,
        since=earlier.until,
        until=later.until,
        requests=requests,
        errors=later.errors - earlier.errors,
        predictions=later.predictions - earlier.predictions,
        degraded=later.degraded - earlier.degraded,
        latency_bounds=later.latency_bounds,
        latency_counts=_sub(later.latency_counts, earlier.latency_counts),
        latency_sum_ms=later.latency_sum_ms - earlier.latency_sum_ms,
        prediction_bounds=later.prediction_bounds,
        prediction_counts=_sub(later.prediction_counts, earlier.prediction_counts),
        prediction_sum=later.prediction_sum - earlier.prediction_sum,
        batch_bounds=later.batch_bounds,
        batch_counts=_sub(later.batch_counts, earlier.batch_counts),
        batch_orders_sum=later.batch_orders_sum - earlier.batch_orders_sum,
        batches=later.batches - earlier.batches,
        batched_orders=later.batched_orders - earlier.batched_orders,
        first_observed=first,
        last_observed=last,
    )


def total(
    version: str, windows: Sequence[VersionWindow], since: float, until: float
) -> VersionWindow:
    """Several counters of one version (one per router replica) added into one window.

    Args:
        version: the version they all count.
        windows: its windows, all with the same histogram buckets.
        since: start of the summed window (the parts may have started at different times).
        until: its end.

    Returns:
        Counts, histograms and sums added; first and last observed are the earliest and the
        latest of the parts' (comparable because every clock is wall-clock).

    Raises:
        ValueError: a window of another version, or with other histogram buckets.
    """
    if not windows:
        return VersionWindow(version=version, since=since, until=until)
    head = windows[0]
    for w in windows:
        if w.version != version:
            raise ValueError(f"cannot add version {w.version!r} to version {version!r}")
        if _bounds(w) != _bounds(head):
            raise ValueError(f"cannot add windows of {version!r} with different histogram buckets")
    firsts = [w.first_observed for w in windows if w.first_observed is not None]
    lasts = [w.last_observed for w in windows if w.last_observed is not None]
    return VersionWindow(
        version=version,
        since=since,
        until=until,
        requests=sum(w.requests for w in windows),
        errors=sum(w.errors for w in windows),
        predictions=sum(w.predictions for w in windows),
        degraded=sum(w.degraded for w in windows),
        latency_bounds=head.latency_bounds,
        latency_counts=_add(w.latency_counts for w in windows),
        latency_sum_ms=sum(w.latency_sum_ms for w in windows),
        prediction_bounds=head.prediction_bounds,
        prediction_counts=_add(w.prediction_counts for w in windows),
        prediction_sum=sum(w.prediction_sum for w in windows),
        batch_bounds=head.batch_bounds,
        batch_counts=_add(w.batch_counts for w in windows),
        batch_orders_sum=sum(w.batch_orders_sum for w in windows),
        batches=sum(w.batches for w in windows),
        batched_orders=sum(w.batched_orders for w in windows),
        first_observed=min(firsts, default=None),
        last_observed=max(lasts, default=None),
    )


def _add(counts: Iterable[tuple[int, ...]]) -> tuple[int, ...]:
    return tuple(sum(column) for column in zip(*counts, strict=True))


def _sub(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(x - y for x, y in zip(a, b, strict=True))


def _quantile(q: float, bounds: tuple[float, ...], counts: tuple[int, ...]) -> float | None:
    if not 0 <= q <= 1:
        raise ValueError(f"quantile must lie in [0, 1], got {q}")
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    below = 0
    for i, n in enumerate(counts):
        if n and below + n >= rank:
            if i == len(bounds):
                # The +Inf bucket has no upper edge: report its lower one, as Prometheus does.
                return bounds[-1]
            lower = bounds[i - 1] if i else 0.0
            return lower + (bounds[i] - lower) * (rank - below) / n
        below += n
    return bounds[-1]  # pragma: no cover, unreachable: the last non-empty bucket reaches rank
