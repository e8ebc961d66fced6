"""A two-node Ray cluster on one machine, shaped like the prod profile's (``make e2e-prod``).

A head and a worker node, each a ``ray start`` of its own with its own temp dir, ports,
``RELAY_HOME`` and process group (:mod:`relay.infra.processes`): nothing is shared between
them but the network, as between two machines. The worker joins with ``--address``, so Ray's
single-machine mode (:data:`relay.infra.cluster.LOOPBACK_NODE_ENV`, which refuses a second
node) stays off: both nodes advertise the machine's routable address, guarded by Ray's token,
as the prod profile's nodes are.

:func:`nodes` and :func:`train_worker_nodes` read the cluster through the dashboard's state API:
which nodes are alive, and where Ray Train's workers ran.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
import tempfile
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from relay.infra.processes import http_ok, start_process, stop_all, venv_bin, wait_until
from relay.settings import Settings

#: Ray Train V2's worker actor class: its actors' node ids say where training ran.
TRAIN_WORKER_CLASS = "RayTrainWorker"
#: The ports each node needs of its own on a shared machine (Ray's defaults collide).
NODE_PORTS = (
    "node_manager",
    "object_manager",
    "dashboard_agent_listen",
    "dashboard_agent_grpc",
    "runtime_env_agent",
    "metrics_export",
)
#: Worker processes of a node get this many ports from a range of their own.
WORKER_PORTS = 40


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _free_range(size: int, taken: frozenset[int] = frozenset()) -> int:
    """The first port of ``size`` consecutive free ports, none of them in ``taken``."""
    for _ in range(50):
        first = free_port()
        span = range(first, first + size)
        if first + size < 65536 and not taken & set(span) and all(_is_free(p) for p in span):
            return first
    raise RuntimeError(f"no {size} consecutive free ports")


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("0.0.0.0", port))  # noqa: S104 - a probe: Ray's workers bind every interface
        except OSError:
            return False
    return True


@dataclass(frozen=True)
class Node:
    """One node: its name, its own Relay home and Ray temp dir, its ports."""

    name: str
    home: Path
    temp_dir: Path
    ports: Mapping[str, int]
    num_cpus: int


@dataclass
class LocalCluster:
    """A head and a worker node started by :func:`start`; :func:`stop` ends both."""

    head: Node
    worker: Node
    gcs_address: str
    dashboard_url: str
    settings: Settings
    pids: dict[str, int] = field(default_factory=dict)


def _node(name: str, root: Path, num_cpus: int, taken: frozenset[int] = frozenset()) -> Node:
    home = root / name / "home"
    home.mkdir(parents=True, exist_ok=True)
    # A temp dir of its own, short: Ray's socket paths under it must stay within 107 bytes.
    temp = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=tempfile.gettempdir()))
    ports = {p: free_port() for p in NODE_PORTS}
    ports["min_worker"] = _free_range(WORKER_PORTS, taken | set(ports.values()))
    ports["max_worker"] = ports["min_worker"] + WORKER_PORTS - 1
    return Node(name, home, temp, ports, num_cpus)


def _ports_of(node: Node) -> frozenset[int]:
    """Every port ``node`` uses, its workers' range included."""
    p = node.ports
    return frozenset(p.values()) | frozenset(range(p["min_worker"], p["max_worker"] + 1))


def _node_argv(node: Node, node_ip: str) -> list[str]:
    p = node.ports
    return [
        venv_bin("ray"),
        "start",
        # A loopback address is advertised as the machine's routable one (relay.infra.cluster).
        f"--node-ip-address={node_ip}",
        f"--temp-dir={node.temp_dir}",
        f"--num-cpus={node.num_cpus}",
        f"--node-manager-port={p['node_manager']}",
        f"--object-manager-port={p['object_manager']}",
        f"--min-worker-port={p['min_worker']}",
        f"--max-worker-port={p['max_worker']}",
        f"--dashboard-agent-listen-port={p['dashboard_agent_listen']}",
        f"--dashboard-agent-grpc-port={p['dashboard_agent_grpc']}",
        f"--runtime-env-agent-port={p['runtime_env_agent']}",
        f"--metrics-export-port={p['metrics_export']}",
        "--disable-usage-stats",
    ]


def _settings_at(s: Settings, home: Path) -> Settings:
    """``s`` with another home: each node records its process group under its own."""
    out = s.model_copy(deep=True)
    out.home = home
    return out


