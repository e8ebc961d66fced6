"""Live serving metrics: counts, histogram percentiles, Prometheus text, threads and windows."""

from __future__ import annotations

import math
import re
import threading

import pytest

from relay.serve.metrics import LiveMetrics
from relay.serve.windows import LATENCY_BUCKETS_MS, VersionWindow, diff, total, window_from_dict


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, t: float = 1_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def metrics(clock: FakeClock) -> LiveMetrics:
    return LiveMetrics(clock=clock)


def test_counts_per_version(metrics, clock):
    clock.t = 1_010.0
    metrics.observe("v1", 12.0, 2, [20.0, 40.0])
    clock.t = 1_020.0
    metrics.observe("v1", 30.0, 0, None, error=True)
    metrics.observe("v2", 5.0, 3, None)
    clock.t = 1_040.0
    snap = metrics.snapshot()

    v1, v2 = snap["v1"], snap["v2"]
    assert (v1.requests, v1.errors, v1.predictions) == (2, 1, 2)
    assert (v2.requests, v2.errors, v2.predictions) == (1, 0, 3)
    assert v1.error_rate == 0.5 and v2.error_rate == 0.0
    assert v1.latency_sum_ms == 42.0 and v1.mean_latency_ms == 21.0
    assert sum(v1.latency_counts) == 2
    # Prediction values: only those passed in, so v2 counted three but has no values.
    assert v1.mean_prediction == 30.0 and v1.observed_prediction_values == 2
    assert v2.mean_prediction is None and v2.observed_prediction_values == 0
    # The window runs from when the counters started (creation) to the snapshot.
    assert (v1.since, v1.until, v1.duration_s) == (1_000.0, 1_040.0, 40.0)
    assert v1.qps == pytest.approx(2 / 40)
    assert (v1.first_observed, v1.last_observed) == (1_010.0, 1_020.0)
    assert v1.to_dict()["p50_ms"] == v1.p50_ms


def test_an_empty_window_has_no_percentiles(metrics):
    w = metrics.snapshot(versions=["v9"])["v9"]
    assert w.requests == 0 and w.qps == 0.0 and w.error_rate == 0.0
    assert w.p50_ms is None and w.p99_ms is None and w.mean_latency_ms is None
    assert w.first_observed is None and w.last_observed is None


def test_percentiles_interpolate_within_the_bucket(metrics):
    for ms in range(1, 101):  # 1, 2, …, 100 ms
        metrics.observe("v1", float(ms), 1, None)
    w = metrics.snapshot()["v1"]
    # Cumulative counts at le=30, 50, 75, 100 are 30, 50, 75, 100: exact here.
    assert w.p50_ms == pytest.approx(50.0)
    assert w.latency_quantile(0.9) == pytest.approx(90.0)
    assert w.p99_ms == pytest.approx(99.0)
    assert w.latency_quantile(0.0) == 0.0


def test_requests_slower_than_a_latency(metrics):
    for ms in (10.0, 90.0, 120.0, 180.0, 2000.0):
        metrics.observe("v1", ms, 1, None)
    w = metrics.snapshot()["v1"]
    assert w.requests_slower_than(100.0) == 3  # a bucket edge: exact
    assert w.requests_slower_than(5000.0) == 1  # the +Inf bucket has no upper edge
    assert w.requests_slower_than(0.0) == 5
    # 175 ms sits inside the 150-200 bucket: half of its one request counts (rounded).
    assert w.requests_slower_than(175.0) in (1, 2)


def test_percentiles_on_two_clusters(metrics):
    for _ in range(50):
        metrics.observe("v1", 15.0, 1, None)  # bucket (10, 20]
        metrics.observe("v1", 40.0, 1, None)  # bucket (30, 50]
    w = metrics.snapshot()["v1"]
    assert w.p50_ms == pytest.approx(20.0)  # top of the first cluster's bucket
    assert w.p99_ms == pytest.approx(30.0 + 20.0 * 49 / 50)


