"""The serving log's record format: its columns, and a served prediction as a row and a frame.

One row per prediction; the columns of :data:`LOG_COLUMNS`, then features:

=====================  =======================  ==================================================
column                 type                     meaning
=====================  =======================  ==================================================
``request_id``         string                   the request's id (a uuid4 hex when not given)
``order_id``           string                   the order the ETA is for; joins with actuals
``requested_at``       timestamp[us, UTC]       when the request arrived; picks the partition
``logged_at``          timestamp[us, UTC]       when the writer received it
``model_version``      string                   the model version that served it
``eta_minutes``        float64                  the prediction
``latency_ms``         float64                  time to serve the request (null when not given)
``missing_features``   string                   comma-separated names of features that were
                                                missing and filled (``""`` when none)
``f_<feature>``        float64 or string        one column per input feature
=====================  =======================  ==================================================

Features are stored as one column per feature, named ``f_`` + the feature name, so the drift
job reads them as ordinary columns (:func:`relay.serve.log_read.features_of` strips the prefix).
Within one file a feature column is float64 when every value is a number or a bool (or every
value is missing), and string otherwise. Files of one partition may have different feature sets
(a feature added in a new model version); the reader returns the union, nulls where absent.

The actual delivery times land beside the log (``serving/actuals``) with the columns of
:data:`ACTUAL_COLUMNS`.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from relay.clock import as_utc
from relay.errors import RelayError

FEATURE_PREFIX = "f_"
LOG_COLUMNS = (
    "request_id",
    "order_id",
    "requested_at",
    "logged_at",
    "model_version",
    "eta_minutes",
    "latency_ms",
    "missing_features",
)
ACTUAL_COLUMNS = ("order_id", "delivered_at", "actual_minutes")


class InvalidServingRecord(RelayError, ValueError):
    """A record given to the serving log lacks a field or has one of the wrong type."""


def _as_utc(value: Any, field: str) -> dt.datetime:
    """A timezone-aware UTC datetime; naive values are taken to be UTC already."""
    if type(value) is dt.datetime and value.tzinfo is dt.UTC:  # what serving passes
        return value
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError as exc:
            raise InvalidServingRecord(f"{field}={value!r} is not an ISO 8601 time") from exc
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    if not isinstance(value, dt.datetime):
        raise InvalidServingRecord(f"{field} must be a datetime, got {type(value).__name__}")
    return as_utc(value)


def _number(record: Mapping[str, Any], field: str, required: bool) -> float:
    value = record.get(field)
    if value is None:
        if required:
            raise InvalidServingRecord(f"serving log record has no {field!r}: {dict(record)!r}")
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise InvalidServingRecord(f"{field}={value!r} is not a number") from exc


def to_row(record: Mapping[str, Any], logged_at: dt.datetime) -> dict[str, Any]:
    """One flat log row from a record given to :meth:`relay.serve.log.ServingLogWriter.log`.

    Args:
        record: ``order_id``, ``model_version``, ``eta_minutes`` and ``features`` (a mapping of
            feature name to value) are required; ``request_id`` (default: a new uuid4 hex),
            ``requested_at`` (a datetime or ISO string, naive means UTC; default:
            ``logged_at``), ``latency_ms`` and ``missing_features`` (a list of names or a
            comma-separated string) are optional.
        logged_at: when the writer received the record.

    Raises:
        InvalidServingRecord: a required field is missing or a value has the wrong type.
    """
    for key in ("order_id", "model_version"):
        if record.get(key) is None:
            raise InvalidServingRecord(f"serving log record has no {key!r}: {dict(record)!r}")
    features = record.get("features", {})
    if not isinstance(features, Mapping):
        raise InvalidServingRecord(
            f"features must be a mapping of name to value, got {type(features).__name__}"
        )
    missing = record.get("missing_features") or ""
    if not isinstance(missing, str):
        missing = ",".join(str(name) for name in missing)
    requested = record.get("requested_at")
    row: dict[str, Any] = {
        "request_id": str(record.get("request_id") or uuid.uuid4().hex),
        "order_id": str(record["order_id"]),
        "requested_at": logged_at if requested is None else _as_utc(requested, "requested_at"),
        "logged_at": logged_at,
        "model_version": str(record["model_version"]),
        "eta_minutes": _number(record, "eta_minutes", required=True),
        "latency_ms": _number(record, "latency_ms", required=False),
        "missing_features": missing,
    }
    for name, value in features.items():
        row[_column(name)] = value
    return row


_COLUMNS: dict[str, str] = {}


def _column(name: str) -> str:
    """A feature's column name, the same string object each time: rows share their keys, and a
    pickle of many rows (the log's child process) names each column once."""
    column = _COLUMNS.get(name)
    if column is None:
        column = f"{FEATURE_PREFIX}{name}"
        if len(_COLUMNS) < 10_000:  # a model's features, not arbitrary callers' names
            _COLUMNS[name] = column
    return column


def to_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Log rows (from :func:`to_row`) as a frame with the documented column types.

    Built column by column from the rows: the serving log's writer thread runs this beside the
    request path, and every millisecond it holds the GIL is a millisecond some request waits
    (from records, a 1,000-row flush took 29 ms and stalled the loop up to 12 ms at a time;
    README, fast serving)."""
    rows = list(rows)
    names: dict[str, None] = dict.fromkeys(LOG_COLUMNS)
    for row in rows:
        names.update(dict.fromkeys(row))
    features = sorted(c for c in names if c.startswith(FEATURE_PREFIX))
    columns: dict[str, Any] = {}
    for col in LOG_COLUMNS:
        values = [row.get(col) for row in rows]
        if col in ("requested_at", "logged_at"):
            columns[col] = pd.to_datetime(pd.Series(values, dtype=object), utc=True)
        elif col in ("eta_minutes", "latency_ms"):
            columns[col] = np.array(values, "float64")  # None is NaN
        else:
            columns[col] = pd.Series(values, dtype=object)
    for col in features:
        columns[col] = _feature_values([row.get(col) for row in rows])
    return pd.DataFrame(columns, index=pd.RangeIndex(len(rows)))


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


_NUMBERS = (bool, int, float, type(None))


def _feature_values(values: list[Any]) -> Any:
    """float64 when every value is a number or bool (or missing), else strings with nulls."""
    kinds = set(map(type, values))
    if all(issubclass(k, _NUMBERS) or hasattr(k, "dtype") for k in kinds):
        try:
            return np.array(values, "float64")  # None is NaN
        except (TypeError, ValueError):
            pass
    return pd.Series([None if _missing(v) else str(v) for v in values], dtype=object)
