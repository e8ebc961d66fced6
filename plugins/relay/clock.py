"""Time in UTC, one way everywhere: stored, compared and partitioned times are timezone-aware."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict
from typing import Any


def utcnow() -> dt.datetime:
    """Now, timezone-aware in UTC."""
    return dt.datetime.now(dt.UTC)


def as_utc(value: dt.datetime) -> dt.datetime:
    """``value`` in UTC; a naive datetime is taken to be UTC already (how the lake stores times)."""
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def asdict_iso(record: Any, *times: str) -> dict[str, Any]:
    """``dataclasses.asdict(record)`` with its datetime fields ``times`` as ISO strings (None
    stays None): a record ready for ``json.dumps``."""
    out = asdict(record)
    for key in times:
        value = getattr(record, key)
        out[key] = None if value is None else value.isoformat()
    return out