def test_a_quantile_beyond_the_last_bucket_is_its_lower_bound(metrics):
    for _ in range(10):
        metrics.observe("v1", 5_000.0, 1, None)
    w = metrics.snapshot()["v1"]
    assert w.latency_counts[-1] == 10
    assert w.p99_ms == LATENCY_BUCKETS_MS[-1]
    with pytest.raises(ValueError, match="quantile"):
        w.latency_quantile(1.5)


def test_prediction_histogram_skips_non_finite_values(metrics):
    metrics.observe("v1", 10.0, 3, [10.0, math.nan, 50.0])
    w = metrics.snapshot()["v1"]
    assert w.predictions == 3 and w.observed_prediction_values == 2
    assert w.mean_prediction == 30.0
    assert w.prediction_quantile(0.5) == pytest.approx(10.0)  # (5, 10] holds one of two


@pytest.mark.parametrize(
    ("latency", "n", "values", "match"),
    [
        (-1.0, 1, None, "latency_ms"),
        (math.inf, 1, None, "latency_ms"),
        (10.0, -1, None, "n_predictions"),
        (10.0, 2, [30.0], "prediction values"),
    ],
)
def test_observe_rejects_bad_input(metrics, latency, n, values, match):
    with pytest.raises(ValueError, match=match):
        metrics.observe("v1", latency, n, values)


def test_buckets_must_increase():
    with pytest.raises(ValueError, match="increase"):
        LiveMetrics(latency_buckets_ms=[1, 5, 5])
    with pytest.raises(ValueError, match="finite"):
        LiveMetrics(prediction_buckets_min=[1, math.inf])


_SAMPLE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)"
    r'(?:\{(?P<labels>[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*"'
    r'(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*")*)\})?'
    r" (?P<value>\S+)$"
)
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\.)*)"')


def _parse(text: str) -> tuple[list[tuple[str, dict[str, str], float]], dict[str, str]]:
    """Samples and ``# TYPE``s of a text exposition; fails on any line that is neither."""
    samples: list[tuple[str, dict[str, str], float]] = []
    types: dict[str, str] = {}
    helped: set[str] = set()
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helped.add(line.split()[2])
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            types[name] = kind
        else:
            m = _SAMPLE.match(line)
            assert m, f"not a sample line: {line!r}"
            labels = dict(_LABEL.findall(m["labels"] or ""))
            family = re.sub(r"_(bucket|sum|count)$", "", m["name"])
            family = family if family in types else m["name"]
            assert family in types and family in helped, f"no HELP/TYPE before {line!r}"
            samples.append((m["name"], labels, float(m["value"])))
    return samples, types


def _observe_some(metrics: LiveMetrics) -> None:
    for i in range(40):
        metrics.observe(
            "v1", float(i * 7 % 400), 2, [float(i), float(i * 3)], i % 10 == 0, int(i % 8 == 0)
        )
    for i in range(15):
        metrics.observe('v"2\\x', 3.0 + i, 1, [25.0])


