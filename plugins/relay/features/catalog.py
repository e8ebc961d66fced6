"""The feature catalog: every model input declared once.

A :class:`Feature` says where an input comes from (a Feast feature view keyed by an entity, the
entity id itself, or the request), its type, how the model reads it, what an unknown entity
gets, and whether and how drift watches it. Everything else derives from :data:`CATALOG`: the
Feast fields (``feature_repo/``), the preprocessing lists (:mod:`relay.model.preprocess`), drift's
monitored and categorical sets (:mod:`relay.monitor.report`), the per-feature PSI thresholds'
defaults (:class:`relay.settings.MonitoringSettings`) and the columns a holdout must have.

Adding a feature: compute it (:mod:`relay.features.tables` for entity views, the on-demand view
in ``feature_repo/features.py`` for request features) and declare it here. Nothing in this module
imports Feast or touches disk, so anything may import it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from relay.data.schema import LABEL

Dtype = Literal["int64", "float64", "string"]
Role = Literal["numeric", "vocab", "hashed", "distance", "weather"]
"""How the model reads an input: a filled and scaled number, an embedding over a vocabulary, an
embedding over hashed ids, the distance of the pace head, the ordered weather level."""

DEFAULTS: dict[Role, str] = {
    "numeric": "training mean, with a missing flag",
    "vocab": "the unknown index (0)",
    "hashed": "the hash bucket of the unknown id",
    "distance": "0 km",
    "weather": "'cloudy'",
}
"""What the model uses for an entity the online store does not know (``preprocess``)."""


@dataclass(frozen=True)
class View:
    """A Feast feature view: snapshots of one entity (``entity``), or the request.

    A ``live`` view is updated by every order event (:mod:`relay.features.live`): the order
    service's events push its rows online through a Feast ``PushSource``, and the same
    computation over landed orders gives its offline rows. The others are hourly snapshots
    (:mod:`relay.features.tables`), materialized.
    """

    name: str
    entity: str | None
    description: str
    live: bool = False

    @property
    def push_source(self) -> str:
        """The name of a live view's Feast ``PushSource``."""
        return f"{self.name}_push"


@dataclass(frozen=True)
class Feature:
    """One model input.

    Attributes:
        name: Column name everywhere: feature table, Feast field, training set, serving log.
        source: The Feast feature view it is served from, or ``"entity"`` for a join key that
            the request carries.
        dtype: Its Feast/Parquet type.
        role: How the model reads it (:data:`Role`); None for a feature served but not modelled.
        description: What it means, for the README and Feast.
        monitored: Whether drift monitoring judges it.
        psi_threshold: Its own PSI threshold (default: ``RELAY_MONITORING__PSI_THRESHOLD``),
            judged alone, without Evidently's test. Declare one only with its reason in a
            comment, from what the feature measures (e.g. a count whose scale makes PSI
            jumpy), never fitted to the simulator's numbers: a feature that moves every
            ordinary day is weighed by its importance in the model instead.
    """

    name: str
    source: str
    dtype: Dtype
    role: Role | None
    description: str
    monitored: bool = True
    psi_threshold: float | None = None

    @property
    def categorical(self) -> bool:
        """Compared as categories by drift (strings: ids, zone, weather), else as numbers."""
        return self.dtype == "string"

    @property
    def default(self) -> str | None:
        """What the model uses when the value is missing (an unknown entity)."""
        return DEFAULTS[self.role] if self.role else None


VIEWS: tuple[View, ...] = (
    View("courier_stats", "courier_id", "Hourly courier snapshots"),
    View("merchant_stats", "merchant_id", "Hourly merchant snapshots"),
    View("zone_stats", "zone_id", "Hourly zone snapshots"),
    View("courier_live", "courier_id", "The courier's load, updated by every order", live=True),
    View(
        "merchant_live",
        "merchant_id",
        "The merchant's order rate, updated by every order",
        live=True,
    ),
    View(
        "zone_live", "zone_id", "The zone's demand and weather, updated by every order", live=True
    ),
    View("order_features", None, "The order's own features, computed from the request"),
)

