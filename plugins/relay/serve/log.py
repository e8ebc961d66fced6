"""The serving log: every prediction the endpoint serves, as date-partitioned Parquet in the lake.

The Serve deployment calls :meth:`ServingLogWriter.log` on the request path; that only appends
to an in-memory buffer. A background thread writes the buffer to
``serving/predictions/date=YYYY-MM-DD/part-<timestamp>-<uuid>.parquet`` (one new file per day
per flush, :meth:`relay.data.lake.Lake.append`) when ``max_batch`` records are waiting or the oldest
has waited ``max_delay_s``. A record lands in the partition of the UTC date of its
``requested_at``.

Record schema (one row per prediction; the columns of :data:`LOG_COLUMNS`, then features):

=====================  =======================  ==================================================
column                 type                     meaning
=====================  =======================  ==================================================
``request_id``         string                   the request's id (a uuid4 hex when not given)
``order_id``           string                   the order the ETA is for; joins with actuals
``requested_at``       timestamp[us, UTC]       when the request arrived; picks the partition
``logged_at``          timestamp[us, UTC]       when :meth:`~ServingLogWriter.log` received it
``model_version``      string                   the model version that served it
``eta_minutes``        float64                  the prediction
``latency_ms``         float64                  time to serve the request (null when not given)
``missing_features``   string                   comma-separated names of features that were
                                                missing and filled (``""`` when none)
``f_<feature>``        float64 or string        one column per input feature
=====================  =======================  ==================================================

Features are stored as one column per feature, named ``f_`` + the feature name, so the drift
job reads them as ordinary columns (:func:`features_of` strips the prefix). Within one file a
feature column is float64 when every value is a number or a bool (or every value is missing),
and string otherwise. Files of one partition may have different feature sets (a feature added
in a new model version); :func:`read_serving_log` returns the union, nulls where absent.

Delivery is at least once: a write that fails after the object landed is written again on the
next flush. :func:`read_serving_log` drops repeated ``request_id`` rows, so readers see each
prediction once.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import pandas as pd

from relay.data.lake import ACTUALS, SERVING_LOG, Lake
from relay.errors import RelayError

log = logging.getLogger(__name__)

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
_MAX_BACKOFF_S = 30.0

Clock = Callable[[], dt.datetime]


class InvalidServingRecord(RelayError, ValueError):
    """A record given to the serving log lacks a field or has one of the wrong type."""


class ServingLogClosed(RelayError):
    """:meth:`ServingLogWriter.log` was called after :meth:`ServingLogWriter.close`."""


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _as_utc(value: Any, field: str) -> dt.datetime:
    """A timezone-aware UTC datetime; naive values are taken to be UTC already."""
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError as exc:
            raise InvalidServingRecord(f"{field}={value!r} is not an ISO 8601 time") from exc
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    if not isinstance(value, dt.datetime):
        raise InvalidServingRecord(f"{field} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


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
    """One flat log row from a record given to :meth:`ServingLogWriter.log`.

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
        row[f"{FEATURE_PREFIX}{name}"] = value
    return row


