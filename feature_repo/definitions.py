"""Every Feast object of the repo, built from the catalog and the lake paths Relay passes.

``relay.features.store.apply`` calls :func:`definitions` (what ``feast apply`` would collect).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from relay.features.catalog import CATALOG, Feature

from .data_sources import file_sources, order_request
from .entities import entities
from .feature_services import feature_services
from .features import feature_views


def definitions(
    paths: Mapping[str, str], s3_endpoint: str | None = None, catalog: Iterable[Feature] = CATALOG
) -> list[Any]:
    """Entities, sources, views and services, ready for ``FeatureStore.apply``.

    Args:
        paths: View name -> glob over its feature table's Parquet files in the lake.
        s3_endpoint: The S3 endpoint of an ``s3://`` lake (``RELAY_S3__ENDPOINT_URL``).
        catalog: The features the views serve.
    """
    catalog = tuple(catalog)
    keyed = entities(catalog)
    sources = file_sources(paths, s3_endpoint)
    request = order_request()
    views = feature_views(keyed, sources, request, catalog)
    return [*keyed.values(), *sources.values(), request, *views, *feature_services(views)]
