"""What the metrics hub costs a router replica (issue 12's "your call, measured").

Every router replica counts each request in its own :class:`~relay.serve.metrics.LiveMetrics`
(what it did before the hub, the baseline here) and, every ``RELAY_SERVING__METRICS_PUSH_S``,
pushes a cumulative snapshot to the cluster's named :class:`~relay.serve.metrics_hub.MetricsHub`
actor from a background thread; the controller reads the sum. Nothing is added to a request's
path, so the cost is the push thread's CPU and the hub's answer time. One run, on a real local
Ray (``num_cpus=2``):

* **record**: ``LiveMetrics.observe`` of one 32-order request (the baseline, per request);
* **snapshot** and **push**: one replica's snapshot, and a whole push (snapshot, Ray call, the
  hub's ``Tally.push``) waited for, as the replica's push thread does; its CPU on that thread;
* **read**: the controller's ``read_hub`` (sum over replicas) with ``--replicas`` pushing;
* the push thread's share of one core at the default interval, and one push in requests'
  worth of recording (push CPU ÷ record).

Run: ``python -m bench.metrics_hub`` (about 20 s). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

VERSIONS = ("eta_mlp_v1", "eta_mlp_v2")


def _timed(fn: Callable[[], object], n: int) -> tuple[list[float], list[float]]:
    """Wall and thread-CPU milliseconds of ``n`` calls of ``fn``."""
    wall, cpu = [], []
    for _ in range(n):
        w, c = time.perf_counter(), time.thread_time()
        fn()
        cpu.append((time.thread_time() - c) * 1e3)
        wall.append((time.perf_counter() - w) * 1e3)
    return wall, cpu


def _q(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def main(argv: list[str] | None = None) -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000, help="requests recorded")
    parser.add_argument("--pushes", type=int, default=300, help="pushes and reads timed")
    parser.add_argument("--replicas", type=int, default=4, help="router replicas pushing")
    args = parser.parse_args(argv)

    import ray

    from relay.serve.metrics import LiveMetrics
    from relay.serve.metrics_hub import HubClient, read_hub
    from relay.settings import get_settings

    rng = random.Random(0)
    metrics = LiveMetrics()
    bodies = [[rng.uniform(10, 60) for _ in range(32)] for _ in range(64)]

    def record() -> None:
        i = rng.randrange(64)
        metrics.observe(VERSIONS[i % 2], rng.uniform(5, 60), 32, bodies[i])

    record_wall, _ = _timed(record, args.requests)
    snap_wall, _ = _timed(metrics.snapshot, args.pushes)

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        clients = [HubClient(metrics, timeout_s=10.0)]
        clients += [HubClient(LiveMetrics(), timeout_s=10.0) for _ in range(args.replicas - 1)]
        for c in clients[1:]:
            for _ in range(100):
                c.metrics.observe(VERSIONS[0], 20.0, 1, [30.0])
        for c in clients:  # the hub is created by the first push, as on a cluster
            assert c.push(), "the hub did not answer"

        def push_all() -> None:
            for c in clients:
                c.push()

        push_wall, push_cpu = _timed(push_all, args.pushes)
        read_wall, _ = _timed(lambda: read_hub(10.0), args.pushes)
    finally:
        ray.shutdown()

    every_s = get_settings().serving.metrics_push_s
    per_replica_push = [w / len(clients) for w in push_wall]
    push_cpu_ms = statistics.mean(push_cpu) / len(clients)
    record_ms = statistics.mean(record_wall)
    rows = [
        ("record one 32-order request (baseline, per request)", f"{record_ms * 1e3:.1f} µs"),
        ("snapshot of one replica's counters", f"{statistics.mean(snap_wall) * 1e3:.0f} µs"),
        (
            f"push, waited for ({len(clients)} replicas, per push)",
            f"p50 {_q(per_replica_push, 50):.2f} ms, p99 {_q(per_replica_push, 99):.2f} ms",
        ),
        ("push thread CPU per push", f"{push_cpu_ms:.2f} ms"),
        (
            f"read of the cluster's sum ({len(clients)} replicas)",
            f"p50 {_q(read_wall, 50):.2f} ms, p99 {_q(read_wall, 99):.2f} ms",
        ),
        (
            f"push thread's share of one core (every {every_s:g} s)",
            f"{push_cpu_ms / (every_s * 1e3):.2%}",
        ),
        ("one push ÷ recording one request (ratio)", f"{push_cpu_ms / record_ms:.0f}"),
    ]
    print("| metrics hub | result |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
