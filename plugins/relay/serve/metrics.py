"""Live serving metrics per model version, kept in process and exposed to Prometheus.

:class:`LiveMetrics` counts requests, errors and predictions and keeps two histograms per
model version: request latency (milliseconds), predicted delivery time (minutes) and the size
of the forward pass each model call was answered in (orders: how full batches run). It is
thread-safe and does no I/O: a router replica calls :meth:`LiveMetrics.observe` once per model
version call and pushes :meth:`LiveMetrics.snapshot` to the cluster's metrics hub
(:mod:`relay.serve.metrics_hub`), which adds every replica's; ``/metrics`` renders that sum with
:func:`prometheus_text`, and the rollout controller judges the window between two of its
snapshots with :func:`relay.serve.windows.diff`.
"""

from __future__ import annotations

import bisect
import itertools
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from relay.serve.windows import (
    BATCH_BUCKETS,
    LATENCY_BUCKETS_MS,
    PREDICTION_BUCKETS_MIN,
    VersionWindow,
)


class _Counters:
    """Mutable counters of one version; only touched under :class:`LiveMetrics`'s lock."""

    __slots__ = (
        "batch_counts",
        "batch_orders_sum",
        "batched_orders",
        "batches",
        "degraded",
        "errors",
        "first_observed",
        "last_observed",
        "latency_counts",
        "latency_sum_ms",
        "prediction_counts",
        "prediction_sum",
        "predictions",
        "requests",
        "since",
    )

    def __init__(self, since: float, n_latency: int, n_prediction: int, n_batch: int) -> None:
        self.since = since
        self.requests = 0
        self.errors = 0
        self.predictions = 0
        self.degraded = 0
        self.latency_counts = [0] * n_latency
        self.latency_sum_ms = 0.0
        self.prediction_counts = [0] * n_prediction
        self.prediction_sum = 0.0
        self.batch_counts = [0] * n_batch
        self.batch_orders_sum = 0.0
        self.batches = 0.0
        self.batched_orders = 0
        self.first_observed: float | None = None
        self.last_observed: float | None = None


