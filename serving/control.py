"""Deploying and moving traffic: what ``relay serve …`` and the DAGs call.

Each model version runs as its own Serve application; the router application holds the
traffic split. Promote and rollback only change the router's ``user_config``, between
versions that are already running.
"""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

from relay.settings import Settings, get_settings
from relay.traffic import TrafficSplit
from serving.app import ETAModel, Router, model_app_name, relay_env, traffic_state


def start_serve(settings: Settings | None = None) -> None:
    """Start Serve's HTTP proxy on the configured host and port (idempotent)."""
    from ray import serve

    s = (settings or get_settings()).serving
    serve.start(http_options={"host": s.host, "port": s.port})


def deploy_model(version: str, settings: Settings | None = None) -> str:
    """Start (or keep) the deployment of one registry version; returns its app name."""
    from ray import serve

    s = settings or get_settings()
    sv = s.serving
    app = ETAModel.options(
        num_replicas=sv.model_replicas,
        max_ongoing_requests=sv.max_ongoing_requests,
        ray_actor_options={"num_cpus": sv.model_cpus, "runtime_env": {"env_vars": relay_env()}},
    ).bind(version, sv.max_batch_size, sv.batch_wait_timeout_s)
    name = model_app_name(version)
    serve.run(app, name=name, route_prefix=None)
    return name


def set_traffic(
    split: TrafficSplit, settings: Settings | None = None, timeout_s: float = 30.0
) -> TrafficSplit:
    """Send traffic as ``split`` says (its versions must be deployed).

    Deploys the router the first time; afterwards only the traffic actor changes, and every
    router replica picks it up within ~0.1 s. Returns once the router answers with it.
    """
    import ray
    from ray import serve

    s = settings or get_settings()
    sv = s.serving
    config = {
        "stable": split.stable,
        "candidate": split.candidate,
        "candidate_share": split.candidate_share,
    }
    generation = ray.get(traffic_state().set.remote(config))
    if sv.app_name not in serve.status().applications:
        app = Router.options(
            num_replicas=sv.router_replicas,
            max_ongoing_requests=sv.max_ongoing_requests,
            ray_actor_options={
                "num_cpus": sv.router_cpus,
                "runtime_env": {"env_vars": relay_env()},
            },
        ).bind()
        serve.run(app, name=sv.app_name, route_prefix="/")
    _wait_for_generation(generation, s, timeout_s)
    return split


def _wait_for_generation(generation: int, settings: Settings, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if _get("/v1/models", settings).get("generation", -1) >= generation:
                return
        except OSError:
            pass  # the proxy is still starting
        time.sleep(0.05)  # polling the router for a state change, bounded by the deadline
    raise TimeoutError(f"router did not apply traffic generation {generation} in {timeout_s} s")


def current_traffic(settings: Settings | None = None) -> TrafficSplit | None:
    """The router's split, as it reports it over HTTP."""
    models = _get("/v1/models", settings)["versions"]
    if not models:
        return None
    stable = next(m for m in models if m["role"] == "stable")
    cand = next((m for m in models if m["role"] == "candidate"), None)
    return TrafficSplit(
        stable=stable["version"],
        candidate=cand["version"] if cand else None,
        candidate_share=cand["traffic_share"] if cand else 0.0,
    )


def canary(version: str, share: float, settings: Settings | None = None) -> TrafficSplit:
    """Deploy ``version`` beside the stable one and send it ``share`` of orders."""
    now = current_traffic(settings)
    deploy_model(version, settings)
    if now is None:  # first deployment: it is the stable version
        return set_traffic(TrafficSplit(stable=version), settings)
    return set_traffic(TrafficSplit(now.stable, version, share), settings)


def promote(settings: Settings | None = None) -> TrafficSplit:
    """The candidate becomes stable at 100%; the old stable keeps running until removed."""
    now = _require(current_traffic(settings))
    if not now.candidate:
        raise ValueError("no candidate to promote")
    return set_traffic(TrafficSplit(stable=now.candidate), settings)


def rollback(settings: Settings | None = None) -> TrafficSplit:
    """All traffic back to the stable version at once."""
    now = _require(current_traffic(settings))
    return set_traffic(TrafficSplit(stable=now.stable), settings)


def remove_model(version: str) -> None:
    from ray import serve

    serve.delete(model_app_name(version))


def _require(split: TrafficSplit | None) -> TrafficSplit:
    if split is None:
        raise ValueError("nothing is deployed: run `relay serve deploy --version V` first")
    return split


def endpoint(settings: Settings | None = None) -> str:
    s = (settings or get_settings()).serving
    return f"http://{s.host}:{s.port}"


def _get(path: str, settings: Settings | None = None) -> Any:
    with urllib.request.urlopen(endpoint(settings) + path, timeout=5) as resp:  # noqa: S310
        return json.loads(resp.read())


def live_metrics(settings: Settings | None = None) -> dict[str, Any]:
    """The router's live window per version (requests, errors, latency quantiles, …)."""
    data: dict[str, Any] = _get("/v1/metrics", settings)
    return data