CATALOG: tuple[Feature, ...] = (
    Feature("courier_deliveries_24h", "courier_stats", "int64", "numeric",
            "Deliveries the courier finished in the 24 h before the hour"),
    Feature("courier_mean_delivery_24h", "courier_stats", "float64", "numeric",
            "The courier's mean delivery minutes over those 24 h"),
    Feature("courier_orders_1h", "courier_live", "int64", "numeric",
            "Orders the courier took in the hour up to the latest one, that one included (load)"),
    Feature("merchant_mean_prep_24h", "merchant_stats", "float64", "numeric",
            "The merchant's mean preparation minutes over 24 h"),
    Feature("merchant_orders_1h", "merchant_live", "int64", "numeric",
            "Orders the merchant received in the hour up to the latest one, that one included"),
    Feature("merchant_orders_24h", "merchant_stats", "int64", "numeric",
            "Orders the merchant received in 24 h"),
    Feature("zone_orders_1h", "zone_live", "int64", "numeric",
            "Orders created in the zone in the hour up to the latest one, that one included"),
    # Follows the weather, so it moves on ordinary days too; like the weather it is judged by
    # its weight in the model, not by a threshold of its own.
    Feature("zone_mean_delivery_24h", "zone_stats", "float64", "numeric",
            "Mean delivery minutes in the zone over 24 h"),
    # Weather persists for a day or more over the city, so a 24-hour window holds one spell of
    # it and its PSI against a multi-day training set is high on many ordinary days. No PSI
    # threshold is fitted to the simulator's weather: a drifted weather counts in the
    # importance-weighted share by the model's own reliance on it, and still needs the
    # predictions or the accuracy to confirm it, over consecutive windows.
    Feature("zone_weather", "zone_live", "string", "weather",
            "The zone's latest weather report (clear, cloudy, rain, storm)"),
    Feature("zone_id", "entity", "string", "vocab", "A delivery zone"),
    # Thousands of ids, hashed by the model; their volume shows in the *_orders_* features.
    Feature("courier_id", "entity", "string", "hashed", "A courier on the platform",
            monitored=False),
    Feature("merchant_id", "entity", "string", "hashed",
            "A restaurant or shop that prepares orders", monitored=False),
    Feature("order_distance_km", "order_features", "float64", "distance",
            "Straight-line distance from merchant to customer"),
    Feature("order_hour", "order_features", "int64", "vocab", "Hour of day the order was created"),
    # A 24-hour window holds one or two weekdays: it always "drifts" from a multi-day training set.
    Feature("order_weekday", "order_features", "int64", "vocab", "Day of week (0 = Monday)",
            monitored=False),
    Feature("order_is_weekend", "order_features", "int64", None, "Saturday or Sunday"),
    Feature("order_is_rush_hour", "order_features", "int64", None, "Lunch or dinner peak hour"),
)  # fmt: skip


def names(features: Iterable[Feature]) -> tuple[str, ...]:
    """The names of ``features``, in catalog order."""
    return tuple(f.name for f in features)


def with_role(role: Role, catalog: Iterable[Feature] = CATALOG) -> tuple[str, ...]:
    """The model inputs read as ``role``, in catalog order (the preprocessor's column order)."""
    return names(f for f in catalog if f.role == role)


def live_views() -> tuple[View, ...]:
    """The views order events update (each with a Feast ``PushSource``)."""
    return tuple(v for v in VIEWS if v.live)


def view_features(view: str, catalog: Iterable[Feature] = CATALOG) -> tuple[Feature, ...]:
    """The features a Feast view serves (its schema), in catalog order."""
    return tuple(f for f in catalog if f.source == view)


def model_inputs(catalog: Iterable[Feature] = CATALOG) -> tuple[str, ...]:
    """Every column the model reads."""
    return names(f for f in catalog if f.role is not None)


def monitored(catalog: Iterable[Feature] = CATALOG) -> tuple[str, ...]:
    """The model inputs drift monitoring judges by default."""
    return names(f for f in catalog if f.role is not None and f.monitored)


def categorical(catalog: Iterable[Feature] = CATALOG) -> frozenset[str]:
    """Model inputs drift compares as categories."""
    return frozenset(f.name for f in catalog if f.role is not None and f.categorical)


def psi_thresholds(catalog: Iterable[Feature] = CATALOG) -> dict[str, float]:
    """The features with a PSI threshold of their own (the settings' default)."""
    return {f.name: f.psi_threshold for f in catalog if f.psi_threshold is not None}


NUMERIC = with_role("numeric")
VOCAB = with_role("vocab")
HASHED = with_role("hashed")
(DISTANCE,) = with_role("distance")
(WEATHER,) = with_role("weather")
__all__ = [
    "CATALOG",
    "DISTANCE",
    "HASHED",
    "LABEL",
    "NUMERIC",
    "VIEWS",
    "VOCAB",
    "WEATHER",
    "Feature",
    "View",
]
