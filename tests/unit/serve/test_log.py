"""The serving log: batched, off the request path, nothing lost on a transient lake error."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from relay.data.lake import ACTUALS, SERVING_LOG, Lake
from relay.errors import PartitionNotFound
from relay.serve.log import ServingLogClosed, ServingLogWriter
from relay.serve.log_read import (
    features_of,
    join_actuals,
    quality_by_version,
    read_actuals,
    read_served,
    read_serving_log,
)
from relay.serve.log_schema import InvalidServingRecord
from relay.settings import Settings

DAY = dt.date(2026, 11, 20)
NOON = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)
# Large enough that the background thread never writes unless a test asks it to.
QUIET = {"max_batch": 1_000_000, "max_delay_s": 3600.0}


@pytest.fixture()
def lake(tmp_path) -> Lake:
    return Lake(Settings(home=tmp_path))


@pytest.fixture()
def make_writer(lake):
    writers: list[ServingLogWriter] = []

    def make(**kwargs) -> ServingLogWriter:
        w = ServingLogWriter(lake, **kwargs)
        writers.append(w)
        return w

    yield make
    for w in writers:
        w.close(timeout=5)


def record(i: int, at: dt.datetime = NOON, **extra) -> dict:
    r = {
        "request_id": f"req-{i}",
        "order_id": f"O-{i}",
        "requested_at": at,
        "model_version": "v3",
        "eta_minutes": 30.0 + i,
        "latency_ms": 4.5,
        "features": {"order_distance_km": 2.5 + i, "zone_id": "z07", "order_hour": 12},
        "missing_features": ["courier_orders_1h"] if i % 2 else [],
    }
    r.update(extra)
    return r


def lake_files(lake: Lake) -> list[Path]:
    return [p for p in Path(lake.root).rglob("*") if p.is_file()]


def wait_for(predicate, timeout: float = 10.0) -> None:
    """Poll ``predicate`` until it holds, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        time.sleep(0.005)


def test_every_logged_record_is_written_once_after_flush(lake, make_writer):
    w = make_writer(**QUIET)
    w.log([record(i) for i in range(0, 150)])
    w.log([record(i) for i in range(150, 250)])
    assert w.pending == 250
    assert w.flush() == 250
    assert (w.written, w.pending, w.dropped) == (250, 0, 0)
    assert w.flush() == 0  # nothing left: a second flush writes no empty file

    df = read_serving_log(lake, DAY, DAY)
    assert len(df) == 250
    assert sorted(df["request_id"]) == sorted(f"req-{i}" for i in range(250))
    assert lake.partitions(SERVING_LOG) == [DAY]
    assert lake.files(SERVING_LOG, DAY) == []  # no file outside the hour partitions
    assert len(lake.files(SERVING_LOG, DAY, NOON.hour)) == 1


def test_record_schema_and_feature_columns(lake, make_writer):
    w = make_writer(**QUIET)
    w.log([record(1), record(2, features={"order_distance_km": 1.0, "zone_weather": "rain"})])
    w.flush()
    df = read_serving_log(lake, DAY, DAY)
    assert list(df.columns[:8]) == [
        "request_id",
        "order_id",
        "requested_at",
        "logged_at",
        "model_version",
        "eta_minutes",
        "latency_ms",
        "missing_features",
    ]
    assert str(df["requested_at"].dt.tz) == "UTC"
    assert df["eta_minutes"].dtype == "float64"
    assert df["f_order_distance_km"].dtype == "float64"
    assert df["f_order_hour"].tolist()[0] == 12.0
    assert df["f_zone_id"].tolist()[0] == "z07"
    assert df["missing_features"].tolist() == ["courier_orders_1h", ""]
    feats = features_of(df)
    assert set(feats.columns) == {"order_distance_km", "zone_id", "order_hour", "zone_weather"}
    assert pd.isna(feats.loc[1, "zone_id"])  # a feature one record lacks is null there


