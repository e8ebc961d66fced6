"""The lake over S3 (moto's server over HTTP), as with MinIO or AWS."""

import datetime as dt

import boto3
import pytest

from relay.data.generate import generate_orders
from relay.data.lake import RAW_ORDERS, Lake
from relay.errors import PartitionNotFound
from relay.settings import Settings


@pytest.fixture()
def s3_settings(s3_endpoint, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(
        Bucket="relay-lake"
    )
    return Settings(
        home=tmp_path, lake={"uri": "s3://relay-lake/eta"}, s3={"endpoint_url": s3_endpoint}
    )


def test_partitions_round_trip_over_s3(s3_settings, s3_endpoint):
    lake = Lake(s3_settings)
    day = dt.date(2026, 11, 20)
    df = generate_orders(day, 2000)
    uri = lake.write(df, RAW_ORDERS, day)
    assert uri == "s3://relay-lake/eta/raw/orders/date=2026-11-20/part-0.parquet"
    back = lake.read(RAW_ORDERS, day)
    assert back["order_id"].tolist() == df["order_id"].tolist()
    assert back["created_at"].dt.tz is not None
    assert lake.partitions(RAW_ORDERS) == [day]
    keys = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").list_objects_v2(
        Bucket="relay-lake"
    )["Contents"]
    assert [k["Key"] for k in keys] == ["eta/raw/orders/date=2026-11-20/part-0.parquet"]
    with pytest.raises(PartitionNotFound, match="relay generate"):
        lake.read(RAW_ORDERS, day + dt.timedelta(days=1))
