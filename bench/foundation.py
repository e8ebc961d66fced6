"""Foundation benchmarks: data generation, training-set build, online feature reads.

Prints a Markdown table; numbers go in the README with the machine they came from.
Run: ``make bench`` (or ``python -m bench.foundation --orders 1000000``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

DAY = dt.date(2026, 11, 20)


def _timed(fn: Callable[[], object]) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def _percentiles(
    fn: Callable[[], object],
    n: int = 300,
    warmup: int = 30,
    before: Callable[[], object] | None = None,
) -> tuple[float, float]:
    """p50 and p99 in ms of ``fn`` (``before`` runs ahead of each call, untimed)."""
    for _ in range(warmup):
        if before is not None:
            before()
        fn()
    samples = []
    for _ in range(n):
        if before is not None:
            before()
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    p50, p99 = np.percentile(samples, [50, 99])
    return float(p50), float(p99)


def _reader(store: Any, s: Any, pipelined: bool, ttl_s: float) -> Any:
    v = s.model_copy(deep=True)
    v.feast.pipelined_read, v.feast.row_cache_ttl_s = pipelined, ttl_s
    return store.OnlineFeatures(v)


def _touch(path: str) -> None:
    """A commit to the SQLite file from another connection (as a push or a materialization)."""
    import sqlite3

    with sqlite3.connect(path) as conn:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        conn.execute(f"PRAGMA user_version = {version + 1}")


def _online_rows(store: Any, s: Any, sample: list[dict], backend: str) -> list[tuple[str, str]]:
    """p50/p99 of an online read through the feature service: Feast's SDK; serving's direct
    read view by view (relay.features.direct); every view in one round trip on Redis
    (relay.features.redis_read) or one query on SQLite (relay.features.sqlite_read), then
    through the row cache (relay.features.row_cache) when every row is cached, and when one
    view was just pushed (Redis) or the file just written (SQLite); and the three views alone
    through the SDK."""
    from relay.features.row_cache import bump

    by_view = _reader(store, s, pipelined=False, ttl_s=0)
    fs, service = by_view.store, by_view.service
    readers = {"direct, view by view": by_view}
    how = "pipelined" if backend == "redis" else "one query"
    readers[f"direct, {how}, no row cache"] = _reader(store, s, pipelined=True, ttl_s=0)
    cached = _reader(store, s, pipelined=True, ttl_s=3600)  # every row stays cached
    readers[f"direct, {how}, row cache: every row cached"] = cached
    views = [
        f"{p.name}:{f.name}"
        for p in service.feature_view_projections
        if p.name != "order_features"
        for f in p.features
    ]
    out = []
    for n in (1, 32):
        batch = sample[:n]
        keys = [{k: r[k] for k in store.ENTITY_KEYS} for r in batch]
        sdk50, sdk99 = _percentiles(lambda: by_view.read(batch, sdk=True))  # noqa: B023
        head = f"online read, {n} order(s), {backend}, eta_v1 service"
        out.append((f"{head}, Feast SDK", f"p50 {sdk50:.2f} ms, p99 {sdk99:.2f} ms"))
        timed = {
            name: _percentiles(lambda r=reader: r.read(batch))  # noqa: B023
            for name, reader in readers.items()
        }
        if backend == "redis":  # the courier views moved since the rows were cached
            timed["direct, pipelined, row cache: courier_live just pushed"] = _percentiles(
                lambda: cached.read(batch),  # noqa: B023
                before=lambda: bump(fs, ["courier_live"]),
            )
        else:  # another connection committed to the file: every cached row is read again
            timed["direct, one query, row cache: the file just written"] = _percentiles(
                lambda: cached.read(batch),  # noqa: B023
                before=lambda: _touch(cached._direct.pipelined.path),
            )
        for name, (p50, p99) in timed.items():
            out.append(
                (
                    f"{head}, {name}",
                    f"p50 {p50:.2f} ms, p99 {p99:.2f} ms ({sdk50 / p50:.1f}x faster at p50)",
                )
            )
        p50, p99 = _percentiles(
            lambda: fs.get_online_features(features=views, entity_rows=keys).to_dict()  # noqa: B023
        )
        out.append(
            (
                f"online read, {n} order(s), {backend}, 3 views only (no on-demand view)",
                f"p50 {p50:.2f} ms, p99 {p99:.2f} ms",
            )
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--orders", type=int, default=1_000_000)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    os.environ["RELAY_HOME"] = str(home)
    rows: list[tuple[str, str]] = []
    try:
        from relay.data.generate import generate_orders
        from relay.data.lake import FEATURE_TABLES, VALIDATED_ORDERS, Lake
        from relay.features import store
        from relay.features.frames import feature_tables
        from relay.features.tables import compute_feature_tables
        from relay.settings import get_settings

        generate_orders(DAY, 1000)  # warm imports
        secs, orders = _timed(lambda: generate_orders(DAY, args.orders))
        rows.append((f"generate {args.orders:,} orders", f"{secs:.2f} s"))

        history = generate_orders(DAY - dt.timedelta(days=1), args.orders)
        lake = Lake()
        lake.write(history, VALIDATED_ORDERS, DAY - dt.timedelta(days=1))
        lake.write(orders, VALIDATED_ORDERS, DAY)  # type: ignore[arg-type]
        import pandas as pd

        both = pd.concat([history, orders], ignore_index=True)
        start = pd.Timestamp(DAY, tz="UTC")
        secs, tables = _timed(
            lambda: compute_feature_tables(both, start, start + pd.Timedelta(days=1))
        )
        rows.append(("feature tables for 1 day (24 h windows)", f"{secs:.2f} s"))
        # The live views' rows too (one per order), as the training flow lands them.
        tables = feature_tables(both, start, start + pd.Timedelta(days=1))
        for ds in FEATURE_TABLES:
            lake.write(tables[ds.name], ds, DAY)
        store.apply()
        end = dt.datetime.combine(DAY + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
        secs, _ = _timed(lambda: store.materialize(end, end - dt.timedelta(days=1)))
        rows.append(("materialize 1 day to SQLite", f"{secs:.2f} s"))

        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        secs, ts = _timed(lambda: store.training_frame(orders))  # type: ignore[arg-type]
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rows.append(
            (
                f"training set for {len(ts):,} orders (DuckDB point-in-time join)",  # type: ignore[arg-type]
                f"{secs:.1f} s (peak RSS {max(rss0, rss1) / 1e6:.1f} GB)",
            )
        )

        sample = store.entity_frame(orders.sample(32, random_state=0)).to_dict("records")  # type: ignore[union-attr]
        for backend in ("sqlite", "redis"):
            s = get_settings().model_copy(deep=True)
            s.feast.online_store = backend  # type: ignore[assignment]
            if backend == "redis":
                import redis

                redis.Redis(host="127.0.0.1", port=6379, db=14).flushdb()
                s.feast.redis_connection = "127.0.0.1:6379,db=14"
                s.feast.registry_path = home / "feast" / "registry_redis.db"
                store.apply(s)
                store.materialize(end, end - dt.timedelta(days=1), settings=s)
            rows += _online_rows(store, s, sample, backend)
            if backend == "redis":
                redis.Redis(host="127.0.0.1", port=6379, db=14).flushdb()
    finally:
        shutil.rmtree(home, ignore_errors=True)

    print(
        f"\nMachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}\n"
    )
    print("| benchmark | result |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