def test_a_feature_column_is_numbers_or_strings_as_its_values_are():
    """The frame the writer thread builds, column by column: numbers, bools and missing values
    (None, NaN, numpy scalars) make float64; anything else, strings with nulls kept null."""
    import math

    import numpy as np

    from relay.serve.log_schema import to_frame, to_row

    feats = [
        {"n": 1, "b": True, "mix": 2.5, "s": "x", "none": None, "np": np.float32(1.5)},
        {"n": 2.5, "b": False, "mix": "3", "s": None, "none": None, "np": math.nan},
        {"n": None, "b": None, "s": "y", "none": None, "np": None, "late": 7},
    ]
    df = to_frame(to_row(record(i, features=f), NOON) for i, f in enumerate(feats))
    assert list(df.columns[8:]) == ["f_b", "f_late", "f_mix", "f_n", "f_none", "f_np", "f_s"]
    for col in ("f_n", "f_b", "f_none", "f_np", "f_late"):
        assert df[col].dtype == "float64", col
    assert df["f_n"].tolist()[:2] == [1.0, 2.5] and math.isnan(df["f_n"][2])
    assert df["f_b"].tolist()[:2] == [1.0, 0.0]
    assert df["f_late"].isna().tolist() == [True, True, False]
    assert df["f_mix"].tolist()[:2] == ["2.5", "3"] and df["f_mix"][2] is None
    assert df["f_s"].tolist() == ["x", None, "y"]
    assert str(df["requested_at"].dtype) == "datetime64[ns, UTC]"
    assert df["latency_ms"].dtype == "float64"


