"""Feast's DuckDB offline store over a lake on S3 (moto's server over HTTP), with no internet:
the httpfs extension comes from its wheel, the keys from ``AWS_*``."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import boto3
import pandas as pd
import pytest

from relay.data.lake import VALIDATED_ORDERS, Lake
from relay.features.duckdb_s3 import httpfs_extension, secret_sql
from relay.settings import S3Settings, get_settings


def test_the_secret_takes_the_endpoint_from_settings_and_the_keys_from_the_environment():
    sql = secret_sql(
        S3Settings(endpoint_url="http://127.0.0.1:9000", region="eu-west-1"),
        {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "it's"},
    )
    assert "ENDPOINT '127.0.0.1:9000'" in sql and "USE_SSL false" in sql
    assert "URL_STYLE 'path'" in sql and "REGION 'eu-west-1'" in sql
    assert "KEY_ID 'id'" in sql and "SECRET 'it''s'" in sql
    aws = secret_sql(S3Settings(), {})
    assert "ENDPOINT" not in aws and "KEY_ID" not in aws


def test_the_extension_matches_the_installed_duckdb():
    import duckdb

    assert f"v{duckdb.__version__}" in str(httpfs_extension())


@pytest.fixture()
def s3_lake_settings(s3_endpoint, monkeypatch, lake_days):
    """The test lake copied to a moto bucket; Feast settings reading it from there."""
    from tests.integration.conftest import _feast_settings

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    bucket = "relay-feast-lake"
    client.create_bucket(Bucket=bucket)
    root = Path(str(get_settings().lake.uri))
    for f in root.rglob("*.parquet"):
        client.upload_file(str(f), bucket, f"eta/{f.relative_to(root).as_posix()}")
    s = _feast_settings("sqlite")
    s.lake.uri = f"s3://{bucket}/eta"
    s.s3.endpoint_url = s3_endpoint
    return s


def test_training_rows_read_from_s3_equal_those_read_from_disk(s3_lake_settings, lake_days):
    from relay.features.store import apply, materialize, online_features, training_frame

    local = _local(s3_lake_settings)
    apply(local)
    apply(s3_lake_settings)
    orders = Lake(local).read(VALIDATED_ORDERS, lake_days[-1]).head(300)
    from_s3 = training_frame(orders, s3_lake_settings)
    from_disk = training_frame(orders, local)
    assert len(from_s3) == 300 and from_s3.notna().any(axis=None)
    pd.testing.assert_frame_equal(from_s3, from_disk)

    # Materialization reads the lake through the same connection: the online values land.
    end = dt.datetime.combine(lake_days[-1] + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    materialize(end, settings=s3_lake_settings)
    got = online_features(orders.head(20), settings=s3_lake_settings)
    assert (
        got.drop(columns=["distance_km", "hour", "weekday"], errors="ignore").notna().any(axis=None)
    )


def _local(s):
    """The same Feast project reading the lake on disk (a registry of its own)."""
    local = s.model_copy(deep=True)
    local.lake.uri = get_settings().lake.uri
    local.s3.endpoint_url = None
    local.feast.project = s.feast.project + "_disk"
    local.feast.registry_path = s.feast.registry_path.with_name(
        s.feast.registry_path.stem + "_disk.db"
    )
    local.feast.sqlite_path = s.feast.sqlite_path.with_name(s.feast.sqlite_path.stem + "_disk.db")
    return local


def test_only_offline_work_gives_duckdb_the_s3_secret(monkeypatch):
    """Serving replicas and the events API open the store for online reads and pushes: on an
    S3 lake they must not load httpfs nor hold the lake's keys in DuckDB; apply, materialize
    and training frames do."""
    from relay.features import store
    from tests.integration.conftest import _feast_settings

    s = _feast_settings("sqlite")
    s.lake.uri = "s3://relay-feast-lake/eta"
    enabled: list[object] = []
    monkeypatch.setattr(store, "enable_s3", enabled.append)
    store.get_store(s)  # what OnlineFeatures and the event sink's pusher open
    assert enabled == []
    store.get_store(s, offline=True)
    assert enabled == [s.s3]
