"""Request and response models of the ETA endpoint (they give the OpenAPI schema and the
4xx messages that name the field at fault)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_ORDERS_PER_REQUEST = 256
#: Ids: any characters but control characters (they break logs, headers and CSV exports).
ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"


def _id(max_length: int, description: str) -> Any:
    return Field(min_length=1, max_length=max_length, pattern=ID_PATTERN, description=description)


class Order(BaseModel):
    """One order as the app knows it at checkout: ids and request-time fields only."""

    model_config = ConfigDict(extra="forbid")

    order_id: str = _id(64, "Unique order id")
    courier_id: str = _id(64, "Assigned courier")
    merchant_id: str = _id(64, "Merchant preparing it")
    zone_id: str = _id(32, "Delivery zone")
    distance_km: float = Field(gt=0, le=100, description="Merchant to customer, km")
    created_at: dt.datetime | None = Field(
        None,
        description="Order time (without an offset: UTC); default: now. Gives hour and weekday; "
        "within RELAY_SERVING__CREATED_AT_MAX_AGE_S before and _MAX_AHEAD_S after now",
    )

    @field_validator("created_at")
    @classmethod
    def _in_utc(cls, value: dt.datetime | None) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        try:
            return value.astimezone(dt.UTC)
        except OverflowError:  # 0001-01-01T00:00+14:00 is before year 1 in UTC
            raise ValueError("outside the representable datetime range once in UTC") from None


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
    degraded: bool = Field(
        False,
        description="A fallback, not the model's own prediction: the model's was not finite or "
        "outside RELAY_SERVING__MIN/MAX_ETA_MINUTES (answered with the maximum, or the "
        "training set's mean ETA)",
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
    return feature_rows([order], now)[0]


def feature_rows(orders: Sequence[Order], now: dt.datetime) -> list[dict[str, Any]]:
    """:func:`feature_row` of each order, the time fields worked out once per distinct
    creation time (orders sent without one share ``now``'s): 32 orders took 53 µs one by one,
    most of it converting and formatting the same instant again."""
    times: dict[dt.datetime | None, tuple[int, int, str]] = {}
    rows = []
    for order in orders:
        at = times.get(order.created_at)
        if at is None:
            created = (order.created_at or now).astimezone(dt.UTC)
            at = times[order.created_at] = (created.hour, created.weekday(), created.isoformat())
        rows.append(
            {
                "order_id": order.order_id,
                "courier_id": order.courier_id,
                "merchant_id": order.merchant_id,
                "zone_id": order.zone_id,
                "distance_km": float(order.distance_km),
                "hour": at[0],
                "weekday": at[1],
                "created_at": at[2],
            }
        )
    return rows


class Problem(BaseModel):
    """A 503 answer: what went wrong, for a person."""

    detail: str


class FieldError(BaseModel):
    """One refused field: where (``loc``: ``body``, ``orders``, index, field), what, which rule."""

    loc: list[str | int]
    msg: str
    type: str


class Invalid(BaseModel):
    """A 422 answer: every refused field, named."""

    detail: list[FieldError]
