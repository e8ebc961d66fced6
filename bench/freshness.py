"""Feature freshness: from an order event sent to ``POST /v1/events`` to its live feature being
readable in the online store.

One run builds a temporary RELAY_HOME (as ``bench.serving`` does: generated orders, a Feast
store, a model), starts the Serve stack, then sends ``created`` events, each for a zone the
store has never seen, and reads the zone's live row from the online store (in this process,
as a model replica would) until ``zone_orders_1h`` is 1: the time from sending the event to
that read is the freshness of one event. Sequentially (one client), then with ``--clients``
clients at once (group commit shares transactions between them).

Run: ``python -m bench.freshness`` (about 3 minutes on 2 cores). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

TARGET_P99_S = 1.0


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(
        url + "/v1/events",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        answer: dict[str, Any] = json.loads(resp.read())
        return answer


def _one(url: str, reader: Any, lock: threading.Lock, k: int, tag: str) -> float:
    """Seconds from sending event ``k`` to reading its feature online."""
    zone = f"ZB-{tag}-{k}"
    now = dt.datetime.now(dt.UTC)
    event = {
        "type": "created",
        "order_id": f"fresh-{tag}-{k}",
        "occurred_at": now.isoformat(),
        "courier_id": f"CB-{tag}-{k}",
        "merchant_id": f"MB-{tag}-{k}",
        "zone_id": zone,
        "distance_km": 2.0,
        "weather": "rain",
    }
    row = {"courier_id": event["courier_id"], "merchant_id": event["merchant_id"], "zone_id": zone}
    row |= {"distance_km": 2.0, "hour": now.hour, "weekday": now.weekday()}
    t0 = time.perf_counter()
    _post(url, event)
    deadline = t0 + 10
    while True:
        with lock:  # one Feast store object: reads one at a time
            value = reader.read([row])["zone_orders_1h"][0]
        if value == 1:
            return time.perf_counter() - t0
        if time.perf_counter() > deadline:
            raise RuntimeError(f"event {k} not visible online after 10 s")


def _measure(url: str, reader: Any, n: int, clients: int, tag: str) -> list[float]:
    lock = threading.Lock()
    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(lambda k: _one(url, reader, lock, k, tag), range(n)))


def _stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"p50": statistics.median(ordered), "p99": p99, "max": ordered[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300, help="events per measurement")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients, second run")
    parser.add_argument("--orders-per-day", type=int, default=1500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="relay-bench-fresh-") as tmp:
        os.environ["RELAY_HOME"] = tmp
        os.environ.setdefault("RELAY_SERVING__CREATED_AT_MAX_AGE_S", str(10 * 365 * 86_400))
        from bench.serving import _free_port, _prepare
        from relay.settings import get_settings, reset_settings

        reset_settings()
        prepared = _prepare(args.orders_per_day, 1, Path(tmp))
        import ray

        from relay.features.store import OnlineFeatures
        from relay.serve import control
        from relay.serve.traffic import TrafficSplit

        s = get_settings().model_copy(deep=True)
        s.serving.port = _free_port()
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            control.start_serve(s)
            control.deploy_model(prepared["versions"]["batched"], s)
            control.set_traffic(TrafficSplit(stable=prepared["versions"]["batched"]), s)
            url = control.endpoint(s)
            reader = OnlineFeatures(s)
            _wait_events(url)
            rows = []
            for clients in (1, args.clients):
                values = _measure(url, reader, args.events, clients, f"c{clients}")
                rows.append((clients, _stats(values)))
        finally:
            from ray import serve

            serve.shutdown()
            ray.shutdown()
    print("\n| clients | events | p50 (ms) | p99 (ms) | max (ms) | p99 ≤ 1 s |")
    print("|---|---|---|---|---|---|")
    for clients, st in rows:
        ok = "yes" if st["p99"] <= TARGET_P99_S else "**no**"
        print(
            f"| {clients} | {args.events} | {st['p50'] * 1000:.1f} | {st['p99'] * 1000:.1f} "
            f"| {st['max'] * 1000:.1f} | {ok} |"
        )
    print(f"\nSQLite online store; {os.cpu_count()} cores; Serve router + one model replica.")


def _wait_events(url: str) -> None:
    """Until the router has opened its event store (a 503 with Retry-After before)."""
    deadline = time.monotonic() + 120
    while True:
        try:
            _post(
                url,
                {
                    "type": "picked_up",
                    "order_id": "warm-up",
                    "occurred_at": dt.datetime.now(dt.UTC).isoformat(),
                },
            )
            return
        except urllib.error.HTTPError as err:
            if err.code != 503 or time.monotonic() > deadline:
                raise
            threading.Event().wait(0.5)


if __name__ == "__main__":
    main()
