"""Live serving metrics per model version, kept in process and exposed to Prometheus.

:class:`LiveMetrics` counts requests, errors and predictions and keeps two histograms per
model version: request latency (milliseconds) and predicted delivery time (minutes). It is
thread-safe and does no I/O: the Serve app calls :meth:`LiveMetrics.observe` once per request,
a ``/metrics`` route returns :meth:`LiveMetrics.to_prometheus`, and the rollout controller takes
:meth:`LiveMetrics.snapshot` at intervals and judges the window between two snapshots with
:func:`diff`.

A :class:`VersionWindow` is a frozen view of one version's counters between ``since`` and
``until`` (seconds on the metrics' clock). Percentiles are estimated from the histogram by
linear interpolation within the bucket, as Prometheus's ``histogram_quantile`` does; a
quantile that falls in the ``+Inf`` bucket is reported as the highest finite bound.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
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
#: The ``Content-Type`` of :meth:`LiveMetrics.to_prometheus`'s text.
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class VersionWindow:
    """One model version's counters over a window of time.

    Attributes:
        version: the model version the counters belong to.
        since: start of the window (clock seconds): when the counters were last zeroed
            (creation or :meth:`LiveMetrics.reset`), or the earlier snapshot's ``until`` for a
            :func:`diff`.
        until: end of the window: when the snapshot was taken.
        requests: requests observed, failed ones included.
        errors: requests that failed.
        predictions: predictions returned (``n_predictions`` summed).
        latency_bounds: finite upper bounds (ms) of the latency buckets.
        latency_counts: requests per latency bucket, not cumulative; one more entry than
            ``latency_bounds``, the last being the ``+Inf`` bucket.
        latency_sum_ms: total latency of the requests.
        prediction_bounds: finite upper bounds (minutes) of the prediction buckets.
        prediction_counts: prediction values per bucket, not cumulative, ``+Inf`` last. Only
            values passed to ``observe`` (and finite) are here, so their total may be below
            ``predictions``.
        prediction_sum: total of those prediction values (minutes).
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
    latency_bounds: tuple[float, ...] = LATENCY_BUCKETS_MS
    latency_counts: tuple[int, ...] = (0,) * (len(LATENCY_BUCKETS_MS) + 1)
    latency_sum_ms: float = 0.0
    prediction_bounds: tuple[float, ...] = PREDICTION_BUCKETS_MIN
    prediction_counts: tuple[int, ...] = (0,) * (len(PREDICTION_BUCKETS_MIN) + 1)
    prediction_sum: float = 0.0
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
            "first_observed": self.first_observed,
            "last_observed": self.last_observed,
        }


def window_from_dict(data: Mapping[str, Any]) -> VersionWindow:
    """The inverse of :meth:`VersionWindow.to_dict` (derived figures are recomputed)."""
    names = {f.name for f in dataclasses.fields(VersionWindow)}
    kwargs = {k: v for k, v in data.items() if k in names}
    for key in ("latency_bounds", "latency_counts", "prediction_bounds", "prediction_counts"):
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
    if (later.latency_bounds, later.prediction_bounds) != (
        earlier.latency_bounds,
        earlier.prediction_bounds,
    ):
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
        latency_bounds=later.latency_bounds,
        latency_counts=_sub(later.latency_counts, earlier.latency_counts),
        latency_sum_ms=later.latency_sum_ms - earlier.latency_sum_ms,
        prediction_bounds=later.prediction_bounds,
        prediction_counts=_sub(later.prediction_counts, earlier.prediction_counts),
        prediction_sum=later.prediction_sum - earlier.prediction_sum,
        first_observed=first,
        last_observed=last,
    )


