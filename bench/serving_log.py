"""The serving log at 20 orders/s: what monitoring's 24-hour read opens and costs, before and
after hourly partitions and compaction (Relay issue 17).

One run writes a synthetic serving log (the writer's columns, the 12 monitored features) into
temporary lakes and times :func:`relay.monitor.window.read_window`, the hourly monitoring run's
read, over a 24-hour window (a whole UTC day, the old layout's best case: a window ending at
14:00 spans two days, and the old reader read both whole):

* **before**: the day-only layout (``date=…/part-*.parquet``, one file per flush, a flush a
  second: 86,400 files a day per replica) read as the old reader did (every file of the days,
  one at a time). Writing and reading 86,400 files takes many minutes on 2 cores, so
  ``--before-hours`` hours are written (2 by default: 7,200 files, 144,000 rows) and the times
  are scaled to 24 hours (per-file costs are linear: stated in the table). The new reader on the
  same files (a log kept across the upgrade) is timed too.
* **after**: the hourly layout (``date=…/hour=HH/``), each hour's flushes merged by
  :func:`relay.serve.log_compact.compact_hour`; all 24 hours, 1,728,000 rows. One hour is written
  as the writer leaves it (3,600 one-second files) and its compaction timed; the other hours
  are written as ``--files-per-hour`` files before compaction (the read after is the same).

``--s3`` repeats it on moto's S3 server at a smaller scale (``--s3-before-s`` one-second files
for the before; the after in full).

Run: ``python -m bench.serving_log`` (about 3 minutes on 2 cores; ``--s3`` adds about 2).
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

RATE = 20  # orders a second
DAY = dt.date(2026, 11, 20)
START = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)
END = START + dt.timedelta(hours=24)
CATEGORIES = {"zone_id": [f"z{k:02d}" for k in range(40)], "zone_weather": ["dry", "rain", "snow"]}


def hour_frame(hour: int, rng: np.random.Generator) -> pd.DataFrame:
    """An hour of serving log at :data:`RATE` orders a second, in the writer's columns."""
    from relay.monitor.report import MONITORED_FEATURES

    n = 3600 * RATE
    first = hour * n
    at = pd.Timestamp(START) + pd.to_timedelta(hour * 3600 + np.arange(n) / RATE, unit="s")
    ids = [f"{first + i}" for i in range(n)]
    df = pd.DataFrame(
        {
            "request_id": ids,
            "order_id": ids,
            "requested_at": at,
            "logged_at": at + pd.Timedelta(milliseconds=5),
            "model_version": "eta_mlp_v3",
            "eta_minutes": rng.gamma(6.0, 5.0, n),
            "latency_ms": rng.gamma(2.0, 2.0, n),
            "missing_features": "",
        }
    )
    for f in MONITORED_FEATURES:
        df[f"f_{f}"] = rng.choice(CATEGORIES[f], n) if f in CATEGORIES else rng.gamma(2.0, 3.0, n)
    return df


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def read_before(lake: Any, start: dt.datetime, end: dt.datetime) -> pd.DataFrame:
    """The serving-log read of before issue 17 (``read_served``'s core), kept here to time it:
    every file of every day of the window, one at a time."""
    from relay.data.lake import SERVING_LOG

    df = lake.read_all(SERVING_LOG, start.date(), end.date() - dt.timedelta(days=1))
    df = df.sort_values(["requested_at", "logged_at"], kind="stable")
    df = df.drop_duplicates(["request_id", "order_id"], keep="first")
    requested = pd.to_datetime(df["requested_at"], utc=True)
    return df.loc[(requested >= start) & (requested < end)].reset_index(drop=True)


def write_flushes(lake: Any, frame: pd.DataFrame, files: int, hourly: bool) -> None:
    """``frame`` as ``files`` appends, as a writer's flushes leave it."""
    from relay.data.lake import SERVING_LOG

    hour = int(frame["requested_at"].iloc[0].hour) if hourly else None
    for chunk in np.array_split(np.arange(len(frame)), files):
        lake.append(frame.iloc[chunk[0] : chunk[-1] + 1], SERVING_LOG, DAY, hour)


