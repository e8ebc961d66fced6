"""Where Feast's registry lives, and what an apply removes from it.

The registry is a file on one node's disk only in the local profile. In prod it is Feast's
``sql`` registry in PostgreSQL (every Airflow worker, Ray job and Serve replica reads the same
one), or a file on S3 (``s3://bucket/key``): :attr:`relay.settings.FeastSettings.registry`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relay.settings import FeastSettings

if TYPE_CHECKING:
    from feast import FeatureStore

# SQLAlchemy URL schemes of the databases Feast's sql registry is used with.
_SQL_SCHEMES = ("postgresql", "mysql", "sqlite")


def is_sql(location: str) -> bool:
    """Whether a registry location is a database URL (Feast's ``sql`` registry)."""
    scheme = location.partition("://")[0] if "://" in location else ""
    return scheme.split("+")[0] in _SQL_SCHEMES


def registry_config(f: FeastSettings) -> dict[str, Any]:
    """The ``registry`` entry of Feast's RepoConfig for the configured location.

    A local file's folder is created here (Feast does not); the S3 registry reads its endpoint
    from ``AWS_ENDPOINT_URL`` (boto3's standard variable) or ``FEAST_S3_ENDPOINT_URL``.
    """
    location = f.registry_location()
    if is_sql(location):
        # "verify"-free auto mode: the first apply creates Feast's tables in the database.
        return {"registry_type": "sql", "path": location, "schema_mode": "auto"}
    if "://" not in location:
        Path(location).parent.mkdir(parents=True, exist_ok=True)
    return {"registry_type": "file", "path": location}


def removed_objects(store: FeatureStore, objects: Iterable[Any]) -> list[Any]:
    """The objects registered in the store's project that ``objects`` no longer define:
    what an apply of ``objects`` deletes (``feast apply`` does the same with its plan).

    Data sources that a kept view still reads count as defined, even when ``objects`` does
    not list them itself.
    """
    from feast import Entity, FeatureService
    from feast.data_source import DataSource
    from feast.feature_view import FeatureView
    from feast.on_demand_feature_view import OnDemandFeatureView

    objects = list(objects)
    kept_sources = {o.name for o in objects if isinstance(o, DataSource)}
    for o in objects:
        if isinstance(o, FeatureView) and o.batch_source is not None:
            kept_sources.add(o.batch_source.name)
            if o.stream_source is not None:
                kept_sources.add(o.stream_source.name)
        if isinstance(o, OnDemandFeatureView):
            kept_sources.update(o.source_request_sources)
    kept = {
        "entity": {o.name for o in objects if isinstance(o, Entity)},
        "view": {o.name for o in objects if isinstance(o, FeatureView | OnDemandFeatureView)},
        "service": {o.name for o in objects if isinstance(o, FeatureService)},
        "source": kept_sources,
    }
    registered: list[tuple[str, Any]] = [
        *(("entity", o) for o in store.list_entities()),
        *(("view", o) for o in store.list_feature_views()),
        *(("view", o) for o in store.list_stream_feature_views()),
        *(("view", o) for o in store.list_on_demand_feature_views()),
        *(("service", o) for o in store.list_feature_services()),
        *(("source", o) for o in store.list_data_sources()),
    ]
    gone: dict[tuple[str, str], Any] = {}
    for kind, o in registered:
        if o.name not in kept[kind]:
            gone.setdefault((kind, o.name), o)  # a view two listings name is deleted once
    return list(gone.values())
