"""Feast's registry off one node's disk: in PostgreSQL (the prod profile's default) or on S3
(moto's server), and an apply that deletes what the catalog no longer defines."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import boto3
import pytest

from relay.features.store import apply, get_store, load_definitions
from relay.settings import Settings, get_settings

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "postgres"}


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A throwaway database on the machine's PostgreSQL (trust auth), dropped afterwards."""
    import psycopg

    db = f"relay_feast_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(**PG, autocommit=True) as admin:  # type: ignore[arg-type]
        admin.execute(f'CREATE DATABASE "{db}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{db}"
    finally:
        with psycopg.connect(**PG, autocommit=True) as admin:  # type: ignore[arg-type]
            admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


@pytest.fixture
def s3_registry(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)  # Feast's S3 registry reads it
    bucket = f"relay-feast-{uuid.uuid4().hex[:6]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(
        Bucket=bucket
    )
    return f"s3://{bucket}/feast/registry.pb"


def _settings(tmp_path: Any, registry: str | None) -> Settings:
    s = get_settings().model_copy(deep=True)
    s.feast.project = f"relay_reg_{uuid.uuid4().hex[:6]}"
    s.feast.registry = registry
    s.feast.registry_path = tmp_path / "registry.db"
    s.feast.sqlite_path = tmp_path / "online.db"
    s.feast.online_store = "sqlite"
    return s


def _retired_view(objects: list[Any]) -> Any:
    """A view the catalog does not define, over one of its entities and sources."""
    from feast import FeatureView, Field
    from feast.types import Float64

    view = next(o for o in objects if getattr(o, "name", "") == "courier_stats")
    return FeatureView(
        name="retired_stats",
        entities=[next(o for o in objects if o.name == view.entities[0])],
        ttl=timedelta(days=1),
        schema=[Field(name="courier_mean_delivery_24h", dtype=Float64)],
        source=view.batch_source,
    )


@pytest.mark.parametrize("kind", ["sql", "s3", "file"])
def test_apply_deletes_a_view_the_catalog_no_longer_defines(
    kind: str, request: pytest.FixtureRequest, tmp_path: Any, lake_days: Any
) -> None:
    registry = {"sql": "pg_url", "s3": "s3_registry"}.get(kind)
    s = _settings(tmp_path, request.getfixturevalue(registry) if registry else None)
    defined = load_definitions(s)
    applied = apply(s, [*defined, _retired_view(defined)])
    assert "retired_stats" in applied
    # A fresh store (another process would build the same) reads the shared registry.
    assert get_store(s).get_feature_view("retired_stats").name == "retired_stats"

    apply(s)  # the catalog again, without the retired view

    store = get_store(s)
    views = {v.name for v in store.list_feature_views()}
    assert "retired_stats" not in views
    assert {"courier_stats", "zone_live"} <= views
    assert {e.name for e in store.list_entities()} >= {"courier", "merchant", "zone"}
    assert store.get_feature_service(s.feast.feature_service).name == s.feast.feature_service
    if kind == "sql":  # Feast's tables are in the database, not in a file
        import psycopg

        assert not (tmp_path / "registry.db").exists()
        with psycopg.connect(s.feast.registry_location().replace("+psycopg", "")) as db:
            rows = db.execute(
                "SELECT feature_view_name FROM feature_views WHERE project_id = %s",
                (s.feast.project,),
            ).fetchall()
        assert "retired_stats" not in {r[0] for r in rows} and "courier_stats" in {
            r[0] for r in rows
        }
    if kind == "s3":
        bucket, _, key = s.feast.registry_location().removeprefix("s3://").partition("/")
        head = boto3.client("s3", region_name="us-east-1").head_object(Bucket=bucket, Key=key)
        assert head["ContentLength"] > 0
        assert not (tmp_path / "registry.db").exists()
