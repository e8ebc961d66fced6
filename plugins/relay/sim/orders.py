"""The orders a replay sends: a day's orders, their request bodies, and their labels."""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from relay.data.lake import RAW_ORDERS, Lake
from relay.data.scenarios import scenario_batch
from relay.serve.schemas import Order
from relay.settings import Settings, get_settings

REQUEST_FIELDS: tuple[str, ...] = tuple(Order.model_fields)
"""The order fields a request carries (the endpoint refuses any other)."""


def load_orders(
    date: dt.date,
    scenario: str | None = None,
    settings: Settings | None = None,
    orders_per_day: int | None = None,
) -> tuple[pd.DataFrame, str]:
    """The day's orders in creation order, and where they came from.

    With no scenario, the day's ``raw/orders`` partition when the lake has one (what the
    pipeline landed); otherwise the generator's day under ``scenario`` (``normal`` when
    ``None``) with the configured seed and ``orders_per_day``, exactly as ``relay generate``
    lands it.

    Raises:
        ValueError: an unknown scenario.
    """
    s = settings or get_settings()
    if scenario is None:
        lake = Lake(s)
        if lake.exists(RAW_ORDERS, date):
            df, source = lake.read(RAW_ORDERS, date), f"lake {RAW_ORDERS}"
        else:
            scenario = "normal"
    if scenario is not None:
        n = orders_per_day or s.data.orders_per_day
        df, source = scenario_batch(scenario, date, n, s.data.seed), f"generated {scenario}"
    df = df.sort_values("created_at", kind="stable").reset_index(drop=True)
    return df, source


def request_chunks(n_orders: int, batch: int) -> list[range]:
    """Row positions per request: ``batch`` orders each, the last one possibly fewer."""
    return [range(i, min(i + batch, n_orders)) for i in range(0, n_orders, batch)]


def _json_value(value: Any) -> Any:
    if value is None or value is pd.NaT:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, pd.Timestamp | dt.datetime):
        return value.isoformat()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def order_payloads(orders: pd.DataFrame) -> list[dict[str, Any]]:
    """The request body of each order: its request-time fields as JSON values (missing
    values as null, so a corrupted order is answered 4xx rather than sent as invalid JSON)."""
    cols = [c for c in REQUEST_FIELDS if c in orders.columns]
    records = orders[cols].to_dict("records")
    return [{str(k): _json_value(v) for k, v in r.items()} for r in records]


def request_body(payloads: Sequence[Mapping[str, Any]], batch: int) -> bytes:
    """One order as is when ``batch`` is 1, else ``{"orders": [...]}``."""
    body: Any = payloads[0] if batch == 1 else {"orders": list(payloads)}
    return json.dumps(body, separators=(",", ":")).encode()
