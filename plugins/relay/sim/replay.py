"""Traffic replay: one day's orders sent to the ETA endpoint at a steady rate, then their labels.

:func:`replay` (and ``relay replay``) takes a day's orders in creation order (the raw orders
the pipeline landed for that day, or the generator's orders under a named scenario) and POSTs
them to ``/v1/eta`` at a fixed number of requests per second, one order or ``batch`` orders
per request. Send times come from a monotonic clock (request ``k`` is due at
``start + k / rate``), so a slow answer never delays the requests after it; a small thread
pool keeps them in flight, at most ``concurrency`` at a time.

A run is bounded: it stops after ``max_orders`` orders or ``max_seconds`` seconds, whichever
comes first, and it only talks to a loopback address (``127.0.0.1``, ``localhost``, ``::1``).

Then the labels: the actual delivery times of the orders that got an answer land in the
lake's ``serving/actuals`` dataset (``order_id``, ``delivered_at``, ``actual_minutes``) with
:meth:`relay.data.lake.Lake.append`. The endpoint logs the ``order_id`` it was sent, so the
monitoring job joins the two on it (:func:`relay.serve.log.join_actuals`). By default an
order's label lands in the partition of the UTC date its answer came back, which is the
partition the serving log files that prediction under (its ``requested_at`` is the time the
replica served it, not the order's ``created_at``). With ``label_delay_s`` labels land while
the run goes on, each at least that long after its answer; whatever is still waiting when
the run ends lands then.
"""

from __future__ import annotations

import collections
import datetime as dt
import http.client
import ipaddress
import json
import logging
import math
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import numpy as np
import pandas as pd

from relay.data.lake import ACTUALS, RAW_ORDERS, Lake
from relay.data.scenarios import scenario_batch
from relay.errors import RelayError
from relay.serve.log import ACTUAL_COLUMNS
from relay.serve.schemas import MAX_ORDERS_PER_REQUEST, Order
from relay.settings import Settings, get_settings

log = logging.getLogger(__name__)

DEFAULT_MAX_ORDERS = 2000
DEFAULT_MAX_SECONDS = 60.0
DEFAULT_TIMEOUT_S = 5.0
LOOPBACK_NAMES = frozenset({"localhost"})
REQUEST_FIELDS: tuple[str, ...] = tuple(Order.model_fields)
"""The order fields a request carries (the endpoint refuses any other)."""
PROGRESS_EVERY_S = 1.0

StopReason = Literal["max_orders", "max_seconds", "end_of_day"]


class ReplayError(RelayError):
    """A replay could not run as asked."""


class NotLoopback(ReplayError, ValueError):
    """The replay URL's host is not a loopback address."""


class EndpointUnreachable(ReplayError):
    """Nothing listens at the replay URL."""