class _Counters:
    """Mutable counters of one version; only touched under :class:`LiveMetrics`'s lock."""

    __slots__ = (
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

    def __init__(self, since: float, n_latency: int, n_prediction: int) -> None:
        self.since = since
        self.requests = 0
        self.errors = 0
        self.predictions = 0
        self.latency_counts = [0] * n_latency
        self.latency_sum_ms = 0.0
        self.prediction_counts = [0] * n_prediction
        self.prediction_sum = 0.0
        self.first_observed: float | None = None
        self.last_observed: float | None = None


class LiveMetrics:
    """Thread-safe live counters and histograms per model version.

    Args:
        clock: seconds as a float; ``time.monotonic`` by default, inject a fake in tests.
        latency_buckets_ms: finite upper bounds of the latency buckets, increasing.
        prediction_buckets_min: finite upper bounds of the prediction buckets, increasing.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        latency_buckets_ms: Sequence[float] = LATENCY_BUCKETS_MS,
        prediction_buckets_min: Sequence[float] = PREDICTION_BUCKETS_MIN,
    ) -> None:
        self._clock = clock
        self._latency_bounds = _check_bounds(latency_buckets_ms, "latency_buckets_ms")
        self._prediction_bounds = _check_bounds(prediction_buckets_min, "prediction_buckets_min")
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
    ) -> None:
        """Record one request.

        Args:
            version: the model version that served it.
            latency_ms: its latency in milliseconds (failed requests too).
            n_predictions: how many predictions it returned (0 for a failed request).
            predictions: the predicted minutes, for the prediction histogram, or None to
                count them only. Non-finite values are counted but kept out of the histogram.
            error: True when the request failed.

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
        with self._lock:
            now = self._clock()
            c = self._counters(version)
            c.requests += 1
            c.errors += int(error)
            c.predictions += n_predictions
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
        """Every version's metrics in the Prometheus text exposition format 0.0.4.

        Serve it with the ``Content-Type`` :data:`PROMETHEUS_CONTENT_TYPE`.
        """
        windows = sorted(self.snapshot().values(), key=lambda w: w.version)
        lines: list[str] = []
        for name, help_text, attr in (
            ("relay_requests_total", "Requests served, failed ones included.", "requests"),
            ("relay_errors_total", "Requests that failed.", "errors"),
            ("relay_predictions_total", "Predictions returned.", "predictions"),
        ):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
            lines += [f"{name}{_labels(version=w.version)} {getattr(w, attr)}" for w in windows]
        lines += _histogram(
            "relay_request_latency_ms",
            "Request latency in milliseconds.",
            [(w.version, w.latency_bounds, w.latency_counts, w.latency_sum_ms) for w in windows],
        )
        lines += _histogram(
            "relay_prediction_minutes",
            "Predicted delivery time in minutes.",
            [
                (w.version, w.prediction_bounds, w.prediction_counts, w.prediction_sum)
                for w in windows
            ],
        )
        return "\n".join(lines) + "\n"

    def _counters(self, version: str) -> _Counters:
        c = self._versions.get(version)
        if c is None:
            c = _Counters(
                self._origin_for.get(version, self._origin),
                len(self._latency_bounds) + 1,
                len(self._prediction_bounds) + 1,
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
            )
        return VersionWindow(
            version=version,
            since=c.since,
            until=now,
            requests=c.requests,
            errors=c.errors,
            predictions=c.predictions,
            latency_bounds=self._latency_bounds,
            latency_counts=tuple(c.latency_counts),
            latency_sum_ms=c.latency_sum_ms,
            prediction_bounds=self._prediction_bounds,
            prediction_counts=tuple(c.prediction_counts),
            prediction_sum=c.prediction_sum,
            first_observed=c.first_observed,
            last_observed=c.last_observed,
        )


def _check_bounds(bounds: Sequence[float], name: str) -> tuple[float, ...]:
    out = tuple(float(b) for b in bounds)
    if not out or any(not math.isfinite(b) for b in out):
        raise ValueError(f"{name} must be a non-empty list of finite bounds (+Inf is implied)")
    if any(b <= a for a, b in itertools.pairwise(out)):
        raise ValueError(f"{name} must increase strictly: {out}")
    return out


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


def _labels(**labels: str) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


def _histogram(
    name: str,
    help_text: str,
    series: list[tuple[str, tuple[float, ...], tuple[int, ...], float]],
) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
    for version, bounds, counts, total in series:
        cumulative = 0
        for bound, n in zip((*bounds, math.inf), counts, strict=True):
            cumulative += n
            labels = _labels(version=version, le=_number(bound))
            lines.append(f"{name}_bucket{labels} {cumulative}")
        lines.append(f"{name}_sum{_labels(version=version)} {_number(total)}")
        lines.append(f"{name}_count{_labels(version=version)} {cumulative}")
    return lines
