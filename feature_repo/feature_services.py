"""Versioned feature services: a model version names the service it was trained on."""

from __future__ import annotations

from collections.abc import Sequence

from feast import FeatureService, FeatureView
from feast.on_demand_feature_view import OnDemandFeatureView


def feature_services(views: Sequence[FeatureView | OnDemandFeatureView]) -> list[FeatureService]:
    """Every service a registered model version may name (``lineage.feature_service``).

    A service is never changed once a model was trained on it: a new feature set is a new
    service (``eta_v2``), so each version keeps reading what it was trained on.
    """
    return [
        FeatureService(
            name="eta_v1",
            features=list(views),
            description="Features of the first ETA model",
            tags={"owner": "eta"},
        )
    ]