def test_records_across_midnight_land_in_two_partitions(lake, make_writer):
    midnight = dt.datetime(2026, 11, 21, tzinfo=dt.UTC)
    before = [record(i, midnight - dt.timedelta(milliseconds=100 - i)) for i in range(3)]
    # A time in another zone counts by its UTC date: 01:00+02:00 is 23:00 UTC the day before.
    east = dt.datetime(2026, 11, 21, 1, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    after = [record(i, midnight + dt.timedelta(milliseconds=i)) for i in range(3, 5)]
    w = make_writer(**QUIET)
    w.log([*before, record(9, east), *after])
    w.flush()

    assert lake.partitions(SERVING_LOG) == [DAY, DAY + dt.timedelta(days=1)]
    first = read_serving_log(lake, DAY, DAY)
    second = read_serving_log(lake, DAY + dt.timedelta(days=1), DAY + dt.timedelta(days=1))
    assert sorted(first["request_id"]) == ["req-0", "req-1", "req-2", "req-9"]
    assert sorted(second["request_id"]) == ["req-3", "req-4"]
    assert len(read_serving_log(lake, DAY, DAY + dt.timedelta(days=1))) == 6


def test_requested_at_defaults_to_the_clock(lake, make_writer):
    late = dt.datetime(2026, 11, 20, 23, 59, 59, 999_000, tzinfo=dt.UTC)
    w = make_writer(clock=lambda: late, **QUIET)
    r = record(1)
    del r["requested_at"], r["request_id"]
    w.log([r])
    w.flush()
    df = read_serving_log(lake, DAY, DAY)
    assert df["requested_at"].tolist() == [pd.Timestamp(late)]
    assert df["logged_at"].tolist() == [pd.Timestamp(late)]
    assert len(df["request_id"][0]) == 32  # a generated uuid4 hex


def test_log_does_no_io_until_a_flush(lake, make_writer, monkeypatch):
    calls: list[str] = []
    real_append = Lake.append

    def spy(self, *args, **kwargs):
        calls.append(threading.current_thread().name)
        return real_append(self, *args, **kwargs)

    monkeypatch.setattr(Lake, "append", spy)
    w = make_writer(**QUIET)
    w.log([record(i) for i in range(500)])
    assert calls == []
    assert lake_files(lake) == []
    w.flush()
    assert len(lake_files(lake)) == 1


def test_log_returns_while_the_lake_is_stuck(lake, make_writer, monkeypatch):
    entered, release = threading.Event(), threading.Event()
    threads: list[str] = []
    real_append = Lake.append

    def slow(self, *args, **kwargs):
        threads.append(threading.current_thread().name)
        entered.set()
        release.wait(10)
        return real_append(self, *args, **kwargs)

    monkeypatch.setattr(Lake, "append", slow)
    w = make_writer(max_batch=10, max_delay_s=3600.0)
    w.log([record(i) for i in range(10)])  # a full batch: the background thread writes it
    assert entered.wait(10)
    # The background thread is inside the lake; logging must not wait for it.
    t0 = time.monotonic()
    w.log([record(i) for i in range(10, 15)])
    assert time.monotonic() - t0 < 1.0
    assert w.written == 0
    release.set()
    w.flush()
    assert w.written == 15
    assert set(threads) == {"relay-serving-log", threading.current_thread().name}
    assert len(read_serving_log(lake, DAY, DAY)) == 15


def test_background_flush_when_max_batch_is_reached(lake, make_writer):
    w = make_writer(max_batch=100, max_delay_s=3600.0)
    w.log([record(i) for i in range(99)])
    assert w.written == 0
    w.log([record(99)])
    wait_for(lambda: w.written == 100)
    assert w.pending == 0
    assert len(read_serving_log(lake, DAY, DAY)) == 100


def test_background_flush_after_max_delay(lake, make_writer):
    w = make_writer(max_batch=1_000_000, max_delay_s=0.05)
    w.log([record(1), record(2)])
    wait_for(lambda: w.written == 2)
    assert sorted(read_serving_log(lake, DAY, DAY)["request_id"]) == ["req-1", "req-2"]


def test_a_transient_write_error_loses_nothing(lake, make_writer, monkeypatch):
    real_append = Lake.append
    failures = iter([OSError("lake unreachable")])

    def flaky(self, *args, **kwargs):
        err = next(failures, None)
        if err is not None:
            raise err
        return real_append(self, *args, **kwargs)

    monkeypatch.setattr(Lake, "append", flaky)
    w = make_writer(**QUIET)
    w.log([record(i) for i in range(20)])
    with pytest.raises(OSError, match="unreachable"):
        w.flush()
    assert (w.written, w.pending) == (0, 20)
    w.log([record(i) for i in range(20, 25)])
    assert w.flush() == 25
    df = read_serving_log(lake, DAY, DAY)
    assert sorted(df["request_id"]) == sorted(f"req-{i}" for i in range(25))


def test_only_the_failed_hour_is_retried(lake, make_writer, monkeypatch):
    real_append = Lake.append
    failed_once: list[dt.date] = []

    def fail_second_day(self, df, dataset, date, hour=None):
        if date != DAY and not failed_once:
            failed_once.append(date)
            raise OSError("slow down")
        return real_append(self, df, dataset, date, hour)

    monkeypatch.setattr(Lake, "append", fail_second_day)
    w = make_writer(**QUIET)
    next_day = NOON + dt.timedelta(days=1)
    w.log([record(1), record(2, next_day), record(3)])
    with pytest.raises(OSError):
        w.flush()
    assert (w.written, w.pending) == (2, 1)
    w.flush()
    df = read_serving_log(lake, DAY, DAY + dt.timedelta(days=1))
    assert sorted(df["request_id"]) == ["req-1", "req-2", "req-3"]


def test_overflow_drops_the_oldest_and_counts_them(lake, make_writer, caplog):
    w = make_writer(max_pending=10, **QUIET)
    w.log([record(i) for i in range(25)])
    assert (w.dropped, w.pending) == (15, 10)
    with caplog.at_level(logging.WARNING, logger="relay.serve.log"):
        assert w.flush() == 10
    assert "dropped the 15 oldest" in caplog.text
    df = read_serving_log(lake, DAY, DAY)
    assert sorted(df["request_id"]) == sorted(f"req-{i}" for i in range(15, 25))


def test_overflow_while_the_lake_is_down_keeps_the_newest(lake, make_writer, monkeypatch):
    real_append = Lake.append
    down = True

    def maybe(self, *args, **kwargs):
        if down:
            raise OSError("lake down")
        return real_append(self, *args, **kwargs)

    monkeypatch.setattr(Lake, "append", maybe)
    w = make_writer(max_pending=10, **QUIET)
    w.log([record(i) for i in range(8)])
    with pytest.raises(OSError):
        w.flush()
    w.log([record(i) for i in range(8, 12)])  # 12 waiting: the two oldest go
    assert (w.dropped, w.pending) == (2, 10)
    down = False
    w.flush()
    df = read_serving_log(lake, DAY, DAY)
    assert sorted(df["request_id"]) == sorted(f"req-{i}" for i in range(2, 12))


def test_close_writes_what_is_left_and_refuses_more(lake):
    with ServingLogWriter(lake, **QUIET) as w:
        w.log([record(1)])
    assert w.written == 1
    with pytest.raises(ServingLogClosed):
        w.log([record(2)])
    w.close()  # idempotent
    assert read_serving_log(lake, DAY, DAY)["request_id"].tolist() == ["req-1"]


def test_a_malformed_record_is_refused_and_nothing_is_queued(make_writer):
    w = make_writer(**QUIET)
    bad = record(2)
    del bad["eta_minutes"]
    with pytest.raises(InvalidServingRecord, match="eta_minutes"):
        w.log([record(1), bad])
    with pytest.raises(InvalidServingRecord, match="features"):
        w.log([record(3, features=[1, 2])])
    assert w.pending == 0


def test_a_retried_write_is_read_once(lake):
    df = pd.DataFrame({"request_id": ["a", "b"], "requested_at": [NOON, NOON]})
    df["logged_at"] = df["requested_at"]
    lake.append(df, SERVING_LOG, DAY)
    lake.append(df.iloc[[1]], SERVING_LOG, DAY)
    assert len(lake.read_all(SERVING_LOG, DAY, DAY)) == 3
    assert read_serving_log(lake, DAY, DAY)["request_id"].tolist() == ["a", "b"]
    assert len(read_serving_log(lake, DAY, DAY, dedupe=False)) == 3


def test_read_all_reads_every_file_and_tolerates_new_columns(lake):
    lake.write(pd.DataFrame({"x": [1]}), SERVING_LOG, DAY)
    uri = lake.append(pd.DataFrame({"x": [2], "y": ["b"]}), SERVING_LOG, DAY)
    assert uri.startswith(f"{lake.uri(SERVING_LOG, DAY)}/part-2")
    assert uri.endswith(".parquet")
    lake.append(pd.DataFrame({"x": [3]}), SERVING_LOG, DAY + dt.timedelta(days=2))
    df = lake.read_all(SERVING_LOG, DAY, DAY + dt.timedelta(days=2))
    assert df["x"].tolist() == [1, 2, 3]
    assert df["y"].isna().tolist() == [True, False, True]
    assert lake.read(SERVING_LOG, DAY)["x"].tolist() == [1]  # read() still means part-0
    assert lake.read_all(SERVING_LOG, DAY, DAY, columns=["y"])["y"].tolist()[1] == "b"
    with pytest.raises(KeyError):
        lake.read_all(SERVING_LOG, DAY, DAY, columns=["nope"])
    with pytest.raises(PartitionNotFound):
        lake.read_all(SERVING_LOG, DAY + dt.timedelta(days=1), DAY + dt.timedelta(days=1))


def test_join_actuals(lake, make_writer):
    w = make_writer(**QUIET)
    w.log([record(i) for i in range(4)])  # eta 30, 31, 32, 33
    w.flush()
    delivered = NOON + dt.timedelta(minutes=40)
    actuals = pd.DataFrame(
        {
            "order_id": ["O-0", "O-1", "O-1", "O-2", "O-99"],
            "delivered_at": [delivered, delivered, delivered + dt.timedelta(minutes=1)] * 1
            + [delivered, delivered],
            "actual_minutes": [28.0, 50.0, 35.0, 32.0, 10.0],
        }
    )
    lake.append(actuals, ACTUALS, DAY)
    log_df = read_serving_log(lake, DAY, DAY)

    joined = join_actuals(log_df, read_actuals(lake, DAY, DAY)).sort_values("order_id")
    assert joined["order_id"].tolist() == ["O-0", "O-1", "O-2"]
    assert joined["actual_minutes"].tolist() == [28.0, 35.0, 32.0]  # latest actual wins
    assert joined["error_minutes"].tolist() == [2.0, -4.0, 0.0]
    assert "f_order_distance_km" in joined.columns

    left = join_actuals(log_df, actuals, how="left").sort_values("order_id")
    assert len(left) == 4
    assert left["actual_minutes"].isna().tolist() == [False, False, False, True]
    with pytest.raises(KeyError, match="actual_minutes"):
        join_actuals(log_df, actuals.drop(columns="actual_minutes"))


def test_read_served_keeps_the_window_and_joins_what_landed(lake, make_writer):
    w = make_writer(**QUIET)
    w.log([record(i, at=NOON + dt.timedelta(minutes=10 * i)) for i in range(4)])  # 12:00..12:30
    w.flush()
    window = (NOON + dt.timedelta(minutes=5), NOON + dt.timedelta(minutes=30))
    served = read_served(lake, *window)
    assert served["order_id"].tolist() == ["O-1", "O-2"]
    assert served["actual_minutes"].isna().all()  # no actuals landed yet: still every row

    lake.append(
        pd.DataFrame({"order_id": ["O-2"], "delivered_at": [NOON], "actual_minutes": [40.0]}),
        ACTUALS,
        DAY,
    )
    served = read_served(lake, *window)
    assert served["actual_minutes"].tolist()[1] == 40.0
    assert read_served(lake, window[0])["order_id"].tolist() == ["O-1", "O-2", "O-3"]
    with pytest.raises(PartitionNotFound):
        read_served(lake, NOON + dt.timedelta(days=3), NOON + dt.timedelta(days=4))


def test_quality_by_version_scores_the_labelled_rows_only():
    served = pd.DataFrame(
        {
            "model_version": ["v1", "v1", "v1", "v2", "v2"],
            "eta_minutes": [30.0, 30.0, 30.0, 20.0, 20.0],
            "actual_minutes": [28.0, 34.0, None, 21.0, None],
        }
    )
    live, overall = quality_by_version(served)
    assert set(live) == {"v1", "v2"}
    assert (live["v1"].n, live["v1"].mae, live["v1"].bias) == (2, 3.0, -1.0)
    assert live["v1"].mae_se == pytest.approx(1.0)  # sd of |2|, |4| is √2; over √2
    assert live["v2"].n == 1 and live["v2"].mae_se is None
    assert overall is not None and (overall.version, overall.n) == ("all", 3)
    assert quality_by_version(served.drop(columns="actual_minutes")) == ({}, None)


def test_a_child_process_writes_the_same_log(lake, make_writer):
    """``RELAY_SERVING__LOG_WRITER=process``: the same files and rows, written by a child."""
    import os

    w = make_writer(**QUIET, child_process=True)
    w.log([record(i) for i in range(120)])
    w.log([record(i, at=NOON + dt.timedelta(hours=1)) for i in range(120, 150)])
    assert w.flush() == 150
    assert (w.written, w.pending, w.dropped) == (150, 0, 0)
    assert w._child is not None and w._child.proc.pid != os.getpid()
    df = read_serving_log(lake, DAY, DAY)
    assert sorted(df["request_id"]) == sorted(f"req-{i}" for i in range(150))
    assert len(lake.files(SERVING_LOG, DAY, NOON.hour)) == 1
    assert len(lake.files(SERVING_LOG, DAY, NOON.hour + 1)) == 1
    assert str(df["requested_at"].dt.tz) == "UTC" and df["eta_minutes"].dtype == "float64"
    child = w._child.proc
    w.close()
    assert child.poll() is not None  # closing the writer ends its child


def test_a_killed_child_loses_nothing_and_a_new_one_writes(lake, make_writer):
    import signal

    w = make_writer(**QUIET, child_process=True)
    w.log([record(i) for i in range(10)])
    assert w.flush() == 10
    first = w._child.proc
    first.send_signal(signal.SIGKILL)  # kill -9 of the process that writes
    first.wait()
    w.log([record(i) for i in range(10, 30)])
    with pytest.raises(Exception, match="writer process ended"):
        w.flush()  # that write failed: its records stay buffered
    assert w.pending == 20
    assert w.flush() == 20  # by a new child
    assert w._child.proc.pid != first.pid
    df = read_serving_log(lake, DAY, DAY)
    assert sorted(df["request_id"]) == sorted(f"req-{i}" for i in range(30))  # each once


def test_a_childs_lake_error_keeps_the_records_for_the_next_flush(tmp_path, make_writer):
    """A lake the child cannot write (a file where the lake's folder should be) fails the write
    with the child's error; once it can, the same records are written, once."""
    blocked = tmp_path / "blocked"
    blocked.write_text("not a folder")
    from relay.settings import LakeSettings

    lake = Lake(Settings(home=tmp_path, lake=LakeSettings(uri=str(blocked / "lake"))))
    w = ServingLogWriter(lake, **QUIET, child_process=True)
    try:
        w.log([record(i) for i in range(5)])
        with pytest.raises(RuntimeError):
            w.flush()
        assert (w.written, w.pending) == (0, 5)
        blocked.unlink()
        assert w.flush() == 5
        written = sorted(read_serving_log(lake, DAY, DAY)["request_id"])
        assert written == [f"req-{i}" for i in range(5)]
    finally:
        w.close(timeout=5)


def test_the_child_of_a_killed_replica_exits(tmp_path):
    """kill -9 of the process that holds the writer: its child reads the end of its pipe and
    exits, not left behind."""
    import os
    import signal
    import subprocess
    import sys

    script = (
        "import datetime as dt, sys, time\n"
        "from relay.data.lake import Lake\n"
        "from relay.serve.log import ServingLogWriter\n"
        "w = ServingLogWriter(Lake(), max_batch=10**6, max_delay_s=3600, child_process=True)\n"
        "w.log([{'order_id': 'o', 'model_version': 'v', 'eta_minutes': 3.0, 'features': {}}])\n"
        "w.flush()\n"
        "print(w._child.proc.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    env = {**os.environ, "RELAY_HOME": str(tmp_path)}
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 20
        while Path(f"/proc/{child}").exists() and "Z" not in _state(child):
            if time.monotonic() > deadline:
                os.kill(child, signal.SIGKILL)
                pytest.fail("the writer's child outlived its parent by 20 s")
            time.sleep(0.05)
    finally:
        if parent.poll() is None:
            parent.kill()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return "Z"


class Unprintable:
    """A feature value no column can hold (its text cannot be made)."""

    def __str__(self) -> str:
        raise ValueError("no text")


@pytest.mark.parametrize("child_process", [False, True], ids=["thread", "process"])
def test_records_that_make_no_frame_are_dropped_counted_and_the_log_goes_on(
    lake, make_writer, child_process
):
    w = make_writer(**QUIET, child_process=child_process)
    w.log([record(0, features={"bad": Unprintable()}), record(1)])
    with pytest.raises(Exception, match="no text"):
        w.flush()
    assert (w.written, w.pending, w.dropped) == (0, 0, 2)
    w.log([record(2)])
    assert w.flush() == 1
    assert read_serving_log(lake, DAY, DAY)["request_id"].tolist() == ["req-2"]