def test_prometheus_text_parses_and_histograms_are_cumulative(metrics):
    _observe_some(metrics)
    samples, types = _parse(metrics.to_prometheus())

    assert types == {
        "relay_requests_total": "counter",
        "relay_errors_total": "counter",
        "relay_predictions_total": "counter",
        "relay_degraded_total": "counter",
        "relay_model_batches_total": "counter",
        "relay_model_batched_orders_total": "counter",
        "relay_request_latency_ms": "histogram",
        "relay_prediction_minutes": "histogram",
        "relay_model_batch_orders": "histogram",
    }
    value = {(n, tuple(sorted(lb.items()))): v for n, lb, v in samples}
    assert value[("relay_requests_total", (("version", "v1"),))] == 40
    assert value[("relay_errors_total", (("version", "v1"),))] == 4
    assert value[("relay_predictions_total", (("version", "v1"),))] == 80
    assert value[("relay_degraded_total", (("version", "v1"),))] == 5
    # The awkward version name survives escaping.
    assert value[("relay_requests_total", (("version", 'v\\"2\\\\x'),))] == 15

    for hist in ("relay_request_latency_ms", "relay_prediction_minutes"):
        for version in ("v1", 'v\\"2\\\\x'):
            buckets = [
                (lb["le"], v)
                for n, lb, v in samples
                if n == f"{hist}_bucket" and lb["version"] == version
            ]
            counts = [v for _, v in buckets]
            assert counts == sorted(counts), f"{hist} buckets not cumulative"
            assert buckets[-1][0] == "+Inf"
            assert [float(le) for le, _ in buckets] == sorted(float(le) for le, _ in buckets)
            assert buckets[-1][1] == value[(f"{hist}_count", (("version", version),))]
            assert (f"{hist}_sum", (("version", version),)) in value
    assert value[("relay_request_latency_ms_count", (("version", "v1"),))] == 40
    assert value[("relay_prediction_minutes_count", (("version", "v1"),))] == 80


def test_prometheus_client_reads_the_text(metrics):
    parser = pytest.importorskip("prometheus_client.parser")
    _observe_some(metrics)
    families = {f.name: f for f in parser.text_string_to_metric_families(metrics.to_prometheus())}
    assert families["relay_request_latency_ms"].type == "histogram"
    # prometheus_client drops the _total suffix from a counter family's name.
    requests = {s.labels["version"]: s.value for s in families["relay_requests"].samples}
    assert requests == {"v1": 40.0, 'v"2\\x': 15.0}


def test_an_empty_registry_renders_only_headers(metrics):
    text = metrics.to_prometheus()
    assert all(line.startswith("#") for line in text.splitlines())


def test_concurrent_observations_give_exact_totals():
    metrics = LiveMetrics()
    threads, per_thread = 8, 2_000
    start = threading.Barrier(threads)

    def work(k: int) -> None:
        start.wait()
        version = "even" if k % 2 == 0 else "odd"
        for i in range(per_thread):
            metrics.observe(version, float(i % 200), 2, [30.0, 31.0], error=i % 100 == 0)

    pool = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()

    snap = metrics.snapshot()
    for version in ("even", "odd"):
        w = snap[version]
        n = threads // 2 * per_thread
        assert w.requests == n and sum(w.latency_counts) == n
        assert w.errors == n // 100
        assert w.predictions == 2 * n and w.observed_prediction_values == 2 * n
        assert w.prediction_sum == pytest.approx(61.0 * n)


def test_diff_holds_only_the_window_between_snapshots(metrics, clock):
    clock.t = 1_010.0
    for _ in range(10):
        metrics.observe("v1", 10.0, 1, [20.0])
    early = metrics.snapshot(versions=["v2"])
    clock.t = 1_030.0
    for _ in range(6):
        metrics.observe("v1", 200.0, 1, [60.0], error=True)
    metrics.observe("v2", 5.0, 1, None)
    clock.t = 1_070.0
    late = metrics.snapshot()

    w = diff(late["v1"], early["v1"])
    assert (w.since, w.until, w.duration_s) == (1_010.0, 1_070.0, 60.0)
    assert (w.requests, w.errors, w.predictions) == (6, 6, 6)
    assert w.qps == pytest.approx(0.1)
    assert w.error_rate == 1.0
    assert w.p50_ms == pytest.approx(175.0)  # all six in (150, 200]
    assert w.mean_prediction == 60.0
    # The earlier side had requests, so the window's first one is unknown; its last is not.
    assert (w.first_observed, w.last_observed) == (None, 1_030.0)

    # v2 was unseen at the early snapshot; asking for it there makes the diff possible.
    w2 = diff(late["v2"], early["v2"])
    assert w2.requests == 1 and w2.first_observed == 1_030.0

    empty = diff(late["v1"], late["v1"])
    assert empty.requests == 0 and empty.p99_ms is None and empty.last_observed is None