@dataclass(frozen=True)
class ReplayConfig:
    """What to replay, where, and the bounds of the run.

    Args:
        date: the day whose orders are replayed (UTC).
        rate: requests per second.
        scenario: a scenario of :data:`relay.data.scenarios.SCENARIOS` to generate the day
            under; ``None`` replays the day's ``raw/orders`` partition when the lake has one,
            else a normal generated day.
        max_orders: stop after this many orders.
        max_seconds: stop sending after this many seconds (answers still in flight are
            waited for: ``timeout_s`` more at most, twice that when a request is retried on
            a fresh connection).
        batch: orders per request (``{"orders": [...]}`` when above 1).
        url: the endpoint; default ``http://{serving.host}:{serving.port}/v1/eta``.
        label_delay_s: land labels during the run, each this long after its answer;
            ``None`` lands every label after the run.
        actuals_date: put every label in this ``serving/actuals`` partition instead of the
            UTC date its answer came back.
        timeout_s: per-request timeout.
        concurrency: requests in flight at most; default ``rate / 10`` within 4..64.
        orders_per_day: orders in a generated day; default ``data.orders_per_day`` (what
            ``relay generate`` lands, so the same order ids).
        skip: start after the day's first ``skip`` orders (a long replay played in parts).
    """

    date: dt.date
    rate: float
    scenario: str | None = None
    max_orders: int = DEFAULT_MAX_ORDERS
    max_seconds: float = DEFAULT_MAX_SECONDS
    batch: int = 1
    url: str | None = None
    label_delay_s: float | None = None
    actuals_date: dt.date | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    concurrency: int | None = None
    orders_per_day: int | None = None
    skip: int = 0

    def __post_init__(self) -> None:
        problems = []
        if not (self.rate > 0 and math.isfinite(self.rate)):
            problems.append(f"rate must be a positive number of requests/s, got {self.rate}")
        if self.max_orders < 1:
            problems.append(f"max_orders must be >= 1, got {self.max_orders}")
        if not self.max_seconds > 0:
            problems.append(f"max_seconds must be > 0, got {self.max_seconds}")
        if not 1 <= self.batch <= MAX_ORDERS_PER_REQUEST:
            problems.append(f"batch must be 1..{MAX_ORDERS_PER_REQUEST}, got {self.batch}")
        if self.label_delay_s is not None and self.label_delay_s < 0:
            problems.append(f"label_delay_s must be >= 0, got {self.label_delay_s}")
        if not self.timeout_s > 0:
            problems.append(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.concurrency is not None and self.concurrency < 1:
            problems.append(f"concurrency must be >= 1, got {self.concurrency}")
        if self.skip < 0:
            problems.append(f"skip must be >= 0, got {self.skip}")
        if problems:
            raise ReplayError("; ".join(problems))

    @property
    def workers(self) -> int:
        """Requests in flight at most."""
        return self.concurrency or default_concurrency(self.rate)


@dataclass(frozen=True)
class ReplayProgress:
    """Counts so far, handed to the progress callback about once a second."""

    elapsed_s: float
    planned_orders: int
    requests_sent: int
    orders_sent: int
    ok: int
    client_errors: int
    server_errors: int
    failed: int
    labels_landed: int


@dataclass(frozen=True)
class ReplayResult:
    """What a replay sent, what came back, and the labels it landed.

    ``ok``, ``client_errors`` (4xx), ``server_errors`` (5xx) and ``failed`` (no HTTP answer:
    refused, reset, timed out, or an unreadable body) count requests and add up to
    ``requests_sent``. ``by_version`` counts answered orders per model version. Latencies are
    client-side, over the requests answered 2xx (``None`` when there were none).
    """

    url: str
    date: dt.date
    source: str
    rate: float
    batch: int
    stopped_by: StopReason
    elapsed_s: float
    planned_orders: int
    requests_sent: int
    orders_sent: int
    ok: int
    client_errors: int
    server_errors: int
    failed: int
    orders_answered: int
    by_version: dict[str, int]
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    actuals_landed: int
    actuals_uris: tuple[str, ...]

    @property
    def achieved_rate(self) -> float:
        """Requests per second actually sent."""
        return self.requests_sent / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The result as JSON-ready values."""
        d = asdict(self)
        d["date"] = self.date.isoformat()
        d["actuals_uris"] = list(self.actuals_uris)
        d["achieved_rate"] = round(self.achieved_rate, 3)
        return d

    def summary(self) -> str:
        """A few lines for a person."""

        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v:.1f} ms"

        versions = ", ".join(f"{v}: {n}" for v, n in sorted(self.by_version.items())) or "-"
        return "\n".join(
            [
                f"replayed {self.date} ({self.source}) to {self.url}: stopped by "
                f"{self.stopped_by} after {self.elapsed_s:.1f} s",
                f"requests: {self.requests_sent} sent at {self.achieved_rate:.1f}/s "
                f"(target {self.rate:g}/s, {self.batch} per request), {self.ok} ok, "
                f"{self.client_errors} 4xx, {self.server_errors} 5xx, {self.failed} failed",
                f"orders: {self.orders_sent} sent, {self.orders_answered} answered; "
                f"by version: {versions}",
                f"latency: p50 {ms(self.latency_p50_ms)}, p99 {ms(self.latency_p99_ms)}",
                f"actuals: {self.actuals_landed} labels -> "
                + (", ".join(self.actuals_uris) or "none"),
            ]
        )


# -- pure parts -------------------------------------------------------------------------------


def default_concurrency(rate: float) -> int:
    """Threads for a rate: enough for 100 ms answers at full rate, within 4..64."""
    return min(64, max(4, math.ceil(rate / 10)))


def endpoint_url(settings: Settings | None = None) -> str:
    """The ETA endpoint of the configured Serve HTTP proxy (a wildcard host means loopback)."""
    return f"{(settings or get_settings()).serving.url}/v1/eta"


def require_loopback(url: str) -> str:
    """``url`` when it is http(s) to a loopback host, with a port; else :class:`NotLoopback`.

    Replay sends a burst of traffic; only a local endpoint may receive it.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise NotLoopback(f"replay URL must be http:// or https://, got {url!r}")
    try:
        parts.port  # noqa: B018, a port outside 0..65535 raises ValueError
    except ValueError as exc:
        raise NotLoopback(f"replay URL {url!r} has an invalid port") from exc
    host = parts.hostname or ""
    try:
        loopback = host in LOOPBACK_NAMES or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name other than localhost
        loopback = False
    if not loopback:
        raise NotLoopback(
            f"replay only sends to a loopback address (127.0.0.1, localhost, ::1); "
            f"{url!r} points at {host or 'no host'!r}. Port-forward the endpoint to "
            "127.0.0.1 to replay against it."
        )
    return url


def request_chunks(n_orders: int, batch: int) -> list[range]:
    """Row positions per request: ``batch`` orders each, the last one possibly fewer."""
    return [range(i, min(i + batch, n_orders)) for i in range(0, n_orders, batch)]


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


def actuals_frame(orders: pd.DataFrame) -> pd.DataFrame:
    """``order_id``, ``delivered_at``, ``actual_minutes`` of orders (the generator's
    ``delivery_minutes``, or ``delivered_at - created_at`` when a batch lacks it)."""
    if "delivery_minutes" in orders.columns:
        minutes = orders["delivery_minutes"].astype("float64")
    else:
        minutes = (orders["delivered_at"] - orders["created_at"]).dt.total_seconds() / 60.0
    out = pd.DataFrame(
        {
            "order_id": orders["order_id"].astype(str).astype(object),
            "delivered_at": pd.to_datetime(orders["delivered_at"], utc=True),
            "actual_minutes": minutes,
        }
    )
    return out.reset_index(drop=True)[list(ACTUAL_COLUMNS)]


# -- orders -----------------------------------------------------------------------------------


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


# -- sending ----------------------------------------------------------------------------------

_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class _Client:
    """One keep-alive HTTP connection per thread (stdlib: no proxy variables apply)."""

    def __init__(self, url: str, timeout_s: float) -> None:
        parts = urlsplit(url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if self.https else 80)
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.timeout_s = timeout_s
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def _connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
            conn = cls(self.host, self.port, timeout=self.timeout_s)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def post(self, body: bytes, request_id: str) -> tuple[int, bytes]:
        """POST ``body``; one retry when a reused keep-alive connection turns out closed
        (the same ``x-request-id``, so the serving log keeps one copy)."""
        headers = {"Content-Type": "application/json", "x-request-id": request_id}
        for attempt in (0, 1):
            conn = self._connection()
            reused = conn.sock is not None
            try:
                conn.request("POST", self.path, body=body, headers=headers)
                resp = conn.getresponse()
                return resp.status, resp.read()
            except _STALE:
                conn.close()
                if not reused or attempt:
                    raise
            except BaseException:
                conn.close()
                raise
        raise AssertionError("unreachable")  # pragma: no cover, the loop returns or raises

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()


def _preflight(url: str, timeout_s: float) -> None:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout_s).close()
    except OSError as exc:
        raise EndpointUnreachable(
            f"nothing answers at {url} ({exc}); start the endpoint with `relay serve up`"
        ) from exc


