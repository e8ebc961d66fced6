"""What the local stack listens on, and who can reach it.

``make up`` binds every service it configures to loopback: Airflow, the Ray head in its
single-machine mode (:mod:`relay.infra.cluster`), the endpoint, and HAProxy's stats and metrics
(:mod:`relay.serve.haproxy_shim`). One kind of listener is still on every interface, Ray's choice
with no setting to move it (Ray 2.60): a Serve replica's inter-deployment gRPC server
(``[::]:0``), which refuses any call without Ray's token (``UNAUTHENTICATED``). Without the shim
(a head started by hand), HAProxy's stats page (``RAY_SERVE_HAPROXY_STATS_PORT``, 8404) and
Prometheus exporter (``RAY_SERVE_HAPROXY_METRICS_PORT``, 9101) are on every interface too:
read-only counters, no control.

:func:`listeners` lists what the stack's processes listen on, so ``relay stack ports`` (and a
test that probes each one from the network side) can show it.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from relay.infra.processes import stack_pids
from relay.settings import Settings, get_settings


@dataclass(frozen=True)
class Listener:
    """A listening TCP socket of one of the stack's processes.

    Attributes:
        host: the address it is bound to (``0.0.0.0``/``::`` for every interface).
        port: its port.
        pid: the process listening.
        process: that process's name (``gcs_server``, ``raylet``, ``haproxy``, ``ray::…``).
    """

    host: str
    port: int
    pid: int
    process: str

    @property
    def loopback(self) -> bool:
        """Whether only this machine can reach it."""
        host = self.host.removeprefix("::ffff:")  # an IPv4 address on a dual-stack socket
        return ipaddress.ip_address(host).is_loopback

    @property
    def guard(self) -> str:
        """What stands between the network and it, as far as Relay knows."""
        if self.loopback:
            return "loopback only"
        if self.process == "haproxy" and self.port in _haproxy_read_only_ports():
            return "none: HAProxy's read-only stats and metrics"
        if self.process == "haproxy":
            return "the endpoint's API keys (Relay's auth)"
        return "Ray's token (token authentication)"


def _haproxy_read_only_ports() -> set[int]:
    return {
        int(os.environ.get("RAY_SERVE_HAPROXY_STATS_PORT", "8404")),
        int(os.environ.get("RAY_SERVE_HAPROXY_METRICS_PORT", "9101")),
    }


def listeners(settings: Settings | None = None) -> list[Listener]:
    """Every listening TCP socket of the processes ``make up`` started, and their children."""
    import psutil

    found = set()
    for pid in stack_pids(settings or get_settings()):
        try:
            proc = psutil.Process(pid)
            name = proc.name()
            connections = proc.net_connections(kind="tcp")
        except psutil.Error:
            continue  # ended meanwhile, or not ours to look at
        for conn in connections:
            if conn.status == psutil.CONN_LISTEN:
                found.add(Listener(conn.laddr.ip, conn.laddr.port, pid, name))
    return sorted(found, key=lambda item: (item.loopback, item.port))