def test_batch_fill_counts_passes_and_orders_per_version(metrics, clock):
    # One pass of 32 single-order calls, one of a 32-order call, and two 1-order passes; a
    # failed call reports no pass.
    for _ in range(32):
        metrics.observe("v1", 5.0, 1, None, batch_orders=32, orders=1)
    metrics.observe("v1", 9.0, 32, None, batch_orders=32, orders=32)
    for _ in range(2):
        metrics.observe("v1", 2.0, 1, None, batch_orders=1, orders=1)
    metrics.observe("v1", 50.0, 0, None, error=True)
    early = metrics.snapshot()["v1"]
    assert early.batches == pytest.approx(4.0) and early.batched_orders == 66
    assert early.mean_batch_orders == pytest.approx(16.5)
    assert sum(early.batch_counts) == 35  # per call: 33 rode a pass of 32, 2 a pass of 1
    assert early.batch_counts[0] == 2 and early.batch_counts[5] == 33
    samples, _ = _parse(metrics.to_prometheus())
    value = {(n, lb.get("le")): v for n, lb, v in samples if lb.get("version") == "v1"}
    assert value[("relay_model_batches_total", None)] == pytest.approx(4.0)
    assert value[("relay_model_batched_orders_total", None)] == 66
    assert value[("relay_model_batch_orders_bucket", "16.0")] == 2
    assert value[("relay_model_batch_orders_bucket", "32.0")] == 35
    # A later window holds only its own passes; windows of two replicas add up.
    clock.t += 10
    for _ in range(4):
        metrics.observe("v1", 5.0, 8, None, batch_orders=8, orders=8)
    w = diff(metrics.snapshot()["v1"], early)
    assert (w.batches, w.batched_orders, w.mean_batch_orders) == (4.0, 32, 8.0)
    both = total("v1", [w, w], w.since, w.until)
    assert both.batches == 8.0 and both.batch_counts == tuple(2 * c for c in w.batch_counts)
    assert window_from_dict(both.to_dict()) == both
    assert VersionWindow(version="v", since=0, until=1).mean_batch_orders is None


def test_diff_refuses_mismatched_windows(metrics, clock):
    metrics.observe("v1", 10.0, 1, None)
    metrics.observe("v2", 10.0, 1, None)
    early = metrics.snapshot()
    clock.t += 10
    late = metrics.snapshot()
    with pytest.raises(ValueError, match="cannot diff version"):
        diff(late["v1"], early["v2"])
    with pytest.raises(ValueError, match="earlier snapshot"):
        diff(early["v1"], late["v1"])
    metrics.reset("v1")
    clock.t += 10
    with pytest.raises(ValueError, match="reset"):
        diff(metrics.snapshot(versions=["v1"])["v1"], early["v1"])


def test_reset_one_version_or_all(metrics, clock):
    metrics.observe("v1", 10.0, 1, None)
    metrics.observe("v2", 10.0, 1, None)
    clock.t = 1_100.0
    metrics.reset("v1")
    snap = metrics.snapshot()
    assert set(snap) == {"v2"} and snap["v2"].requests == 1
    clock.t = 1_150.0
    metrics.observe("v1", 10.0, 1, None)
    clock.t = 1_200.0
    v1 = metrics.snapshot()["v1"]
    assert v1.requests == 1 and v1.since == 1_100.0  # counted from the reset
    metrics.reset()
    assert metrics.snapshot() == {}
    assert metrics.snapshot(versions=["v1"])["v1"].since == 1_200.0


def test_a_window_is_frozen(metrics):
    metrics.observe("v1", 10.0, 1, None)
    w = metrics.snapshot()["v1"]
    assert isinstance(w, VersionWindow)
    with pytest.raises(AttributeError):
        w.requests = 5  # type: ignore[misc]
