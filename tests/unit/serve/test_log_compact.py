"""The serving log's hourly layout and compaction: every row read once, whatever was interrupted."""

from __future__ import annotations

import datetime as dt
import posixpath

import pandas as pd
import pytest
from typer.testing import CliRunner

from relay.data.lake import SERVING_LOG, Lake
from relay.errors import PartitionNotFound
from relay.monitor.drift import NoServingTraffic
from relay.monitor.window import read_window
from relay.serve import log_compact
from relay.serve.log import ServingLogWriter
from relay.serve.log_compact import compact_before, compact_hour, hours_before, plan_hour
from relay.serve.log_read import read_served, read_serving_log
from relay.serve.log_schema import to_frame, to_row
from relay.serve.log_store import hours_between, scan_log, superseded, unify
from relay.settings import Settings, reset_settings

DAY = dt.date(2026, 11, 20)
NOON = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)


@pytest.fixture()
def lake(tmp_path) -> Lake:
    return Lake(Settings(home=tmp_path))


def rows(first: int, n: int, at: dt.datetime, step_s: float = 1.0, **features) -> pd.DataFrame:
    """``n`` served predictions ``req-first…``, one every ``step_s`` from ``at``."""
    records = [
        {
            "request_id": f"req-{i}",
            "order_id": f"O-{i}",
            "requested_at": at + dt.timedelta(seconds=(i - first) * step_s),
            "model_version": "v3",
            "eta_minutes": 30.0 + i,
            "features": {"order_distance_km": 2.5, "zone_id": "z07", **features},
        }
        for i in range(first, first + n)
    ]
    return to_frame(to_row(r, at) for r in records)


def flushes(lake: Lake, at: dt.datetime, files: int, per_file: int = 5, first: int = 0) -> int:
    """``files`` small files in ``at``'s hour, as a writer's flushes leave them (request ids
    from ``first``); rows written."""
    for k in range(files):
        start = at + dt.timedelta(seconds=k * per_file)
        batch = rows(first + k * per_file, per_file, start)
        lake.append(batch, SERVING_LOG, start.date(), start.hour)
    return files * per_file


def names(lake: Lake, at: dt.datetime) -> list[str]:
    return [posixpath.basename(p) for p in lake.files(SERVING_LOG, at.date(), at.hour)]


def ids(lake: Lake, start: dt.datetime, end: dt.datetime) -> list[str]:
    """Request ids read in the window, repeats kept (no dedupe hides a double read)."""
    return sorted(scan_log(lake, start, end)[0]["request_id"])


def test_the_writer_writes_each_record_to_its_hour(lake) -> None:
    w = ServingLogWriter(lake, max_batch=1_000_000, max_delay_s=3600.0)
    at = [NOON, NOON + dt.timedelta(minutes=59), NOON + HOUR, NOON + 12 * HOUR]
    w.log([{**dict(rows(i, 1, t).iloc[0]), "features": {"x": 1.0}} for i, t in enumerate(at)])
    w.close()
    assert len(names(lake, NOON)) == 1 and len(names(lake, NOON + HOUR)) == 1
    assert len(lake.files(SERVING_LOG, DAY + dt.timedelta(days=1), 0)) == 1
    assert lake.files(SERVING_LOG, DAY) == []  # nothing left in the day-only layout
    hour = scan_log(lake, NOON, NOON + HOUR)[0]
    assert hour["request_id"].tolist() == ["req-0", "req-1"]


def test_compaction_leaves_one_sorted_file_with_every_row_once(lake) -> None:
    n = flushes(lake, NOON, files=30)
    lake.append(rows(3, 1, NOON + dt.timedelta(seconds=3)), SERVING_LOG, DAY, 12)  # a retry
    before = ids(lake, NOON, NOON + HOUR)
    assert len(before) == n + 1
    done = compact_hour(lake, DAY, 12)
    assert (done.inputs, done.rows, done.removed) == (31, n, 31)
    assert len(names(lake, NOON)) == 1
    df, scan = scan_log(lake, NOON, NOON + HOUR)
    assert sorted(df["request_id"]) == sorted(set(before))
    assert df["requested_at"].is_monotonic_increasing
    assert (scan.opened, len(scan.files), scan.unique) == (1, 1, True)