class LiveMetrics:
    """Thread-safe live counters and histograms per model version.

    Args:
        clock: seconds as a float; ``time.time`` by default, inject a fake in tests. Wall-clock,
            not monotonic: the hub adds the windows of replicas in other processes, and their
            ``since``, ``until`` and first/last observed must be on one time base.
        latency_buckets_ms: finite upper bounds of the latency buckets, increasing.
        prediction_buckets_min: finite upper bounds of the prediction buckets, increasing.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        latency_buckets_ms: Sequence[float] = LATENCY_BUCKETS_MS,
        prediction_buckets_min: Sequence[float] = PREDICTION_BUCKETS_MIN,
    ) -> None:
        self._clock = clock
        self._latency_bounds = _check_bounds(latency_buckets_ms, "latency_buckets_ms")
        self._prediction_bounds = _check_bounds(prediction_buckets_min, "prediction_buckets_min")
        self._batch_bounds = BATCH_BUCKETS
        self._lock = threading.Lock()
        self._versions: dict[str, _Counters] = {}
        self._origin = clock()
        self._origin_for: dict[str, float] = {}

    def observe(
        self,
        version: str,
        latency_ms: float,
        n_predictions: int,
        predictions: Sequence[float] | None,
        error: bool = False,
        degraded: int = 0,
        batch_orders: int | None = None,
        orders: int = 0,
    ) -> None:
        """Record one request.

        Args:
            version: the model version that served it.
            latency_ms: its latency in milliseconds (failed requests too).
            n_predictions: how many predictions it returned (0 for a failed request).
            predictions: the predicted minutes, for the prediction histogram, or None to
                count them only. Non-finite values are counted but kept out of the histogram.
            error: True when the request failed.
            degraded: how many of its answers were served ``degraded``.
            batch_orders: the orders of the forward pass it was answered in, as the model
                reported it; None when it did not (a failed call).
            orders: the request's own orders (its share of that pass).

        Raises:
            ValueError: a negative or non-finite latency, a negative ``n_predictions``, or
                ``predictions`` whose length is not ``n_predictions``.
        """
        if not math.isfinite(latency_ms) or latency_ms < 0:
            raise ValueError(f"latency_ms must be a finite number ≥ 0, got {latency_ms!r}")
        if n_predictions < 0:
            raise ValueError(f"n_predictions must be ≥ 0, got {n_predictions}")
        if predictions is not None and len(predictions) != n_predictions:
            raise ValueError(
                f"{len(predictions)} prediction values given for n_predictions={n_predictions}"
            )
        # Bucket outside the lock; only the additions need it.
        lat_bucket = bisect.bisect_left(self._latency_bounds, latency_ms)
        pred_buckets: list[int] = []
        pred_sum = 0.0
        for value in predictions or ():
            v = float(value)
            if math.isfinite(v):
                pred_buckets.append(bisect.bisect_left(self._prediction_bounds, v))
                pred_sum += v
        batch_bucket = None
        if batch_orders is not None and batch_orders > 0:
            batch_bucket = bisect.bisect_left(self._batch_bounds, batch_orders)
        with self._lock:
            now = self._clock()
            c = self._counters(version)
            if batch_bucket is not None and batch_orders is not None:
                c.batch_counts[batch_bucket] += 1
                c.batch_orders_sum += batch_orders
                c.batches += min(orders, batch_orders) / batch_orders
                c.batched_orders += orders
            c.requests += 1
            c.errors += int(error)
            c.predictions += n_predictions
            c.degraded += degraded
            c.latency_counts[lat_bucket] += 1
            c.latency_sum_ms += latency_ms
            for b in pred_buckets:
                c.prediction_counts[b] += 1
            c.prediction_sum += pred_sum
            if c.first_observed is None:
                c.first_observed = now
            c.last_observed = now

    def snapshot(self, versions: Iterable[str] = ()) -> dict[str, VersionWindow]:
        """A consistent view of every version's counters at one instant.

        Args:
            versions: versions to include even if they were never observed (as empty windows),
                so that a later snapshot can be :func:`diff`-ed against this one.

        Returns:
            Version → its window from when its counters were zeroed until now.
        """
        with self._lock:
            now = self._clock()
            names = dict.fromkeys([*self._versions, *versions])
            return {v: self._window(v, now) for v in names}

    def reset(self, version: str | None = None) -> None:
        """Zero one version's counters, or every version's with None."""
        with self._lock:
            now = self._clock()
            if version is None:
                self._versions.clear()
                self._origin_for.clear()
                self._origin = now
            else:
                self._versions.pop(version, None)
                self._origin_for[version] = now

    def to_prometheus(self) -> str:
        """Every version's metrics in the Prometheus text exposition format.

        Serve it with the ``Content-Type`` ``prometheus_client.CONTENT_TYPE_LATEST``.
        """
        return prometheus_text(self.snapshot())

    def _counters(self, version: str) -> _Counters:
        c = self._versions.get(version)
        if c is None:
            c = _Counters(
                self._origin_for.get(version, self._origin),
                len(self._latency_bounds) + 1,
                len(self._prediction_bounds) + 1,
                len(self._batch_bounds) + 1,
            )
            self._versions[version] = c
        return c

    def _window(self, version: str, now: float) -> VersionWindow:
        c = self._versions.get(version)
        if c is None:
            return VersionWindow(
                version=version,
                since=self._origin_for.get(version, self._origin),
                until=now,
                latency_bounds=self._latency_bounds,
                latency_counts=(0,) * (len(self._latency_bounds) + 1),
                prediction_bounds=self._prediction_bounds,
                prediction_counts=(0,) * (len(self._prediction_bounds) + 1),
                batch_bounds=self._batch_bounds,
                batch_counts=(0,) * (len(self._batch_bounds) + 1),
            )
        return VersionWindow(
            version=version,
            since=c.since,
            until=now,
            requests=c.requests,
            errors=c.errors,
            predictions=c.predictions,
            degraded=c.degraded,
            latency_bounds=self._latency_bounds,
            latency_counts=tuple(c.latency_counts),
            latency_sum_ms=c.latency_sum_ms,
            prediction_bounds=self._prediction_bounds,
            prediction_counts=tuple(c.prediction_counts),
            prediction_sum=c.prediction_sum,
            batch_bounds=self._batch_bounds,
            batch_counts=tuple(c.batch_counts),
            batch_orders_sum=c.batch_orders_sum,
            batches=c.batches,
            batched_orders=c.batched_orders,
            first_observed=c.first_observed,
            last_observed=c.last_observed,
        )


def prometheus_text(windows: Mapping[str, VersionWindow]) -> str:
    """Windows (one replica's, or the cluster's sum) in the Prometheus text exposition format.

    A registry of its own, not prometheus_client's global one: it exposes exactly ``windows``.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Exposition(lambda: windows))
    return generate_latest(registry).decode()


