"""Versioned feature services: a model version names the service it was trained on."""

from feast import FeatureService
from features import courier_stats, merchant_stats, order_features, zone_stats

eta_v1 = FeatureService(
    name="eta_v1",
    features=[courier_stats, merchant_stats, zone_stats, order_features],
    description="Features of the first ETA model",
    tags={"owner": "eta"},
)