def test_a_crash_before_the_inputs_are_deleted_shows_each_row_once(lake, monkeypatch) -> None:
    n = flushes(lake, NOON, files=10)
    real_delete = log_compact._delete

    def crash_after_half(lake_, folder, doomed):
        if doomed:
            real_delete(lake_, folder, doomed[: len(doomed) // 2])
            raise OSError("killed while deleting the inputs")
        return 0

    monkeypatch.setattr(log_compact, "_delete", crash_after_half)
    with pytest.raises(OSError):
        compact_hour(lake, DAY, 12)
    assert len(names(lake, NOON)) == 1 + 5  # the compacted file and half the inputs
    assert ids(lake, NOON, NOON + HOUR) == sorted(f"req-{i}" for i in range(n))
    scan = scan_log(lake, NOON, NOON + HOUR)[1]
    assert (len(scan.skipped), scan.unique) == (5, True)

    monkeypatch.setattr(log_compact, "_delete", real_delete)
    again = compact_hour(lake, DAY, 12)  # finishes the job: deletes, writes nothing
    assert (again.inputs, again.removed, again.uri) == (0, 5, None)
    once_more = compact_hour(lake, DAY, 12)
    assert (once_more.inputs, once_more.removed) == (0, 0)
    assert len(names(lake, NOON)) == 1
    assert ids(lake, NOON, NOON + HOUR) == sorted(f"req-{i}" for i in range(n))


def test_late_files_are_merged_with_the_compacted_one(lake, monkeypatch) -> None:
    n = flushes(lake, NOON, files=4)
    first = compact_hour(lake, DAY, 12).uri
    lake.append(rows(100, 3, NOON + dt.timedelta(minutes=59)), SERVING_LOG, DAY, 12)
    expected = sorted([f"req-{i}" for i in range(n)] + ["req-100", "req-101", "req-102"])
    # Killed after the second compaction wrote its file: the first one and the late file
    # are both named by it, so each row is still read once.
    monkeypatch.setattr(log_compact, "_delete", lambda *a: 0)
    second = compact_hour(lake, DAY, 12)
    assert second.inputs == 2 and second.uri != first
    assert len(names(lake, NOON)) == 3
    assert ids(lake, NOON, NOON + HOUR) == expected
    monkeypatch.undo()
    assert compact_hour(lake, DAY, 12).removed == 2
    assert names(lake, NOON) == [posixpath.basename(second.uri or "")]
    assert ids(lake, NOON, NOON + HOUR) == expected


def test_a_window_opens_only_its_hours(lake) -> None:
    for h in range(6):
        flushes(lake, NOON + h * HOUR, files=3)
        compact_hour(lake, DAY, 12 + h)
    df, scan = scan_log(lake, NOON + 2 * HOUR, NOON + 4 * HOUR)
    assert len(scan.files) == 2 and scan.legacy == 0
    assert all("/hour=14/" in p or "/hour=15/" in p for p in scan.files)
    assert df["requested_at"].min() >= NOON + 2 * HOUR
    with pytest.raises(PartitionNotFound):
        scan_log(lake, NOON + 7 * HOUR, NOON + 8 * HOUR)


def test_the_day_only_layout_of_before_the_upgrade_is_still_read(lake) -> None:
    # Last week's log: files straight in date=…/, a whole day's hours mixed in each.
    for k in range(3):
        lake.append(rows(10 * k, 10, NOON + k * HOUR, step_s=60.0), SERVING_LOG, DAY)
    flushes(lake, NOON + 3 * HOUR, files=2, first=100)  # the upgraded writer, same day
    window = (NOON + HOUR, NOON + 4 * HOUR)
    df, scan = scan_log(lake, *window)
    assert scan.legacy == 3 and len(scan.files) == 5
    assert sorted(df["request_id"]) == sorted(
        [f"req-{i}" for i in range(10, 30)] + [f"req-{i}" for i in range(100, 110)]
    )
    assert df["requested_at"].min() >= window[0]
    assert len(read_serving_log(lake, DAY, DAY)) == 40
    assert len(read_served(lake, *window)) == 30
    assert len(read_window(lake, *window)) == 30
    with pytest.raises(NoServingTraffic):
        read_window(lake, NOON - 2 * HOUR, NOON - HOUR)  # the day's files, no row in the window


def test_files_that_disagree_on_a_column_type_read_together(lake) -> None:
    lake.append(rows(0, 2, NOON, weather="rain"), SERVING_LOG, DAY, 12)
    lake.append(rows(2, 2, NOON + dt.timedelta(minutes=1), weather=None), SERVING_LOG, DAY, 12)
    lake.append(rows(4, 1, NOON + dt.timedelta(minutes=2), new_feature=1.0), SERVING_LOG, DAY, 12)
    assert compact_hour(lake, DAY, 12).rows == 5
    df = scan_log(lake, NOON, NOON + HOUR)[0]
    assert df["f_weather"].tolist()[:2] == ["rain", "rain"]
    assert df["f_weather"].iloc[2:].isna().all()
    assert df["f_new_feature"].isna().sum() == 4


def test_unify_picks_a_type_every_file_casts_to() -> None:
    import pyarrow as pa

    a = pa.schema([("x", pa.int64()), ("f", pa.string()), ("n", pa.null())])
    b = pa.schema([("x", pa.float64()), ("f", pa.float64()), ("g", pa.bool_()), ("n", pa.null())])
    got = unify([a, b])
    assert got.names == ["x", "f", "n", "g"]
    assert [got.field(c).type for c in got.names] == [
        pa.float64(),
        pa.string(),
        pa.null(),
        pa.bool_(),
    ]


def test_plan_merges_the_live_files_and_deletes_what_a_compacted_file_holds() -> None:
    records = {
        "compact-b.parquet": ["compact-a.parquet", "part-3"],
        "compact-a.parquet": ["part-1"],
    }
    assert superseded(records) == {"compact-a.parquet", "part-3", "part-1"}
    names_ = ["compact-a.parquet", "compact-b.parquet", "part-1", "part-3", "part-4"]
    merge, leftovers = plan_hour(names_, records, min_files=2)
    assert merge == ["compact-b.parquet", "part-4"]
    assert leftovers == ["compact-a.parquet", "part-1", "part-3"]
    assert plan_hour(["compact-b.parquet", "part-3"], records, min_files=2) == ([], ["part-3"])
    assert plan_hour(names_, records, min_files=3)[0] == []


def test_hours_before_leaves_the_hour_under_way() -> None:
    end = NOON + dt.timedelta(minutes=20)
    assert hours_before(end, 3) == [(DAY, 9), (DAY, 10), (DAY, 11)]
    assert hours_between(NOON - dt.timedelta(minutes=1), NOON + HOUR) == [(DAY, 11), (DAY, 12)]
    midnight = dt.datetime(2026, 11, 21, tzinfo=dt.UTC)
    assert hours_before(midnight, 2) == [(DAY, 22), (DAY, 23)]


def test_compact_before_compacts_the_lookback_and_the_cli_a_backlog(lake, monkeypatch) -> None:
    for h in range(4):
        flushes(lake, NOON + h * HOUR, files=3)
    done = compact_before(lake, NOON + 3 * HOUR + dt.timedelta(minutes=5), lookback_hours=2)
    assert [(c.hour, c.inputs) for c in done] == [(13, 3), (14, 3)]
    assert len(names(lake, NOON)) == 3 and len(names(lake, NOON + 3 * HOUR)) == 3

    from relay.cli import app

    monkeypatch.setenv("RELAY_HOME", str(lake.settings.home))
    reset_settings()
    try:
        res = CliRunner().invoke(
            app, ["serve", "compact", "--until", "2026-11-20T16", "--hours", "4"]
        )
    finally:
        reset_settings()
    assert res.exit_code == 0, res.output
    assert "2026-11-20 12h  3 files -> 15 rows" in res.output
    assert "2026-11-20 13h  nothing to merge" in res.output
    assert all(len(names(lake, NOON + h * HOUR)) == 1 for h in range(4))


def test_a_batch_is_one_file_per_hour_it_spans_with_its_rows_in_order(lake) -> None:
    from relay.serve.log_child import append_rows

    within = [to_row(r, NOON) for r in rows(0, 30, NOON, step_s=60).to_dict("records")]
    assert append_rows(lake, within) == (30, [], None)
    assert len(names(lake, NOON)) == 1
    assert ids(lake, NOON, NOON + HOUR) == sorted(f"req-{i}" for i in range(30))
    across = [
        to_row(r, NOON)
        for r in rows(30, 4, NOON + 2 * HOUR - dt.timedelta(seconds=2)).to_dict("records")
    ]
    assert append_rows(lake, across) == (4, [], None)
    late = scan_log(lake, NOON + 2 * HOUR, NOON + 3 * HOUR)[0]["request_id"].tolist()
    assert len(names(lake, NOON + HOUR)) == 1 and late == ["req-32", "req-33"]
