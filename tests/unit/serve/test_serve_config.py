"""``serving/config.yaml`` (for `serve deploy`) says what the Python deploy path does."""

from __future__ import annotations

from pathlib import Path

import yaml

from relay.settings.serving import ServingSettings

CONFIG = Path(__file__).resolve().parents[3] / "serving" / "config.yaml"


def test_serve_config_agrees_with_the_settings_and_runs_two_replicas_at_least():
    sv = ServingSettings()
    apps = yaml.safe_load(CONFIG.read_text())["applications"]
    deployments = [d for app in apps for d in app["deployments"]]
    assert {d["name"] for d in deployments} == {"Router", "ETAModel"}
    for d in deployments:
        assert d["max_ongoing_requests"] == sv.max_ongoing_requests, d["name"]
        assert d["max_queued_requests"] == sv.max_queued_requests, d["name"]
        assert d["health_check_period_s"] == sv.health_check_period_s, d["name"]
        assert d["health_check_timeout_s"] == sv.health_check_timeout_s, d["name"]
        assert d["autoscaling_config"]["min_replicas"] >= 2, d["name"]
    cpus = {d["name"]: d["ray_actor_options"]["num_cpus"] for d in deployments}
    assert cpus == {"Router": sv.router_cpus, "ETAModel": sv.model_cpus}
