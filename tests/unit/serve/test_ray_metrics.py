"""Relay's Ray metrics, the Grafana dashboard that reads them and the Prometheus that scrapes
them: every query names a metric and labels the code records (a renamed metric fails here)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from relay.monitor.latest import DriftReading
from relay.serve.answer import CallMetrics
from relay.serve.ray_metrics import (
    EXPORTED,
    VERSION_TAG,
    DriftExport,
    ModelMetrics,
    RouterMetrics,
    ray_metric,
)

ROOT = Path(__file__).resolve().parents[3]
DOCKER = ROOT / "docker"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "relay.json"
METRIC = re.compile(r"\b(ray_[a-z0-9_]+)\b")
GROUPING = re.compile(r"\bby \(([^)]*)\)")
SELECTOR = re.compile(r"\b(ray_[a-z0-9_]+)\{([^}]*)\}")


def exported_series() -> dict[str, tuple[str, ...]]:
    """Every series name Ray's agent exports for :data:`EXPORTED`, with its labels."""
    out: dict[str, tuple[str, ...]] = {}
    for name, (kind, tags, _) in EXPORTED.items():
        suffixes = {"counter": ("_total",), "gauge": ("",)}.get(kind, ("_bucket", "_sum", "_count"))
        for suffix in suffixes:
            out[f"ray_{name}{suffix}"] = (*tags, "le") if suffix == "_bucket" else tags
    return out


def query_problems(expr: str, series: dict[str, tuple[str, ...]]) -> list[str]:
    """What in one PromQL query names a series or a label the code does not record."""
    problems = [f"unknown metric {m}" for m in METRIC.findall(expr) if m not in series]
    used = [m for m in METRIC.findall(expr) if m in series]
    for name, matchers in SELECTOR.findall(expr):
        for label in re.findall(r"(\w+)\s*=~?", matchers):
            if name in series and label not in series[name]:
                problems.append(f"{name} has no label {label}")
    for group in GROUPING.findall(expr):
        for label in (x.strip() for x in group.split(",")):
            if not any(label in series[m] for m in used):
                problems.append(f"grouped by {label}, which {used} lack")
    return problems


def dashboard_queries(doc: dict[str, Any]) -> list[tuple[str, str]]:
    queries = [(p["title"], t["expr"]) for p in doc["panels"] for t in p["targets"]]
    for var in doc["templating"]["list"]:
        queries.append((f"${var['name']}", var["definition"].replace("label_values(", "by (", 0)))
    return queries


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def test_every_dashboard_query_names_metrics_and_labels_the_code_records(dashboard):
    series = exported_series()
    problems = {
        title: p
        for title, expr in dashboard_queries(dashboard)
        if (p := query_problems(expr, series))
    }
    assert problems == {}
    versions = dashboard["templating"]["list"][0]["definition"]
    assert versions == f"label_values(ray_relay_requests_total, {VERSION_TAG})"


def test_the_checker_catches_a_renamed_metric_or_label():
    series = exported_series()
    ok = 'sum by (model_version) (rate(ray_relay_requests_total{outcome="error"}[5m]))'
    assert query_problems(ok, series) == []
    renamed = ok.replace("ray_relay_requests_total", "ray_relay_request_total")
    assert "unknown metric ray_relay_request_total" in query_problems(renamed, series)
    assert query_problems(ok.replace("outcome", "status"), series)
    assert query_problems(ok.replace("by (model_version)", "by (version)"), series)


def test_the_dashboard_has_a_panel_per_version_for_each_signal_the_issue_names(dashboard):
    exprs = " ".join(expr for _, expr in dashboard_queries(dashboard))
    for needed in (
        "ray_relay_requests_total",  # QPS and error rate
        'outcome="error"',
        *(
            f"histogram_quantile({q}, sum by (model_version, le) "
            "(rate(ray_relay_request_latency_ms_bucket"
            for q in ("0.5", "0.99")
        ),
        "ray_relay_model_batch_size_count",
        "ray_relay_prediction_cache_hits_total",
        "ray_relay_feature_row_age_seconds_bucket",
        "ray_relay_drift_psi",
    ):
        assert needed in exprs, needed
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "relay-prometheus"
        assert all("model_version" in t["expr"] for t in panel["targets"]), panel["title"]


def test_grafana_is_provisioned_with_the_datasource_and_the_dashboard_folder():
    (source,) = yaml.safe_load(
        (DOCKER / "grafana/provisioning/datasources/prometheus.yaml").read_text()
    )["datasources"]
    assert source["uid"] == "relay-prometheus" and source["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load(
        (DOCKER / "grafana/provisioning/dashboards/relay.yaml").read_text()
    )["providers"]
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    mounts = dict(
        v.rsplit(":", 1)[0].split(":", 1)
        for v in compose["grafana"]["volumes"]
        if v.startswith("./")
    )
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"


def test_prometheus_scrapes_every_ray_nodes_metrics_port():
    config = yaml.safe_load((DOCKER / "prometheus/prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    (sd,) = job["dns_sd_configs"]
    services = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    # The Ray nodes start through relay-ray-node (docker/ray-node.sh: `ray start` and a wait).
    nodes = {n for n, svc in services.items() if svc.get("command", [])[:1] == ["relay-ray-node"]}
    assert {"ray-head", "ray-worker"} <= nodes
    assert set(sd["names"]) == nodes
    for name in nodes:
        assert f"--metrics-export-port={sd['port']}" in services[name]["command"], name
    volume = services["prometheus"]["volumes"][0]
    assert volume.startswith("./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml")
    for name in ("prometheus", "grafana"):  # published on loopback unless BIND_ADDRESS says
        assert all(p.startswith("${BIND_ADDRESS:-127.0.0.1}:") for p in services[name]["ports"])
    head_env = services["ray-head"]["environment"]
    assert head_env["RAY_PROMETHEUS_HOST"] == "http://prometheus:9090"
    assert head_env["RAY_GRAFANA_HOST"] == "http://grafana:3000"
    assert head_env["RAY_GRAFANA_IFRAME_HOST"].startswith("${GRAFANA_BROWSER_URL")


def test_recording_outside_ray_uses_exactly_the_declared_tags():
    # Outside a Ray worker recording is a no-op, but the tags are checked: a missing or
    # misspelt tag raises here as it would on a replica.
    RouterMetrics().observe(CallMetrics("v1", 12.5, (30.0, 31.0), False, degraded=1))
    RouterMetrics().observe(CallMetrics("v1", 800.0, (), True))
    ModelMetrics("v1").observe_pass(8, {"courier_stats": 3600.0})
    ModelMetrics("v1").count_batch("joined", 5)
    with pytest.raises(ValueError, match="Missing value for tag"):
        ray_metric("relay_requests").inc(1, {VERSION_TAG: "v1"})


def test_drift_export_sets_the_newest_reading_and_keeps_it_when_none_comes():
    readings: list[DriftReading | None] = [
        DriftReading("v3", "20261121T1400Z", 1.7e9, {"zone_weather": 0.4}, 0.1, 0.25),
        None,
    ]
    export = DriftExport(lambda: readings.pop(0))
    assert export.refresh() is True and export.exported.model_version == "v3"
    assert export.refresh() is False and export.exported.model_version == "v3"
