"""Relay's Ray metrics as Prometheus scrapes them: Ray started with a metrics export port, two
versions served half and half under concurrent load, the node's metrics agent scraped until
every version's series are there (relay.serve.ray_metrics)."""

from __future__ import annotations

import re
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from relay.serve.traffic import TrafficSplit
from relay.settings import get_settings
from tests.integration.conftest import _free_port
from tests.integration.serve.test_serving import _order, _post, two_versions

pytestmark = pytest.mark.slow

SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)\{(?P<labels>[^}]*)\} (?P<value>\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def series(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of ``name`` in a Prometheus text exposition: its labels and value."""
    out = []
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m and m["name"] == name:
            out.append((dict(LABEL.findall(m["labels"])), float(m["value"])))
    return out


def summed(text: str, name: str, by: str, **match: str) -> dict[str, float]:
    """``sum by (by) (name{match})``: what the dashboard's queries add over replicas."""
    totals: Counter[str] = Counter()
    for labels, value in series(text, name):
        if all(labels.get(k) == v for k, v in match.items()) and by in labels:
            totals[labels[by]] += value
    return dict(totals)


@pytest.fixture(scope="module")
def exported(lake_days, tmp_path_factory) -> Iterator[dict[str, Any]]:
    import ray
    from ray import serve

    from relay.serve import control

    t0 = time.monotonic()
    made = two_versions(lake_days, tmp_path_factory.mktemp("runs"), epochs=(1, 1))
    v1, v2, orders = made["v1"], made["v2"], made["orders"]
    t1 = time.monotonic()
    settings = get_settings().model_copy(deep=True)
    settings.serving.port = _free_port()
    metrics_port = _free_port()
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _metrics_export_port=metrics_port,
    )
    try:
        control.start_serve(settings)
        control.deploy_model(v1, settings)
        control.deploy_model(v2, settings)
        control.set_traffic(TrafficSplit(stable=v1, candidate=v2, candidate_share=0.5), settings)
        t2 = time.monotonic()
        setup = f"features and two versions {t1 - t0:.0f} s, Ray and Serve {t2 - t1:.0f} s"
        yield {
            "setup": setup,
            "v1": v1,
            "v2": v2,
            "url": control.endpoint(settings),
            "metrics": f"http://127.0.0.1:{metrics_port}/metrics",
            "orders": orders[orders["created_at"].dt.date == lake_days[-1]],
        }
    finally:
        serve.shutdown()
        ray.shutdown()


def test_every_version_is_counted_across_replicas_as_prometheus_scrapes_it(exported, capsys):
    v1, v2 = exported["v1"], exported["v2"]
    rows = exported["orders"].head(50)
    sent = 400

    def one(i: int) -> tuple[int, str | None]:
        row = rows.iloc[i % len(rows)]
        status, body = _post(exported["url"], {"orders": [_order(row, f"metrics-{i}")]})
        return status, (body["predictions"][0]["model_version"] if status == 200 else None)

    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(one, range(sent)))
    load_s = time.monotonic() - t0
    assert Counter(s for s, _ in answers) == {200: sent}
    served = Counter(v for _, v in answers)
    assert served[v1] > 0.3 * sent and served[v2] > 0.3 * sent, served  # both took load

    # The metrics agent exports what the workers recorded every few seconds: scrape until
    # every request is there, or the deadline.
    deadline = time.monotonic() + 60
    scrapes = 0
    while True:
        text = urllib.request.urlopen(exported["metrics"], timeout=10).read().decode()
        scrapes += 1
        counted = summed(text, "ray_relay_requests_total", "model_version", outcome="ok")
        if sum(counted.values()) >= sent or time.monotonic() > deadline:
            break
        time.sleep(0.5)  # the agent's next export, bounded by the deadline
    waited_s = time.monotonic() - t0 - load_s
    with capsys.disabled():
        print(
            f"\n  {sent} requests in {load_s:.1f} s; per-version series complete "
            f"{waited_s:.1f} s later ({scrapes} scrapes): {counted}; setup: {exported['setup']}"
        )
    # Each request is one call of one version: the counter per version is what clients saw.
    for version in (v1, v2):
        assert counted.get(version, 0) == pytest.approx(served[version], rel=0.01), counted
    assert not summed(text, "ray_relay_requests_total", "model_version", outcome="error")

    # Latency per version: a histogram whose count is the calls and whose +Inf holds them all.
    latency = summed(text, "ray_relay_request_latency_ms_count", "model_version")
    inf = summed(text, "ray_relay_request_latency_ms_bucket", "model_version", le="+Inf")
    for version in (v1, v2):
        assert latency[version] == counted[version] == inf[version]
    predictions = summed(text, "ray_relay_predictions_total", "model_version")
    assert predictions == counted

    # Batch size per version: every forward pass, of 1 to 8 orders (8 concurrent clients); the
    # model replicas export on their own clock, so theirs may lag the router's by one export.
    passes = summed(text, "ray_relay_model_batch_size_count", "model_version")
    orders = summed(text, "ray_relay_model_batch_size_sum", "model_version")
    for version in (v1, v2):
        assert 0 < passes[version] <= orders[version] <= counted[version], (passes, orders)

    # Feature freshness per version and view: the fixture materialized days-old values.
    ages = series(text, "ray_relay_feature_row_age_seconds_count")
    views = {(labels["model_version"], labels["view"]) for labels, _ in ages}
    assert {v for v, _ in views} == {v1, v2}, views
    age_sum = summed(text, "ray_relay_feature_row_age_seconds_sum", "model_version")
    age_count = summed(text, "ray_relay_feature_row_age_seconds_count", "model_version")
    assert all(age_sum[v] / age_count[v] > 3600 for v in (v1, v2)), (age_sum, age_count)

    # The prediction cache per version and level (published about once a second per replica).
    lookups = series(text, "ray_relay_prediction_cache_lookups_total")
    assert {labels["model_version"] for labels, _ in lookups} <= {v1, v2}
    assert lookups and all("level" in labels for labels, _ in lookups)