def run(lake_before: Any, lake_after: Any, before_files: int, files_per_hour: int) -> list[tuple]:
    """The table's rows for one pair of lakes (same filesystem kind)."""
    from relay.data.lake import SERVING_LOG
    from relay.monitor.window import read_window
    from relay.serve.log_compact import compact_hour
    from relay.serve.log_store import scan_log

    rng = np.random.default_rng(0)
    scale = 86_400 / before_files
    before_rows = before_files * RATE
    sample = pd.concat([hour_frame(h, rng) for h in range(-(-before_files // 3600))])
    sample = sample.iloc[:before_rows]
    _, w_before = _timed(lambda: write_flushes(lake_before, sample, before_files, hourly=False))
    old, r_old = _timed(lambda: read_before(lake_before, START, END))
    opened_old = len(lake_before.files(SERVING_LOG, DAY))
    new, r_new = _timed(lambda: read_window(lake_before, START, END))
    opened_new = scan_log(lake_before, START, END)[1].opened
    if not len(old) == len(new) == before_rows:
        raise RuntimeError(f"before: read {len(old)} and {len(new)} rows of {before_rows}")

    w_after = compact_s = 0.0
    for h in range(24):
        frame = hour_frame(h, rng)
        files = 3600 if h == 0 else files_per_hour
        _, w = _timed(lambda f=frame, n=files: write_flushes(lake_after, f, n, hourly=True))
        _, c = _timed(lambda h=h: compact_hour(lake_after, DAY, h))
        w_after += w
        compact_s = c if h == 0 else compact_s
    after, r_after = _timed(lambda: read_window(lake_after, START, END))
    scan = scan_log(lake_after, START, END)[1]
    if len(after) != 24 * 3600 * RATE:
        raise RuntimeError(f"after: read {len(after)} rows")
    return [
        (
            f"before: day-only, 1 file/s, old reader ({before_files:,} files measured, x{scale:g})",
            f"{86_400:,}",
            f"{w_before * scale:.0f}",
            f"{opened_old * scale:,.0f}",
            f"{r_old * scale:.1f}",
            f"{len(old) * scale:,.0f}",
        ),
        (
            f"old layout, new reader (`read_window`, {before_files:,} files measured, x{scale:g})",
            f"{86_400:,}",
            "",
            f"{opened_new * scale:,.0f}",
            f"{r_new * scale:.1f}",
            f"{len(new) * scale:,.0f}",
        ),
        (
            f"after: hourly, compacted (compacting one hour of 3,600 files: {compact_s:.1f} s)",
            f"{len(scan.files)}",
            f"{w_after:.0f}",
            f"{scan.opened}",
            f"{r_after:.1f}",
            f"{len(after):,}",
        ),
    ]


def _moto() -> tuple[Any, str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    return server, f"http://127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before-hours", type=float, default=2.0)
    parser.add_argument("--files-per-hour", type=int, default=60)
    parser.add_argument("--s3", action="store_true", help="also on moto's S3 server")
    parser.add_argument("--s3-before-s", type=int, default=900)
    args = parser.parse_args()
    from relay.data.lake import Lake
    from relay.settings import Settings

    table = []
    with tempfile.TemporaryDirectory() as home:
        local = [Lake(Settings(home=f"{home}/{k}")) for k in ("before", "after")]
        before = int(args.before_hours * 3600)
        table += [("local disk", *r) for r in run(*local, before, args.files_per_hour)]
        if args.s3:
            import boto3

            os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
            os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
            server, url = _moto()
            try:
                boto3.client("s3", endpoint_url=url, region_name="us-east-1").create_bucket(
                    Bucket="bench"
                )
                lakes = [
                    Lake(
                        Settings(
                            home=f"{home}/s3",
                            lake={"uri": f"s3://bench/{k}"},
                            s3={"endpoint_url": url},
                        )
                    )
                    for k in ("before", "after")
                ]
                table += [("moto S3", *r) for r in run(*lakes, args.s3_before_s, 10)]
            finally:
                server.stop()
    print(
        f"24 h of serving log at {RATE} orders/s, `read_window` over the day\n\n"
        "| lake | layout | files in the day | write s | files opened | read s | rows |\n"
        "|---|---|---|---|---|---|---|"
    )
    for row in table:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