def to_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Log rows (from :func:`to_row`) as a frame with the documented column types."""
    df = pd.DataFrame.from_records(list(rows))
    for col in LOG_COLUMNS:
        if col not in df.columns:
            df[col] = None
    for col in ("requested_at", "logged_at"):
        df[col] = pd.to_datetime(df[col], utc=True)
    for col in ("eta_minutes", "latency_ms"):
        df[col] = df[col].astype("float64")
    for col in ("request_id", "order_id", "model_version", "missing_features"):
        df[col] = df[col].astype(object)
    features = sorted(c for c in df.columns if c.startswith(FEATURE_PREFIX))
    for col in features:
        df[col] = _feature_column(df[col])
    return df[[*LOG_COLUMNS, *features]]


def _feature_column(values: pd.Series) -> pd.Series:
    """float64 when every value is a number or bool (or missing), else strings with nulls."""
    present = values.dropna()
    if present.empty:
        return pd.Series(math.nan, index=values.index, dtype="float64")
    if all(isinstance(v, (bool, int, float)) or hasattr(v, "dtype") for v in present):
        try:
            return pd.to_numeric(values.astype(object), errors="raise").astype("float64")
        except (TypeError, ValueError):
            pass
    return values.astype(object).where(values.isna(), values.astype(str))


class ServingLogWriter:
    """Buffers served predictions in memory and writes them to the lake off the request path.

    :meth:`log` never does I/O and never blocks on the lake: it appends to a buffer under a
    lock held for microseconds. A daemon thread writes the buffer when ``max_batch`` records
    are waiting or the oldest has waited ``max_delay_s`` seconds. A failed write keeps its
    records in the buffer and is retried (backing off up to 30 s while the lake stays down);
    past ``max_pending`` buffered records the oldest are dropped, counted in :attr:`dropped`
    and reported in a warning from the background thread.

    Use it as a context manager, or call :meth:`close` at shutdown (it writes what is left).

    Args:
        lake: where the log goes (``serving/predictions``).
        max_batch: write as soon as this many records are waiting.
        max_delay_s: write once the oldest waiting record is this old (seconds).
        max_pending: hard cap on buffered records; beyond it the oldest are dropped.
        clock: the time source for ``logged_at`` (tests pass a fixed one).
    """

    def __init__(
        self,
        lake: Lake,
        max_batch: int = 1000,
        max_delay_s: float = 1.0,
        max_pending: int = 100_000,
        clock: Clock = _utcnow,
    ) -> None:
        if max_batch < 1 or max_pending < 1 or max_delay_s <= 0:
            raise ValueError("max_batch and max_pending must be >= 1 and max_delay_s > 0")
        self.lake = lake
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.max_pending = max_pending
        self._clock = clock
        self._buffer: collections.deque[dict[str, Any]] = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self._flush_lock = threading.Lock()  # one writer at a time, in buffer order
        self._oldest_at = 0.0  # monotonic time the oldest buffered record arrived
        self._retry_at = 0.0  # no background write before this (backoff after a failure)
        self._failures = 0  # consecutive failed writes
        self._in_flight = 0
        self._written = 0
        self._dropped = 0
        self._dropped_reported = 0
        self._closing = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="relay-serving-log", daemon=True)
        self._thread.start()

    # -- the request path -------------------------------------------------------------------

    def log(self, records: list[dict[str, Any]]) -> None:
        """Queue served predictions for writing; returns at once and never does I/O.

        Args:
            records: one mapping per prediction, fields as in :func:`to_row`.

        Raises:
            InvalidServingRecord: a record is malformed (none of ``records`` is queued).
            ServingLogClosed: the writer has been closed.
        """
        logged_at = self._clock()
        rows = [to_row(r, logged_at) for r in records]
        if not rows:
            return
        with self._cond:
            if self._closed or self._closing:
                raise ServingLogClosed("the serving log writer is closed; create a new one")
            was_empty = not self._buffer
            if was_empty:
                self._oldest_at = time.monotonic()
            self._buffer.extend(rows)
            self._trim()
            if was_empty or len(self._buffer) >= self.max_batch:
                self._cond.notify()

    # -- counters ---------------------------------------------------------------------------

    @property
    def written(self) -> int:
        """Records written to the lake so far."""
        return self._written

    @property
    def dropped(self) -> int:
        """Records dropped because the buffer passed ``max_pending``."""
        return self._dropped

    @property
    def pending(self) -> int:
        """Records logged but not yet written (buffered or being written)."""
        with self._cond:
            return len(self._buffer) + self._in_flight

    # -- writing ----------------------------------------------------------------------------

    def flush(self) -> int:
        """Write everything buffered now, synchronously.

        Returns:
            The number of records written by this call.

        Raises:
            Exception: the lake's error when a write failed; those records stay buffered and
                are written by a later flush.
        """
        return self._write()

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop the background thread and write what is left; idempotent.

        Raises:
            Exception: the lake's error when the last write failed (those records are lost
                with the process unless :meth:`flush` is called again).
        """
        with self._cond:
            if self._closed:
                return
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)
        try:
            self._write()
        finally:
            with self._cond:
                self._closed = True

    def __enter__(self) -> ServingLogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _trim(self) -> None:
        """Drop the oldest buffered records beyond ``max_pending`` (caller holds the lock)."""
        over = len(self._buffer) - self.max_pending
        if over > 0:
            for _ in range(over):
                self._buffer.popleft()
            self._dropped += over

    def _report_drops(self) -> None:
        with self._cond:
            new = self._dropped - self._dropped_reported
            self._dropped_reported = self._dropped
        if new:
            log.warning(
                "serving log buffer passed %d records (is the lake at %s reachable?): "
                "dropped the %d oldest, %d in all",
                self.max_pending,
                self.lake.root,
                new,
                self._dropped,
            )

    def _write(self) -> int:
        """Drain the buffer and append one file per UTC day; re-queue what failed."""
        with self._flush_lock:
            with self._cond:
                rows = list(self._buffer)
                oldest_at = self._oldest_at
                self._buffer.clear()
                self._in_flight = len(rows)
            self._report_drops()
            if not rows:
                return 0
            written: int = 0
            failed: list[dict[str, Any]] = []
            error: Exception | None = None
            try:
                try:
                    df = to_frame(rows)
                except Exception:
                    # A bug, not a lake outage: retrying would wedge the log behind these rows.
                    with self._cond:
                        self._dropped += len(rows)
                    log.exception("could not tabulate %d serving log records; dropped", len(rows))
                    raise
                days = df["requested_at"].dt.date
                for day, part in df.groupby(days, sort=True):
                    try:
                        self.lake.append(part.reset_index(drop=True), SERVING_LOG, day)
                        written += len(part)
                    except Exception as exc:  # retried on the next flush
                        error = error or exc
                        failed.extend(rows[i] for i in part.index)
            finally:
                with self._cond:
                    self._in_flight = 0
                    self._written += written
                    if failed:
                        self._failures += 1
                        backoff = max(self.max_delay_s, 0.5) * 2 ** (self._failures - 1)
                        self._retry_at = time.monotonic() + min(backoff, _MAX_BACKOFF_S)
                        self._buffer.extendleft(reversed(failed))
                        self._oldest_at = oldest_at
                        self._trim()
                    elif error is None:
                        self._failures = 0
            if error is not None:
                raise error
            return written

    def _due(self, now: float) -> bool:
        if not self._buffer or now < self._retry_at:
            return False
        return len(self._buffer) >= self.max_batch or now - self._oldest_at >= self.max_delay_s

    def _wait_s(self, now: float) -> float | None:
        if not self._buffer:
            return None  # log() notifies when the first record arrives
        deadline = self._oldest_at + self.max_delay_s
        if len(self._buffer) >= self.max_batch:
            deadline = now
        return max(0.0, max(deadline, self._retry_at) - now)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closing and not self._due(time.monotonic()):
                    self._cond.wait(self._wait_s(time.monotonic()))
                if self._closing:
                    return
            try:
                self._write()
            except Exception:
                log.warning(
                    "writing the serving log to %s failed; %d records kept for the next try",
                    self.lake.root,
                    self.pending,
                    exc_info=True,
                )


