"""Connect to the configured Ray cluster, or start a small local one (CLI and Ray jobs).

**A one-machine cluster listens on loopback only.** Ray 2.60 rewrites ``--node-ip-address=
127.0.0.1`` to the machine's routable address (``resolve_ip_for_localhost``), and its GCS,
raylet, object manager, dashboard agent and client server then listen on every interface.
Ray's own single-machine mode (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, the macOS/Windows
default) keeps the node's address on loopback, and every one of those servers binds it: a head
started with :func:`node_env` (``make up``) is unreachable from the network, and token
authentication (on by default) guards it from the machine's other users. A driver joining it must
be in the same mode, or it rewrites the head's 127.0.0.1 address too: :func:`connect` puts it
there. A cluster on a routable address (the prod profile's ``RELAY_RAY__ADDRESS``) is untouched.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import Any

from relay.settings import Settings, get_settings

#: Ray's single-machine mode: the node's address stays on loopback (see the module's note).
LOOPBACK_NODE_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name, an optional ``:port`` after it) is this machine's
    loopback."""
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    name = name.strip("[]")
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        try:
            return ipaddress.ip_address(socket.gethostbyname(name)).is_loopback
        except OSError:
            return False


def node_env(settings: Settings | None = None) -> dict[str, str]:
    """The environment of a Ray head this machine starts: loopback only when
    ``RELAY_RAY__NODE_IP`` is a loopback address (the local profile's default), Serve's HAProxy
    included (its stats and metrics moved off every interface by ``relay-haproxy``:
    :mod:`relay.serve.haproxy_shim`)."""
    from relay.infra.processes import venv_bin

    s = settings or get_settings()
    if not is_loopback(s.ray.node_ip):
        return {}
    env = dict(LOOPBACK_NODE_ENV)
    shim = venv_bin("relay-haproxy")
    if os.access(shim, os.X_OK):  # the project installed (`make setup`): its console script
        env["RAY_SERVE_HAPROXY_BINARY_PATH"] = shim
    return env


def join_loopback_cluster(settings: Settings | None = None) -> bool:
    """Put this process in Ray's single-machine mode when the cluster it joins is on loopback;
    returns whether it did. Call before ``ray.init``."""
    s = settings or get_settings()
    address = os.environ.get("RAY_ADDRESS") or s.ray.address
    if address not in (None, "auto") and not is_loopback(address.split("://")[-1]):
        return False  # a cluster on the network: Ray's own addressing
    if not node_env(s):
        return False
    os.environ.update(LOOPBACK_NODE_ENV)  # what this process starts (jobs, local workers)
    # Ray reads the variable once, at import; this process may have imported it already.
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False
    return True


def connect(settings: Settings | None = None, require_running: bool = False) -> Any:
    """``ray.init`` on ``RELAY_RAY__ADDRESS``; without one, a local Ray sized by settings.

    Inside a Ray job the address is already set by Ray and ``auto`` joins that cluster.
    """
    import ray

    s = settings or get_settings()
    if ray.is_initialized():
        return ray
    join_loopback_cluster(s)
    if os.environ.get("RAY_ADDRESS"):  # a Ray job's driver: join the cluster it runs on
        ray.init(address="auto", namespace="relay")
    elif s.ray.address or require_running:
        # Serving must outlive this process: join a running cluster (`ray start --head`).
        ray.init(address=s.ray.address or "auto", namespace="relay")
    else:
        try:
            # The dashboard stays on: without it Train/Tune never release finished placement
            # groups.
            ray.init(num_cpus=s.ray.num_cpus, include_dashboard=True)
        except ValueError as err:
            # A head on this machine (`make up`) is found without an address; ray.init refuses
            # sizing a cluster it did not start, so join that one as it is.
            if "existing cluster" not in str(err):
                raise
            ray.init(address="auto", namespace="relay")
    return ray
