"""The request contract of ``POST /v1/events``: the order service's lifecycle events.

An order's life is three events, each sent once (a re-sent one is recognised by its
``(order_id, type)`` and changes nothing):

* ``created``: who delivers, who cooks, where, how far, the zone's weather as the app sees it;
  it updates the live features (:mod:`relay.features.live`). Send it before asking
  ``/v1/eta`` for the order, so the answer uses it.
* ``picked_up``: the courier has the food.
* ``delivered``: the label: ``delivered.occurred_at - created.occurred_at`` is the actual
  delivery time, joined to the prediction served for the order.

A body is one event or ``{"events": [...]}``. Refusals are the same 413/422 as
``/v1/eta``'s (:mod:`relay.serve.contract`), ``loc`` naming the field: ``["body", "events", 3,
"created", "zone_id"]`` (the event's ``type`` is part of the path).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from relay.data.schema import WEATHER
from relay.serve.contract import Limits, Rejected, error, field_errors, inline_refs, load_json
from relay.serve.schemas import _id

MAX_EVENTS_PER_REQUEST = 1000
MAX_PREP_MINUTES = 600.0
"""The longest preparation time an event may report (a longer one is a typo or a stuck order)."""
EVENT_TYPES = ("created", "picked_up", "delivered")


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid")

    order_id: str = _id(64, "The order's id (as sent to /v1/eta)")
    occurred_at: dt.datetime = Field(
        description="When it happened (without an offset: UTC); within "
        "RELAY_SERVING__CREATED_AT_MAX_AGE_S before and _MAX_AHEAD_S after now"
    )

    @field_validator("occurred_at")
    @classmethod
    def _in_utc(cls, value: dt.datetime) -> dt.datetime:
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        try:
            return value.astimezone(dt.UTC)
        except OverflowError:
            raise ValueError("outside the representable datetime range once in UTC") from None


class Created(_Event):
    """The order was placed: its entities, distance and the zone's weather."""

    type: Literal["created"]
    courier_id: str = _id(64, "Assigned courier")
    merchant_id: str = _id(64, "Merchant preparing it")
    zone_id: str = _id(32, "Delivery zone")
    distance_km: float = Field(gt=0, le=100, description="Merchant to customer, km")
    weather: Literal["clear", "cloudy", "rain", "storm"] | None = Field(
        None, description=f"The zone's weather now ({', '.join(WEATHER)}); null: unchanged"
    )


class PickedUp(_Event):
    """The courier picked the order up."""

    type: Literal["picked_up"]
    prep_minutes: float | None = Field(
        None,
        ge=0,
        le=MAX_PREP_MINUTES,
        description="Minutes the merchant took to prepare the order, as its app reported; "
        "null: not reported (the merchant's 24-hour mean preparation time leaves it out)",
    )


class Delivered(_Event):
    """The order reached the customer: the label."""

    type: Literal["delivered"]


Event = Annotated[Created | PickedUp | Delivered, Field(discriminator="type")]


class EventBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[Event] = Field(
        min_length=1, max_length=MAX_EVENTS_PER_REQUEST, description="Events, any order"
    )


class EventsAccepted(BaseModel):
    """The answer: every event is stored durably (and re-sent ones recognised)."""

    accepted: int = Field(description="Events new to Relay")
    duplicates: int = Field(description="Events Relay already had (same order_id and type)")


_ONE = TypeAdapter(Event)


def parse_events(body: bytes, limits: Limits, now: dt.datetime) -> list[dict[str, Any]]:
    """The events of a ``POST /v1/events`` body as plain rows (``type``, ``order_id``,
    ``occurred_at`` and the ``created`` fields; absent fields are None).

    Raises:
        Rejected: 413 for a body too large, 422 naming every refused field.
    """
    data = load_json(body, limits)
    batch = isinstance(data, dict) and "events" in data
    try:
        events = EventBatch.model_validate(data).events if batch else [_ONE.validate_python(data)]
    except ValidationError as exc:
        detail = field_errors(exc)
        for d in detail:  # an unknown or missing type: name the field that decides it
            if d["type"] in ("union_tag_invalid", "union_tag_not_found"):
                d["loc"] = [*d["loc"], "type"]
        raise Rejected(422, detail) from exc
    earliest = now - dt.timedelta(seconds=limits.created_at_max_age_s)
    latest = now + dt.timedelta(seconds=limits.created_at_max_ahead_s)
    errors = []
    seen: dict[tuple[str, str], int] = {}
    for i, e in enumerate(events):
        loc: list[str | int] = ["body", "events", i] if batch else ["body"]
        if not earliest <= e.occurred_at <= latest:
            msg = (
                f"occurred_at {e.occurred_at.isoformat()} is outside [now - "
                f"{limits.created_at_max_age_s:g} s, now + {limits.created_at_max_ahead_s:g} s]"
            )
            errors.append(error([*loc, e.type, "occurred_at"], msg, "datetime_out_of_window"))
        if (e.order_id, e.type) in seen:
            msg = f"{e.type} of order {e.order_id!r} is also event {seen[e.order_id, e.type]}"
            errors.append(error([*loc, e.type, "order_id"], msg, "duplicate"))
        seen.setdefault((e.order_id, e.type), i)
    if errors:
        raise Rejected(422, errors)
    return [_row(e) for e in events]


def _row(event: Created | PickedUp | Delivered) -> dict[str, Any]:
    row = {
        "order_id": event.order_id,
        "type": event.type,
        "occurred_at": event.occurred_at,
        "courier_id": None,
        "merchant_id": None,
        "zone_id": None,
        "distance_km": None,
        "weather": None,
        "prep_minutes": None,
    }
    if isinstance(event, PickedUp):
        row["prep_minutes"] = event.prep_minutes
    if isinstance(event, Created):
        row |= event.model_dump(include={"courier_id", "merchant_id", "zone_id", "distance_km"})
        row["weather"] = event.weather
    return row


def events_body_schema() -> dict[str, Any]:
    """The body's JSON schema for ``/openapi.json`` (definitions inlined)."""
    return {
        "required": True,
        "content": {"application/json": {"schema": inline_refs(TypeAdapter(Event | EventBatch))}},
        "description": f'One event, or {{"events": [...]}} with up to {MAX_EVENTS_PER_REQUEST}',
    }
