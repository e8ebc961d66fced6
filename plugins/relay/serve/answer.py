"""What one request turns into: its orders parsed, its answers and its serving-log records.

The Serve app and the plain baseline in ``bench/`` build both from here, so the benchmark compares
transports, not two copies of the same work.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from relay.features.catalog import NUMERIC, WEATHER
from relay.serve.schemas import Order, OrderBatch

CHECKED_FEATURES: tuple[str, ...] = (*NUMERIC, WEATHER)
"""Inputs whose absence the answer reports (``missing_features``): the model then used defaults."""


class Unprocessable(ValueError):
    """A body that is neither one order nor a batch of orders; ``detail`` is FastAPI's 422 list."""

    def __init__(self, detail: list[dict[str, Any]]) -> None:
        super().__init__(detail)
        self.detail = detail


def parse_orders(body: bytes) -> list[Order]:
    """The orders of a ``POST /v1/eta`` body: one order, or ``{"orders": [...]}``.

    Raises:
        Unprocessable: invalid JSON or a field the schema refuses (``loc`` names it).
    """
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise Unprocessable(
            [{"loc": ["body"], "msg": f"invalid JSON: {exc}", "type": "json_invalid"}]
        ) from exc
    try:
        if isinstance(data, dict) and "orders" in data:
            return OrderBatch.model_validate(data).orders
        return [Order.model_validate(data)]
    except ValidationError as exc:
        raise Unprocessable(
            [
                {"loc": ["body", *e["loc"]], "msg": e.get("msg", ""), "type": e.get("type", "")}
                for e in exc.errors()
            ]
        ) from exc


def answer_rows(
    version: str,
    rows: Sequence[Mapping[str, Any]],
    request_ids: Sequence[str],
    features: Mapping[str, Sequence[Any]],
    predictions: Sequence[float] | Any,
    latency_ms: float,
    served_at: dt.datetime,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One answer and one serving-log record per row.

    Args:
        version: The model version that predicted.
        rows: Feature rows (``feature_row``), in the order of ``features`` and ``predictions``.
        request_ids: The request each row came with (one per row).
        features: Column -> value per row, as the online store returned them.
        predictions: Minutes per row.
        latency_ms: Time spent on the rows (feature read and forward pass, or the whole request).
        served_at: When the answers were made.
    """
    answers: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    for i, row in enumerate(rows):
        missing = [f for f in CHECKED_FEATURES if features[f][i] is None]
        value = round(float(predictions[i]), 3)
        answers.append(
            {
                "order_id": row["order_id"],
                "eta_minutes": value,
                "model_version": version,
                "missing_features": missing,
            }
        )
        records.append(
            {
                "request_id": request_ids[i],
                "order_id": row["order_id"],
                "requested_at": served_at,
                "model_version": version,
                "features": {k: features[k][i] for k in features},
                "eta_minutes": value,
                "latency_ms": latency_ms,
                "missing_features": missing,
            }
        )
    return answers, records