def _check_bounds(bounds: Sequence[float], name: str) -> tuple[float, ...]:
    out = tuple(float(b) for b in bounds)
    if not out or any(not math.isfinite(b) for b in out):
        raise ValueError(f"{name} must be a non-empty list of finite bounds (+Inf is implied)")
    if any(b <= a for a, b in itertools.pairwise(out)):
        raise ValueError(f"{name} must increase strictly: {out}")
    return out


_COUNTERS = (
    ("relay_requests_total", "Requests served, failed ones included.", "requests"),
    ("relay_errors_total", "Requests that failed.", "errors"),
    ("relay_predictions_total", "Predictions returned.", "predictions"),
    (
        "relay_degraded_total",
        "Answers served degraded: default features (online store down or slow) or a fallback ETA.",
        "degraded",
    ),
    (
        "relay_model_batches_total",
        "Forward passes the model calls were answered in (each call adds its share of its "
        "pass); orders per pass: relay_model_batched_orders_total over this.",
        "batches",
    ),
    (
        "relay_model_batched_orders_total",
        "Orders of the model calls that reported their forward pass.",
        "batched_orders",
    ),
)
"""Counter name, help text and the :class:`VersionWindow` field it exposes."""


class _Exposition(Collector):
    """Every version's counters and histograms as Prometheus families, read at each scrape."""

    def __init__(self, snapshot: Callable[[], Mapping[str, VersionWindow]]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        """One family per metric, a sample set per version, from one consistent snapshot."""
        windows = sorted(self._snapshot().values(), key=lambda w: w.version)
        for name, help_text, attr in _COUNTERS:
            counter = CounterMetricFamily(name, help_text, labels=["version"])
            for w in windows:
                counter.add_metric([w.version], getattr(w, attr))
            yield counter
        latency = HistogramMetricFamily(
            "relay_request_latency_ms", "Request latency in milliseconds.", labels=["version"]
        )
        prediction = HistogramMetricFamily(
            "relay_prediction_minutes", "Predicted delivery time in minutes.", labels=["version"]
        )
        batch = HistogramMetricFamily(
            "relay_model_batch_orders",
            "Orders in the forward pass each model call was answered in (per call).",
            labels=["version"],
        )
        for w in windows:
            batch.add_metric(
                [w.version], _cumulative(w.batch_bounds, w.batch_counts), w.batch_orders_sum
            )
            latency.add_metric(
                [w.version], _cumulative(w.latency_bounds, w.latency_counts), w.latency_sum_ms
            )
            prediction.add_metric(
                [w.version],
                _cumulative(w.prediction_bounds, w.prediction_counts),
                w.prediction_sum,
            )
        yield latency
        yield prediction
        yield batch


def _cumulative(bounds: tuple[float, ...], counts: tuple[int, ...]) -> list[tuple[str, float]]:
    # Prometheus buckets count everything up to their bound; ours count their own range only.
    upper = (*(floatToGoString(b) for b in bounds), "+Inf")
    return list(zip(upper, itertools.accumulate(counts), strict=True))
