"""Relay's serving metrics as Ray metrics, per model version: what Prometheus and Grafana read.

Router and model replicas record into ``ray.util.metrics``. Each Ray node's metrics agent
exports every replica's series on the node's ``--metrics-export-port`` (``/metrics``), the name
prefixed ``ray_``, one series per worker process (label ``WorkerId``); Prometheus adds the
replicas up with ``sum by (model_version)``, so a version's totals are the cluster's whichever
replicas served it, and a replica that Serve replaced keeps what it exported until its series
go stale. Ray labels every series ``Version`` (Ray's own): ours is ``model_version``.

:data:`EXPORTED` lists every name (the README's table, and the dashboard's test checks each
panel's query against it). The hub's ``/v1/metrics`` (:mod:`relay.serve.metrics_hub`) stays
the rollout controller's source: exact windows between two reads, judged in Python.

Recording costs ~3-5 µs per call here (measured in a Ray actor on this 2-core machine), so the
router records on the request path; model replicas record once per forward pass.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from relay.serve.answer import CallMetrics
from relay.serve.windows import BATCH_BUCKETS, LATENCY_BUCKETS_MS

log = logging.getLogger(__name__)

VERSION_TAG = "model_version"

#: Upper bounds (s) of the feature-age buckets: a pushed live view is seconds old, an hourly
#: snapshot up to an hour or two, a stale one days.
FEATURE_AGE_BUCKETS_S: tuple[float, ...] = (
    1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 21600, 86400, 259200, 604800,
)  # fmt: skip

#: Every Ray metric Relay records: name (as Ray exports it, before the ``ray_`` prefix and the
#: ``_total``/``_bucket`` suffixes), kind, tags and meaning.
EXPORTED: dict[str, tuple[str, tuple[str, ...], str]] = {
    "relay_requests": (
        "counter",
        (VERSION_TAG, "outcome"),
        "Model version calls by the router; outcome ok or error (failed or unreturnable)",
    ),
    "relay_predictions": ("counter", (VERSION_TAG,), "Predictions returned"),
    "relay_degraded": (
        "counter",
        (VERSION_TAG,),
        "Answers served degraded (default features or a fallback ETA)",
    ),
    "relay_request_latency_ms": (
        "histogram",
        (VERSION_TAG,),
        "A version call's latency from the router's dispatch to its answer (ms)",
    ),
    "relay_model_batch_size": (
        "histogram",
        (VERSION_TAG,),
        "Orders per forward pass of a model replica",
    ),
    "relay_model_batches": (
        "counter",
        (VERSION_TAG, "reason"),
        "Forward passes by why they went: full, joined (every call in flight had joined), "
        "waited (the batch window ran out) or alone (a lone request, answered at once)",
    ),
    "relay_feature_row_age_seconds": (
        "histogram",
        (VERSION_TAG, "view"),
        "Per forward pass and feature view, age of the oldest online row it was answered with",
    ),
    "relay_prediction_cache_lookups": (
        "counter",
        (VERSION_TAG, "level"),
        "Rows looked up in the prediction cache",
    ),
    "relay_prediction_cache_hits": (
        "counter",
        (VERSION_TAG, "level"),
        "Rows answered from the prediction cache",
    ),
    "relay_prediction_cache_seconds": (
        "counter",
        (VERSION_TAG, "level"),
        "Time spent looking rows up in the prediction cache (s)",
    ),
    "relay_drift_psi": (
        "gauge",
        (VERSION_TAG, "feature"),
        "PSI of a feature in the newest monitoring window of the version",
    ),
    "relay_drift_prediction_psi": (
        "gauge",
        (VERSION_TAG,),
        "PSI of the served predictions in that window",
    ),
    "relay_drift_share": (
        "gauge",
        (VERSION_TAG,),
        "Share of the monitored features Evidently found drifted in that window",
    ),
    "relay_drift_window_end_timestamp_seconds": (
        "gauge",
        (VERSION_TAG,),
        "End of that monitoring window (Unix seconds): time() minus this is its age",
    ),
}


def ray_metric(name: str, **options: Any) -> Any:
    """The Ray metric ``name`` of :data:`EXPORTED`, of its kind and tags."""
    from ray.util.metrics import Counter, Gauge, Histogram

    kind, tags, help_text = EXPORTED[name]
    if kind == "counter":
        return Counter(name, help_text, tags)
    if kind == "gauge":
        return Gauge(name, help_text, tags)
    return Histogram(name, help_text, tag_keys=tags, **options)


class RouterMetrics:
    """A router replica's Ray metrics: per version call, its outcome, latency, predictions."""

    def __init__(self) -> None:
        self.requests = ray_metric("relay_requests")
        self.predictions = ray_metric("relay_predictions")
        self.degraded = ray_metric("relay_degraded")
        self.latency = ray_metric("relay_request_latency_ms", boundaries=list(LATENCY_BUCKETS_MS))

    def observe(self, call: CallMetrics) -> None:
        """Record one version call (as :meth:`relay.serve.metrics.LiveMetrics.observe` does)."""
        version = {VERSION_TAG: call.version}
        outcome = "error" if call.error else "ok"
        self.requests.inc(1, {VERSION_TAG: call.version, "outcome": outcome})
        self.latency.observe(call.latency_ms, version)
        if call.values:
            self.predictions.inc(len(call.values), version)
        if call.degraded:
            self.degraded.inc(call.degraded, version)