def read_serving_log(lake: Lake, start: dt.date, end: dt.date, dedupe: bool = True) -> pd.DataFrame:
    """The serving log of the UTC days ``start`` to ``end`` inclusive, oldest request first.

    Args:
        lake: the lake the writer wrote to.
        start: first day (UTC date of ``requested_at``).
        end: last day, inclusive.
        dedupe: drop rows whose (``request_id``, ``order_id``) was already seen (a retried
            write); one request may carry many orders.

    Raises:
        PartitionNotFound: no prediction was logged in the range.
    """
    df = lake.read_all(SERVING_LOG, start, end)
    df = df.sort_values(["requested_at", "logged_at"], kind="stable")
    if dedupe:
        keys = [c for c in ("request_id", "order_id") if c in df.columns]
        df = df.drop_duplicates(keys, keep="first")
    return df.reset_index(drop=True)


def read_actuals(lake: Lake, start: dt.date, end: dt.date) -> pd.DataFrame:
    """Actual delivery minutes (``order_id``, ``delivered_at``, ``actual_minutes``) landed
    in the ``serving/actuals`` partitions ``start`` to ``end`` inclusive."""
    return lake.read_all(ACTUALS, start, end)


def features_of(log_df: pd.DataFrame) -> pd.DataFrame:
    """The feature columns of a serving log frame, under their feature names (prefix removed)."""
    cols = [c for c in log_df.columns if c.startswith(FEATURE_PREFIX)]
    return log_df[cols].rename(columns=lambda c: c.removeprefix(FEATURE_PREFIX))


def join_actuals(
    log_df: pd.DataFrame,
    actuals_df: pd.DataFrame,
    how: Literal["inner", "left"] = "inner",
) -> pd.DataFrame:
    """Predictions joined with the actual delivery times that have landed, on ``order_id``.

    Adds ``delivered_at``, ``actual_minutes`` and ``error_minutes`` (prediction minus actual:
    positive means the ETA ran late). When an order has several actuals, the latest
    ``delivered_at`` wins, so a prediction never appears twice.

    Args:
        log_df: rows of the serving log (:func:`read_serving_log`).
        actuals_df: ``order_id``, ``delivered_at``, ``actual_minutes``.
        how: ``"inner"`` keeps only predictions with an actual; ``"left"`` keeps every
            prediction, with nulls where the actual has not landed yet.

    Raises:
        KeyError: a frame lacks a column the join needs.
    """
    missing = [c for c in ACTUAL_COLUMNS if c not in actuals_df.columns]
    if missing or "order_id" not in log_df.columns:
        raise KeyError(
            f"join_actuals needs order_id in the log and {list(ACTUAL_COLUMNS)} in the actuals; "
            f"actuals lack {missing}"
        )
    actuals = (
        actuals_df[list(ACTUAL_COLUMNS)]
        .sort_values("delivered_at", kind="stable")
        .drop_duplicates("order_id", keep="last")
        .astype({"order_id": str})
    )
    left = log_df.astype({"order_id": str})
    out = left.merge(actuals, on="order_id", how=how, validate="many_to_one")
    out["error_minutes"] = out["eta_minutes"] - out["actual_minutes"]
    return out.reset_index(drop=True)