@dataclass
class _Tally:
    """Counters shared by the sender threads (guarded by ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    requests_sent: int = 0
    orders_sent: int = 0
    ok: int = 0
    client_errors: int = 0
    server_errors: int = 0
    failed: int = 0
    by_version: collections.Counter[str] = field(default_factory=collections.Counter)
    latencies_ms: list[float] = field(default_factory=list)
    # (monotonic time, UTC date of the answer, row position), in answer order
    answered: list[tuple[float, dt.date, int]] = field(default_factory=list)


class _Run:
    """One replay: a dispatcher on the calling thread, senders in a pool."""

    def __init__(
        self,
        cfg: ReplayConfig,
        url: str,
        orders: pd.DataFrame,
        lake: Lake,
        on_progress: Callable[[ReplayProgress], None] | None,
    ) -> None:
        self.cfg = cfg
        self.orders = orders
        self.lake = lake
        self.on_progress = on_progress
        self.planned = min(cfg.max_orders, len(orders))
        self.payloads = order_payloads(orders.iloc[: self.planned])
        self.client = _Client(url, cfg.timeout_s)
        self.tally = _Tally()
        self.slots = threading.BoundedSemaphore(cfg.workers)
        self.landed = 0
        self.uris: list[str] = []
        self._next_label = 0
        self.bugs: list[Exception] = []
        self.start = 0.0

    def _send(self, rows: range) -> None:
        try:
            body = request_body(self.payloads[rows.start : rows.stop], self.cfg.batch)
            t0 = time.perf_counter()
            try:
                status, data = self.client.post(body, uuid.uuid4().hex)
            except (OSError, http.client.HTTPException) as exc:
                log.debug("request for rows %s failed: %s", rows, exc)
                with self.tally.lock:
                    self.tally.failed += 1
                return
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
                if 200 <= status < 300:
                    t.ok += 1
                    t.latencies_ms.append(latency_ms)
                    now, day = time.monotonic(), dt.datetime.now(dt.UTC).date()
                    for version, i in answers:
                        t.by_version[version] += 1
                        t.answered.append((now, day, i))
                elif 400 <= status < 500:
                    t.client_errors += 1
                elif 500 <= status < 600:
                    t.server_errors += 1
                else:
                    t.failed += 1
        except Exception as exc:  # a bug, not the endpoint: re-raised once the run stops
            with self.tally.lock:
                self.tally.failed += 1
                self.bugs.append(exc)
        finally:
            self.slots.release()

    def _progress(self) -> None:
        if self.on_progress is None:
            return
        t = self.tally
        with t.lock:
            p = ReplayProgress(
                elapsed_s=time.monotonic() - self.start,
                planned_orders=self.planned,
                requests_sent=t.requests_sent,
                orders_sent=t.orders_sent,
                ok=t.ok,
                client_errors=t.client_errors,
                server_errors=t.server_errors,
                failed=t.failed,
                labels_landed=self.landed,
            )
        self.on_progress(p)

    def _land(self, until: float | None) -> None:
        """Land the labels answered before ``until`` (monotonic; ``None``: all) not yet landed."""
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
        rows = [i for _, _, i in batch]
        labels = actuals_frame(self.orders.iloc[rows])
        days = [self.cfg.actuals_date or day for _, day, _ in batch]
        for day, part in labels.groupby(pd.Series(days, index=labels.index), sort=True):
            self.uris.append(self.lake.append(part.reset_index(drop=True), ACTUALS, day))
            self.landed += len(part)

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
                    self.tally.requests_sent += 1
                    self.tally.orders_sent += len(rows)
                pool.submit(self._send, rows)
                now = time.monotonic()
                if now - last_tick >= PROGRESS_EVERY_S:
                    last_tick = now
                    if cfg.label_delay_s is not None:
                        self._land(now - cfg.label_delay_s)
                    self._progress()
        finally:
            pool.shutdown(wait=True)  # in flight: each at most timeout_s more (twice on a retry)
            self.client.close()
        if self.bugs:
            raise self.bugs[0]
        elapsed = time.monotonic() - pacer.start
        if stopped is None:
            stopped = "max_orders" if self.planned >= cfg.max_orders else "end_of_day"
        self._land(None)
        self._progress()
        return stopped, elapsed


def replay(
    config: ReplayConfig,
    settings: Settings | None = None,
    on_progress: Callable[[ReplayProgress], None] | None = None,
) -> ReplayResult:
    """Replay a day's orders against the ETA endpoint, then land their labels.

    Args:
        config: the day, rate, bounds and endpoint.
        settings: default: :func:`relay.settings.get_settings`.
        on_progress: called about once a second (and at the end) on the calling thread.

    Returns:
        The counts, latencies, per-version answers and the ``serving/actuals`` files written.

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
    _preflight(url, config.timeout_s)
    run = _Run(config, url, orders, Lake(s), on_progress)
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
        requests_sent=t.requests_sent,
        orders_sent=t.orders_sent,
        ok=t.ok,
        client_errors=t.client_errors,
        server_errors=t.server_errors,
        failed=t.failed,
        orders_answered=len(t.answered),
        by_version=dict(sorted(t.by_version.items())),
        latency_p50_ms=None if p50 is None else round(p50, 3),
        latency_p99_ms=None if p99 is None else round(p99, 3),
        actuals_landed=run.landed,
        actuals_uris=tuple(run.uris),
    )
    log.info("replay done: %s", result.summary())
    return result
