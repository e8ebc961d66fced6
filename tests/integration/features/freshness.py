"""What the row-cache tests share, on Redis and on SQLite: a clock the test moves, a courier's
orders to read, and the count a push or a materialization writes for it."""

from __future__ import annotations

from typing import Any

import pandas as pd

from relay.data.lake import VALIDATED_ORDERS, Lake
from relay.features.store import entity_frame


class Clock:
    """Monotonic seconds that move only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def courier_rows(lake_days: Any, courier: str) -> list[dict[str, Any]]:
    """Four of the last day's orders, all given to one courier, as serving's entity rows."""
    orders = Lake().read(VALIDATED_ORDERS, lake_days[-1]).head(4).copy()
    orders["courier_id"] = courier
    return entity_frame(orders).to_dict("records")


def courier_counts(courier: str, n: int) -> pd.DataFrame:
    """One courier's `courier_orders_1h`, stamped now."""
    return pd.DataFrame(
        {
            "courier_id": [courier],
            "courier_orders_1h": [n],
            "event_timestamp": [pd.Timestamp.now(tz="UTC")],
        }
    )