class ModelMetrics:
    """A model replica's Ray metrics: each forward pass's size, why it went, and its features'
    ages."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.batch = ray_metric("relay_model_batch_size", boundaries=list(BATCH_BUCKETS))
        self.batches = ray_metric("relay_model_batches")
        ages = list(FEATURE_AGE_BUCKETS_S)
        self.ages = ray_metric("relay_feature_row_age_seconds", boundaries=ages)

    def count_batch(self, reason: str, calls: int = 0) -> None:
        """Count one forward pass by why it went (:class:`relay.serve.batcher.Batcher`)."""
        self.batches.inc(1, {VERSION_TAG: self.version, "reason": reason})

    def observe_pass(self, orders: int, row_ages: Mapping[str, float]) -> None:
        """Record one forward pass of ``orders`` and, per view, its oldest row's age (s)."""
        self.batch.observe(orders, {VERSION_TAG: self.version})
        for view, age in row_ages.items():
            self.ages.observe(age, {VERSION_TAG: self.version, "view": view})


class DriftExport:
    """The newest monitoring window's drift as Ray gauges, re-read every ``every_s``.

    Every router replica runs one (each exports the same values: the dashboard takes the
    ``max`` over replicas). A version keeps its last values after production moves on.

    Args:
        read: the newest reading (:func:`relay.monitor.latest.latest_drift`); None: none yet.
    """

    def __init__(self, read: Callable[[], Any]) -> None:
        self.read = read
        self.psi = ray_metric("relay_drift_psi")
        self.prediction_psi = ray_metric("relay_drift_prediction_psi")
        self.share = ray_metric("relay_drift_share")
        self.window_end = ray_metric("relay_drift_window_end_timestamp_seconds")
        self.exported: Any = None

    def refresh(self) -> bool:
        """Read the newest drift and set the gauges; returns whether there was any."""
        reading = self.read()
        if reading is None:
            return False
        version = {VERSION_TAG: reading.model_version}
        for feature, psi in reading.feature_psi.items():
            self.psi.set(psi, {**version, "feature": feature})
        self.prediction_psi.set(reading.prediction_psi, version)  # None: not set
        self.share.set(reading.drifted_share, version)
        self.window_end.set(reading.window_end, version)
        self.exported = reading
        return True

    def start(self, every_s: float) -> threading.Thread:
        """Refresh every ``every_s`` seconds from a daemon thread, for the replica's life."""

        def loop() -> None:
            while True:
                try:
                    self.refresh()
                except Exception:  # the registry unreachable: keep the last values, try again
                    log.warning("drift gauges not refreshed", exc_info=True)
                time.sleep(every_s)  # the refresh interval, not a synchronisation

        thread = threading.Thread(target=loop, name="relay-drift-export", daemon=True)
        thread.start()
        return thread


def start_drift_export(every_s: float) -> DriftExport:
    """This replica's drift gauges, read from the monitoring history of its settings."""
    from relay.monitor.latest import latest_drift

    export = DriftExport(latest_drift)
    export.start(every_s)
    return export
