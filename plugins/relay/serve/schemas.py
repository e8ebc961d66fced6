"""Request and response models of the ETA endpoint (they give the OpenAPI schema and the
4xx messages that name the field at fault)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MAX_ORDERS_PER_REQUEST = 256


class Order(BaseModel):
    """One order as the app knows it at checkout: ids and request-time fields only."""

    model_config = ConfigDict(extra="forbid")

    order_id: str = Field(min_length=1, max_length=64, description="Unique order id")
    courier_id: str = Field(min_length=1, max_length=64, description="Assigned courier")
    merchant_id: str = Field(min_length=1, max_length=64, description="Merchant preparing it")
    zone_id: str = Field(min_length=1, max_length=32, description="Delivery zone")
    distance_km: float = Field(gt=0, le=100, description="Merchant to customer, km")
    created_at: dt.datetime | None = Field(
        None, description="Order time (UTC); default: now. Gives hour and weekday."
    )


class OrderBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    orders: list[Order] = Field(
        min_length=1, max_length=MAX_ORDERS_PER_REQUEST, description="Orders to predict"
    )


class Prediction(BaseModel):
    order_id: str
    eta_minutes: float = Field(description="Predicted minutes from order to delivery")
    model_version: str = Field(description="The model version that answered")
    missing_features: list[str] = Field(
        default_factory=list,
        description="Features unknown to the online store (defaults were used)",
    )


class ETAResponse(BaseModel):
    predictions: list[Prediction]
    latency_ms: float


class ServingVersion(BaseModel):
    version: str
    role: str = Field(description="stable or candidate")
    traffic_share: float


class ModelsResponse(BaseModel):
    versions: list[ServingVersion]
    generation: int = Field(description="Traffic configuration generation this router applies")


def feature_row(order: Order, now: dt.datetime) -> dict[str, Any]:
    """What the model deployment needs of one order: ids, request fields, hour and weekday
    of its creation (``now`` when the app sent no time)."""
    created = (order.created_at or now).astimezone(dt.UTC)
    return {
        "order_id": order.order_id,
        "courier_id": order.courier_id,
        "merchant_id": order.merchant_id,
        "zone_id": order.zone_id,
        "distance_km": float(order.distance_km),
        "hour": created.hour,
        "weekday": created.weekday(),
        "created_at": created.isoformat(),
    }
