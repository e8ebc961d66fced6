"""A one-machine Ray stays on loopback: the head's environment and a joining driver's mode."""

from __future__ import annotations

import pytest

from relay.infra.cluster import LOOPBACK_NODE_ENV, is_loopback, join_loopback_cluster, node_env
from relay.infra.exposure import Listener
from relay.settings import get_settings, reset_settings


@pytest.mark.parametrize(
    ("host", "want"),
    [
        ("127.0.0.1", True),
        ("127.0.0.1:6380", True),
        ("localhost:6380", True),
        ("::1", True),
        ("[::1]", True),
        ("10.0.0.5:6379", False),
        ("192.0.2.2", False),
        ("no-such-host.invalid:6379", False),
    ],
)
def test_loopback_addresses_are_told_from_network_ones(host: str, want: bool) -> None:
    assert is_loopback(host) is want


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch):
    from ray._private import ray_constants

    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", True)
    names = ("RAY_ADDRESS", "RELAY_RAY__ADDRESS", "RELAY_RAY__NODE_IP", *LOOPBACK_NODE_ENV)
    for name in names:
        monkeypatch.setenv(name, "")  # recorded, so the test's own writes are undone too
        monkeypatch.delenv(name)
    reset_settings()
    yield monkeypatch, ray_constants
    reset_settings()


def test_a_local_head_and_the_driver_joining_it_stay_on_loopback(fresh) -> None:
    monkeypatch, constants = fresh
    env = node_env(get_settings())
    assert env.items() >= LOOPBACK_NODE_ENV.items()
    assert env["RAY_SERVE_HAPROXY_BINARY_PATH"].endswith("/relay-haproxy")  # the project's shim
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6380")  # a Ray job's driver on make up's head
    assert join_loopback_cluster(get_settings())
    assert constants.ENABLE_RAY_CLUSTER is False
    import os

    assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"  # and what it starts


@pytest.mark.parametrize(
    "env",
    [
        {"RELAY_RAY__ADDRESS": "ray-head:6380"},  # the prod compose's cluster
        {"RAY_ADDRESS": "10.0.0.5:6379"},  # a job's driver on a networked cluster
        {"RELAY_RAY__NODE_IP": "10.0.0.5"},  # a head meant to take workers
    ],
)
def test_a_cluster_on_the_network_keeps_rays_own_addressing(fresh, env) -> None:
    monkeypatch, constants = fresh
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    reset_settings()
    assert not join_loopback_cluster(get_settings())
    assert constants.ENABLE_RAY_CLUSTER is True
    if "RELAY_RAY__NODE_IP" in env:
        assert node_env(get_settings()) == {}


def test_each_listener_says_what_guards_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_SERVE_HAPROXY_STATS_PORT", "8404")
    monkeypatch.setenv("RAY_SERVE_HAPROXY_METRICS_PORT", "9101")
    assert Listener("::ffff:127.0.0.1", 6380, 1, "gcs_server").guard == "loopback only"
    assert Listener("0.0.0.0", 8404, 2, "haproxy").guard.startswith("none: HAProxy's read-only")
    assert Listener("0.0.0.0", 8000, 2, "haproxy").guard.startswith("the endpoint's API keys")
    assert Listener("::", 40123, 3, "ray::ServeReplica").guard.startswith("Ray's token")
    assert not Listener("::", 40123, 3, "ray::ServeReplica").loopback


def test_haproxys_all_interface_binds_move_to_the_endpoints_host() -> None:
    from relay.serve.haproxy_shim import bind_on

    config = (
        "frontend prometheus\n    bind :9101\n    mode http\n"
        "frontend http_frontend\n    bind 127.0.0.1:8000\n"
        "listen stats\n  bind *:8404\n  stats enable\n"
    )
    moved = bind_on(config, "127.0.0.1")
    assert "bind 127.0.0.1:9101" in moved and "bind 127.0.0.1:8404" in moved
    assert "bind 127.0.0.1:8000" in moved  # the endpoint's own bind, as it was
    assert moved.count("bind ") == 3 and "*:" not in moved and "bind :" not in moved
    assert "bind [::1]:8404" in bind_on(config, "::1")


def test_the_shim_execs_the_real_haproxy_not_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    # Ray hands the override down to HAProxy's resolver too: resolving through it looped.
    import os

    from relay.serve import haproxy_shim

    shim = node_env(get_settings())["RAY_SERVE_HAPROXY_BINARY_PATH"]
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", shim)
    monkeypatch.setattr("sys.argv", [shim])
    binary = haproxy_shim._real_binary()
    assert os.path.realpath(binary) != os.path.realpath(shim) and binary.endswith("haproxy")
