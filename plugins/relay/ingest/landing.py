"""Landing and validating daily order batches in the lake."""

from __future__ import annotations

import datetime as dt

from relay.data.lake import RAW_ORDERS, VALIDATED_ORDERS, Lake
from relay.data.scenarios import scenario_batch
from relay.ingest.validation import Verdict, require_valid, validate_orders
from relay.settings import Settings, get_settings


def land_generated_batch(
    date: dt.date,
    n_orders: int | None = None,
    scenario: str = "normal",
    settings: Settings | None = None,
) -> tuple[str, int]:
    """Generate a day's orders under a scenario and land them in ``raw/orders``.

    Returns (partition URI, rows).
    """
    s = settings or get_settings()
    df = scenario_batch(scenario, date, n_orders or s.data.orders_per_day, s.data.seed)
    return Lake(s).write(df, RAW_ORDERS, date), len(df)


def validate_partition(date: dt.date, settings: Settings | None = None) -> Verdict:
    """Validate ``raw/orders`` for ``date``; on success copy it to ``validated/orders``.

    Raises:
        DataValidationFailed: the batch failed; ``validated/orders`` is left untouched.
    """
    lake = Lake(settings)
    df = lake.read(RAW_ORDERS, date)
    verdict = require_valid(validate_orders(df, date, settings))
    lake.write(df, VALIDATED_ORDERS, date)
    return verdict
