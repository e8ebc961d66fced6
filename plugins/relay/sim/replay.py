"""Traffic replay: one day's orders sent to the endpoint at a steady rate, as an order service
would: each order's ``created`` event, its ETA request, later its labels.

:func:`replay` (and ``relay replay``) takes a day's orders in creation order (the raw orders
the pipeline landed for that day, or the generator's orders under a named scenario) and, at a
fixed number of requests per second, POSTs each chunk of ``batch`` orders' ``created`` events
to ``/v1/events`` (their live features are pushed before the answer) and then the orders to
``/v1/eta``. Send times come from a monotonic clock (request ``k`` is due at
``start + k / rate``), so a slow answer never delays the requests after it; a small thread
pool keeps them in flight, at most ``concurrency`` at a time.

A run is bounded: it stops after ``max_orders`` orders or ``max_seconds`` seconds, whichever
comes first, and it only talks to a loopback address (``127.0.0.1``, ``localhost``, ``::1``).

Then the labels: the ``picked_up`` and ``delivered`` events of the orders that got an answer go
to ``/v1/events`` too; the endpoint stores them and lands each order's actual delivery time in
``serving/actuals`` (the partition of the day it received the label, where the serving log files
the prediction), joined on ``order_id`` (:func:`relay.serve.log_read.join_actuals`). Nothing is
written to the lake from here. With ``label_delay_s`` labels go while the run goes on, each at
least that long after its answer; whatever is still waiting when the run ends goes then.

Concurrent requests reach the endpoint in any order, so the live features a replayed order is
served may count a neighbour created just after it; :mod:`relay.sim.lifecycle` plays a day one
order at a time when served features must equal training rows exactly.

The pieces: :mod:`relay.sim.config` (what to run, what it reports), :mod:`relay.sim.orders`
(the day's orders, request bodies, labels), :mod:`relay.sim.client` (the loopback rule and
the HTTP client).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pandas as pd

from relay.serve.auth import read_secret
from relay.settings import Settings, get_settings
from relay.sim.client import EndpointClient, endpoint_url, preflight, require_loopback
from relay.sim.config import (
    ReplayConfig,
    ReplayError,
    ReplayProgress,
    ReplayResult,
    RequestCounts,
    StopReason,
)
from relay.sim.lifecycle import created_event, later_events
from relay.sim.orders import (
    load_orders,
    order_payloads,
    request_body,
    request_chunks,
)

#: Events per ``/v1/events`` request when labels go in bulk.
LABEL_CHUNK = 500

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 1.0


class Pacer:
    """Open-loop pacing on a monotonic clock: request ``k`` is due at ``start + k / rate``.

    A late request does not shift the ones after it: a sender that fell behind catches up.

    Args:
        rate: requests per second.
        clock: a monotonic time source in seconds.
        sleep: how to wait (tests pass a fake that advances the fake clock).
    """

    def __init__(
        self,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        self.rate = rate
        self.clock = clock
        self._sleep = sleep
        self.start = clock()

    def due(self, k: int) -> float:
        """When request ``k`` (from 0) should go out."""
        return self.start + k / self.rate

    def wait(self, k: int, deadline: float) -> bool:
        """Wait until request ``k`` is due; False (at once) when it is due at or after
        ``deadline``."""
        due = self.due(k)
        if due >= deadline:
            return False
        while (left := due - self.clock()) > 0:
            self._sleep(left)
        return True


def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 99)) -> list[float | None]:
    """Linear-interpolated percentiles, ``None`` for each when there are no values."""
    if not values:
        return [None for _ in qs]
    return [float(v) for v in np.percentile(np.asarray(values, dtype="float64"), qs)]


def _outcome(status: int) -> str:
    """The :class:`RequestCounts` field an HTTP status counts under (0: no readable answer)."""
    if 200 <= status < 300:
        return "ok"
    if 400 <= status < 500:
        return "client_errors"
    if 500 <= status < 600:
        return "server_errors"
    return "failed"


@dataclass
class _Tally:
    """Counters shared by the sender threads (guarded by ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    # by RequestCounts' field names
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    by_version: collections.Counter[str] = field(default_factory=collections.Counter)
    latencies_ms: list[float] = field(default_factory=list)
    # (monotonic time, row position), in answer order
    answered: list[tuple[float, int]] = field(default_factory=list)
    created_events: int = 0
    event_failures: int = 0

    def snapshot(self) -> dict[str, int]:
        """The counts as :class:`RequestCounts` keywords (hold ``lock``)."""
        return {f.name: self.counts[f.name] for f in dataclasses.fields(RequestCounts)}


class _Run:
    """One replay: a dispatcher on the calling thread, senders in a pool."""

    def __init__(
        self,
        cfg: ReplayConfig,
        url: str,
        orders: pd.DataFrame,
        on_progress: Callable[[ReplayProgress], None] | None,
        api_key: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.orders = orders
        self.on_progress = on_progress
        self.planned = min(cfg.max_orders, len(orders))
        self.payloads = order_payloads(orders.iloc[: self.planned])
        self.created = [created_event(o) for o in orders.iloc[: self.planned].to_dict("records")]
        self.client = EndpointClient(url, cfg.timeout_s, cfg.workers, api_key)
        self.events = EndpointClient(events_url(url), cfg.timeout_s, cfg.workers, api_key)
        self.tally = _Tally()
        self.slots = threading.BoundedSemaphore(cfg.workers)
        self.labelled = 0
        self._next_label = 0
        self.bugs: list[Exception] = []
        self.start = 0.0

    def _post_events(self, events: list[dict[str, Any]]) -> bool:
        """POST events, sent again on a 503/429 or no answer for ``events_patience_s`` and
        once more on another 5xx (they are idempotent); whether the endpoint acknowledged them."""
        body = json.dumps({"events": events}, separators=(",", ":")).encode()
        for _ in range(2):
            status = self.events.post_idempotent(body, self.cfg.events_patience_s)
            if 200 <= status < 300:
                return True
            if 400 <= status < 500:
                break
        with self.tally.lock:
            self.tally.event_failures += 1
        return False

    def _send(self, rows: range) -> None:
        try:
            # The order service's side: the order exists before anyone asks for its ETA.
            if self._post_events(self.created[rows.start : rows.stop]):
                with self.tally.lock:
                    self.tally.created_events += len(rows)
            body = request_body(self.payloads[rows.start : rows.stop], self.cfg.batch)
            t0 = time.perf_counter()
            try:
                status, data = self.client.post(body, uuid.uuid4().hex)
            except httpx.RequestError as exc:
                log.debug("request for rows %s failed: %s", rows, exc)
                status, data = 0, b""
            latency_ms = (time.perf_counter() - t0) * 1000
            answers: list[tuple[str, int]] = []
            if 200 <= status < 300:
                try:
                    by_id = {self.payloads[i]["order_id"]: i for i in rows}
                    preds = json.loads(data)["predictions"]
                    answers = [(str(p["model_version"]), by_id[p["order_id"]]) for p in preds]
                except (ValueError, KeyError, TypeError) as exc:
                    log.warning("unreadable answer for rows %s: %s", rows, exc)
                    status = 0
            with self.tally.lock:
                t = self.tally
                outcome = _outcome(status)
                t.counts[outcome] += 1
                if outcome == "ok":
                    t.latencies_ms.append(latency_ms)
                    now = time.monotonic()
                    for version, i in answers:
                        t.by_version[version] += 1
                        t.answered.append((now, i))
        except Exception as exc:  # a bug, not the endpoint: re-raised once the run stops
            with self.tally.lock:
                self.tally.counts["failed"] += 1
                self.bugs.append(exc)
        finally:
            self.slots.release()

    def _progress(self) -> None:
        if self.on_progress is None:
            return
        with self.tally.lock:
            p = ReplayProgress(
                elapsed_s=time.monotonic() - self.start,
                planned_orders=self.planned,
                labels_sent=self.labelled,
                **self.tally.snapshot(),
            )
        self.on_progress(p)

    def _labels(self, until: float | None) -> None:
        """Send the labels of orders answered before ``until`` (monotonic; ``None``: all) not
        sent yet: their ``picked_up`` and ``delivered`` events."""
        with self.tally.lock:
            answered = self.tally.answered
            end = len(answered)
            if until is not None:
                end = self._next_label
                while end < len(answered) and answered[end][0] <= until:
                    end += 1
            batch = answered[self._next_label : end]
            self._next_label = end
        if not batch:
            return
        bodies = later_events(self.orders.iloc[[i for _, i in batch]])["body"].to_list()
        for k in range(0, len(bodies), LABEL_CHUNK):
            chunk = bodies[k : k + LABEL_CHUNK]
            if self._post_events(chunk):
                self.labelled += sum(b["type"] == "delivered" for b in chunk)

    def run(self) -> tuple[StopReason, float]:
        cfg = self.cfg
        chunks = request_chunks(self.planned, cfg.batch)
        pacer = Pacer(cfg.rate)
        self.start = pacer.start
        deadline = pacer.start + cfg.max_seconds
        stopped: StopReason | None = None
        last_tick = pacer.start
        pool = ThreadPoolExecutor(cfg.workers, thread_name_prefix="relay-replay")
        try:
            for k, rows in enumerate(chunks):
                if not pacer.wait(k, deadline):
                    stopped = "max_seconds"
                    break
                if not self.slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
                    stopped = "max_seconds"  # every slot busy until the end: endpoint too slow
                    break
                with self.tally.lock:
                    self.tally.counts["requests_sent"] += 1
                    self.tally.counts["orders_sent"] += len(rows)
                pool.submit(self._send, rows)
                now = time.monotonic()
                if now - last_tick >= PROGRESS_EVERY_S:
                    last_tick = now
                    if cfg.label_delay_s is not None:
                        self._labels(now - cfg.label_delay_s)
                    self._progress()
        finally:
            pool.shutdown(wait=True)  # in flight: each at most timeout_s more (twice on a retry)
            self.client.close()
        if self.bugs:
            raise self.bugs[0]
        elapsed = time.monotonic() - pacer.start
        if stopped is None:
            stopped = "max_orders" if self.planned >= cfg.max_orders else "end_of_day"
        try:
            self._labels(None)
        finally:
            self.events.close()
        self._progress()
        return stopped, elapsed


def events_url(eta_url: str) -> str:
    """The events endpoint next to an ETA endpoint (``…/v1/eta`` -> ``…/v1/events``)."""
    base = eta_url.rstrip("/").removesuffix("/v1/eta")
    return f"{base}/v1/events"


def replay(
    config: ReplayConfig,
    settings: Settings | None = None,
    on_progress: Callable[[ReplayProgress], None] | None = None,
) -> ReplayResult:
    """Replay a day's orders against the endpoint: created events and ETA requests, then the
    labels as events.

    Args:
        config: the day, rate, bounds and endpoint.
        settings: default: :func:`relay.settings.get_settings`.
        on_progress: called about once a second (and at the end) on the calling thread.

    Returns:
        The counts, latencies, per-version answers and the events acknowledged.

    Raises:
        NotLoopback: the URL's host is not a loopback address.
        EndpointUnreachable: nothing accepts connections at the URL.
        ValueError: an unknown scenario.
    """
    s = settings or get_settings()
    url = require_loopback(config.url or endpoint_url(s))
    orders, source = load_orders(config.date, config.scenario, s, config.orders_per_day)
    if config.skip >= len(orders):
        raise ReplayError(f"skip {config.skip} leaves none of the day's {len(orders)} orders")
    orders = orders.iloc[config.skip :].reset_index(drop=True)
    preflight(url, config.timeout_s)
    # The endpoint's first key: replay is the operator's own client, on the same machine.
    api_key = read_secret(s.serving.api_keys_file, "API_KEYS_FILE")
    run = _Run(config, url, orders, on_progress, api_key)
    stopped, elapsed = run.run()
    t = run.tally
    p50, p99 = percentiles(t.latencies_ms)
    result = ReplayResult(
        url=url,
        date=config.date,
        source=source,
        rate=config.rate,
        batch=config.batch,
        stopped_by=stopped,
        elapsed_s=round(elapsed, 3),
        planned_orders=run.planned,
        orders_answered=len(t.answered),
        by_version=dict(sorted(t.by_version.items())),
        latency_p50_ms=None if p50 is None else round(p50, 3),
        latency_p99_ms=None if p99 is None else round(p99, 3),
        created_events=t.created_events,
        labels_sent=run.labelled,
        event_failures=t.event_failures,
        **t.snapshot(),
    )
    log.info("replay done: %s", result.summary())
    return result