def start(
    settings: Settings, root: Path, env: Mapping[str, str], num_cpus: int = 1
) -> LocalCluster:
    """Start a head and a worker node under ``root`` (one folder each) and wait until both are
    alive in the cluster.

    Args:
        settings: Relay's settings: the head's GCS port and dashboard URL (``RELAY_RAY__*``).
        root: where each node's home goes (``root/ray-head/home``, ``root/ray-worker/home``);
            each node's Ray temp dir is a short folder of its own in the system's temp dir.
        env: the environment every node gets on top of this process's: the prod profile's
            ``RELAY_*``, the S3 keys, Ray's token. Each node's ``RELAY_HOME`` is its own.
        num_cpus: logical CPUs each node offers.
    """
    from relay.infra.rayjobs import auth_headers

    head = _node("ray-head", root, num_cpus)
    worker = _node("ray-worker", root, num_cpus, _ports_of(head))
    dash = urllib.parse.urlparse(settings.ray.dashboard_url)
    # Job entrypoints say `python`: this environment's, on every node.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    cluster = LocalCluster(head, worker, "", settings.ray.dashboard_url, settings)
    try:
        head_argv = [
            *_node_argv(head, settings.ray.node_ip),
            "--head",
            f"--port={settings.ray.gcs_port}",
            f"--dashboard-host={dash.hostname or '127.0.0.1'}",
            f"--dashboard-port={dash.port or 8265}",
            f"--ray-client-server-port={free_port()}",
        ]
        head_env = {**env, "RELAY_HOME": str(head.home), "PATH": path}
        cluster.pids[head.name] = start_process(
            head.name, head_argv, head_env, _settings_at(settings, head.home), daemonizes=True
        )
        url = f"{settings.ray.dashboard_url}/api/version"
        wait_until(lambda: http_ok(url, auth_headers()), "Ray dashboard", 180)
        cluster.gcs_address = _head_gcs_address(head)
        joins = f"--address={cluster.gcs_address}"
        worker_argv = [*_node_argv(worker, settings.ray.node_ip), joins]
        worker_env = {**env, "RELAY_HOME": str(worker.home), "PATH": path}
        cluster.pids[worker.name] = start_process(
            worker.name, worker_argv, worker_env, _settings_at(settings, worker.home), True
        )
        wait_until(lambda: len(alive_nodes(cluster.dashboard_url)) == 2, "two Ray nodes", 180)
    except BaseException as exc:
        stop(cluster)
        exc.add_note(f"Ray's logs: {head.temp_dir}/session_latest/logs, {worker.temp_dir}/...")
        raise
    return cluster


def _head_gcs_address(head: Node) -> str:
    """The GCS address the head advertises (``host:port``), from its session folder: Ray
    rewrites a loopback ``--node-ip-address`` to the machine's routable one."""
    marker = head.temp_dir / "ray_current_cluster"
    if marker.exists():
        return marker.read_text().strip()
    raise RuntimeError(f"the head wrote no {marker}")


def stop(cluster: LocalCluster, timeout_s: float = 30.0) -> list[str]:
    """Stop both nodes by their process groups (worker first); never ``ray stop``, which
    would stop every Ray of the machine."""
    stopped = []
    for node in (cluster.worker, cluster.head):
        stopped += stop_all(_settings_at(cluster.settings, node.home), timeout_s)
    return stopped


def remove_temp_dirs(cluster: LocalCluster) -> None:
    """Remove both nodes' Ray temp dirs (sessions, logs, spilled objects) once stopped."""
    for node in (cluster.worker, cluster.head):
        shutil.rmtree(node.temp_dir, ignore_errors=True)


@contextlib.contextmanager
def running(
    settings: Settings, root: Path, env: Mapping[str, str], num_cpus: int = 1
) -> Iterator[LocalCluster]:
    """:func:`start`, then :func:`stop` whatever happens."""
    cluster = start(settings, root, env, num_cpus)
    try:
        yield cluster
    finally:
        stop(cluster)
        remove_temp_dirs(cluster)


def _state(dashboard_url: str, resource: str, params: Mapping[str, str]) -> list[dict[str, Any]]:
    """One list of the dashboard's state API (``/api/v0/<resource>``)."""
    from relay.infra.rayjobs import auth_headers

    res = httpx.get(
        f"{dashboard_url.rstrip('/')}/api/v0/{resource}",
        params={"limit": "10000", "detail": "true", **params},
        headers=auth_headers(),
        timeout=30,
    )
    res.raise_for_status()
    body = res.json()
    return list(body["data"]["result"]["result"])


def nodes(dashboard_url: str) -> list[dict[str, Any]]:
    """Every node the cluster knows (alive or dead), as the state API lists them."""
    return _state(dashboard_url, "nodes", {})


def alive_nodes(dashboard_url: str) -> list[dict[str, Any]]:
    """The nodes that are alive."""
    return [n for n in nodes(dashboard_url) if n.get("state") == "ALIVE"]


def train_worker_nodes(dashboard_url: str, alive_only: bool = False) -> dict[str, int]:
    """How many Ray Train worker actors each node id has hosted (with ``alive_only``: hosts
    now); the state API keeps finished actors' records."""
    by_class = {"filter_keys": "class_name", "filter_predicates": "="}
    actors = _state(dashboard_url, "actors", {**by_class, "filter_values": TRAIN_WORKER_CLASS})
    out: dict[str, int] = {}
    for actor in actors:
        if alive_only and actor.get("state") != "ALIVE":
            continue
        node = str(actor.get("node_id") or (actor.get("address") or {}).get("node_id") or "")
        if node:
            out[node] = out.get(node, 0) + 1
    return out


def node_table(dashboard_url: str) -> str:
    """The node list as text: id, address, head or worker, state, CPUs, Train workers hosted
    (alive now / ever)."""
    ever = train_worker_nodes(dashboard_url)
    now = train_worker_nodes(dashboard_url, alive_only=True)
    lines = [f"{'node id':<18} {'address':<16} {'role':<6} {'state':<6} {'CPU':>4}  train workers"]
    for n in sorted(nodes(dashboard_url), key=lambda n: not n.get("is_head_node")):
        node_id = str(n.get("node_id"))
        cpus = (n.get("resources_total") or {}).get("CPU", 0)
        role = "head" if n.get("is_head_node") else "worker"
        lines.append(
            f"{node_id[:16] + '..':<18} {n.get('node_ip')!s:<16} {role:<6} {n.get('state')!s:<6} "
            f"{cpus:>4g}  {now.get(node_id, 0)} alive, {ever.get(node_id, 0)} in all"
        )
    return "\n".join(lines)
