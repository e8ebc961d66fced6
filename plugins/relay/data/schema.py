"""The raw order schema: the columns every batch must have, with their types."""

from __future__ import annotations

WEATHER = ("clear", "cloudy", "rain", "storm")
VEHICLES = ("bike", "scooter", "car")

# Column -> pandas dtype name, as a batch lands in the lake.
ORDER_COLUMNS: dict[str, str] = {
    "order_id": "object",
    "created_at": "datetime64[ns, UTC]",
    "picked_up_at": "datetime64[ns, UTC]",
    "delivered_at": "datetime64[ns, UTC]",
    "courier_id": "object",
    "merchant_id": "object",
    "zone_id": "object",
    "distance_km": "float64",
    "items": "int64",
    "prep_minutes": "float64",
    "weather": "object",
    "courier_load": "int64",
    "delivery_minutes": "float64",
}

LABEL = "delivery_minutes"
