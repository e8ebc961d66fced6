"""Appending to partitions and the serving log over S3 (moto's server over HTTP)."""

import datetime as dt
import logging
import uuid

import boto3
import pandas as pd
import pytest

from relay.data.lake import SERVING_LOG, Lake
from relay.serve.log import ServingLogWriter
from relay.serve.log_read import read_serving_log
from relay.settings import Settings

DAY = dt.date(2026, 11, 20)

pytestmark = pytest.mark.integration


@pytest.fixture()
def s3(s3_endpoint, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    bucket = f"relay-log-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    settings = Settings(
        home=tmp_path, lake={"uri": f"s3://{bucket}/lake"}, s3={"endpoint_url": s3_endpoint}
    )
    return Lake(settings), client, bucket


def test_append_and_read_all_over_s3(s3, caplog):
    lake, client, bucket = s3
    lake.write(pd.DataFrame({"x": [0]}), SERVING_LOG, DAY)
    # moto's server logs each HTTP request: an append is one PUT, not a multipart upload.
    with caplog.at_level(logging.INFO, logger="werkzeug"):
        first = lake.append(pd.DataFrame({"x": [1, 2]}), SERVING_LOG, DAY)
    name = first.rsplit("/", 1)[-1]
    requests = [r.getMessage() for r in caplog.records if name in r.getMessage()]
    assert len(requests) == 1, requests
    assert f"PUT /{bucket}/lake/serving/predictions/date=2026-11-20/{name} " in requests[0]
    second = lake.append(pd.DataFrame({"x": [3], "y": ["c"]}), SERVING_LOG, DAY)
    prefix = f"s3://{bucket}/lake/serving/predictions/date=2026-11-20/part-"
    assert first.startswith(prefix) and second.startswith(prefix)
    assert first != second

    keys = sorted(k["Key"] for k in client.list_objects_v2(Bucket=bucket)["Contents"])
    assert len(keys) == 3
    assert keys[0] == "lake/serving/predictions/date=2026-11-20/part-0.parquet"
    df = lake.read_all(SERVING_LOG, DAY, DAY)
    assert sorted(df["x"]) == [0, 1, 2, 3]
    assert df["y"].notna().sum() == 1
    assert lake.read(SERVING_LOG, DAY)["x"].tolist() == [0]
    assert lake.partitions(SERVING_LOG) == [DAY]


@pytest.mark.parametrize("child_process", [False, True], ids=["thread", "process"])
def test_serving_log_writer_over_s3(s3, child_process):
    """Written from the replica's thread, or from its child process (which gets the lake's
    settings through its pipe and the credentials from the environment, as the replica)."""
    lake, _, _ = s3
    at = dt.datetime(2026, 11, 20, 23, 59, 59, tzinfo=dt.UTC)
    records = [
        {
            "request_id": f"r{i}",
            "order_id": f"O{i}",
            "requested_at": at + dt.timedelta(seconds=i),
            "model_version": "v1",
            "eta_minutes": 20.0 + i,
            "features": {"order_distance_km": 1.0 + i},
        }
        for i in range(4)
    ]
    with ServingLogWriter(
        lake, max_batch=1_000_000, max_delay_s=3600.0, child_process=child_process
    ) as w:
        w.log(records[:2])
        w.flush()
        w.log(records[2:])
    assert w.written == 4
    df = read_serving_log(lake, DAY, DAY + dt.timedelta(days=1))
    assert df["request_id"].tolist() == ["r0", "r1", "r2", "r3"]
    assert df["f_order_distance_km"].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert lake.partitions(SERVING_LOG) == [DAY, DAY + dt.timedelta(days=1)]


def test_hourly_log_compacts_and_reads_over_s3(s3, monkeypatch):
    """Hour partitions, compaction interrupted before its deletes, and a window read, on S3."""
    from relay.serve import log_compact
    from relay.serve.log_store import scan_log

    lake, client, bucket = s3
    at = dt.datetime(2026, 11, 20, 13, 0, tzinfo=dt.UTC)
    with ServingLogWriter(lake, max_batch=1_000_000, max_delay_s=3600.0) as w:
        for k in range(6):  # six flushes in 13h, one in 14h
            w.log([_record(f"r{k}", at + dt.timedelta(minutes=10 * k))])
            w.flush()
        w.log([_record("late", at + dt.timedelta(hours=1, minutes=1))])
    hour = "lake/serving/predictions/date=2026-11-20/hour=13/"
    listed = client.list_objects_v2(Bucket=bucket, Prefix=hour)["Contents"]
    assert len(listed) == 6

    monkeypatch.setattr(log_compact, "_delete", lambda *a: 0)  # killed before deleting
    done = log_compact.compact_hour(lake, DAY, 13)
    assert done.inputs == 6 and (done.uri or "").startswith(f"s3://{bucket}/{hour}compact-")
    window = (at, at + dt.timedelta(hours=2))
    df, scan = scan_log(lake, *window)
    assert sorted(df["request_id"]) == sorted([f"r{k}" for k in range(6)] + ["late"])
    assert (len(scan.files), len(scan.skipped)) == (2, 6)

    monkeypatch.undo()
    assert log_compact.compact_hour(lake, DAY, 13).removed == 6
    objects = client.list_objects_v2(Bucket=bucket, Prefix=hour)["Contents"]
    keys = [o["Key"] for o in objects if o["Key"] != hour]  # pyarrow leaves a folder marker
    assert len(keys) == 1 and keys[0].startswith(f"{hour}compact-")
    df, scan = scan_log(lake, *window)
    assert len(df) == 7 and scan.opened == 2


def _record(request_id: str, at: dt.datetime) -> dict:
    return {
        "request_id": request_id,
        "order_id": f"O-{request_id}",
        "requested_at": at,
        "model_version": "v1",
        "eta_minutes": 20.0,
        "features": {"order_distance_km": 1.0},
    }
