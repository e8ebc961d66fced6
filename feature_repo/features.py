"""Feature views: courier, merchant and zone snapshots, their live views (pushed by order
events), and the order's own request features.

Every view's schema is its features in the catalog (:mod:`relay.features.catalog`); only the
on-demand view's computation is written here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import timedelta
from types import FunctionType
from typing import Any

from feast import Entity, FeatureView, Field, FileSource, PushSource, RequestSource
from feast.on_demand_feature_view import OnDemandFeatureView, on_demand_feature_view
from feast.types import Float64, Int64, String

from relay.features.catalog import CATALOG, VIEWS, Feature, view_features

# A snapshot older than two days says nothing about now: Feast returns null and the model
# falls back to its defaults.
TTL = timedelta(days=2)
DTYPES = {"int64": Int64, "float64": Float64, "string": String}


def fields(view: str, catalog: Iterable[Feature] = CATALOG) -> list[Field]:
    """The Feast schema of ``view``: its features in ``catalog``, in catalog order."""
    return [Field(name=f.name, dtype=DTYPES[f.dtype]) for f in view_features(view, catalog)]


def feature_views(
    entities: Mapping[str, Entity],
    sources: Mapping[str, FileSource | PushSource],
    request: RequestSource,
    catalog: Iterable[Feature] = CATALOG,
) -> list[FeatureView | OnDemandFeatureView]:
    """Every view of :data:`~relay.features.catalog.VIEWS`, in that order.

    Args:
        entities: Join key -> entity (:func:`feature_repo.entities.entities`).
        sources: View name -> its Parquet source (:func:`feature_repo.data_sources.file_sources`).
        request: The request source the on-demand view reads.
        catalog: The features whose ``source`` names a view make its schema.
    """
    catalog = tuple(catalog)
    views: list[FeatureView | OnDemandFeatureView] = []
    for v in VIEWS:
        if v.entity is None:
            # Python mode: pandas mode costs ~10 ms per online read here, python mode well
            # under 1 ms.
            odfv = on_demand_feature_view(
                name=v.name, sources=[request], schema=fields(v.name, catalog), mode="python"
            )
            # A fresh function each build: Feast's decorator moves the one it gets to
            # `__main__` (for dill), after which its source cannot be found again.
            udf = FunctionType(order_features.__code__, order_features.__globals__, v.name)
            views.append(odfv(udf))
            continue
        views.append(
            FeatureView(
                name=v.name,
                entities=[entities[v.entity]],
                ttl=TTL,
                schema=fields(v.name, catalog),
                source=sources[v.name],
                tags={"owner": "eta", "layer": "features"},
            )
        )
    return views


def order_features(inputs: dict[str, Any]) -> dict[str, Any]:
    """Request-time features of the order: computed the same way online and offline.

    Self-contained: Feast runs the function from its source, without this module's globals.
    """
    rush_hours = (11, 12, 13, 17, 18, 19, 20)
    hours = [int(h) for h in inputs["hour"]]
    weekdays = [int(d) for d in inputs["weekday"]]
    return {
        "order_distance_km": [float(x) for x in inputs["distance_km"]],
        "order_hour": hours,
        "order_weekday": weekdays,
        "order_is_weekend": [int(d >= 5) for d in weekdays],
        "order_is_rush_hour": [int(h in rush_hours) for h in hours],
    }
