"""The serving log: every prediction the endpoint serves, as hour-partitioned Parquet in the lake.

The Serve deployment calls :meth:`ServingLogWriter.log` on the request path; that only appends
to an in-memory buffer. A background thread writes the buffer to
``serving/predictions/date=YYYY-MM-DD/hour=HH/part-<timestamp>-<uuid>.parquet`` (one new file
per hour per flush, :meth:`relay.data.lake.Lake.append`) when ``max_batch`` records are waiting
or the oldest has waited ``max_delay_s``. A record lands in the partition of the UTC hour of its
``requested_at``. The hourly monitoring run merges each past hour's small files into one
(:mod:`relay.serve.log_compact`). The record format is :mod:`relay.serve.log_schema`; the
layout and the reader are :mod:`relay.serve.log_store`; reading the log back, joined with the
actual delivery times, is :mod:`relay.serve.log_read`.

With ``RELAY_SERVING__LOG_WRITER=process`` the thread hands each batch to a child process that
tabulates and writes it (:mod:`relay.serve.log_child`), so that work does not hold the replica's
GIL; the buffer, its retries and its counts stay here either way.

Delivery is at least once: a write that fails after the object landed is written again on the
next flush. :func:`relay.serve.log_read.read_serving_log` drops repeated ``request_id`` rows, so
readers see each prediction once.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from relay.clock import utcnow
from relay.data.lake import Lake
from relay.errors import RelayError
from relay.serve.log_child import ChildGone, ChildWriter, Untabulated, append_rows
from relay.serve.log_schema import to_row

log = logging.getLogger(__name__)

_MAX_BACKOFF_S = 30.0

Clock = Callable[[], dt.datetime]


class ServingLogClosed(RelayError):
    """:meth:`ServingLogWriter.log` was called after :meth:`ServingLogWriter.close`."""


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
        child_process: tabulate and write each batch in a child process
            (:mod:`relay.serve.log_child`, ``RELAY_SERVING__LOG_WRITER=process``): the buffer,
            retries and counts stay here, and this process's GIL is not held while it writes.
    """

    def __init__(
        self,
        lake: Lake,
        max_batch: int = 1000,
        max_delay_s: float = 1.0,
        max_pending: int = 100_000,
        clock: Clock = utcnow,
        child_process: bool = False,
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
        self.child_process = child_process
        self._child: ChildWriter | None = None
        if child_process:
            # Started now, while the replica loads: its start (a Python importing pandas and
            # pyarrow, about a second of CPU) would otherwise land beside the first requests.
            try:
                self._child = ChildWriter(lake.settings)
            except Exception:  # started again by the first write
                log.warning("the serving log's writer process did not start", exc_info=True)
        self._thread = threading.Thread(target=self._run, name="relay-serving-log", daemon=True)
        self._thread.start()

    # -- the request path -------------------------------------------------------------------

    def log(self, records: list[dict[str, Any]]) -> None:
        """Queue served predictions for writing; returns at once and never does I/O.

        Args:
            records: one mapping per prediction, fields as in
                :func:`relay.serve.log_schema.to_row`.

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
            if self._child is not None:
                self._child.close()
                self._child = None

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
        """Drain the buffer and append one file per UTC hour; re-queue what failed."""
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
                    written, at, error = self._append(rows)
                    failed = [rows[i] for i in at]
                except Untabulated:
                    # A bug, not a lake outage: retrying would wedge the log behind these rows.
                    with self._cond:
                        self._dropped += len(rows)
                    log.exception("could not tabulate %d serving log records; dropped", len(rows))
                    raise
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

    def _append(self, rows: list[dict[str, Any]]) -> tuple[int, list[int], Exception | None]:
        if not self.child_process:
            return append_rows(self.lake, rows)
        try:
            if self._child is None:
                self._child = ChildWriter(self.lake.settings)
            return self._child.append(rows)
        except Untabulated:
            raise
        except Exception as exc:  # killed, out of memory, would not start: retried by a new one
            if self._child is not None:
                self._child.close(timeout=1.0)
                self._child = None
            if not isinstance(exc, ChildGone):
                log.warning("the serving log's writer process failed", exc_info=True)
            return 0, list(range(len(rows))), exc

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
